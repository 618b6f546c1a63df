"""One governed server (auth on, real SQLite) for the fuzz tests, over a small demo-like repository.

The repository: identity models (FP32, INT64, BYTES), `add_sub` (two inputs), `versioned` (two versions), a
`spare` model the schema names as the target of load/unload (so the fuzzer never unloads what other operations
use), a tiny random Llama (short context, so any generation ends quickly) and a tiny random BERT embedding
model. Two principals call it: the bootstrap admin key and a user key of the tenant `fuzz-users`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
import transformers
from onnx import TensorProto

from inferd import onnx_models
from inferd.config import ServerConfig
from inferd.server import openapi
from tests.conftest import RunningServer, start_server
from tests.embeddings.tiny import build_tiny_model as build_tiny_bert
from tests.engine_torch.models import build_tiny_model
from tests.openai.conftest import SPECIALS, WORDS, build_tokenizer

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

LLM = "tiny-llama"
EMBED = "tiny-embed"
USER_TENANT = "fuzz-users"
SPARE_TENANT = openapi.TENANT
"""A tenant the admin fuzzing may change freely (the schema's admin examples name it)."""
LIMIT = 1 << 20
"""The server's max_request_bytes."""
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
"""Multiplies every fuzz test's example count (`FUZZ_SCALE=20` for a long local run)."""


def examples(n: int) -> int:
    """`n` examples, scaled by FUZZ_SCALE."""
    return max(1, round(n * SCALE))


BATCHED = "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_ms: 1\n"


def build_fuzz_repository(root: Path) -> Path:
    for name, elem in (
        ("identity_fp32", TensorProto.FLOAT),
        ("identity_int64", TensorProto.INT64),
        ("identity_bytes", TensorProto.STRING),
        ("spare", TensorProto.FLOAT),
    ):
        onnx_models.identity(root / name / "1" / "model.onnx", elem, ["batch", 4])
        (root / name / "config.yaml").write_text(BATCHED)
    onnx_models.add_sub(root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.yaml").write_text(BATCHED)
    onnx_models.mlp(root / "versioned" / "1" / "model.onnx", [4, 8, 2], seed=1)
    onnx_models.mlp(root / "versioned" / "2" / "model.onnx", [4, 8, 2], seed=2)
    (root / "versioned" / "config.yaml").write_text("version_policy:\n  all: true\n")
    llm = root / LLM / "1"
    llm.mkdir(parents=True)
    (root / LLM / "config.yaml").write_text(
        "runtime: llm\nmax_model_len: 48\nmax_num_seqs: 8\nkv_cache_memory: 2000000\n"
    )
    build_tiny_model(llm, "llama", vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=1, eos_token_id=2)
    build_tokenizer(llm)
    build_tiny_bert(root / EMBED / "1", {"pooling_mode_mean_tokens": True}, normalize=True)
    (root / EMBED / "config.yaml").write_text("runtime: embedding\nmax_batch_size: 8\n")
    return root


@dataclass
class FuzzServer:
    running: RunningServer
    admin_key: str
    user_key: str

    @property
    def base(self) -> str:
        return f"http://{self.running.http_url}"

    @property
    def grpc_url(self) -> str:
        return self.running.grpc_url

    def headers(self, who: str) -> dict[str, str]:
        """Auth headers of `admin` (a bearer token), `user` (`x-api-key`: both forms are accepted) or
        `nobody` (a well-formed key the server never issued)."""
        if who == "admin":
            return {"authorization": f"Bearer {self.admin_key}"}
        if who == "user":
            return {"x-api-key": self.user_key}
        return {"authorization": "Bearer ik_0123456789ab_NotAKeyTheServerIssued"}


@pytest.fixture(scope="package")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    repo = build_fuzz_repository(tmp_path_factory.mktemp("fuzz-repo"))
    config = ServerConfig(
        model_repository=str(repo),
        http_port=0,
        grpc_port=0,
        state_dir=str(tmp_path_factory.mktemp("fuzz-state")),
        max_request_bytes=LIMIT,
    )
    for running in start_server(config):
        admin_key = running.server.admin_key
        assert admin_key is not None
        with httpx.Client(
            base_url=f"http://{running.http_url}/admin/v1",
            headers={"authorization": f"Bearer {admin_key}"},
            timeout=30,
        ) as admin:
            for tenant in (USER_TENANT, SPARE_TENANT):
                assert admin.put(f"/tenants/{tenant}", json={}).status_code == 200
            created = admin.post("/keys", json={"tenant": USER_TENANT, "name": "fuzz user"})
            assert created.status_code == 200, created.text
        yield FuzzServer(running, admin_key, created.json()["key"])
