"""Quality of service in the scheduler: tiers, fair sharing between tenants, the prefill cap, queue bounds and
deadlines (issue 5), driven through the checking fake runner."""

from __future__ import annotations

import pytest

from inferd.engine import FinishReason, Priority, SchedulerOutput
from inferd.errors import DeadlineExceeded, QueueFull

from .helpers import Driver, make_request, make_scheduler

BATCH, INTERACTIVE = Priority.BATCH, Priority.INTERACTIVE


def first_step(driver: Driver, rid: str) -> int:
    """Index in `driver.outputs` of the first step that scheduled `rid`."""
    return next(i for i, o in enumerate(driver.outputs) if rid in o.num_scheduled_tokens)


def is_decode(output: SchedulerOutput, rid: str) -> bool:
    return output.num_scheduled_tokens.get(rid) == 1 and any(
        r.request_id == rid and r.sample for r in output.scheduled
    )


# ---- tiers


def test_interactive_requests_are_admitted_before_batch_ones() -> None:
    s = make_scheduler(max_num_seqs=1)
    for i in range(3):
        s.add_request(make_request(f"batch{i}", 4, max_tokens=1, arrival=i, priority=BATCH))
    s.add_request(make_request("chat", 4, max_tokens=1, arrival=9, priority=INTERACTIVE))
    d = Driver(s)
    d.run()
    assert [next(iter(o.num_scheduled_tokens)) for o in d.outputs] == ["chat", "batch0", "batch1", "batch2"]


def test_waiting_interactive_request_preempts_a_batch_request_for_a_slot() -> None:
    s = make_scheduler(max_num_seqs=2)
    s.add_request(make_request("b0", 4, max_tokens=20, priority=BATCH))
    s.add_request(make_request("b1", 4, max_tokens=20, priority=BATCH))
    d = Driver(s)
    d.step()
    s.add_request(make_request("chat", 4, max_tokens=3, arrival=1))
    out = d.step()
    assert "chat" in out.num_scheduled_tokens
    assert out.preempted_request_ids == {"b1"}, "the batch request that computed least (the newest)"
    assert "b1" not in out.num_scheduled_tokens and s.num_running == 2
    d.run()
    assert set(d.finished) == {"b0", "b1", "chat"} and len(d.tokens["b1"]) == 20


def test_waiting_interactive_request_preempts_batch_requests_for_blocks() -> None:
    s = make_scheduler(num_blocks=6, max_num_seqs=4)  # 24 tokens of KV
    s.add_request(make_request("bulk", 8, max_tokens=12, priority=BATCH))  # up to 5 blocks
    d = Driver(s)
    for _ in range(5):
        d.step()
    s.add_request(make_request("chat", list(range(50, 62)), max_tokens=2))
    out = d.step()
    assert out.preempted_request_ids == {"bulk"} and "chat" in out.num_scheduled_tokens
    d.run()
    assert len(d.tokens["bulk"]) == 12 and len(d.tokens["chat"]) == 2


def test_batch_request_never_preempts_an_interactive_one() -> None:
    s = make_scheduler(max_num_seqs=1)
    s.add_request(make_request("chat", 4, max_tokens=6))
    d = Driver(s)
    d.step()
    s.add_request(make_request("bulk", 4, max_tokens=2, priority=BATCH))
    d.run()
    assert s.num_preemptions == 0 and first_step(d, "bulk") == 6


def test_without_preemption_for_waiting_the_interactive_request_waits_for_a_slot() -> None:
    s = make_scheduler(max_num_seqs=1, preempt_for_waiting=False)
    s.add_request(make_request("bulk", 4, max_tokens=5, priority=BATCH))
    d = Driver(s)
    d.step()
    s.add_request(make_request("chat", 4, max_tokens=1))
    d.run()
    assert s.num_preemptions == 0 and first_step(d, "chat") == 5


def test_running_requests_of_the_lower_tier_lose_their_blocks_first() -> None:
    s = make_scheduler(num_blocks=8, max_num_seqs=4, max_num_batched_tokens=32)
    s.add_request(make_request("chat", 8, max_tokens=14, arrival=5))
    s.add_request(make_request("bulk", list(range(40, 48)), max_tokens=14, arrival=0, priority=BATCH))
    d = Driver(s)
    d.run()
    victims = set().union(*(o.preempted_request_ids for o in d.outputs))
    assert victims == {"bulk"} and len(d.tokens["bulk"]) == 14


# ---- fair sharing between tenants


def flood(s: object, tenant: str, count: int, prompt: int = 6, max_tokens: int = 8) -> None:
    for i in range(count):
        s.add_request(make_request(f"{tenant}{i}", prompt, max_tokens=max_tokens, tenant=tenant))  # type: ignore[attr-defined]


def test_a_flooding_tenant_cannot_starve_another() -> None:
    s = make_scheduler(max_num_seqs=4, preempt_for_waiting=False)
    flood(s, "a", 40)
    d = Driver(s)
    for _ in range(3):
        d.step()
    s.add_request(make_request("b0", 6, max_tokens=4, tenant="b"))
    arrival = len(d.outputs)
    d.run()
    # b waits only for the first slot that frees (a's running requests have <= 8 tokens left), not behind
    # the 36 requests a queued before it.
    assert first_step(d, "b0") - arrival <= 8
    later_a = [rid for rid in d.tokens if rid.startswith("a") and first_step(d, rid) < first_step(d, "b0")]
    assert len(later_a) <= 4 + 4


def test_first_come_first_served_when_everyone_is_one_tenant() -> None:
    s = make_scheduler(max_num_seqs=4, preempt_for_waiting=False)
    flood(s, "", 12)
    d = Driver(s)
    d.run()
    order = sorted(d.tokens, key=lambda rid: first_step(d, rid))
    assert order == [f"{i}" for i in range(12)] or order == sorted(order, key=lambda r: int(r or 0))


def test_a_starved_tenant_preempts_the_flooding_one_within_a_step() -> None:
    s = make_scheduler(max_num_seqs=4)
    flood(s, "a", 40, max_tokens=30)
    d = Driver(s)
    for _ in range(3):
        d.step()
    s.add_request(make_request("b0", 6, max_tokens=4, tenant="b"))
    out = d.step()  # b runs nothing: b0 starts alone (start_alone), in a slot taken from a
    assert set(out.num_scheduled_tokens) == {"b0"}
    assert len(out.preempted_request_ids) == 1 and next(iter(out.preempted_request_ids))[0] == "a"
    s.add_request(make_request("b1", 6, max_tokens=4, tenant="b"))
    # b got a step's service that a did not: b1 preempts a once a has caught up, a step later.
    outs = [d.step(), d.step()]
    assert "b1" in outs[1].num_scheduled_tokens
    preempted = [rid for out in outs for rid in out.preempted_request_ids]
    assert len(preempted) == 1 and preempted[0][0] == "a"
    # Two each: b has its share, and its third request waits for a slot rather than preempt.
    s.add_request(make_request("b2", 6, max_tokens=4, tenant="b"))
    out = d.step()
    assert "b2" not in out.num_scheduled_tokens and not out.preempted_request_ids
    d.run()
    assert first_step(d, "b2") <= len(d.outputs) - 1
    assert s.num_preemptions == 3  # b2, once b runs nothing, starts alone in a slot taken from a
    assert all(len(d.tokens[f"a{i}"]) == 30 for i in range(40))


def test_balanced_tenants_do_not_preempt_each_other() -> None:
    s = make_scheduler(max_num_seqs=4)
    flood(s, "a", 2, max_tokens=20)
    flood(s, "b", 2, max_tokens=20)
    flood(s, "a", 0)
    d = Driver(s)
    d.step()
    s.add_request(make_request("a-late", 6, max_tokens=4, tenant="a"))
    s.add_request(make_request("b-late", 6, max_tokens=4, tenant="b"))
    d.run()
    assert s.num_preemptions == 0


def test_weights_share_service_in_proportion() -> None:
    s = make_scheduler(max_num_seqs=3, max_num_batched_tokens=64, tenant_weights={"gold": 2.0})
    flood(s, "gold", 60, max_tokens=4)
    flood(s, "free", 60, max_tokens=4)
    d = Driver(s)
    for _ in range(60):
        d.step()
    done = {t: sum(1 for rid in d.finished if rid.startswith(t)) for t in ("gold", "free")}
    assert done["gold"] > 0 and done["free"] > 0
    assert 1.5 <= done["gold"] / done["free"] <= 2.5, done
    counters = s.fair_share.counters
    assert abs(counters["gold"] - counters["free"]) <= 3 * (6 + 2 * 4)


def test_a_returning_tenant_cannot_bank_credit() -> None:
    s = make_scheduler(max_num_seqs=2, preempt_for_waiting=False)
    flood(s, "a", 30)
    d = Driver(s)
    for _ in range(40):
        d.step()
    before = s.fair_share.counter("a")
    s.add_request(make_request("b0", 6, max_tokens=4, tenant="b"))
    assert s.fair_share.counter("b") == pytest.approx(before)
    # idle tenants are lifted to the last one served when nobody is active
    d.run()
    s.add_request(make_request("c0", 6, max_tokens=4, tenant="c"))
    assert s.fair_share.counter("c") >= s.fair_share.counter("a")


def test_recompute_after_preemption_is_not_charged() -> None:
    def service(num_blocks: int) -> float:
        s = make_scheduler(num_blocks, max_num_seqs=4, max_num_batched_tokens=32)
        s.add_request(make_request("old", 8, max_tokens=12, arrival=1.0, tenant="t"))
        s.add_request(make_request("new", list(range(50, 58)), max_tokens=12, arrival=2.0, tenant="t"))
        Driver(s).run()
        assert (s.num_preemptions > 0) == (num_blocks < 10)
        return s.fair_share.counter("t")

    assert service(7) == service(64) == 2 * (8 * 1.0 + 12 * 2.0)


# ---- head-of-line protection


def test_decodes_and_one_token_prompts_get_into_every_step_of_a_long_prefill() -> None:
    s = make_scheduler(
        num_blocks=128, max_num_seqs=8, max_num_batched_tokens=32, max_model_len=512, max_prefill_share=0.5
    )
    for i in range(3):
        s.add_request(make_request(f"chat{i}", 4, max_tokens=40))
    d = Driver(s)
    d.step()
    s.add_request(make_request("long", list(range(10, 310)), max_tokens=2))
    prefill_steps = 0
    while "long" not in d.tokens:
        if len(d.outputs) % 3 == 0:
            rid = f"one{len(d.outputs)}"
            s.add_request(make_request(rid, [5], max_tokens=1))
            out = d.step()
            assert rid in out.num_scheduled_tokens, "a 1-token prompt starts in the next step"
        else:
            out = d.step()
        assert all(is_decode(out, f"chat{i}") for i in range(3)), "decodes run in every step"
        assert out.num_scheduled_tokens.get("long", 0) <= 16
        prefill_steps += 1
    assert prefill_steps >= 300 // 16


def test_the_prefill_share_leaves_room_for_short_prompts() -> None:
    s = make_scheduler(num_blocks=256, max_num_batched_tokens=32, max_model_len=512, max_prefill_share=0.5)
    s.add_request(make_request("chat", 4, max_tokens=60))
    s.add_request(make_request("long", list(range(10, 410)), max_tokens=2))
    d = Driver(s)
    d.step()
    s.add_request(make_request("short", list(range(20, 26)), max_tokens=2))
    out = d.step()
    # long takes the prefill share (16), chat decodes (1), and short's 6 tokens wait: the share is spent.
    assert out.num_scheduled_tokens == {"chat": 1, "long": 16}
    # With a per-request threshold below the share, short prompts prefill beside the long one.
    s2 = make_scheduler(
        num_blocks=256,
        max_num_batched_tokens=32,
        max_model_len=512,
        max_prefill_share=0.5,
        long_prefill_token_threshold=8,
    )
    s2.add_request(make_request("chat", 4, max_tokens=60))
    s2.add_request(make_request("long", list(range(10, 410)), max_tokens=2))
    d2 = Driver(s2)
    d2.step()
    s2.add_request(make_request("short", list(range(20, 26)), max_tokens=2))
    assert d2.step().num_scheduled_tokens == {"chat": 1, "long": 8, "short": 6}


def test_a_prompt_alone_takes_the_whole_budget() -> None:
    s = make_scheduler(max_num_batched_tokens=32, max_model_len=512, num_blocks=128, max_prefill_share=0.25)
    s.add_request(make_request("long", 100, max_tokens=2))
    out = Driver(s).step()
    assert out.num_scheduled_tokens == {"long": 32}


def test_a_prompt_chunk_leaves_room_for_decodes_and_one_token_prompts() -> None:
    s = make_scheduler(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=512, num_blocks=128)
    s.add_request(make_request("long", 100, max_tokens=2, arrival=0))
    d = Driver(s)
    assert d.step().num_scheduled_tokens == {"long": 8}
    for i in range(2):
        s.add_request(make_request(f"d{i}", 1, max_tokens=20, arrival=1))
    # the two start beside a 6-token chunk (no prefill share: the budget is only reserved) ...
    assert d.step().num_scheduled_tokens == {"long": 6, "d0": 1, "d1": 1}
    s.add_request(make_request("d2", 1, max_tokens=20, arrival=1))
    # ... and decode beside the next chunks, while a third one starts
    assert d.step().num_scheduled_tokens == {"long": 5, "d0": 1, "d1": 1, "d2": 1}
    assert d.step().num_scheduled_tokens == {"long": 5, "d0": 1, "d1": 1, "d2": 1}


# ---- admission control


def test_queue_bound_in_requests_refuses_at_once() -> None:
    s = make_scheduler(max_num_seqs=2, max_waiting_requests=3)
    for i in range(5):  # two will start at the next step: they do not count as waiting
        s.add_request(make_request(f"r{i}", 4, max_tokens=50))
    with pytest.raises(QueueFull) as refused:
        s.add_request(make_request("r5", 4))
    assert refused.value.retry_after_s > 0 and "3 requests waiting" in refused.value.message
    assert s.num_waiting == 5 and s.get_request("r5") is None
    Driver(s).step()
    assert s.num_waiting == 3
    with pytest.raises(QueueFull):
        s.add_request(make_request("r5", 4))
    s.abort_request("r2")  # one leaves the queue
    with pytest.raises(QueueFull):
        s.add_request(make_request("pair", 4, n=2))  # every sample counts
    s.add_request(make_request("r5", 4))


def test_queue_bound_in_tokens() -> None:
    s = make_scheduler(max_num_seqs=1, max_waiting_tokens=10, max_model_len=256, num_blocks=128)
    s.add_request(make_request("hog", 2, max_tokens=50))
    Driver(s).step()
    s.add_request(make_request("big", 50))  # an empty queue always takes one request
    with pytest.raises(QueueFull, match="50 tokens waiting"):
        s.add_request(make_request("small", 2))
    s.abort_request("big")
    s.add_request(make_request("a", 6))
    s.add_request(make_request("b", 4))
    with pytest.raises(QueueFull):
        s.add_request(make_request("c", 1))
    assert s.stats().num_waiting_tokens == 10


def test_preempted_requests_are_never_refused() -> None:
    s = make_scheduler(num_blocks=7, max_num_seqs=4, max_num_batched_tokens=32, max_waiting_requests=1)
    s.add_request(make_request("old", 8, max_tokens=12, arrival=1.0))
    d = Driver(s)
    d.step()
    s.add_request(make_request("new", list(range(50, 58)), max_tokens=12, arrival=2.0))
    d.run()
    assert s.num_preemptions > 0 and set(d.finished) == {"old", "new"}


def test_retry_after_follows_the_measured_drain_rate() -> None:
    now = [0.0]
    s = make_scheduler(max_num_seqs=1, max_waiting_requests=6, clock=lambda: now[0])
    for i in range(5):
        s.add_request(make_request(f"r{i}", 4, max_tokens=1))
    d = Driver(s)
    for _ in range(5):  # one request leaves the queue every 0.5 s
        now[0] += 0.5
        d.step()
    now[0] += 100  # idle time (an empty queue) does not count
    d.step()
    for i in range(5, 12):  # one will start at once: 6 wait
        s.add_request(make_request(f"r{i}", 4, max_tokens=1))
    with pytest.raises(QueueFull) as refused:
        s.add_request(make_request("late", 4, n=3))
    # 3 requests too many at 2 requests per second
    assert refused.value.retry_after_s == pytest.approx(1.5)
    assert s.drain_rate.requests_per_s == pytest.approx(2.0)


# ---- deadlines


def test_requests_without_a_token_at_their_deadline_are_dropped_at_the_next_step() -> None:
    now = [0.0]
    s = make_scheduler(max_num_seqs=1, clock=lambda: now[0])
    s.add_request(make_request("running", 4, max_tokens=50, deadline=10.0))
    s.add_request(make_request("waiting", 4, max_tokens=5, deadline=2.0, n=2))
    s.add_request(make_request("patient", 4, max_tokens=5))
    d = Driver(s)
    d.step()
    assert s.take_expired() == []
    now[0] = 5.0
    out = d.step()
    assert sorted(s.take_expired()) == ["waiting#0", "waiting#1"] and s.take_expired() == []
    assert out.finished_request_ids == {"waiting#0", "waiting#1"}
    now[0] = 10.0
    d.step()
    assert s.take_expired() == [], "a request that streams tokens keeps running"
    d.run()
    assert d.finished["running"].finish_reason is FinishReason.LENGTH
    assert d.finished["patient"].finish_reason is FinishReason.LENGTH
    assert s.kv_cache.usage == 0.0


def test_a_request_whose_deadline_passed_is_not_queued() -> None:
    s = make_scheduler(clock=lambda: 7.0)
    with pytest.raises(DeadlineExceeded):
        s.add_request(make_request("late", 4, deadline=7.0))
    assert not s.has_unfinished_requests()


def test_tagging_stamps_tenant_and_deadline() -> None:
    s = make_scheduler(clock=lambda: 0.0)
    with s.tagging(tenant="acme", deadline=99.0):
        [a] = s.add_request(make_request("a", 4))
        [b] = s.add_request(make_request("b", 4, tenant="own"))
    [c] = s.add_request(make_request("c", 4))
    assert (a.tenant, a.deadline) == ("acme", 99.0)
    assert (b.tenant, b.deadline) == ("own", None)
    assert (c.tenant, c.deadline) == ("", None)
