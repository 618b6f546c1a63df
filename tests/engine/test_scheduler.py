from __future__ import annotations

from collections.abc import Sequence

import pytest

from inferd.engine import (
    ContextLengthExceeded,
    EngineRequest,
    FewestComputedVictimPolicy,
    FinishReason,
    KVCacheTooSmall,
    PriorityPolicy,
    RequestStatus,
    RunnerOutput,
    SampleLogprobs,
)
from inferd.errors import InternalError, InvalidInput

from .fakes import FakeRunner, default_sampler
from .helpers import BS, Driver, make_request, make_scheduler


def test_prefill_then_decode_until_max_tokens() -> None:
    s = make_scheduler()
    s.add_request(make_request("a", 6, max_tokens=3))
    d = Driver(s)
    first = d.step()
    [new] = first.new_requests
    assert (new.num_computed_tokens, new.token_ids, new.sample) == (0, (1, 2, 3, 4, 5, 6), True)
    assert len(new.block_ids) == 2 and first.total_num_scheduled_tokens == 6
    second = d.step()
    [cont] = second.cached_requests
    assert (
        cont.token_ids == (d.tokens["a"][0],) and cont.num_computed_tokens == 6 and cont.new_block_ids == ()
    )
    d.step()
    assert d.finished["a"].finish_reason is FinishReason.LENGTH
    assert len(d.tokens["a"]) == 3
    assert s.kv_cache.usage == 0.0 and not s.has_unfinished_requests()
    assert s.schedule().finished_request_ids == {"a"}


def test_long_prompt_is_prefilled_in_chunks() -> None:
    s = make_scheduler(max_num_batched_tokens=8, max_num_seqs=8)
    s.add_request(make_request("a", 20, max_tokens=2))
    d = Driver(s)
    chunks = [d.step() for _ in range(3)]
    assert [o.num_scheduled_tokens["a"] for o in chunks] == [8, 8, 4]
    assert [o.new_requests[0].sample if o.new_requests else o.cached_requests[0].sample for o in chunks] == [
        False,
        False,
        True,
    ]
    assert len(d.tokens["a"]) == 1


def test_running_requests_are_served_before_waiting_ones() -> None:
    s = make_scheduler(max_num_batched_tokens=10, max_num_seqs=10)
    s.add_request(make_request("a", 8, max_tokens=5))
    d = Driver(s)
    d.step()
    s.add_request(make_request("b", 30, max_tokens=5))
    out = d.step()
    assert out.num_scheduled_tokens == {"a": 1, "b": 9}
    assert out.total_num_scheduled_tokens == 10


def test_max_num_seqs_caps_running_requests() -> None:
    s = make_scheduler(max_num_seqs=2, max_num_batched_tokens=64)
    for i in range(4):
        s.add_request(make_request(f"r{i}", 4, max_tokens=2))
    d = Driver(s)
    out = d.step()
    assert set(out.num_scheduled_tokens) == {"r0", "r1"}
    assert s.num_running == 2 and s.num_waiting == 2
    d.run()
    assert set(d.finished) == {"r0", "r1", "r2", "r3"}


def test_preemption_by_recompute_gives_the_same_tokens() -> None:
    def run(num_blocks: int) -> Driver:
        s = make_scheduler(num_blocks, max_num_seqs=4, max_num_batched_tokens=32)
        s.add_request(make_request("old", 8, max_tokens=12, arrival=1.0))
        s.add_request(make_request("new", list(range(50, 58)), max_tokens=12, arrival=2.0))
        d = Driver(s)
        d.run()
        return d

    roomy, tight = run(64), run(7)
    assert roomy.tokens == tight.tokens
    preempted = [o.preempted_request_ids for o in tight.outputs if o.preempted_request_ids]
    assert preempted and all(ids == {"new"} for ids in preempted), "the later arrival is the victim"
    resumed = [
        n for o in tight.outputs for n in o.new_requests if n.request_id == "new" and n.output_token_ids
    ]
    assert resumed, "the victim resumes as a new request carrying its output tokens"
    again = resumed[0]
    known = again.prompt_token_ids + again.output_token_ids
    start = again.num_computed_tokens
    assert start % BS == 0 and again.token_ids == known[start : start + len(again.token_ids)]


def test_request_alone_never_preempts_itself_forever() -> None:
    s = make_scheduler(num_blocks=3, max_num_batched_tokens=8, max_model_len=64)
    s.add_request(make_request("a", 5, max_tokens=8))  # needs exactly 3 blocks at the end
    d = Driver(s)
    d.run()
    assert len(d.tokens["a"]) == 8 and s.num_preemptions == 0


def test_waiting_requests_are_not_admitted_in_a_step_that_preempted() -> None:
    s = make_scheduler(num_blocks=4, max_num_batched_tokens=32)
    s.add_request(make_request("a", 7, max_tokens=6, arrival=1))
    s.add_request(make_request("b", 7, max_tokens=6, arrival=2))
    d = Driver(s)
    d.step()
    s.add_request(make_request("c", 2, max_tokens=2, arrival=3))
    for out in [d.step() for _ in range(3)]:
        if out.preempted_request_ids:
            assert not out.new_requests
    d.run()
    assert s.num_preemptions > 0
    assert set(d.finished) == {"a", "b", "c"}


def test_abort_frees_blocks_at_once() -> None:
    s = make_scheduler(num_blocks=16)
    s.add_request(make_request("run", 9, max_tokens=10))
    s.add_request(make_request("wait", 9, max_tokens=10))
    d = Driver(s)
    out = d.step()
    assert set(out.num_scheduled_tokens) == {"run", "wait"}
    s.add_request(make_request("queued", 5))
    s.abort_request("run")
    s.abort_request("queued")
    s.abort_request("unknown")
    assert s.kv_cache.block_ids("run") == [] and s.num_waiting == 0
    result = d.runner.execute(out)  # a step in flight when the abort came is dropped
    s.update_from_output(out, result)
    nxt = d.step()
    assert {"run", "queued"} <= nxt.finished_request_ids and set(nxt.num_scheduled_tokens) == {"wait"}
    assert "run" not in d.finished and s.get_request("run") is None


def test_parallel_samples_share_the_prompt_blocks() -> None:
    s = make_scheduler(caching=False)
    samples = s.add_request(make_request("p", 10, max_tokens=3, n=3, seed=7))
    assert [r.request_id for r in samples] == ["p#0", "p#1", "p#2"]
    assert [r.sampling_params.seed for r in samples] == [7, 8, 9]
    assert all(r.parent_id == "p" and r.sampling_params.n == 1 for r in samples)
    d = Driver(s)
    first = d.step()
    assert set(first.num_scheduled_tokens) == {"p#0"}, "siblings wait for the shared prompt"
    second = d.step()
    assert second.num_scheduled_tokens == {"p#0": 1, "p#1": 2, "p#2": 2}
    tables = {n.request_id: n.block_ids for n in second.new_requests}
    leader = s.kv_cache.block_ids("p#0")
    for rid in ("p#1", "p#2"):
        assert tables[rid][:2] == tuple(leader[:2]) and tables[rid][2] != leader[2]
    assert all(block.ref_cnt == 3 for block in s.kv_cache.block_table("p#0")[:2])
    d.run()
    assert {rid: u.num_cached_tokens for rid, u in d.finished.items()} == {"p#0": 0, "p#1": 8, "p#2": 8}
    assert s.kv_cache.usage == 0.0


def test_aborting_the_parent_id_aborts_every_sample() -> None:
    s = make_scheduler()
    s.add_request(make_request("p", 10, n=2))
    Driver(s).step()
    s.abort_request("p")
    assert not s.has_unfinished_requests() and s.kv_cache.usage == 0.0


def test_short_prompt_samples_start_together() -> None:
    s = make_scheduler(caching=False)
    s.add_request(make_request("p", 3, max_tokens=2, n=2))
    out = Driver(s).step()
    assert out.num_scheduled_tokens == {"p#0": 3, "p#1": 3}


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "error"),
    [
        (100, None, ContextLengthExceeded),
        (101, None, ContextLengthExceeded),
        (90, 11, ContextLengthExceeded),
        (60, None, KVCacheTooSmall),  # could grow to 99 tokens, the cache holds 64
        (60, 6, KVCacheTooSmall),
    ],
)
def test_admission_refuses_what_could_never_finish(
    prompt: int, max_tokens: int | None, error: type[Exception]
) -> None:
    s = make_scheduler(num_blocks=16, max_model_len=100)
    with pytest.raises(error) as info:
        s.add_request(make_request("a", prompt, max_tokens))
    assert isinstance(info.value, InvalidInput)
    assert not s.has_unfinished_requests() and s.num_waiting == 0


def test_admission_accepts_a_request_that_exactly_fits() -> None:
    s = make_scheduler(num_blocks=16, max_model_len=100)
    s.add_request(make_request("a", 60, 5))  # 64 tokens of KV: the last sampled token needs none
    d = Driver(s)
    d.run()
    assert len(d.tokens["a"]) == 5


def test_duplicate_ids_are_refused() -> None:
    s = make_scheduler()
    s.add_request(make_request("a", 4))
    with pytest.raises(InvalidInput):
        s.add_request(make_request("a", 4))
    s.add_request(make_request("p", 4, n=2))
    with pytest.raises(InvalidInput):
        s.add_request(make_request("p#1", 4))
    with pytest.raises(InvalidInput):
        s.add_request(make_request("p", 4))


def test_prefix_hits_are_reported_per_request_and_in_stats() -> None:
    s = make_scheduler()
    d = Driver(s)
    s.add_request(make_request("a", list(range(1, 11)), max_tokens=1))
    d.run()
    s.add_request(make_request("b", [*range(1, 9), 42, 43, 44], max_tokens=1))
    out = d.step()
    assert out.new_requests[0].num_computed_tokens == 8
    assert out.new_requests[0].token_ids == (42, 43, 44)
    assert d.finished["b"].num_cached_tokens == 8 and d.finished["a"].num_cached_tokens == 0
    stats = s.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (10 + 11, 8)


def test_cached_tokens_keep_the_first_schedules_value_after_preemption() -> None:
    s = make_scheduler(num_blocks=6, max_num_batched_tokens=32)
    s.add_request(make_request("a", 8, max_tokens=10, arrival=1))
    s.add_request(make_request("b", list(range(30, 38)), max_tokens=10, arrival=2))
    d = Driver(s)
    d.run()
    assert s.num_preemptions > 0
    assert d.finished["b"].num_cached_tokens == 0
    assert s.stats().prefix_cache_hits > 0, "the recompute reused b's own cached blocks"


def scripted(script: dict[str, list[int]]) -> FakeRunner:
    def sampler(rid: str, tokens: list[int]) -> int:
        return script[rid].pop(0)

    return FakeRunner(BS, sampler)


def test_token_based_stop_conditions() -> None:
    s = make_scheduler(max_model_len=16)
    s.add_request(make_request("eos", 4, max_tokens=10, eos_token_id=0))
    s.add_request(make_request("stop_id", 4, max_tokens=10, stop_token_ids=(7,)))
    s.add_request(make_request("ignore", 4, max_tokens=3, eos_token_id=0, ignore_eos=True))
    s.add_request(make_request("min", 4, max_tokens=10, eos_token_id=0, min_tokens=2))
    s.add_request(make_request("model_len", 13, max_tokens=None))
    d = Driver(
        s,
        scripted(
            {
                "eos": [5, 0],
                "stop_id": [7],
                "ignore": [0, 0, 0],
                "min": [0, 0],
                "model_len": [1, 2, 3, 4],
            }
        ),
    )
    d.run()
    got = {rid: (d.tokens[rid], u.finish_reason, u.stop_reason) for rid, u in d.finished.items()}
    assert got == {
        "eos": ([5, 0], FinishReason.STOP, None),
        "stop_id": ([7], FinishReason.STOP, 7),
        "ignore": ([0, 0, 0], FinishReason.LENGTH, None),
        "min": ([0, 0], FinishReason.STOP, None),
        "model_len": ([1, 2, 3], FinishReason.LENGTH, None),
    }


def test_finish_requests_is_the_stop_string_hook() -> None:
    s = make_scheduler()
    [request] = s.add_request(make_request("a", 4, max_tokens=10))
    d = Driver(s)
    d.step()
    s.finish_requests(["a"], FinishReason.STOP, stop_reason="</s>")
    assert request.status is RequestStatus.FINISHED_STOPPED and request.stop_reason == "</s>"
    assert s.kv_cache.usage == 0.0


def test_lower_priority_value_is_admitted_first() -> None:
    s = make_scheduler(max_num_seqs=1)
    s.add_request(make_request("late_urgent", 4, max_tokens=1, arrival=5, priority=-1))
    s.add_request(make_request("early", 4, max_tokens=1, arrival=1))
    s.add_request(make_request("earlier", 4, max_tokens=1, arrival=0))
    d = Driver(s)
    order = [next(iter(d.step().num_scheduled_tokens)) for _ in range(3)]
    assert order == ["late_urgent", "earlier", "early"]


def test_victim_is_the_least_important_request() -> None:
    s = make_scheduler(num_blocks=7, max_num_batched_tokens=32)
    s.add_request(make_request("important", 8, max_tokens=12, arrival=2, priority=0))
    s.add_request(make_request("bulk", list(range(40, 48)), max_tokens=12, arrival=1, priority=5))
    d = Driver(s)
    d.run()
    victims = set().union(*(o.preempted_request_ids for o in d.outputs))
    assert victims == {"bulk"}


def test_fewest_computed_victim_policy() -> None:
    policy = FewestComputedVictimPolicy()
    a, b, c = (make_request(r, 4) for r in "abc")
    for i, (request, computed) in enumerate(((a, 10), (b, 3), (c, 7))):
        request.admission_index, request.num_computed_tokens = i, computed
    assert policy.choose_victim([a, b, c]) is b
    c.priority = 1
    assert policy.choose_victim([a, b, c]) is c


def test_prefill_share_caps_prefill_tokens_per_step() -> None:
    s = make_scheduler(max_num_batched_tokens=16, max_num_seqs=4, max_prefill_share=0.5)
    s.add_request(make_request("a", 40, max_tokens=3))
    s.add_request(make_request("b", 40, max_tokens=3))
    s.add_request(make_request("c", 1, max_tokens=9))  # a 1-token prompt starts like a decode
    d = Driver(s)
    out = d.step()
    assert out.num_scheduled_tokens == {"a": 8, "c": 1}
    d.run()
    assert all(o.total_num_scheduled_tokens <= 16 for o in d.outputs)


def test_long_prefill_threshold_caps_each_request() -> None:
    s = make_scheduler(max_num_batched_tokens=32, long_prefill_token_threshold=6)
    s.add_request(make_request("a", 20, max_tokens=1))
    s.add_request(make_request("b", 20, max_tokens=1))
    out = Driver(s).step()
    assert out.num_scheduled_tokens == {"a": 6, "b": 6}


def test_logprobs_pass_through() -> None:
    s = make_scheduler()
    s.add_request(make_request("a", 4, max_tokens=1, logprobs=True, top_logprobs=1))
    out = s.schedule()
    lp = SampleLogprobs(-0.5, (9,), (-0.5,))
    [update] = s.update_from_output(out, RunnerOutput({"a": 9}, {"a": lp}))
    assert update.logprobs == (lp,) and update.new_token_ids == (9,)


def test_missing_sampled_token_is_an_internal_error() -> None:
    s = make_scheduler()
    s.add_request(make_request("a", 4))
    out = s.schedule()
    with pytest.raises(InternalError):
        s.update_from_output(out, RunnerOutput({}))


def test_policy_must_choose_a_candidate() -> None:
    class Rogue(PriorityPolicy):
        def choose_victim(self, candidates: Sequence[EngineRequest]) -> EngineRequest:
            return make_request("stranger", 1)

    s = make_scheduler(num_blocks=4, policy=Rogue())
    s.add_request(make_request("a", 8, max_tokens=8))
    s.add_request(make_request("b", 8, max_tokens=8))
    d = Driver(s)
    with pytest.raises(InternalError):
        d.run()


def test_first_scheduled_time_uses_the_clock() -> None:
    s = make_scheduler()
    s._clock = lambda: 42.0
    [request] = s.add_request(make_request("a", 4))
    s.schedule()
    assert request.first_scheduled_time == 42.0


def test_default_sampler_is_deterministic() -> None:
    assert default_sampler("a", [1, 2]) == default_sampler("a", [3, 4])
