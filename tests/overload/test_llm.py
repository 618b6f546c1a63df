"""The LLM path under overload and faults, on a tiny random Llama: per-model concurrency caps, deadlines
until the first token, non-streaming clients that disconnect, and a crash of the engine loop."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from inferd.config import ServerConfig
from inferd.engine import (
    EngineRequest,
    FinishReason,
    RequestUpdate,
    SamplingParams,
    Scheduler,
    SchedulerStats,
)
from inferd.engine.async_engine import AsyncLLMEngine
from inferd.errors import DeadlineExceeded
from inferd.generation import GenerateRequest
from inferd.metrics.registry import Metrics
from inferd.qos import Deadline
from inferd.repository.llm_version import LLMVersion
from tests.conftest import RunningServer, eventually, start_server
from tests.engine.helpers import make_scheduler
from tests.engine.test_detokenizer import tokenizer
from tests.engine_torch.models import build_tiny_model
from tests.openai.conftest import SPECIALS, WORDS, build_tokenizer

LONG = {"prompt": "ka lo mi nu", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}
"""A generation that runs for seconds on the tiny model."""


@pytest.fixture(scope="module")
def llm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm-overload")
    first = root / "llm" / "1"
    first.mkdir(parents=True)
    vocab = len(SPECIALS) + len(WORDS)
    build_tiny_model(
        first, "llama", vocab_size=vocab, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096
    )
    build_tokenizer(first)
    common = "runtime: llm\nmax_model_len: 4096\nkv_cache_memory: 8000000\n"
    (root / "llm" / "config.yaml").write_text(common + "max_num_seqs: 1\n")
    for name, extra in (
        ("capped", "max_concurrent_requests: 1\n"),
        ("crashy", "on_failure: stay_down\n"),
        ("hangy", "on_failure: stay_down\nexecution_timeout_s: 0.3\n"),
    ):
        shutil.copytree(first, root / name / "1")
        (root / name / "config.yaml").write_text(common + "max_num_seqs: 4\n" + extra)
    return root


@pytest.fixture(scope="module")
def served(llm_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module (each test leaves its models serving, as it found them)."""
    state = tmp_path_factory.mktemp("llm-state")
    config = ServerConfig(
        auth=False, model_repository=str(llm_repo), http_port=0, grpc_port=0, state_dir=str(state)
    )
    yield from start_server(config)


def open_streams(running: RunningServer, model: str) -> int:
    return running.server.manager.get_llm(model).engine.num_open_streams


def test_concurrency_cap_refuses_at_once_with_retry_after(served: RunningServer) -> None:
    base = f"http://{served.http_url}/v1"
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST", f"{base}/completions", json={"model": "capped", **LONG, "stream": True}
        ) as long,
    ):
        assert long.status_code == 200
        refused = client.post(
            f"{base}/completions", json={"model": "capped", "prompt": "ka", "max_tokens": 2}
        )
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_exceeded"
        assert "model 'capped' has 1 requests in flight, its max_concurrent_requests" in error["message"]
        # Other models are not capped by this one.
        assert client.post(
            f"{base}/completions", json={"model": "crashy", "prompt": "ka", "max_tokens": 2}
        ).is_success
    # The stream's end (its client left) gives the slot back.
    eventually(lambda: _dataplane_idle(served))
    with httpx.Client(timeout=60) as client:
        ok = client.post(f"{base}/completions", json={"model": "capped", "prompt": "ka", "max_tokens": 2})
        assert ok.status_code == 200


def test_deadline_passes_while_waiting_for_the_first_token(served: RunningServer) -> None:
    base = f"http://{served.http_url}/v1"
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{base}/completions", json={"model": "llm", **LONG, "stream": True}) as long,
    ):
        assert long.status_code == 200
        # max_num_seqs 1: the next request waits behind the long one, and its client gives up first.
        late = client.post(
            f"{base}/completions",
            json={"model": "llm", "prompt": "ka", "max_tokens": 2},
            headers={"x-inferd-timeout-ms": "150"},
        )
        assert late.status_code == 504
        error = late.json()["error"]
        assert error["type"] == "timeout"
        assert "deadline" in error["message"]
        bad = client.post(
            f"{base}/completions",
            json={"model": "llm", "prompt": "ka", "max_tokens": 2},
            headers={"x-inferd-timeout-ms": "soon"},
        )
        assert bad.status_code == 400 and "x-inferd-timeout-ms" in bad.json()["error"]["message"]
    eventually(lambda: _no_open_streams(served, "llm"))


def test_a_non_streaming_client_that_disconnects_aborts_its_generation(served: RunningServer) -> None:
    body = orjson.dumps({"model": "capped", **LONG})
    request = (
        f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", served.server.http_port)) as sock:
        sock.sendall(request)
        eventually(lambda: _open_streams_are(served, "capped", 1))
    # The socket is closed: the generation is aborted and the model's slot is free again.
    eventually(lambda: _no_open_streams(served, "capped"))
    eventually(lambda: _dataplane_idle(served))
    engine = served.server.manager.get_llm("capped").engine.engine
    eventually(lambda: _finished(engine.has_unfinished_requests()))
    ok = httpx.post(
        f"http://{served.http_url}/v1/completions", json={"model": "capped", "prompt": "ka", "max_tokens": 2}
    )
    assert ok.status_code == 200


def test_a_crash_of_the_engine_loop_is_reported(served: RunningServer) -> None:
    base = f"http://{served.http_url}"
    core = served.server.manager.get_llm("crashy").engine.engine

    def crash() -> list[RequestUpdate]:
        raise RuntimeError("injected fault")

    core.step = crash  # type: ignore[method-assign]
    r = httpx.post(f"{base}/v1/completions", json={"model": "crashy", "prompt": "ka", "max_tokens": 2})
    assert r.status_code == 500 and "RuntimeError: injected fault" in r.json()["error"]["message"]
    entries = {e.name: e for e in served.server.manager.index()}
    assert entries["crashy"].state == "UNAVAILABLE"
    assert "RuntimeError: injected fault" in entries["crashy"].reason
    after = httpx.post(f"{base}/v1/completions", json={"model": "crashy", "prompt": "ka", "max_tokens": 2})
    assert after.status_code == 503 and after.json()["error"]["type"] == "service_unavailable"
    # Other models keep serving; an explicit load brings the model back.
    assert httpx.post(
        f"{base}/v1/completions", json={"model": "capped", "prompt": "ka", "max_tokens": 2}
    ).is_success
    assert httpx.post(f"{base}/v2/repository/models/crashy/load", timeout=60).status_code == 200
    again = httpx.post(f"{base}/v1/completions", json={"model": "crashy", "prompt": "ka", "max_tokens": 2})
    assert again.status_code == 200


def test_a_hung_engine_step_fails_its_requests_and_is_reported(served: RunningServer) -> None:
    base = f"http://{served.http_url}"
    core = served.server.manager.get_llm("hangy").engine.engine
    unblock = threading.Event()
    step = core.step

    def hang() -> list[RequestUpdate]:
        unblock.wait(60)
        return step()

    core.step = hang  # type: ignore[method-assign]
    try:
        r = httpx.post(
            f"{base}/v1/completions", json={"model": "hangy", "prompt": "ka", "max_tokens": 2}, timeout=60
        )
        assert r.status_code == 500
        assert "an engine step ran past execution_timeout_s (0.3 s)" in r.json()["error"]["message"]
        entries = {e.name: e for e in served.server.manager.index()}
        assert entries["hangy"].state == "UNAVAILABLE" and "execution_timeout_s" in entries["hangy"].reason
        assert httpx.post(
            f"{base}/v1/completions", json={"model": "capped", "prompt": "ka", "max_tokens": 2}
        ).is_success
    finally:
        unblock.set()
    assert httpx.post(f"{base}/v2/repository/models/hangy/load", timeout=60).status_code == 200
    ok = httpx.post(
        f"{base}/v1/completions", json={"model": "hangy", "prompt": "ka", "max_tokens": 2}, timeout=60
    )
    assert ok.status_code == 200


def _open_streams_are(running: RunningServer, model: str, n: int) -> None:
    assert open_streams(running, model) == n


def _no_open_streams(running: RunningServer, model: str) -> None:
    assert open_streams(running, model) == 0


def _dataplane_idle(running: RunningServer) -> None:
    assert running.server.dataplane.in_flight == 0


def _finished(unfinished: bool) -> None:
    assert not unfinished


# -- the deadline inside LLMVersion, over an engine that never produces a token ---------------------------


@dataclass
class SilentEngine:
    """A real scheduler that is never asked to schedule: requests are accepted and wait for ever (a
    saturated engine)."""

    scheduler: Scheduler = field(default_factory=make_scheduler)

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[str]:
        request = EngineRequest(request_id, tuple(prompt_token_ids), sampling_params, priority=priority)
        return [s.request_id for s in self.scheduler.add_request(request)]

    def abort_requests(self, request_ids: Sequence[str]) -> None:
        self.scheduler.finish_requests(request_ids, FinishReason.ABORT)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[RequestUpdate]:
        time.sleep(0.001)
        return []

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()


async def test_llm_version_drops_requests_at_their_deadline() -> None:
    core = SilentEngine()
    version = LLMVersion("silent", "1", "0" * 64, tokenizer(), None, 64, Metrics())
    version.attach(AsyncLLMEngine(core, tokenizer()))  # type: ignore[arg-type]
    try:
        params = SamplingParams(max_tokens=4)
        expired = GenerateRequest("silent", params, prompt=[3, 4], deadline=Deadline.after(0.5, now=0.0))
        with pytest.raises(DeadlineExceeded, match="before queueing for model 'silent'"):
            await version.generate(expired)
        assert not core.has_unfinished_requests(), "an expired request never reaches the engine"

        waiting = GenerateRequest("silent", params, prompt=[3, 4], deadline=Deadline.after(0.05))
        stream = await version.generate(waiting)
        with pytest.raises(
            DeadlineExceeded, match=r"waiting for the first token for model 'silent' \(waited"
        ):
            async for _ in stream:
                pass
        for _ in range(400):  # the abort reaches the engine between its steps
            if not core.has_unfinished_requests():
                break
            await asyncio.sleep(0.005)
        assert not core.has_unfinished_requests()
    finally:
        await version.close()
