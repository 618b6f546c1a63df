"""The real all-MiniLM-L6-v2 through EmbeddingRuntime against sentence-transformers (the oracle)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from inferd import datatypes
from inferd.embedding_models import minilm_l6_v2_path
from inferd.metrics.registry import Metrics
from inferd.repository.model_config import DynamicBatchingConfig, ModelConfig
from inferd.repository.model_version import ModelVersion
from inferd.runtimes.embedding import EmbeddingRuntime
from inferd.tensors import InferRequest, Tensor

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "   leading and trailing whitespace   ",
    "Ünïcödé: café, naïve, 日本語のテキスト, emoji 🙂🚀, Ελληνικά, русский",
    "A sentence about machine learning models serving embeddings over HTTP.",
    "short",
    "long " * 400,  # far beyond max_seq_length (256 tokens): truncated
    " ".join(f"token{i}" for i in range(300)),
    "Numbers 3.14159 and symbols #@$%^&*() [brackets] {braces}",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    return minilm_l6_v2_path()


@pytest.fixture(scope="module")
def runtime(folder: Path) -> Iterator[EmbeddingRuntime]:
    rt = EmbeddingRuntime.from_folder(folder)
    yield rt
    rt.unload()


@pytest.fixture(scope="module")
def oracle(folder: Path, runtime: EmbeddingRuntime) -> np.ndarray:
    model = SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == runtime.pipeline.max_seq_length == 256
    out: np.ndarray = model.encode(TEXTS, normalize_embeddings=runtime.pipeline.normalize, batch_size=4)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos: np.ndarray = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return cos


def test_pipeline_read_from_folder(runtime: EmbeddingRuntime) -> None:
    assert runtime.pipeline.pooling_modes == ("mean_tokens",)
    assert runtime.pipeline.normalize
    assert runtime.dim == 384


def test_matches_sentence_transformers(runtime: EmbeddingRuntime, oracle: np.ndarray) -> None:
    ours = runtime.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    assert ours.dtype == np.float32
    cos = _cosines(ours, oracle)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_truncation_keeps_the_prefix(runtime: EmbeddingRuntime) -> None:
    base = "long " * 400
    a, b = runtime.embed([base, base + " and a different ending"])
    assert _cosines(a[None], b[None])[0] > 0.99999


def test_batch_equals_single(runtime: EmbeddingRuntime) -> None:
    batch = runtime.embed(TEXTS)
    single = np.stack([runtime.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=2e-5)


def test_execute_signature(runtime: EmbeddingRuntime) -> None:
    sig = runtime.signature
    assert sig.max_batch_size == 64
    assert [(s.name, s.datatype.name, s.dims) for s in sig.inputs] == [("text", "BYTES", ())]
    assert [(s.name, s.datatype.name, s.dims) for s in sig.outputs] == [
        ("embedding", "FP32", (384,)),
        ("num_tokens", "INT64", (1,)),
    ]
    texts = np.array([t.encode() for t in TEXTS[:3]], dtype=np.object_)
    out = runtime.execute({"text": texts}, ["embedding"])
    np.testing.assert_allclose(out["embedding"], runtime.embed(TEXTS[:3]), atol=1e-6)
    assert set(out) == {"embedding"}, "only the requested outputs"
    counts = runtime.execute({"text": texts}, ["num_tokens"])["num_tokens"]
    assert counts.shape == (3, 1) and (counts >= 2).all()  # [CLS] and [SEP] at least


async def test_v2_infer_through_the_dynamic_batcher(folder: Path, oracle: np.ndarray) -> None:
    config = ModelConfig(max_batch_size=64, dynamic_batching=DynamicBatchingConfig(max_queue_delay_ms=20))
    runtime = EmbeddingRuntime.load(folder, config)
    version = ModelVersion("minilm", "1", "sha", config, runtime, Metrics())
    bytes_type = datatypes.BY_NAME["BYTES"]

    def request(i: int) -> InferRequest:
        data = np.array([TEXTS[i].encode()], dtype=np.object_)
        return InferRequest("minilm", None, [Tensor("text", bytes_type, data)])

    responses = await asyncio.gather(*(version.infer(request(i)) for i in range(len(TEXTS))))
    await version.close()
    got = np.concatenate([r.outputs[0].data for r in responses])
    assert got.shape == (len(TEXTS), 384)
    assert _cosines(got, oracle).min() >= 0.9999
