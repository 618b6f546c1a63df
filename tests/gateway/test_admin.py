"""AdminService: strict bodies whose errors name the key, `since` forms, keys shown once, and the operations
an admin may not do to itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferd.errors import InvalidInput, NotFound
from inferd.gateway.admin import AdminService, parse_since
from inferd.gateway.context import Principal
from inferd.store.sqlite import SqliteStore
from tests.gateway.helpers import FakeClock, utc

NOW = utc(2024, 6, 15, 12)
ADMIN = Principal("root", "0123456789ab", frozenset({"admin", "user"}))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path)
    yield store
    store.close()


@pytest.fixture
def changes() -> list[int]:
    return []


@pytest.fixture
def admin(store: SqliteStore, changes: list[int]) -> AdminService:
    service = AdminService(store, on_change=lambda: changes.append(1), clock=FakeClock(NOW))
    service.put_tenant(ADMIN, "root", {})
    service.put_tenant(ADMIN, "acme", {"rpm": 10})
    changes.clear()
    return service


def invalid(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidInput) as info:
        call(*args)
    return str(info.value)


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"rpn": 5}, ["'rpn'", "known keys"]),
        ({"rpm": "5"}, ["tenant.rpm", "integer"]),
        ({"rpm": True}, ["tenant.rpm", "integer"]),
        ({"rpm": 1.5}, ["tenant.rpm", "integer"]),
        ({"rpm": 0}, ["tenant.rpm", ">= 1"]),
        ({"tpm": -3}, ["tenant.tpm", ">= 1"]),
        ({"max_concurrent": 0}, ["tenant.max_concurrent", ">= 1"]),
        ({"max_tokens": 0}, ["tenant.max_tokens", ">= 1"]),
        ({"payload_logging": "everything"}, ["tenant.payload_logging", "'full'"]),
        ({"disabled": "yes"}, ["tenant.disabled", "true or false"]),
    ],
)
def test_tenant_body_errors_name_the_key(admin: AdminService, doc: dict[str, Any], names: list[str]) -> None:
    message = invalid(admin.put_tenant, ADMIN, "t2", doc)
    for name in names:
        assert name in message, message
    assert "t2" not in {t["name"] for t in admin.list_tenants()}


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 65, "é"])
def test_tenant_names_are_checked(admin: AdminService, name: str) -> None:
    assert "tenant name" in invalid(admin.put_tenant, ADMIN, name, {})


def test_tenant_update_keeps_created_keys_and_budgets(admin: AdminService, changes: list[int]) -> None:
    first = admin.get_tenant("acme")
    key = admin.create_key(ADMIN, {"tenant": "acme"})
    admin.set_budget(ADMIN, {"tenant": "acme", "max_tokens": 5})
    updated = admin.put_tenant(ADMIN, "acme", {"rpm": 20, "payload_logging": "metadata"})
    assert updated["created"] == first["created"] and updated["rpm"] == 20
    assert [k["key_id"] for k in admin.list_keys("acme")] == [key["key_id"]]
    assert len(admin.list_budgets("acme")) == 1
    assert len(changes) == 3


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"tenant": "nope"}, ["key.tenant", "unknown tenant 'nope'"]),
        ({}, ["key"]),
        ({"tenant": "acme", "model": ["*"]}, ["'model'"]),
        ({"tenant": "acme", "models": []}, ["key.models", "non-empty"]),
        ({"tenant": "acme", "models": [""]}, ["key.models", "non-empty"]),
        ({"tenant": "acme", "models": "*"}, ["key.models", "list"]),
        ({"tenant": "acme", "roles": []}, ["key.roles"]),
        ({"tenant": "acme", "roles": ["root"]}, ["key.roles[0]", "'root'"]),
        ({"tenant": "acme", "rpm": 0}, ["key.rpm", ">= 1"]),
        ({"tenant": "acme", "tpm": -1}, ["key.tpm", ">= 1"]),
        ({"tenant": "acme", "max_concurrent": 0}, ["key.max_concurrent", ">= 1"]),
        ({"tenant": "acme", "expires_in_s": -1}, ["key.expires_in_s", ">= 0"]),
        ({"tenant": "acme", "expires_in_s": "soon"}, ["key.expires_in_s", "number"]),
    ],
)
def test_key_body_errors_name_the_key(admin: AdminService, doc: dict[str, Any], names: list[str]) -> None:
    message = invalid(admin.create_key, ADMIN, doc)
    for name in names:
        assert name in message, message
    assert admin.list_keys() == []


def test_a_key_is_returned_once_and_never_listed(admin: AdminService, store: SqliteStore) -> None:
    doc = admin.create_key(
        ADMIN, {"tenant": "acme", "models": ["alpha-*"], "rpm": 5, "expires_in_s": 60, "name": "ci"}
    )
    assert doc["key"].startswith("ik_" + doc["key_id"] + "_")
    assert doc["expires_at"] == NOW + 60 and doc["limits"]["rpm"] == 5 and doc["models"] == ["alpha-*"]
    listed = admin.list_keys()
    assert [k["key_id"] for k in listed] == [doc["key_id"]]
    for shown in [*listed, admin.update_key(ADMIN, doc["key_id"], {"name": "renamed"})]:
        assert "key" not in shown and "key_hash" not in shown
        assert doc["key"] not in repr(shown)
    entries = store.audit_entries(action="admin.key_*")
    assert sorted(e.action for e in entries) == ["admin.key_create", "admin.key_update"]
    assert all(doc["key"] not in repr(e) for e in entries)


def test_key_patch(admin: AdminService) -> None:
    key_id = admin.create_key(ADMIN, {"tenant": "acme", "expires_at": NOW + 5})["key_id"]
    assert admin.update_key(ADMIN, key_id, {"disabled": True})["disabled"] is True
    assert admin.update_key(ADMIN, key_id, {"models": ["a", "b"]})["models"] == ["a", "b"]
    assert admin.update_key(ADMIN, key_id, {"expires_at": 0})["expires_at"] is None
    assert "key.models" in invalid(admin.update_key, ADMIN, key_id, {"models": []})
    assert "'tenant'" in invalid(admin.update_key, ADMIN, key_id, {"tenant": "root"})
    with pytest.raises(NotFound):
        admin.update_key(ADMIN, "ffffffffffff", {"disabled": True})


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"tenant": "nope", "max_tokens": 1}, ["budget.tenant", "unknown tenant 'nope'"]),
        ({"tenant": "acme"}, ["budget", "at least one"]),
        ({"tenant": "acme", "max_tokens": -1}, ["budget.max_tokens", ">= 0"]),
        ({"tenant": "acme", "max_cost": -0.5}, ["budget.max_cost", ">= 0"]),
        ({"tenant": "acme", "max_requests": -2}, ["budget.max_requests", ">= 0"]),
        ({"tenant": "acme", "max_tokens": "10"}, ["budget.max_tokens", "integer"]),
        ({"tenant": "acme", "max_tokens": 1, "period": "week"}, ["budget.period", "'day'"]),
        ({"tenant": "acme", "max_tokens": 1, "scope": "key"}, ["budget.scope", "'workflow'"]),
        ({"tenant": "acme", "max_tokens": 1, "cap": 1}, ["'cap'"]),
    ],
)
def test_budget_body_errors_name_the_key(admin: AdminService, doc: dict[str, Any], names: list[str]) -> None:
    message = invalid(admin.set_budget, ADMIN, doc)
    for name in names:
        assert name in message, message
    assert admin.list_budgets() == []


def test_budgets_and_prices_round_trip(admin: AdminService) -> None:
    b = admin.set_budget(ADMIN, {"tenant": "acme", "period": "day", "max_cost": 1.25, "max_requests": 0})
    assert (b["max_cost"], b["max_requests"], b["max_tokens"]) == (1.25, 0, None)
    admin.set_budget(ADMIN, {"tenant": "acme", "period": "day", "max_tokens": 7})  # replaces
    assert [x["max_tokens"] for x in admin.list_budgets("acme")] == [7]
    admin.delete_budget(ADMIN, "acme", "tenant", "day")
    with pytest.raises(NotFound):
        admin.delete_budget(ADMIN, "acme", "tenant", "day")
    p = admin.set_price(ADMIN, {"model": "*", "prompt_per_1k": 0.5, "per_inference": 0.000001})
    assert (p["prompt_per_1k"], p["per_inference"], p["completion_per_1k"]) == (0.5, 0.000001, 0.0)
    assert "price.completion_per_1k" in invalid(
        admin.set_price, ADMIN, {"model": "m", "completion_per_1k": -1}
    )
    assert "'price'" in invalid(admin.set_price, ADMIN, {"model": "m", "price": 1})
    admin.delete_price(ADMIN, "*")
    with pytest.raises(NotFound):
        admin.delete_price(ADMIN, "*")


def test_unknown_ids_are_not_found(admin: AdminService, changes: list[int]) -> None:
    with pytest.raises(NotFound):
        admin.revoke_key(ADMIN, "ffffffffffff")
    with pytest.raises(NotFound):
        admin.delete_tenant(ADMIN, "nope")
    with pytest.raises(NotFound):
        admin.get_tenant("nope")
    assert changes == []


def test_an_admin_cannot_revoke_its_own_key_or_delete_its_own_tenant(admin: AdminService) -> None:
    me = admin.create_key(ADMIN, {"tenant": "root", "roles": ["admin"]})
    actor = Principal("root", me["key_id"], frozenset({"admin"}))
    assert "revoke itself" in invalid(admin.revoke_key, actor, me["key_id"])
    assert "own tenant" in invalid(admin.delete_tenant, actor, "root")
    assert [k["key_id"] for k in admin.list_keys("root")] == [me["key_id"]]
    other = admin.create_key(ADMIN, {"tenant": "acme"})
    admin.revoke_key(actor, other["key_id"])
    admin.delete_tenant(actor, "acme")
    assert [t["name"] for t in admin.list_tenants()] == ["root"]


def test_query_arguments_are_checked(admin: AdminService) -> None:
    assert "by: expected one of" in invalid(admin.usage, None, None, "week")
    assert "limit" in invalid(admin.audit, None, None, None, 0)
    assert "limit" in invalid(admin.audit, None, None, None, 100_001)
    assert "since" in invalid(admin.usage, None, "yesterday", "model")
    assert admin.usage("acme", "7d", "day") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, 0.0),
        ("", 0.0),
        ("7d", NOW - 7 * 86400),
        (" 24h ", NOW - 86400),
        ("30m", NOW - 1800),
        ("90s", NOW - 90),
        ("1.5h", NOW - 5400),
        ("1700000000", 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
        ("2024-06-01", utc(2024, 6, 1)),
        ("2024-06-01T10:30:00", utc(2024, 6, 1, 10, 30)),
        ("2024-06-01T10:30:00+02:00", utc(2024, 6, 1, 8, 30)),
    ],
)
def test_parse_since(text: str | None, expected: float) -> None:
    assert parse_since(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "7w", "d7", "2024-13-01", "nan", "inf", "-inf"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_since(text, NOW)
    assert "since" in str(info.value)
