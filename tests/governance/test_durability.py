"""Durability of the usage ledger: `inferd serve` in a subprocess serves a stream of clients, is killed with
SIGKILL mid-run and restarted.

Every response a client fully received has its ledger row (with the tokens and cost the client was told),
and the restarted server rebuilds its budgets from the ledger: its budget status equals the ledger's sums.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import pytest

from inferd.store.records import MICROS
from inferd.store.sqlite import SqliteStore
from tests.governance.conftest import COMPLETION_PROMPT_TOKENS, IDENTITY, LLM, PROMPT, bearer

KILL_AFTER = 80
"""Responses received before the server is killed."""


@dataclass
class Served:
    """One `inferd serve` process."""

    proc: subprocess.Popen[str]
    stderr: IO[str]
    stderr_path: Path
    base: str
    admin_key: str | None
    stdout: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.stderr_path.read_text()


def serve(repo: Path, state: Path, stderr_path: Path) -> Served:
    stderr = stderr_path.open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(repo),
         "--state-dir", str(state), "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    admin_key = None
    while True:
        line = proc.stdout.readline()
        assert line, f"inferd exited ({proc.wait()}): {stderr_path.read_text()[-3000:]}"
        lines.append(line)
        if line.startswith("inferd: created the admin API key"):
            admin_key = proc.stdout.readline().strip()
            lines.append("  <admin key>\n")
        if line.startswith("inferd: listening http="):
            break
    ports = dict(part.split("=") for part in line.split()[2:])
    return Served(proc, stderr, stderr_path, f"http://127.0.0.1:{ports['http']}", admin_key, lines)


def stop(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.kill()
    served.proc.wait(30)
    assert served.proc.stdout is not None
    served.proc.stdout.close()
    served.stderr.close()


@dataclass
class Received:
    """What a client was told about one complete response."""

    request_id: str
    cost: float
    tokens: int | None
    """prompt + completion tokens (None for a tensor inference)."""


@dataclass
class Traffic:
    received: list[Received] = field(default_factory=list)
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    kinds: dict[str, int] = field(default_factory=dict)

    def got(self, kind: str, r: Received) -> None:
        self.received.append(r)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.received) >= KILL_AFTER and len(self.kinds) == 3:
            self.enough.set()


async def v2_worker(client: httpx.AsyncClient, traffic: Traffic) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    while True:
        r = await client.post(f"/v2/models/{IDENTITY}/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4]
        traffic.got("v2", Received(r.headers["x-request-id"], float(r.headers["x-inferd-cost"]), None))


async def completion_worker(client: httpx.AsyncClient, traffic: Traffic) -> None:
    body = {"model": LLM, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    while True:
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["cost"] == float(r.headers["x-inferd-cost"])
        traffic.got("completion", Received(r.headers["x-request-id"], usage["cost"], usage["total_tokens"]))


async def stream_worker(client: httpx.AsyncClient, traffic: Traffic) -> None:
    body = {"model": LLM, "prompt": PROMPT, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    while True:
        usage: dict[str, Any] | None = None
        done = False
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = orjson.loads(line.removeprefix("data: "))
                    usage = event.get("usage") or usage
        assert done and usage is not None  # only a complete stream counts as received
        traffic.got("stream", Received(request_id, usage["cost"], usage["total_tokens"]))


async def run_until_killed(served: Served, key: str) -> Traffic:
    traffic = Traffic()
    async with httpx.AsyncClient(base_url=served.base, headers=bearer(key), timeout=60) as client:
        workers = [v2_worker] * 6 + [completion_worker] * 3 + [stream_worker] * 3
        tasks = [asyncio.ensure_future(w(client, traffic)) for w in workers]
        done, _ = await asyncio.wait([*tasks, asyncio.ensure_future(traffic.enough.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        for task in done:
            if task in tasks:
                task.result()  # a worker failed before the kill: show why
        served.proc.send_signal(signal.SIGKILL)  # mid-run: every worker has a request in flight
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        assert isinstance(result, (httpx.TransportError, AssertionError)), result
    return traffic


@pytest.fixture
def repo(governance_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for model in (IDENTITY, LLM):
        shutil.copytree(governance_repo / model, repo / model)
    return repo


@pytest.fixture
def processes() -> Iterator[list[Served]]:
    started: list[Served] = []
    try:
        yield started
    finally:
        for served in started:
            stop(served)


async def test_ledger_survives_sigkill(repo: Path, tmp_path: Path, processes: list[Served]) -> None:
    state = tmp_path / "state"
    first = serve(repo, state, tmp_path / "first.log")
    processes.append(first)
    assert first.admin_key is not None
    admin = httpx.Client(base_url=first.base + "/admin/v1", headers=bearer(first.admin_key), timeout=30)
    tenant = "durable"
    assert admin.put(f"/tenants/{tenant}", json={}).status_code == 200
    created = admin.post("/keys", json={"tenant": tenant, "models": ["alpha*"]}).json()
    key = created["key"]
    for price in ({"model": IDENTITY, "per_inference": 0.001},
                  {"model": LLM, "prompt_per_1k": 0.5, "completion_per_1k": 1.25}):  # fmt: skip
        assert admin.put("/prices", json=price).status_code == 200
    budget = {"tenant": tenant, "period": "total", "max_tokens": 10**9, "max_cost": 10**6}
    assert admin.put("/budgets", json=budget).status_code == 200
    admin.close()

    traffic = await run_until_killed(first, key)
    assert first.proc.wait(30) == -signal.SIGKILL
    received = traffic.received
    assert len(received) >= KILL_AFTER

    # Before any restart: the dead server's files (its ledger journal, imported into the database by the
    # store as the CLI would, no server running) hold a row for every response a client received, with the
    # tokens and cost that client was told.
    store = SqliteStore(state)
    try:
        rows = {
            r.request_id: (r.total_tokens, r.cost_micros, r.status, r.model)
            for r in store.usage_rows(tenant, limit=1_000_000)
        }
    finally:
        store.close()
    missing = [r.request_id for r in received if r.request_id not in rows]
    assert not missing, f"{len(missing)} of {len(received)} received responses have no ledger row"
    for r in received:
        tokens, cost_micros, status, model = rows[r.request_id]
        assert status == "ok"
        assert cost_micros / MICROS == r.cost
        if r.tokens is None:
            assert (model, tokens) == (IDENTITY, 0)
        else:
            assert model == LLM and tokens == r.tokens
            assert tokens > COMPLETION_PROMPT_TOKENS

    # Restart on the same state dir: no new admin key, budgets rebuilt from the ledger.
    second = serve(repo, state, tmp_path / "second.log")
    processes.append(second)
    assert second.admin_key is None
    # One server per state dir: a second one on the same ledger refuses to start, saying why.
    other = subprocess.run(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(repo),
         "--state-dir", str(state), "--http-port", "0", "--grpc-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert other.returncode == 2 and "in use by another inferd process" in other.stderr, other.stderr
    admin_key = (state / "admin.key").read_text().strip()
    with httpx.Client(base_url=second.base, headers=bearer(admin_key), timeout=30) as client:
        (status,) = client.get("/admin/v1/budgets", params={"tenant": tenant}).json()
        conn = sqlite3.connect(state / "inferd.db")
        try:
            count, tokens, cost = conn.execute(
                "SELECT COUNT(*), SUM(prompt_tokens + completion_tokens), SUM(cost_micros) FROM usage "
                "WHERE tenant = ?",
                (tenant,),
            ).fetchone()
        finally:
            conn.close()
        assert count >= len(received)
        assert (status["used_requests"], status["used_tokens"], status["used_cost"]) == (
            count,
            tokens,
            cost / MICROS,
        )
        assert status["in_flight_tokens"] == 0
        # The key still works after the restart, and its request settles on top of the rebuilt sums.
        body = {"model": LLM, "prompt": PROMPT, "max_tokens": 2}
        r = client.post("/v1/completions", json=body, headers=bearer(key))
        assert r.status_code == 200
        (after,) = client.get("/admin/v1/budgets", params={"tenant": tenant}).json()
        assert after["used_requests"] == count + 1
        assert after["used_tokens"] == tokens + r.json()["usage"]["total_tokens"]
    # A graceful stop: the server waits for its importer child, so no process still holds the database (the
    # last connection to close removes the WAL's `-shm` file, which a SIGKILLed server's orphaned importer
    # would do while the files below are read).
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(30) == 0, second.log()
    stop(second)
    # Keys never reach the log or the database file.
    logs = first.log() + second.log()
    files = b"".join(
        p.read_bytes() for p in state.rglob("*") if p.is_file() and p.name != "admin.key"
    )  # the database, its WAL and the ledger journal
    for secret in (key, admin_key):
        assert secret not in logs
        assert secret.encode() not in files
    print(f"received {len(received)} ({traffic.kinds}) before SIGKILL; ledger rows {count}")
