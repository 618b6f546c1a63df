"""Property tests of the batch queue, driven by an exact discrete-event simulation (no real clock)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.batching.queue import BatchPolicy, BatchQueue, QueuedItem


@dataclass
class Req:
    ident: int
    arrival: float
    rows: int
    signature: int
    priority: int
    timeout: float | None


@dataclass
class Outcome:
    batches: list[tuple[float, list[QueuedItem[Req]]]]
    expired: dict[int, float]
    rejected: set[int]


def simulate(policy: BatchPolicy, reqs: list[Req], slots: int, exec_time: float) -> Outcome:
    queue: BatchQueue[Req] = BatchQueue(policy)
    pending = sorted(reqs, key=lambda r: (r.arrival, r.ident))
    running: list[float] = []  # completion times
    out = Outcome([], {}, set())
    now = 0.0
    i = 0
    for _ in range(100_000):
        while i < len(pending) and pending[i].arrival <= now:
            r = pending[i]
            deadline = r.arrival + r.timeout if r.timeout is not None else None
            if not queue.push(QueuedItem(r, r.rows, r.signature, r.priority, r.arrival, deadline)):
                out.rejected.add(r.ident)
            i += 1
        running = [t for t in running if t > now]
        for item in queue.pop_expired(now):
            out.expired[item.payload.ident] = now
        while len(running) < slots:
            batch = queue.next_batch(now)
            if batch is None:
                break
            out.batches.append((now, batch))
            running.append(now + exec_time)
        candidates = []
        if i < len(pending):
            candidates.append(pending[i].arrival)
        if running:
            candidates.append(min(running))
        wake = queue.wake_at(slot_free=len(running) < slots)
        if wake is not None:
            candidates.append(max(wake, now))
        if not candidates:
            return out
        nxt = min(candidates)
        now = nxt if nxt > now else now + 1e-9
    raise AssertionError("simulation did not finish")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[BatchPolicy, list[Req], int, float]:
    max_batch = draw(st.integers(1, 16))
    levels = draw(st.integers(1, 3))
    policy = BatchPolicy(
        max_batch_size=max_batch,
        batching=draw(st.booleans()),
        max_queue_delay_s=draw(st.sampled_from([0.0, 0.001, 0.005, 0.02])),
        preferred_batch_sizes=tuple(draw(st.lists(st.integers(1, max_batch), max_size=2))),
        max_queue_size=draw(st.sampled_from([0, 0, 5, 50])),
        priority_levels=levels,
    )
    n = draw(st.integers(1, 60))
    reqs = []
    t = 0.0
    for ident in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.0005, 0.002, 0.01]))
        reqs.append(
            Req(
                ident=ident,
                arrival=t,
                rows=draw(st.integers(1, max_batch)),
                signature=draw(st.integers(0, 2)),
                priority=draw(st.integers(1, levels)),
                timeout=draw(st.one_of(st.none(), st.sampled_from([0.001, 0.003, 0.05]))),
            )
        )
    return policy, reqs, draw(st.integers(1, 3)), draw(st.sampled_from([0.0005, 0.004, 0.02]))


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_every_request_answered_exactly_once_within_limits(
    scenario: tuple[BatchPolicy, list[Req], int, float],
) -> None:
    policy, reqs, slots, exec_time = scenario
    out = simulate(policy, reqs, slots, exec_time)
    dispatched = [item.payload.ident for _, batch in out.batches for item in batch]
    answered = dispatched + list(out.expired) + list(out.rejected)
    assert sorted(answered) == [r.ident for r in reqs], "each request answered exactly once"
    for at, batch in out.batches:
        assert sum(item.rows for item in batch) <= policy.max_batch_size
        assert len({item.signature for item in batch}) == 1, "only shape-compatible requests share a batch"
        if not policy.joins_requests:
            assert len(batch) == 1
        for item in batch:
            assert item.deadline is None or item.deadline > at, "expired requests never run"
            assert item.enqueued_at <= at
    for ident, at in out.expired.items():
        req = reqs[ident]
        assert req.timeout is not None and at >= req.arrival + req.timeout


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_idle_model_never_holds_a_request_past_its_delay_window(
    scenario: tuple[BatchPolicy, list[Req], int, float],
) -> None:
    policy, reqs, _, exec_time = scenario
    # Enough execution slots that the model is always idle when a batch is ready.
    out = simulate(policy, reqs, slots=len(reqs) + 1, exec_time=exec_time)
    for at, batch in out.batches:
        for item in batch:
            assert at <= item.enqueued_at + policy.max_queue_delay_s + 1e-9


def test_preferred_batch_size_dispatches_before_the_delay() -> None:
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=10.0, preferred_batch_sizes=(4,))
    q: BatchQueue[int] = BatchQueue(policy)
    for i in range(3):
        q.push(QueuedItem(i, 1, "s", 1, 0.0))
    assert q.next_batch(0.0) is None
    q.push(QueuedItem(3, 1, "s", 1, 0.0))
    batch = q.next_batch(0.0)
    assert batch is not None and [it.payload for it in batch] == [0, 1, 2, 3]


def test_higher_priority_goes_first_and_full_queue_refuses() -> None:
    policy = BatchPolicy(max_batch_size=1, priority_levels=2, max_queue_size=2)
    q: BatchQueue[str] = BatchQueue(policy)
    assert q.push(QueuedItem("low", 1, "s", 2, 0.0))
    assert q.push(QueuedItem("high", 1, "s", 1, 1.0))
    assert not q.push(QueuedItem("refused", 1, "s", 1, 2.0))
    first = q.next_batch(5.0)
    assert first is not None and first[0].payload == "high"
