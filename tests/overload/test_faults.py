"""Fault isolation: a model that raises, hangs, runs out of memory or fails to load fails only its own
requests, is reported unready with its reason, recovers or stays down per `on_failure`; a healthy model beside
it keeps serving throughout."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import RunningServer
from tests.overload.helpers import (
    HEALTHY,
    HEALTHY_BODY,
    Repo,
    Steered,
    eventually,
    index,
    serve,
    v2_body,
)

HANG = "execution_timeout_s: 0.3\nmax_batch_size: 1\ndynamic_batching: {}\n"


class _Hangs:
    """Runtimes that hang on their first `hangs` loads and work afterwards."""

    def __init__(self, hangs: int) -> None:
        self.left = hangs

    def __call__(self) -> Steered:
        self.left -= 1
        return Steered(mode="hang" if self.left >= 0 else "ok", max_batch_size=1)


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[RunningServer, Repo]]:
    repo = Repo(tmp_path / "repo")
    repo.add_healthy()
    repo.add_steered("raises", "max_batch_size: 4\n", lambda: Steered(mode="raise"))
    repo.add_steered("hangs_once", HANG + "on_failure: reload\n", _Hangs(1))
    repo.add_steered("hangs_down", HANG + "on_failure: stay_down\n", _Hangs(100))
    repo.add_steered("hangs_always", HANG + "max_reloads: 1\n", _Hangs(100))
    repo.add_steered("oom", "on_failure: stay_down\nmax_batch_size: 4\n", lambda: Steered(mode="oom"))
    (repo.root / "no_load" / "1").mkdir(parents=True)
    (repo.root / "no_load" / "config.yaml").write_text("max_batch_size: 4\n")
    repo.factories["no_load"] = _failing_load
    repo.steered["no_load"] = []
    for running in serve(repo, tmp_path / "state"):
        yield running, repo


def _failing_load() -> Steered:
    raise RuntimeError("weights are corrupt")


def healthy_serves(client: httpx.Client, base: str) -> None:
    r = client.post(f"{base}/v2/models/{HEALTHY}/infer", json=HEALTHY_BODY)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4]


def test_a_raising_model_fails_only_its_requests(faulty: tuple[RunningServer, Repo]) -> None:
    running, _ = faulty
    base = f"http://{running.http_url}"
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            r = client.post(f"{base}/v2/models/raises/infer", json=v2_body(1.0))
            assert r.status_code == 500
            assert r.json()["error"] == "RuntimeError: kernel exploded"
            healthy_serves(client, base)
        # A runtime error is the request's fault, not the model's: it stays in service.
        assert client.get(f"{base}/v2/models/raises/ready").status_code == 200


def test_a_hanging_model_is_taken_out_of_service_and_reloaded(faulty: tuple[RunningServer, Repo]) -> None:
    running, repo = faulty
    base = f"http://{running.http_url}"
    url = f"{base}/v2/models/hangs_once/infer"
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=30) as client:
        hung = pool.submit(client.post, url, json=v2_body(1.0))
        assert repo.runtime("hangs_once").started.acquire(timeout=10)
        queued = pool.submit(client.post, url, json=v2_body(2.0))
        healthy_serves(client, base)  # while the other model hangs
        r = hung.result(30)
        assert r.status_code == 500
        assert "ran past execution_timeout_s (0.3 s)" in r.json()["error"]
        r = queued.result(30)
        assert r.status_code in (200, 503)  # failed with the version, or served after the reload
        if r.status_code == 503:
            assert "out of service" in r.json()["error"]
        # on_failure: reload brings a fresh runtime (this one works) into service.
        eventually(lambda: _ready(client, base, "hangs_once"))
        r = client.post(url, json=v2_body(3.0))
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [6.0, 2.0]
        assert len(repo.steered["hangs_once"]) == 2
        healthy_serves(client, base)


def test_stay_down_keeps_the_model_unready_with_its_reason(faulty: tuple[RunningServer, Repo]) -> None:
    running, _ = faulty
    base = f"http://{running.http_url}"
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{base}/v2/models/hangs_down/infer", json=v2_body(1.0))
        assert r.status_code == 500 and "execution_timeout_s" in r.json()["error"]
        ready = client.get(f"{base}/v2/models/hangs_down/ready")
        assert ready.status_code == 503 and ready.json() == {"name": "hangs_down", "ready": False}
        assert "execution_timeout_s" in ready.headers["x-inferd-reason"]
        entries = client.post(f"{base}/v2/repository/index", json={}).json()
        (entry,) = [e for e in entries if e["name"] == "hangs_down"]
        assert entry["state"] == "UNAVAILABLE" and entry["version"] == "1"
        eventually(lambda: _reason_has(running, "hangs_down/1", "on_failure: stay_down"))
        r = client.post(f"{base}/v2/models/hangs_down/infer", json=v2_body(1.0))
        assert r.status_code == 503 and "execution_timeout_s" in r.json()["error"]
        with grpc.insecure_channel(running.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert not stub.ModelReady(service_pb2.ModelReadyRequest(name="hangs_down")).ready
        healthy_serves(client, base)
        # An explicit load serves it again (with a runtime that hangs again: the model stays in service
        # until it faults).
        assert client.post(f"{base}/v2/repository/models/hangs_down/load").status_code == 200
        assert client.get(f"{base}/v2/models/hangs_down/ready").status_code == 200


def test_reloads_are_bounded(faulty: tuple[RunningServer, Repo]) -> None:
    running, repo = faulty
    base = f"http://{running.http_url}"
    url = f"{base}/v2/models/hangs_always/infer"
    with httpx.Client(timeout=30) as client:
        assert client.post(url, json=v2_body(1.0)).status_code == 500
        eventually(lambda: _ready(client, base, "hangs_always"))  # reload 1 of max_reloads 1
        assert client.post(url, json=v2_body(1.0)).status_code == 500
        eventually(lambda: _reason_has(running, "hangs_always/1", "gave up after 1 reloads"))
        assert len(repo.steered["hangs_always"]) == 2
        healthy_serves(client, base)


def test_out_of_memory_takes_the_version_out_of_service(faulty: tuple[RunningServer, Repo]) -> None:
    running, _ = faulty
    base = f"http://{running.http_url}"
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{base}/v2/models/oom/infer", json=v2_body(1.0))
        assert r.status_code == 500 and "ran out of memory (could not allocate 64 GiB)" in r.json()["error"]
        state, reason = index(running)["oom/1"]
        assert state == "UNAVAILABLE" and "out of memory" in reason
        assert client.get(f"{base}/v2/models/oom/ready").status_code == 503
        healthy_serves(client, base)


def test_a_model_that_fails_to_load_is_reported_beside_serving_ones(
    faulty: tuple[RunningServer, Repo],
) -> None:
    running, _ = faulty
    base = f"http://{running.http_url}"
    state, reason = index(running)["no_load/"]
    assert state == "UNAVAILABLE" and "RuntimeError: weights are corrupt" in reason
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{base}/v2/models/no_load/infer", json=v2_body(1.0))
        assert r.status_code == 503 and "weights are corrupt" in r.json()["error"]
        healthy_serves(client, base)


def _ready(client: httpx.Client, base: str, model: str) -> None:
    assert client.get(f"{base}/v2/models/{model}/ready").status_code == 200


def _reason_has(running: RunningServer, key: str, text: str) -> None:
    state, reason = index(running)[key]
    assert state == "UNAVAILABLE" and text in reason, reason
