"""Sampling through the whole engine: seeded requests are reproducible whatever else runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from inferd.engine import CacheConfig, EngineConfig, SamplingParams, SchedulerConfig
from inferd.engine.llm_engine import LLMEngine
from inferd.engine.request import FinishReason
from inferd.engine.sampler import SamplerOutput, SamplingState
from tests.engine_torch.models import TinyModel, build_tiny_model
from tests.engine_torch.test_parity import PROMPTS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=11)


def engine(path: Path, *, num_blocks: int = 64, block_size: int = 16, seed: int | None = None) -> LLMEngine:
    config = EngineConfig(
        SchedulerConfig(max_model_len=128, max_num_seqs=16, max_num_batched_tokens=256),
        CacheConfig(block_size=block_size, num_blocks=num_blocks),
    )
    return LLMEngine.load(path, config, seed=seed)


def seeded(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.5, seed=seed, max_tokens=16)


def test_same_seed_same_tokens_alone_batched_and_preempted(tiny: TinyModel) -> None:
    alone = engine(tiny.path).generate([PROMPTS[3]], seeded(42))[0]
    assert engine(tiny.path).generate([PROMPTS[3]], seeded(42))[0] == alone
    eng = engine(tiny.path)
    eng.add_request("other-1", PROMPTS[0], SamplingParams(temperature=1.0, max_tokens=16))
    eng.add_request("other-2", PROMPTS[1], seeded(7))
    assert eng.generate([PROMPTS[3]], seeded(42))[0] == alone
    tight = engine(tiny.path, num_blocks=16, block_size=4)  # forces preemptions
    outs = tight.generate([PROMPTS[3], *PROMPTS[4:10:2]], seeded(42))
    assert tight.stats().num_preemptions > 0
    assert outs[0] == alone


def test_different_seeds_differ(tiny: TinyModel) -> None:
    eng = engine(tiny.path)
    outs = [eng.generate([PROMPTS[3]], seeded(s))[0] for s in range(4)]
    assert len({tuple(o) for o in outs}) == 4


def test_parallel_samples_differ_and_reproduce(tiny: TinyModel) -> None:
    params = SamplingParams(temperature=1.5, seed=5, n=3, max_tokens=12)
    first = engine(tiny.path).generate([PROMPTS[5]], params)
    assert len(first) == 3 and len({tuple(o) for o in first}) == 3
    assert engine(tiny.path).generate([PROMPTS[5]], params) == first


def test_unseeded_sampling_uses_the_engine_seed(tiny: TinyModel) -> None:
    params = SamplingParams(temperature=1.0, max_tokens=12)
    first = engine(tiny.path, seed=1).generate(PROMPTS[:4], params)
    assert engine(tiny.path, seed=1).generate(PROMPTS[:4], params) == first
    assert all(0 <= t < 256 for out in first for t in out)


def test_logprobs_through_the_engine(tiny: TinyModel) -> None:
    eng = engine(tiny.path)
    eng.add_request(
        "r", PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=5, logprobs=True, top_logprobs=2)
    )
    updates = []
    while eng.has_unfinished_requests():
        updates.extend(eng.step())
    assert len(updates) == 5
    for update in updates:
        (lp,) = update.logprobs
        assert lp.top_token_ids[0] == update.new_token_ids[0]  # greedy: the most likely token
        assert lp.logprob == pytest.approx(lp.top_logprobs[0])
    assert updates[-1].finished


POISON_TOP_K = 13


def poison_sampler(eng: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the sampler raises for any batch holding a request with top_k POISON_TOP_K."""
    sampler = eng.runner.sampler
    real = sampler.sample

    def sample(logits: torch.Tensor, states: Sequence[SamplingState]) -> SamplerOutput:
        if any(s.params.top_k == POISON_TOP_K for s in states):
            raise RuntimeError("injected sampling fault")
        return real(logits, states)

    monkeypatch.setattr(sampler, "sample", sample)


def test_a_request_whose_sampling_fails_fails_alone(tiny: TinyModel, monkeypatch: pytest.MonkeyPatch) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    alone = engine(tiny.path).generate(PROMPTS[:2], greedy)
    eng = engine(tiny.path)
    poison_sampler(eng, monkeypatch)
    poison = SamplingParams(temperature=1.0, top_k=POISON_TOP_K, n=2, max_tokens=12)
    poisoned = eng.add_request("poison", PROMPTS[2], poison)
    for i, prompt in enumerate(PROMPTS[:2]):
        eng.add_request(f"ok-{i}", prompt, greedy)
    tokens: dict[str, list[int]] = {"ok-0": [], "ok-1": [], **{rid: [] for rid in poisoned}}
    errors: dict[str, str] = {}
    while eng.has_unfinished_requests():
        for update in eng.step():
            if update.error is not None:
                assert update.finish_reason is FinishReason.ABORT and not update.new_token_ids
                errors[update.request_id] = update.error
            else:
                tokens[update.request_id].extend(update.new_token_ids)
    # both samples of the poisoned request failed at their first sampling; the others never noticed
    assert len(poisoned) == 2 and set(errors) == set(poisoned)
    assert all(e == "sampling failed: RuntimeError: injected sampling fault" for e in errors.values())
    assert all(not tokens[rid] for rid in poisoned)
    assert [tokens["ok-0"], tokens["ok-1"]] == alone
    assert eng.stats().kv_cache_usage == 0.0  # their blocks are free
    assert eng.generate([PROMPTS[3]], greedy) == engine(tiny.path).generate([PROMPTS[3]], greedy)
    assert eng.step() == [] and eng.runner.num_requests == 0  # finished ones are dropped at a next step
