"""A governed server (auth on, real SQLite) over a tiny repository, and an admin client for its admin API.

The repository holds models of two name families so two tenants can be given disjoint access:
`alpha-llm` (a tiny random Llama with a word-level tokenizer), `alpha-id` (ONNX identity, FP32 [-1, 4]),
`alpha-embed` (a tiny random BERT embedding model) and `beta-mlp` (ONNX MLP 4 -> 8 -> 2).

Every raw API key any test obtains goes through `Admin.create_key`, which remembers it; the secrets test scans
the database files and every log record of the package for them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import transformers
from onnx import TensorProto
from prometheus_client.parser import text_string_to_metric_families

from inferd import onnx_models
from inferd.config import ServerConfig
from tests.conftest import RunningServer, start_server
from tests.embeddings.tiny import build_tiny_model as build_tiny_bert
from tests.engine_torch.models import build_tiny_model
from tests.openai.conftest import SPECIALS, WORDS, build_tokenizer

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

LLM = "alpha-llm"
IDENTITY = "alpha-id"
EMBED = "alpha-embed"
MLP = "beta-mlp"
PROMPT = "ka lo mi nu"
MESSAGES = [{"role": "user", "content": PROMPT}]
CHAT_PROMPT_TOKENS = 7
"""`<s><|user|> ka lo mi nu <|assistant|>`: the chat template's tokens for MESSAGES."""
COMPLETION_PROMPT_TOKENS = 5
"""`<s> ka lo mi nu` for PROMPT as a completion."""


def build_governance_repository(root: Path) -> Path:
    llm = root / LLM / "1"
    llm.mkdir(parents=True)
    (root / LLM / "config.yaml").write_text(
        "runtime: llm\nmax_model_len: 128\nmax_num_seqs: 16\nkv_cache_memory: 4000000\n"
    )
    build_tiny_model(llm, "llama", vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=1, eos_token_id=2)
    build_tokenizer(llm)
    onnx_models.identity(root / IDENTITY / "1" / "model.onnx", TensorProto.FLOAT, ["batch", 4])
    (root / IDENTITY / "config.yaml").write_text(
        "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_ms: 1\n"
    )
    onnx_models.mlp(root / MLP / "1" / "model.onnx", [4, 8, 2])
    build_tiny_bert(root / EMBED / "1", {"pooling_mode_mean_tokens": True}, normalize=True)
    (root / EMBED / "config.yaml").write_text("runtime: embedding\nmax_batch_size: 8\n")
    return root


class LogCapture(logging.Handler):
    """Every log record of the process, formatted (with tracebacks), for the secrets scan."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Admin:
    """The admin API through the bootstrap admin key."""

    base: str
    key: str
    created_keys: list[str] = field(default_factory=list)
    """Every raw key handed out in this package (also registered by other helpers)."""

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base, headers=bearer(self.key), timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, "/admin/v1" + path, **kwargs)
        assert r.status_code in (200, 204), (method, path, r.status_code, r.text)
        return r.json() if r.status_code == 200 else None

    def tenant(self, prefix: str, **spec: Any) -> str:
        """A new tenant with a unique name."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.call("PUT", f"/tenants/{name}", json=spec)
        return name

    def create_key(self, tenant: str, **spec: Any) -> tuple[str, str]:
        """(key id, raw key) of a new key."""
        doc = self.call("POST", "/keys", json={"tenant": tenant, **spec})
        self.created_keys.append(doc["key"])
        return doc["key_id"], doc["key"]

    def budget(self, tenant: str, **spec: Any) -> None:
        self.call("PUT", "/budgets", json={"tenant": tenant, **spec})

    def budgets(self, tenant: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/budgets", params={"tenant": tenant})
        return result

    def usage(self, tenant: str, by: str = "model") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/usage", params={"tenant": tenant, "by": by})
        return result

    def audit(self, tenant: str, action: str | None = None) -> list[dict[str, Any]]:
        params = {"tenant": tenant, **({"action": action} if action else {})}
        result: list[dict[str, Any]] = self.call("GET", "/audit", params=params)
        return result


def metric(governed: Governed, sample: str, **labels: str) -> float | None:
    """One sample of the server's `/metrics` (None when absent); metrics need the admin key."""
    text = governed.admin.http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Governed:
    server: RunningServer
    admin: Admin
    state_dir: Path
    logs: LogCapture

    @property
    def base(self) -> str:
        return f"http://{self.server.http_url}"

    @property
    def openai_base(self) -> str:
        return f"{self.base}/v1"


@pytest.fixture(scope="package")
def log_capture() -> Iterator[LogCapture]:
    handler = LogCapture()
    root = logging.getLogger()
    inferd_logger = logging.getLogger("inferd")
    level = inferd_logger.level
    root.addHandler(handler)
    inferd_logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        inferd_logger.setLevel(level)


@pytest.fixture(scope="package")
def governance_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_governance_repository(tmp_path_factory.mktemp("gov-repo"))


@pytest.fixture(scope="package")
def governed(
    governance_repo: Path, tmp_path_factory: pytest.TempPathFactory, log_capture: LogCapture
) -> Iterator[Governed]:
    state = tmp_path_factory.mktemp("gov-state")
    config = ServerConfig(
        model_repository=str(governance_repo),
        http_port=0,
        grpc_port=0,
        state_dir=str(state),
        max_request_bytes=1 << 20,
    )
    assert config.auth, "auth is on by default"
    for running in start_server(config):
        key = running.server.admin_key
        assert key is not None and (state / "admin.key").read_text().strip() == key
        admin = Admin(f"http://{running.http_url}", key)
        yield Governed(running, admin, state, log_capture)
        admin.http.close()
