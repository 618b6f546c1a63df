from __future__ import annotations

import pytest

from inferd.engine import (
    CacheConfig,
    EngineConfig,
    InsufficientKVCache,
    SamplingParams,
    SchedulerConfig,
    kv_bytes_per_block,
)
from inferd.errors import InvalidInput, ModelLoadError


def test_defaults() -> None:
    config = EngineConfig()
    assert config.cache.block_size == 16 and config.cache.enable_prefix_caching
    assert config.scheduler.prefill_token_budget == config.scheduler.max_num_batched_tokens


def test_kv_bytes_per_block() -> None:
    # Llama-3-8B: 32 layers, 8 KV heads of 128, bf16 → 128 KiB per token, 2 MiB per 16-token block.
    assert kv_bytes_per_block(num_layers=32, num_kv_heads=8, head_dim=128, dtype_bytes=2) == 2 * 1024 * 1024


def test_num_blocks_from_count_bytes_or_fraction() -> None:
    assert CacheConfig(num_blocks=7, memory_bytes=10**9).resolve_num_blocks(100) == 7
    assert CacheConfig(memory_bytes=1050).resolve_num_blocks(100) == 10
    assert CacheConfig(memory_fraction=0.5).resolve_num_blocks(100, free_memory_bytes=2000) == 10
    with pytest.raises(ValueError, match="free_memory_bytes"):
        CacheConfig().resolve_num_blocks(100)


def test_too_little_memory_is_a_load_error() -> None:
    with pytest.raises(InsufficientKVCache) as info:
        CacheConfig(memory_bytes=99).resolve_num_blocks(100)
    assert isinstance(info.value, ModelLoadError)
    assert "memory_bytes=99" in info.value.message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_num_seqs": 0},
        {"max_num_seqs": 8, "max_num_batched_tokens": 4},
        {"max_model_len": 1},
        {"long_prefill_token_threshold": -1},
        {"max_prefill_share": 0.0},
        {"max_prefill_share": 1.5},
        {"max_queue_wait_ms": 0.0},
        {"max_queue_wait_ms": -5.0},
        {"max_queue_wait_ms": float("inf")},
    ],
)
def test_invalid_scheduler_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"block_size": 0}, {"num_blocks": 0}, {"memory_bytes": 0}, {"memory_fraction": 0.0}]
)
def test_invalid_cache_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CacheConfig(**kwargs)  # type: ignore[arg-type]


def test_prefill_budget_never_zero() -> None:
    assert (
        SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=1, max_prefill_share=0.1).prefill_token_budget
        == 1
    )


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 0}, "n"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2, "min_tokens": 3}, "min_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
    ],
)
def test_invalid_sampling_params_name_the_parameter(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidInput, match=param):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_greedy() -> None:
    assert SamplingParams(temperature=0.0).greedy and not SamplingParams().greedy
