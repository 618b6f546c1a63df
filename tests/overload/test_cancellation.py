"""Cancellation on the tensor path: a REST client that disconnects, or a gRPC call cancelled, while its
request is queued takes it out of the queue (the runtime never sees it), and its reservations are released
(the ledger row says `cancelled`; the key's concurrency slot is free again)."""

from __future__ import annotations

import socket
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import orjson
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import RunningServer, eventually
from tests.overload.helpers import Repo, Steered, serve, v2_body, wait_in_flight


def one_row() -> Steered:
    return Steered(max_batch_size=1)


def raw_post(port: int, path: str, doc: object, headers: dict[str, str]) -> socket.socket:
    """Send a request and leave the response unread (the test closes the socket to disconnect)."""
    body = orjson.dumps(doc)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{head}"
        f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def ledger_status(state: Path, request_id: str) -> str:
    conn = sqlite3.connect(state / "inferd.db")
    try:
        row = conn.execute("SELECT status FROM usage WHERE request_id = ?", (request_id,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no ledger row for {request_id}"
    return str(row[0])


def test_disconnected_and_cancelled_requests_leave_the_queue(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.add_steered("m", "dynamic_batching: {}\n", one_row)
    state = tmp_path / "state"
    for running in serve(repo, state, auth=True):
        runtime = repo.runtime("m")
        base = f"http://{running.http_url}"
        admin = {"authorization": f"Bearer {running.server.admin_key}"}
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.put("/admin/v1/tenants/t", json={}, headers=admin).status_code == 200
            made = client.post("/admin/v1/keys", json={"tenant": "t", "max_concurrent": 1}, headers=admin)
            key = {"authorization": f"Bearer {made.json()['key']}"}

            runtime.gate.clear()
            with ThreadPoolExecutor(2) as pool:
                blocker = pool.submit(client.post, "/v2/models/m/infer", json=v2_body(0.0), headers=admin)
                assert runtime.started.acquire(timeout=10)
                # REST: queued behind the blocker, then the client goes away.
                headers = {**key, "x-request-id": "gone-1"}
                sock = raw_post(running.server.http_port, "/v2/models/m/infer", v2_body(1.0), headers)
                wait_in_flight(running, "m", 2)
                sock.close()
                wait_in_flight(running, "m", 1)
                # gRPC: a call cancelled while queued.
                with grpc.insecure_channel(running.grpc_url) as channel:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                    request = service_pb2.ModelInferRequest(model_name="m")
                    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
                    tensor.contents.fp32_contents.extend([2.0, 1.0])
                    call = stub.ModelInfer.future(request, metadata=tuple(admin.items()))
                    wait_in_flight(running, "m", 2)
                    call.cancel()
                    wait_in_flight(running, "m", 1)
                # The key's only concurrency slot was given back: it is admitted again.
                eventually(lambda: _status(state, "gone-1", "cancelled"))
                again = pool.submit(client.post, "/v2/models/m/infer", json=v2_body(3.0), headers=key)
                wait_in_flight(running, "m", 2)
                runtime.gate.set()
                assert blocker.result(60).status_code == 200
                assert again.result(60).status_code == 200
        assert runtime.executed == [0.0, 3.0], "nothing ran for the clients that went away"
        assert _requests_with_code(running, "499") == 2


def _status(state: Path, request_id: str, expected: str) -> None:
    assert ledger_status(state, request_id) == expected


def _requests_with_code(running: RunningServer, code: str) -> float:
    return sum(
        sample.value
        for metric in running.server.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "inferd_requests_total" and sample.labels.get("code") in (code, "CANCELLED")
    )
