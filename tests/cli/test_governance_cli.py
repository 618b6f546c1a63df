"""The governance CLI in both modes against a real server and its SQLite state dir."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.cli.conftest import MODEL, Cli, Served

MODES = ("direct", "remote")


def where(mode: str, served: Served) -> tuple[str, ...]:
    """Direct: the state dir. Remote: the URL, with the admin key taken from the state dir's admin.key."""
    if mode == "direct":
        return ("--state-dir", str(served.state_dir))
    return ("--url", served.url, "--state-dir", str(served.state_dir))


def poll(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def status_with(served: Served, key: str) -> int:
    """The status of a model-metadata request made with `key`."""
    headers = {"authorization": f"Bearer {key}"}
    return httpx.get(f"{served.url}/v2/models/{MODEL}", headers=headers).status_code


@pytest.mark.parametrize("mode", MODES)
def test_tenants_keys_budgets_prices_and_audit_round_trip(mode: str, served: Served, cli: Cli) -> None:
    w = where(mode, served)
    t = f"acme-{mode}"
    created = cli("tenants", "create", t, "--rpm", "10", "--tpm", "1000", "--json", *w).json()
    assert created["name"] == t and created["rpm"] == 10 and created["tpm"] == 1000
    again = cli("tenants", "create", t, *w)
    assert again.code == 1 and "exists" in again.err
    # update changes only the given settings; `none` removes a limit
    changed = cli("tenants", "update", t, "--rpm", "none", "--payload-logging", "metadata", "--json", *w)
    updated = changed.json()
    assert (updated["rpm"], updated["tpm"], updated["payload_logging"]) == (None, 1000, "metadata")
    shown = cli("tenants", "show", t, *w)
    assert shown.code == 0 and "payload_logging: metadata" in shown.out
    assert t in {row["name"] for row in cli("tenants", "list", "--json", *w).json()}
    table = cli("tenants", "list", *w)
    assert table.out.splitlines()[0].split()[:3] == ["NAME", "RPM", "TPM"]

    key = cli("keys", "create", "--tenant", t, "--models", "echo*,other", "--rpm", "5", "--max-tokens", "64",
              "--expires-in", "30d", "--name", "ci", "--json", *w).json()  # fmt: skip
    assert key["key"].startswith(f"ik_{key['key_id']}_")
    assert key["models"] == ["echo*", "other"] and key["roles"] == ["user"]
    assert key["limits"]["rpm"] == 5 and key["limits"]["max_tokens"] == 64
    assert key["expires_at"] == pytest.approx(key["created"] + 30 * 86400, abs=1)
    listed = cli("keys", "list", "--tenant", t, *w)
    assert key["key_id"] in listed.out and key["key"] not in listed.out
    disabled = cli("keys", "disable", key["key_id"], "--json", *w).json()
    assert disabled["disabled"] is True
    assert cli("keys", "enable", key["key_id"], "--json", *w).json()["disabled"] is False

    budget = cli("budgets", "set", "--tenant", t, "--tokens", "1000", "--cost", "2.5", "--json", *w).json()
    assert (budget["period"], budget["scope"], budget["max_tokens"], budget["max_cost"]) == (
        "month", "tenant", 1000, 2.5,
    )  # fmt: skip
    cli("budgets", "set", "--tenant", t, "--per-workflow", "--period", "day", "--requests", "20", *w)
    budgets = cli("budgets", "list", "--tenant", t, "--json", *w).json()
    assert {(b["scope"], b["period"]) for b in budgets} == {("tenant", "month"), ("workflow", "day")}
    gone = cli("budgets", "delete", "--tenant", t, "--per-workflow", "--period", "day", *w)
    assert gone.code == 0 and "deleted" in gone.out

    model = f"model-{mode}"
    price = cli("prices", "set", "--model", model, "--prompt-per-1k", "0.5", "--per-inference", "0.001",
                "--json", *w).json()  # fmt: skip
    assert (price["prompt_per_1k"], price["completion_per_1k"], price["per_inference"]) == (0.5, 0, 0.001)
    assert model in {p["model"] for p in cli("prices", "list", "--json", *w).json()}
    assert cli("prices", "delete", "--model", model, *w).code == 0
    assert model not in {p["model"] for p in cli("prices", "list", "--json", *w).json()}

    entries = cli("audit", "--action", "admin.*", "--since", "1h", "--json", *w).json()
    mine = [e for e in entries if e["target"].startswith(t) or e["target"] in (key["key_id"], model)]
    assert [e["action"] for e in mine] == [
        "admin.tenant_put", "admin.tenant_put", "admin.key_create", "admin.key_update", "admin.key_update",
        "admin.budget_set", "admin.budget_set", "admin.budget_delete", "admin.price_set",
        "admin.price_delete",
    ]  # fmt: skip
    actor = "cli" if mode == "direct" else served.admin_key().split("_")[1]
    assert {e["key_id"] for e in mine} == {actor}
    human = cli("audit", "--tenant", "admin", "--limit", "5", *w)
    assert human.code == 0 and len(human.out.splitlines()) == 6 and key["key"] not in human.out

    assert cli("budgets", "delete", "--tenant", t, "--per-workflow", "--period", "day", *w).code == 1
    revoked = cli("keys", "revoke", key["key_id"], *w)
    assert revoked.code == 0 and key["key_id"] in revoked.out
    again = cli("keys", "revoke", key["key_id"], *w)
    assert again.code == 1 and f"unknown API key {key['key_id']!r}" in again.err
    assert cli("tenants", "delete", t, *w).code == 0
    missing = cli("tenants", "update", t, "--rpm", "3", *w)
    assert missing.code == 1 and f"unknown tenant {t!r}" in missing.err
    refused = cli("keys", "create", "--tenant", t, *w)
    assert refused.code == 1 and "unknown tenant" in refused.err and refused.out == ""


def test_key_created_directly_serves_at_once_and_revoking_it_refuses_it(served: Served, cli: Cli) -> None:
    w = where("direct", served)
    assert cli("tenants", "create", "beta", *w).code == 0
    key = cli("keys", "create", "--tenant", "beta", "--json", *w).json()
    # the running server sees the store's change through its config_version within about a second
    poll(lambda: status_with(served, key["key"]) == 200)
    doc = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    auth = {"authorization": f"Bearer {key['key']}"}
    assert httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=doc, headers=auth).status_code == 200
    for mode in MODES:
        rows = cli("usage", "--tenant", "beta", "--since", "1d", "--json", *where(mode, served)).json()
        assert [(r["model"], r["requests"]) for r in rows] == [(MODEL, 1)]
        by_key = cli("usage", "--tenant", "beta", "--by", "key", *where(mode, served))
        assert by_key.out.split()[:2] == ["KEY", "REQUESTS"] and key["key_id"] in by_key.out

    assert cli("keys", "revoke", key["key_id"], *w).code == 0
    poll(lambda: status_with(served, key["key"]) == 401)
    assert cli("tenants", "delete", "beta", *w).code == 0


def test_remote_mode_needs_an_admin_key(served: Served, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    url = ("--url", served.url)
    no_key = cli("tenants", "list", *url)
    assert no_key.code == 1 and no_key.out == ""
    assert "missing API key" in no_key.err and "(HTTP 401)" in no_key.err
    bad = cli("tenants", "list", *url, "--admin-key", "ik_000000000000_nope")
    assert bad.code == 1 and "invalid API key (HTTP 401)" in bad.err

    direct = where("direct", served)
    cli("tenants", "create", "gamma", *direct)
    user = cli("keys", "create", "--tenant", "gamma", "--json", *direct).json()
    poll(lambda: status_with(served, user["key"]) == 200)
    monkeypatch.setenv("INFERD_ADMIN_KEY", user["key"])  # the environment's key is used
    refused = cli("tenants", "list", *url)
    assert refused.code == 1 and "needs an API key with the admin role (HTTP 403)" in refused.err
    # a user key may read its own tenant's keys, never another tenant's
    own = cli("keys", "list", "--json", *url).json()
    assert [k["key_id"] for k in own] == [user["key_id"]]
    other = cli("keys", "list", "--tenant", "admin", *url)
    assert other.code == 1 and "(HTTP 404)" in other.err
    assert user["key"] not in refused.err + other.err

    monkeypatch.setenv("INFERD_ADMIN_KEY", served.admin_key())
    assert "gamma" in cli("tenants", "list", *url).out
    # the server applies its own admin API's changes at once
    assert cli("keys", "disable", user["key_id"], *url).code == 0
    assert status_with(served, user["key"]) == 401
    assert cli("keys", "enable", user["key_id"], *url).code == 0
    assert status_with(served, user["key"]) == 200

    def refusals() -> list[tuple[str, str]]:
        entries = cli("audit", "--tenant", "gamma", "--action", "auth.*", "--json", *url).json()
        return [(e["key_id"], e["outcome"]) for e in entries]

    poll(lambda: refusals() == [(user["key_id"], "disabled")])  # the audit log is written in the background
    assert cli("tenants", "delete", "gamma", *url).code == 0
    assert "admin" in cli("tenants", "list", *url).out


def test_unreachable_server_is_a_refusal(cli: Cli) -> None:
    result = cli("tenants", "list", "--url", "127.0.0.1:9", "--admin-key", "x", "--timeout", "2")
    assert result.code == 1 and "cannot reach http://127.0.0.1:9" in result.err
