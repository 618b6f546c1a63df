"""Pooling, normalisation and truncation on tiny random BERTs, against transformers' BertModel by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from inferd.errors import ModelLoadError
from inferd.runtimes.embedding import EmbeddingRuntime
from tests.embeddings.tiny import build_tiny_model

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "", "café tests!", "xyzzy " * 40]


def _hand(folder: Path, texts: list[str], modes: list[str], normalize: bool) -> np.ndarray:
    runtime = EmbeddingRuntime.from_folder(folder)
    tok = runtime._tokenizer  # the same tokenizer settings (truncation, padding) as the runtime
    enc = tok.encode_batch([t.strip() for t in texts])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    model = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy().astype(np.float64)
    m = mask.numpy()[:, :, None].astype(np.float64)
    parts = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(hidden[:, 0])
        elif mode == "max_tokens":
            parts.append(np.where(m > 0, hidden, -np.inf).max(axis=1))
        elif mode == "mean_tokens":
            parts.append((hidden * m).sum(1) / m.sum(1))
        else:
            parts.append((hidden * m).sum(1) / np.sqrt(m.sum(1)))
    out = np.concatenate(parts, axis=1)
    if normalize:
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize(
    ("modes", "normalize"),
    [
        (["mean_tokens"], True),
        (["cls_token"], False),
        (["max_tokens"], False),
        (["mean_sqrt_len_tokens"], True),
        (["cls_token", "mean_tokens"], False),
    ],
)
def test_pooling_modes_match_hand_computation(tmp_path: Path, modes: list[str], normalize: bool) -> None:
    folder = build_tiny_model(tmp_path / "m", {f"pooling_mode_{m}": True for m in modes}, normalize)
    runtime = EmbeddingRuntime.from_folder(folder)
    assert runtime.pipeline.pooling_modes == tuple(modes)
    assert runtime.pipeline.normalize is normalize
    ours = runtime.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 32 * len(modes))
    np.testing.assert_allclose(ours, _hand(folder, TEXTS, modes, normalize), atol=1e-5, rtol=1e-5)


def test_truncation_to_max_seq_length(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m", {"pooling_mode_mean_tokens": True}, False, max_seq_length=8)
    runtime = EmbeddingRuntime.from_folder(folder)
    assert runtime.pipeline.max_seq_length == 8
    assert len(runtime._tokenizer.encode("hello world " * 20).ids) == 8
    long_a, long_b = "hello world " * 20, "hello world " * 3 + "fox " * 30
    a, b = runtime.embed([long_a, long_b])
    np.testing.assert_allclose(a, b, atol=1e-6)  # the same first 6 word pieces
    np.testing.assert_allclose(a, _hand(folder, [long_a], ["mean_tokens"], False)[0], atol=1e-5)


def test_newer_pooling_mode_key(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m", {}, False)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    assert EmbeddingRuntime.from_folder(folder).pipeline.pooling_modes == ("cls_token",)


def test_refuses_pickle_without_opt_in(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m", {"pooling_mode_mean_tokens": True}, False)
    model = transformers.BertModel.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        EmbeddingRuntime.from_folder(folder)
    opted_in = EmbeddingRuntime.from_folder(folder, allow_pickle=True)
    assert opted_in.embed(["hello"]).shape == (1, 32)


def test_refuses_unsupported_modules(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m", {"pooling_mode_mean_tokens": True}, False)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense"):
        EmbeddingRuntime.from_folder(folder)
    (folder / "modules.json").write_text(json.dumps(modules[:2]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ModelLoadError, match="weightedmean"):
        EmbeddingRuntime.from_folder(folder)
