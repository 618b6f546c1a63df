"""Greedy decoding of inferd's engine equals transformers' `generate`, token for token, for every supported
architecture and every way the scheduler can split the work (batching, prefix caching, chunked prefill,
preemption)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from inferd.engine import CacheConfig, EngineConfig, SamplingParams, SchedulerConfig
from inferd.engine.llm_engine import LLMEngine
from tests.engine_torch.models import ARCHITECTURES, VOCAB, TinyModel, build_tiny_model

MAX_NEW = 10
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)


def make_prompts(count: int = 16, seed: int = 1) -> list[list[int]]:
    """Lengths 1..50; half share a 37-token prefix (prefix caching has something to find)."""
    rng = random.Random(seed)
    prefix = [rng.randrange(VOCAB) for _ in range(37)]
    prompts = []
    for i in range(count):
        tail = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 13))]
        prompts.append(prefix + tail if i % 2 else tail + [rng.randrange(VOCAB) for _ in range(i * 2)])
    return prompts


PROMPTS = make_prompts()


def engine(
    path: Path,
    *,
    prefix_caching: bool = True,
    budget: int = 512,
    max_num_seqs: int = 16,
    block_size: int = 16,
    num_blocks: int = 64,
    dtype: str | None = None,
) -> LLMEngine:
    config = EngineConfig(
        SchedulerConfig(max_model_len=128, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget),
        CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix_caching),
    )
    return LLMEngine.load(path, config, dtype=dtype)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TinyModel, list[list[int]]]:
    model = build_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    return model, [model.greedy(p, MAX_NEW) for p in PROMPTS]


def test_each_prompt_alone(tiny: tuple[TinyModel, list[list[int]]]) -> None:
    model, expected = tiny
    eng = engine(model.path, prefix_caching=False)
    assert [eng.generate([p], GREEDY)[0] for p in PROMPTS] == expected


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_sixteen_at_once(tiny: tuple[TinyModel, list[list[int]]], prefix_caching: bool) -> None:
    model, expected = tiny
    eng = engine(model.path, prefix_caching=prefix_caching)
    assert eng.generate(PROMPTS, GREEDY) == expected
    # Again: with prefix caching on, the shared prefixes now come from the cache.
    assert eng.generate(PROMPTS, GREEDY) == expected
    stats = eng.stats()
    assert (stats.prefix_cache_hits > 0) == prefix_caching


def test_chunked_prefill(tiny: tuple[TinyModel, list[list[int]]]) -> None:
    model, expected = tiny
    eng = engine(model.path, budget=7, max_num_seqs=4, block_size=4, num_blocks=128)
    assert eng.generate(PROMPTS, GREEDY) == expected


def test_preemption(tiny: tuple[TinyModel, list[list[int]]]) -> None:
    model, expected = tiny
    eng = engine(model.path, block_size=4, num_blocks=16)  # 64 tokens for 16 requests of up to 60
    assert eng.generate(PROMPTS, GREEDY) == expected
    assert eng.stats().num_preemptions > 0


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("llama", {"tie_word_embeddings": True}),
        ("qwen2", {"tie_word_embeddings": True}),
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
                "rope_theta": 500000.0,
            },
        ),
        ("mistral", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
        ("llama", {"attention_bias": True, "mlp_bias": True}),
        ("qwen3", {"attention_bias": True, "num_key_value_heads": 4}),
        ("llama", {"eos_token_id": 7}),
    ],
    ids=["llama-tied", "qwen2-tied", "llama3-rope", "linear-rope", "llama-biases", "qwen3-mha-bias", "eos"],
)
def test_variants(tmp_path: Path, arch: str, overrides: dict[str, Any]) -> None:
    model = build_tiny_model(tmp_path, arch, seed=3, **overrides)
    prompts = PROMPTS[:6]
    expected = [model.greedy(p, MAX_NEW) for p in prompts]
    eng = engine(model.path, block_size=4, budget=24, max_num_seqs=6)
    assert eng.generate(prompts, GREEDY) == expected


def test_eos_stops_generation(tmp_path: Path) -> None:
    """A prompt whose continuation reaches EOS stops there, like transformers."""
    probe = build_tiny_model(tmp_path / "probe", "llama", seed=5)
    first = [probe.greedy(p, 3) for p in PROMPTS[:8]]
    eos = first[0][1]  # the second greedy token of prompt 0 becomes EOS
    model = build_tiny_model(tmp_path / "eos", "llama", seed=5, eos_token_id=eos)
    expected = [model.greedy(p, MAX_NEW) for p in PROMPTS[:8]]
    assert len(expected[0]) == 2
    assert engine(model.path).generate(PROMPTS[:8], GREEDY) == expected


def test_sharded_checkpoint(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path, "qwen3", seed=4, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    expected = [model.greedy(p, MAX_NEW) for p in PROMPTS[:4]]
    assert engine(model.path).generate(PROMPTS[:4], GREEDY) == expected


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bfloat16(tmp_path: Path, arch: str) -> None:
    """bf16 weights and activations, against transformers in bf16."""
    model = build_tiny_model(tmp_path, arch, seed=6, dtype=torch.bfloat16)
    prompts = PROMPTS[:8]
    expected = [model.greedy(p, MAX_NEW) for p in prompts]
    eng = engine(model.path)
    assert eng.runner.dtype == torch.bfloat16
    assert [eng.generate([p], GREEDY)[0] for p in prompts] == expected
    assert eng.generate(prompts, GREEDY) == expected
