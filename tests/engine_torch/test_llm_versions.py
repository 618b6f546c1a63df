"""Loading an LLM model's versions is all or nothing: a version that fails stops the ones already loaded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from inferd.demo_llm import build_random_llama
from inferd.errors import ModelLoadError
from inferd.metrics.registry import Metrics
from inferd.runtimes.llm import LLMModelConfig, load_llm_versions

CONFIG = LLMModelConfig(max_model_len=64, max_num_seqs=2, max_num_batched_tokens=64, kv_cache_memory=2**22)


def test_a_failed_version_stops_the_loaded_ones(tmp_path: Path) -> None:
    good = build_random_llama(tmp_path / "1", hidden=64, layers=1, heads=2, kv_heads=1)
    broken = build_random_llama(tmp_path / "2", hidden=64, layers=1, heads=2, kv_heads=1)
    (broken / "model.safetensors").unlink()
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_llm_versions("tiny", [("1", "sha1", good), ("2", "sha2", broken)], CONFIG, Metrics())
    assert {t.name for t in threading.enumerate()} == before  # the engine thread of version 1 is gone


def test_all_versions_load(tmp_path: Path) -> None:
    folders = [build_random_llama(tmp_path / v, hidden=64, layers=1, heads=2, kv_heads=1) for v in "12"]
    loaded = load_llm_versions("tiny", [("1", "a", folders[0]), ("2", "b", folders[1])], CONFIG, Metrics())
    try:
        assert sorted(loaded) == ["1", "2"]
    finally:
        for served in loaded.values():
            served.engine.close()
