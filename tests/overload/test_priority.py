"""Priority tiers in the dynamic batcher: `x-inferd-priority` (REST header, gRPC metadata) or the key's
default; interactive requests overtake queued batch ones. The order is read from a runtime that records what
it ran (no timing)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.cli.main import main as cli
from inferd.store import migrations
from inferd.store.records import ApiKey
from inferd.store.sqlite import SqliteStore
from tests.conftest import RunningServer
from tests.overload.helpers import Repo, Steered, serve, v2_body, wait_in_flight

ONE_AT_A_TIME = "dynamic_batching: {}\n"


def one_row() -> Steered:
    return Steered(max_batch_size=1)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[RunningServer, Steered]]:
    repo = Repo(tmp_path / "repo")
    repo.add_steered("m", ONE_AT_A_TIME, one_row)
    for running in serve(repo, tmp_path / "state"):
        yield running, repo.runtime("m")


def grpc_infer(running: RunningServer, first: float, metadata: tuple[tuple[str, str], ...]) -> Any:
    with grpc.insecure_channel(running.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="m")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
        tensor.contents.fp32_contents.extend([first, 1.0])
        return stub.ModelInfer(request, metadata=metadata, timeout=60)


def test_interactive_requests_overtake_queued_batch_requests(gated: tuple[RunningServer, Steered]) -> None:
    running, runtime = gated
    url = f"http://{running.http_url}/v2/models/m/infer"
    runtime.gate.clear()
    batch = {"x-inferd-priority": "batch"}
    with ThreadPoolExecutor(8) as pool, httpx.Client(timeout=60) as client:
        calls: list[Future[Any]] = [pool.submit(client.post, url, json=v2_body(0.0))]
        assert runtime.started.acquire(timeout=10)  # 0 runs and blocks the only slot
        calls.append(pool.submit(client.post, url, json=v2_body(1.0), headers=batch))
        wait_in_flight(running, "m", 2)
        calls.append(pool.submit(grpc_infer, running, 2.0, (("x-inferd-priority", "batch"),)))
        wait_in_flight(running, "m", 3)
        calls.append(pool.submit(client.post, url, json=v2_body(3.0)))  # no header: interactive
        wait_in_flight(running, "m", 4)
        calls.append(pool.submit(grpc_infer, running, 4.0, (("x-inferd-priority", "Interactive"),)))
        wait_in_flight(running, "m", 5)
        runtime.gate.set()
        for call in calls:
            result = call.result(60)
            assert getattr(result, "status_code", 200) == 200
        bad = client.post(url, json=v2_body(5.0), headers={"x-inferd-priority": "urgent"})
        assert bad.status_code == 400 and "x-inferd-priority must be" in bad.json()["error"]
    assert runtime.executed == [0.0, 3.0, 4.0, 1.0, 2.0]


def test_a_key_tier_is_the_default_and_the_ceiling_of_the_header(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.add_steered("m", ONE_AT_A_TIME, one_row)
    for running in serve(repo, tmp_path / "state", auth=True):
        runtime = repo.runtime("m")
        base = f"http://{running.http_url}"
        admin_key = running.server.admin_key
        assert admin_key is not None
        with httpx.Client(base_url=base, timeout=60) as client:
            admin = {"authorization": f"Bearer {admin_key}"}
            assert client.put("/admin/v1/tenants/t", json={}, headers=admin).status_code == 200
            made = client.post("/admin/v1/keys", json={"tenant": "t", "priority": "batch"}, headers=admin)
            assert made.status_code == 200 and made.json()["priority"] == "batch"
            batch_key = {"authorization": f"Bearer {made.json()['key']}"}
            plain = client.post("/admin/v1/keys", json={"tenant": "t"}, headers=admin).json()
            assert plain["priority"] == "interactive"
            plain_key = {"authorization": f"Bearer {plain['key']}"}
            bad = client.post("/admin/v1/keys", json={"tenant": "t", "priority": "urgent"}, headers=admin)
            assert bad.status_code == 400

            runtime.gate.clear()
            with ThreadPoolExecutor(8) as pool:
                url = "/v2/models/m/infer"
                calls = [pool.submit(client.post, url, json=v2_body(0.0), headers=plain_key)]
                assert runtime.started.acquire(timeout=10)
                calls.append(pool.submit(client.post, url, json=v2_body(1.0), headers=batch_key))
                wait_in_flight(running, "m", 2)
                calls.append(pool.submit(client.post, url, json=v2_body(2.0), headers=plain_key))
                wait_in_flight(running, "m", 3)
                # The key's tier is a ceiling: a batch key asking for interactive stays batch ...
                upgrade = {**batch_key, "x-inferd-priority": "interactive"}
                calls.append(pool.submit(client.post, url, json=v2_body(3.0), headers=upgrade))
                wait_in_flight(running, "m", 4)
                # ... while an interactive key may choose the batch tier.
                downgrade = {**plain_key, "x-inferd-priority": "batch"}
                calls.append(pool.submit(client.post, url, json=v2_body(4.0), headers=downgrade))
                wait_in_flight(running, "m", 5)
                runtime.gate.set()
                assert [c.result(60).status_code for c in calls] == [200] * 5
            assert runtime.executed == [0.0, 2.0, 1.0, 3.0, 4.0]
            # A patch changes the tier; listings show it.
            key_id = made.json()["key_id"]
            patched = client.patch(
                f"/admin/v1/keys/{key_id}", json={"priority": "interactive"}, headers=admin
            )
            assert patched.status_code == 200 and patched.json()["priority"] == "interactive"


def test_the_cli_sets_a_key_priority(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    assert cli(["tenants", "create", "acme", "--state-dir", state]) == 0
    assert (
        cli(["keys", "create", "--tenant", "acme", "--priority", "batch", "--state-dir", state, "--json"])
        == 0
    )
    assert '"priority": "batch"' in capsys.readouterr().out
    store = SqliteStore(Path(state))
    try:
        (key,) = store.api_keys("acme")
        assert key.priority == "batch"
    finally:
        store.close()


def test_migration_2_adds_the_key_priority_to_an_existing_database(tmp_path: Path) -> None:
    db = tmp_path / "inferd.db"
    conn = sqlite3.connect(db)
    for statement in migrations._statements(migrations.MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO tenants (name, created) VALUES ('old', 0)")
    conn.execute(
        "INSERT INTO api_keys (key_id, tenant, key_hash, roles, models, created) "
        "VALUES ('0123456789abcdef', 'old', 'h', 'user', '[\"*\"]', 0)"
    )
    conn.commit()
    conn.close()
    store = SqliteStore(tmp_path)
    try:
        assert store.schema_version == len(migrations.MIGRATIONS)  # 2, then every later migration
        (key,) = store.api_keys()
        assert key.priority is None and key.describe()["priority"] == "interactive"
        store.put_key(ApiKey("fedcba9876543210", "old", "h2", priority="batch"))
    finally:
        store.close()
    store = SqliteStore(tmp_path)
    try:
        assert {k.key_id: k.priority for k in store.api_keys()} == {
            "0123456789abcdef": None,
            "fedcba9876543210": "batch",
        }
    finally:
        store.close()
