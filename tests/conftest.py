"""Shared fixtures: a real inferd server on loopback ports, in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from inferd import native
from inferd.config import ServerConfig
from inferd.repository.manager import RuntimeLoader
from inferd.server.app import InferdServer
from tests.models import build_repository

T = TypeVar("T")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test old code: a compiled module older than its source is what Python would import."""
    if stale := native.stale():
        pytest.exit(f"compiled modules older than their sources: {stale}; run `make native`", returncode=3)


def eventually(check: Callable[[], T], deadline_s: float = 20.0) -> T:
    """Poll `check` until it returns without an AssertionError (state the server reaches without the client
    waiting for it: audit entries committed with the next group, cancelled work, freed slots)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > end:
                raise
        time.sleep(0.01)


@dataclass
class RunningServer:
    server: InferdServer
    loop: asyncio.AbstractEventLoop

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


def start_server(
    config: ServerConfig, loaders: dict[str, RuntimeLoader] | None = None
) -> Iterator[RunningServer]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            server = InferdServer(config, loaders)
            try:
                await server.start()
            except BaseException as exc:  # surface start failures to the test
                holder["error"] = exc
                ready.set()
                return
            holder["server"] = server
            holder["stop"] = asyncio.Event()
            ready.set()
            await holder["stop"].wait()  # type: ignore[attr-defined]
            await server.stop()

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(120)
    if "error" in holder:
        raise holder["error"]  # type: ignore[misc]
    running = RunningServer(holder["server"], loop)  # type: ignore[arg-type]
    try:
        yield running
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)  # type: ignore[attr-defined]
        thread.join(60)


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One shared server over the test repository (tests must not load or unload its models)."""
    config = ServerConfig(
        auth=False,
        model_repository=str(model_repo),
        http_port=0,
        grpc_port=0,
        state_dir=str(tmp_path_factory.mktemp("state")),
        max_request_bytes=1 << 20,
    )
    yield from start_server(config)
