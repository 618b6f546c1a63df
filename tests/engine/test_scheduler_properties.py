"""Random workloads through the scheduler and the checking fake runner, on caches from tiny to roomy."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st

from inferd.engine import (
    ContextLengthExceeded,
    FewestComputedVictimPolicy,
    FinishReason,
    KVCacheTooSmall,
    PriorityPolicy,
)

from .fakes import default_sampler
from .helpers import BS, Driver, make_request, make_scheduler

EOS = 7
DOCS = [list(range(300, 340)), list(range(400, 440))]


def eos_sampler(request_id: str, tokens: list[int]) -> int:
    token = default_sampler(request_id, tokens)
    return EOS if token % 13 == 0 else token


@dataclass
class Spec:
    arrival_step: int
    doc: int | None
    doc_len: int
    tail: list[int]
    max_tokens: int | None
    n: int
    priority: int
    salt: str | None
    abort_after: int | None
    tenant: str


specs = st.builds(
    Spec,
    arrival_step=st.integers(0, 6),
    doc=st.sampled_from([None, 0, 1]),
    doc_len=st.integers(0, 16),
    tail=st.lists(st.integers(10, 20), max_size=6),
    max_tokens=st.one_of(st.none(), st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    n=st.integers(1, 3),
    priority=st.integers(0, 2),
    salt=st.sampled_from([None, None, "t"]),
    abort_after=st.one_of(st.none(), st.none(), st.integers(0, 8)),
    tenant=st.sampled_from(["", "a", "b"]),
)


def expected_tokens(rid: str, prompt: list[int], max_tokens: int, max_model_len: int) -> list[int]:
    """What the request must produce however it is scheduled: the sampler depends only on id and length."""
    tokens, out = list(prompt), []
    while True:
        token = eos_sampler(rid, tokens)
        tokens.append(token)
        out.append(token)
        if token == EOS or len(out) >= max_tokens or len(tokens) >= max_model_len:
            return out


@settings(max_examples=int(os.environ.get("ENGINE_EXAMPLES", "250")), deadline=None)
@given(
    requests=st.lists(specs, min_size=1, max_size=8),
    num_blocks=st.one_of(st.integers(3, 8), st.integers(3, 24)),
    max_num_seqs=st.integers(1, 6),
    budget_extra=st.integers(0, 30),
    share=st.sampled_from([1.0, 0.5, 0.25]),
    threshold=st.sampled_from([0, 5]),
    caching=st.booleans(),
    fewest_computed=st.booleans(),
    preempt_for_waiting=st.booleans(),
)
def test_random_workloads_finish_exactly_once_without_deadlock(
    requests: list[Spec],
    num_blocks: int,
    max_num_seqs: int,
    budget_extra: int,
    share: float,
    threshold: int,
    caching: bool,
    fewest_computed: bool,
    preempt_for_waiting: bool,
) -> None:
    max_model_len = 40
    budget = max_num_seqs + budget_extra
    s = make_scheduler(
        num_blocks,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        caching=caching,
        long_prefill_token_threshold=threshold,
        max_prefill_share=share,
        policy=FewestComputedVictimPolicy() if fewest_computed else PriorityPolicy(),
        preempt_for_waiting=preempt_for_waiting,
        tenant_weights={"a": 2.0},
    )
    d = Driver(s)
    d.runner.sampler = eos_sampler
    expected: dict[str, list[int]] = {}
    aborts: dict[int, list[str]] = {}
    step = 0
    pending = sorted(enumerate(requests), key=lambda item: item[1].arrival_step)
    while pending or s.has_unfinished_requests():
        while pending and pending[0][1].arrival_step <= step:
            i, spec = pending.pop(0)
            prompt = (DOCS[spec.doc][: spec.doc_len] if spec.doc is not None else []) + spec.tail or [1]
            request = make_request(
                f"r{i}",
                prompt,
                spec.max_tokens,
                arrival=float(step),
                n=spec.n,
                priority=spec.priority,
                cache_salt=spec.salt,
                eos_token_id=EOS,
                tenant=spec.tenant,
            )
            try:
                admitted = s.add_request(request)
            except (ContextLengthExceeded, KVCacheTooSmall):
                limit = spec.max_tokens or max_model_len - len(prompt)
                too_long = len(prompt) >= max_model_len or len(prompt) + limit > max_model_len
                assert too_long or len(prompt) + limit - 1 > num_blocks * BS
                continue
            assert len(admitted) == spec.n
            for sample in admitted:
                limit = spec.max_tokens or max_model_len
                expected[sample.request_id] = expected_tokens(sample.request_id, prompt, limit, max_model_len)
            if spec.abort_after is not None:
                aborts.setdefault(step + spec.abort_after, []).append(request.request_id)
        for rid in aborts.pop(step, []):
            s.abort_request(rid)
            for sample_id in [rid, *(f"{rid}#{k}" for k in range(3))]:
                if sample_id in expected and sample_id not in d.finished:
                    expected[sample_id] = d.tokens.get(sample_id, [])  # stops where it was

        had_work = s.has_unfinished_requests()
        running = s._running
        decoding = any(r.num_tokens - r.num_computed_tokens <= 1 for r in running)
        starting = s._waiting.num_single_token > 0 and len(running) < max_num_seqs
        out = d.step()
        step += 1
        assert step < 2000, "no progress: livelock"
        assert out.total_num_scheduled_tokens > 0 or not had_work, "a step with work scheduled nothing"
        assert out.total_num_scheduled_tokens == sum(out.num_scheduled_tokens.values()) <= budget
        decodes = sum(1 for r in out.scheduled if r.sample and len(r.token_ids) == 1)
        prefill = out.total_num_scheduled_tokens - decodes
        if decoding or starting:  # prompts alone may take the whole budget
            assert prefill <= max(1, int(share * budget))
        assert len(out.num_scheduled_tokens) <= max_num_seqs and s.num_running <= max_num_seqs
        assert 0 <= s.kv_cache.num_free_blocks <= num_blocks
        for block in s.kv_cache.pool.blocks:
            assert block.ref_cnt >= 0 and block.is_free == (block.ref_cnt == 0)

    # Every admitted request ended exactly once (Driver asserts no update after a finish), with the tokens
    # it would have produced alone; aborted ones produced a prefix of them and no finish update.
    for rid, tokens in expected.items():
        assert d.tokens.get(rid, []) == tokens, rid
        if rid in d.finished:
            reason = d.finished[rid].finish_reason
            assert reason is (FinishReason.STOP if tokens[-1] == EOS else FinishReason.LENGTH)
    assert s.kv_cache.usage == 0.0 and s.num_waiting == s.num_running == 0
    assert s.stats().num_waiting_tokens == 0
    event(f"preempted: {s.num_preemptions > 0}")
    event(f"prefix hits: {s.kv_cache.stats.hits > 0}")
    event(f"shared prompts: {any(u.num_cached_tokens for u in d.finished.values())}")
    event(f"admitted: {min(len(expected), 4)}")
    stats = s.kv_cache.stats
    assert 0 <= stats.hits <= stats.queries
    if not caching:
        assert stats.queries == 0
