"""Loading model folders: what the loader accepts and what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from inferd.engine.model.loader import load_model
from inferd.errors import ModelLoadError
from tests.engine_torch.models import build_tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2", tie_word_embeddings=True).path


def rewrite(src: Path, dst: Path, edit: dict[str, torch.Tensor | None]) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    for name, value in edit.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_loads_fused_projections_and_tied_head(folder: Path) -> None:
    model = load_model(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    qkv_bias = model.get_parameter("layers.0.self_attn.qkv_proj.bias")
    expected = torch.cat([tensors[f"model.layers.0.self_attn.{p}_proj.bias"] for p in "qkv"])
    assert torch.equal(qkv_bias, expected)
    assert model.lm_head is None


def test_a_stored_tied_head_is_accepted(folder: Path, tmp_path: Path) -> None:
    embed = load_file(str(folder / "model.safetensors"))["model.embed_tokens.weight"]
    load_model(rewrite(folder, tmp_path / "m", {"lm_head.weight": embed}))


def test_missing_weight(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(rewrite(folder, tmp_path / "m", {"model.layers.1.self_attn.v_proj.bias": None}))


def test_unexpected_weight(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unexpected"):
        load_model(rewrite(folder, tmp_path / "m", {"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}))


def test_wrong_shape(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="shape"):
        load_model(rewrite(folder, tmp_path / "m", {"model.norm.weight": torch.zeros(3)}))


def test_no_weights(tmp_path: Path, folder: Path) -> None:
    tmp_path.joinpath("config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(tmp_path)


def test_model_config_parses_without_torch() -> None:
    code = "import sys, inferd.engine.model.config; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
