"""Shutdown. SIGTERM: readiness goes false at once, new requests are refused (503 / UNAVAILABLE), requests in
flight finish, the ledger is flushed, the process exits 0. Past the grace period what is left fails with a
clear error. SIGKILL: a restart finds tenants, keys, budgets and prices as they were."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import httpx
import pytest
from onnx import TensorProto
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd import onnx_models
from tests.overload.helpers import (
    HEALTHY,
    HEALTHY_BODY,
    Repo,
    Steered,
    eventually,
    serve,
    v2_body,
    wait_in_flight,
)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    proc: subprocess.Popen[str]
    stderr: IO[str]
    stderr_path: Path
    http: str
    grpc: str
    admin_key: str


def start(args: list[str], state: Path, log: Path) -> Process:
    stderr = log.open("a")
    proc = subprocess.Popen(
        [sys.executable, *args, "--state-dir", str(state), "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout is not None
    key_file = state / "admin.key"
    while True:
        line = proc.stdout.readline()
        assert line, f"inferd exited ({proc.wait()}): {log.read_text()[-3000:]}"
        if line.startswith("inferd: listening http="):
            break
    ports = dict(part.split("=") for part in line.split()[2:])
    return Process(
        proc,
        stderr,
        log,
        f"http://127.0.0.1:{ports['http']}",
        f"127.0.0.1:{ports['grpc']}",
        key_file.read_text().strip(),
    )


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for p in started:
            if p.proc.poll() is None:
                p.proc.kill()
            p.proc.wait(30)
            assert p.proc.stdout is not None
            p.proc.stdout.close()
            p.stderr.close()


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(
    tmp_path: Path, processes: list[Process]
) -> None:
    repo = tmp_path / "repo"
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "gated").touch()
    (repo / "slow" / "config.yaml").write_text("dynamic_batching: {}\n")
    onnx_models.identity(repo / HEALTHY / "1" / "model.onnx", TensorProto.FLOAT, ["batch", 4])
    control = repo / "slow" / "control"
    state = tmp_path / "state"
    (tmp_path / "inferd.yaml").write_text("shutdown_grace_s: 60\n")
    served = start(
        ["-m", "tests.overload.gated_serve", "serve", "--model-repository", str(repo),
         "--config", str(tmp_path / "inferd.yaml")],
        state,
        tmp_path / "serve.log",
    )  # fmt: skip
    processes.append(served)
    admin = {"authorization": f"Bearer {served.admin_key}"}
    url = f"{served.http}/v2/models/slow/infer"
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=60, headers=admin) as client:
        first = pool.submit(client.post, url, json=v2_body(1.0), headers={"x-request-id": "drain-1"})
        eventually(lambda: _exists(control / "started-1"))
        second = pool.submit(client.post, url, json=v2_body(2.0), headers={"x-request-id": "drain-2"})
        eventually(lambda: _queued(client, served.http, 1))

        served.proc.send_signal(signal.SIGTERM)
        eventually(lambda: _not_ready(client, served.http))
        refused = client.post(f"{served.http}/v2/models/{HEALTHY}/infer", json=HEALTHY_BODY)
        assert refused.status_code == 503
        assert "shutting down" in refused.json()["error"]
        with grpc.insecure_channel(served.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name=HEALTHY)
            tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
            tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, metadata=tuple(admin.items()), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert served.proc.poll() is None, "the server waits for its requests in flight"

        (control / "release").touch()
        for call, value in ((first, 2.0), (second, 4.0)):
            response = call.result(60)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [value, 2.0]
    assert served.proc.wait(60) == 0
    conn = sqlite3.connect(state / "inferd.db")
    try:
        rows = dict(conn.execute("SELECT request_id, status FROM usage WHERE model = 'slow'").fetchall())
    finally:
        conn.close()
    assert rows == {"drain-1": "ok", "drain-2": "ok"}


def test_sigkill_loses_no_governance_state(tmp_path: Path, processes: list[Process]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    state = tmp_path / "state"
    args = ["-m", "inferd.cli.main", "serve", "--model-repository", str(repo)]
    first = start(args, state, tmp_path / "first.log")
    processes.append(first)
    with httpx.Client(
        base_url=first.http + "/admin/v1", headers={"authorization": f"Bearer {first.admin_key}"}
    ) as admin:
        assert admin.put(
            "/tenants/acme", json={"rpm": 60, "max_concurrent": 3, "payload_logging": "metadata"}
        ).is_success
        key = admin.post("/keys", json={"tenant": "acme", "models": ["m*"], "tpm": 1000, "priority": "batch"})
        assert key.is_success
        assert admin.put("/budgets", json={"tenant": "acme", "period": "day", "max_tokens": 5000}).is_success
        assert admin.put("/prices", json={"model": "m1", "prompt_per_1k": 0.5}).is_success
        before = _governance_state(admin)
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(30) == -signal.SIGKILL

    second = start(args, state, tmp_path / "second.log")
    processes.append(second)
    with httpx.Client(
        base_url=second.http + "/admin/v1", headers={"authorization": f"Bearer {second.admin_key}"}
    ) as admin:
        assert _governance_state(admin) == before
    (key_doc,) = [k for k in before["keys"] if k["tenant"] == "acme"]
    assert key_doc["priority"] == "batch" and key_doc["limits"]["tpm"] == 1000


def _governance_state(admin: httpx.Client) -> dict[str, Any]:
    def get(path: str) -> Any:
        r = admin.get(path)
        assert r.status_code == 200, r.text
        return r.json()

    budgets = [
        {k: v for k, v in b.items() if not k.startswith(("used_", "in_flight", "resets"))}
        for b in get("/budgets")
    ]
    return {"tenants": get("/tenants"), "keys": get("/keys"), "budgets": budgets, "prices": get("/prices")}


def test_past_the_grace_period_what_is_left_fails_with_a_clear_error(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.add_steered("stuck", "dynamic_batching: {}\n", lambda: Steered(max_batch_size=1))
    for running in serve(repo, tmp_path / "state", shutdown_grace_s=0.2):
        runtime = repo.runtime("stuck")
        runtime.gate.clear()
        url = f"http://{running.http_url}/v2/models/stuck/infer"
        with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=60) as client:
            executing = pool.submit(client.post, url, json=v2_body(1.0))
            assert runtime.started.acquire(timeout=10)
            queued = pool.submit(client.post, url, json=v2_body(2.0))
            wait_in_flight(running, "stuck", 2)
            running.call(running.server.stop())
            for call in (executing, queued):
                response = call.result(60)
                assert response.status_code == 503
                assert "the server shut down before this request could finish" in response.json()["error"]
        assert runtime.executed == [1.0]


def _exists(path: Path) -> None:
    assert path.exists()


def _queued(client: httpx.Client, base: str, n: int) -> None:
    assert f'inferd_queue_depth{{model="slow",version="1"}} {float(n)}' in client.get(f"{base}/metrics").text


def _not_ready(client: httpx.Client, base: str) -> None:
    assert client.get(f"{base}/v2/health/ready").status_code == 503
