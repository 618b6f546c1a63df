"""API keys: generation, parsing, constant-time matching, presentation; authentication and the bootstrap
admin key."""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.errors import Unauthenticated
from inferd.gateway import keys
from inferd.gateway.admin import AdminService
from inferd.gateway.context import Principal
from inferd.gateway.governance import ADMIN_KEY_FILE, Governance, ensure_admin_key
from inferd.store.records import ApiKey, Tenant
from inferd.store.sqlite import SqliteStore
from tests.gateway.helpers import FakeClock, new_governance

KEY_SHAPE = re.compile(r"^ik_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")
ADMIN = Principal("admin", "admin-key", frozenset({"admin", "user"}))


def test_generated_keys_are_unique_and_well_formed() -> None:
    generated = [keys.generate_key() for _ in range(2000)]
    assert len({k for _, k in generated}) == len({i for i, _ in generated}) == 2000
    for key_id, key in generated:
        assert KEY_SHAPE.match(key), key
        assert keys.key_id_of(key) == key_id


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "ik",
        "ik_",
        "ik__secret",
        "ik_0123456789ab",
        "ik_0123456789ab_",
        "ik_0123456789a_secret",
        "ik_0123456789abc_secret",
        "xk_0123456789ab_secret",
        "IK_0123456789ab_secret",
        "ik_zzzzzzzzzzzz_secret",
        "ik_0123456789AB_secret",
        "sk-0123456789ab0123456789ab",
        "Bearer ik_0123456789ab_secret",
    ],
)
def test_key_id_of_rejects_malformed_keys(presented: str) -> None:
    assert keys.key_id_of(presented) is None


def test_matches_only_the_right_key() -> None:
    _, key = keys.generate_key()
    stored = keys.hash_key(key)
    assert len(stored) == 64 and key not in stored
    assert keys.matches(key, stored)
    assert not keys.matches(key + "x", stored)
    assert not keys.matches(key[:-1], stored)
    assert not keys.matches(keys.generate_key()[1], stored)
    assert not keys.matches(key, None)  # unknown key id: compared with a dummy, still false
    assert not keys.matches("ik-dummy", None)
    assert not keys.matches("\udcff", stored)  # not encodable as UTF-8: hashed, not raised


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer ik_a_b"}, "ik_a_b"),
        ({"authorization": "bearer   ik_a_b  "}, "ik_a_b"),
        ({"authorization": "BEARER ik_a_b"}, "ik_a_b"),
        ({"x-api-key": " ik_a_b "}, "ik_a_b"),
        ({"authorization": "Bearer ik_a_b", "x-api-key": "other"}, "ik_a_b"),
        ({"authorization": "", "x-api-key": "ik_a_b"}, "ik_a_b"),
        ({"authorization": "ik_a_b"}, "ik_a_b"),  # a bare key
        ({"authorization": "Basic dXNlcjpwdw=="}, "Basic dXNlcjpwdw=="),  # checked (and refused) as a key
        ({"authorization": "Bearer"}, "Bearer"),
        ({"authorization": "Bearer  ik_a_b "}, "ik_a_b"),
        ({"authorization": "Bearer "}, "Bearer"),
        ({"authorization": "Bearer a b"}, "a b"),
        ({"x-api-key": ""}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert keys.presented_key(headers) == expected


def test_known_digests_remember_only_what_they_are_told() -> None:
    known = keys.KnownDigests(capacity=2)
    first, second, third = (keys.generate_key()[1] for _ in range(3))
    assert known.digest(first) == keys.hash_key(first)
    known.remember(first, keys.hash_key(first))
    known.remember(second, "not-its-digest")  # remembered as told: the caller vouches for it
    assert known.digest(first) == keys.hash_key(first)
    assert known.digest(second) == "not-its-digest"
    known.remember(third, keys.hash_key(third))  # at capacity: starts over
    assert known.digest(second) == keys.hash_key(second)
    assert known.digest(third) == keys.hash_key(third)


# -- authentication ---------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path)


@pytest.fixture
def admin(store: SqliteStore, clock: FakeClock) -> AdminService:
    return AdminService(store, clock=clock)


@pytest.fixture
def gov(store: SqliteStore, clock: FakeClock) -> Iterator[Governance]:
    g = new_governance(store, clock)
    yield g
    asyncio.run(g.close())


def new_key(admin: AdminService, gov: Governance, tenant: str = "t", **spec: object) -> tuple[str, str]:
    if tenant not in {t["name"] for t in admin.list_tenants()}:
        admin.put_tenant(ADMIN, tenant, {})
    doc = admin.create_key(ADMIN, {"tenant": tenant, **spec})
    gov.reload_soon()
    return doc["key_id"], doc["key"]


def auth(gov: Governance, key: str | None, header: str = "authorization") -> Principal:
    headers = {} if key is None else {header: f"Bearer {key}" if header == "authorization" else key}
    return gov.authenticate(headers, "openai", "req")


def refused(gov: Governance, key: str | None) -> str:
    with pytest.raises(Unauthenticated) as info:
        auth(gov, key)
    return str(info.value)


def test_authenticate_returns_the_keys_principal(admin: AdminService, gov: Governance) -> None:
    key_id, key = new_key(admin, gov, models=["alpha-*"], roles=["user"])
    for header in ("authorization", "x-api-key"):
        p = auth(gov, key, header)
        assert (p.tenant, p.key_id, p.roles, p.models) == ("t", key_id, frozenset({"user"}), ("alpha-*",))
        assert not p.is_admin


def test_authenticate_refuses_with_distinct_messages(
    admin: AdminService, gov: Governance, clock: FakeClock, store: SqliteStore
) -> None:
    key_id, key = new_key(admin, gov)
    messages = {
        "missing": refused(gov, None),
        "malformed": refused(gov, "not-a-key"),
        "wrong secret": refused(gov, key[:-2] + ("AA" if not key.endswith("AA") else "BB")),
        "unknown id": refused(gov, "ik_0123456789ab_" + key.split("_", 2)[2]),
    }
    assert "missing API key" in messages["missing"]
    assert messages["malformed"] == messages["wrong secret"] == messages["unknown id"] == "invalid API key"

    exp_id, exp_key = new_key(admin, gov, expires_in_s=60)
    auth(gov, exp_key)
    clock.advance(60)
    messages["expired"] = refused(gov, exp_key)
    assert messages["expired"] == f"API key {exp_id} has expired"

    admin.update_key(ADMIN, key_id, {"disabled": True})
    gov.reload_soon()
    messages["disabled"] = refused(gov, key)
    assert messages["disabled"] == f"API key {key_id} is disabled"
    admin.update_key(ADMIN, key_id, {"disabled": False})
    gov.reload_soon()
    auth(gov, key)

    admin.put_tenant(ADMIN, "t", {"disabled": True})
    gov.reload_soon()
    messages["tenant disabled"] = refused(gov, key)
    assert messages["tenant disabled"] == "tenant 't' is disabled"
    admin.put_tenant(ADMIN, "t", {})
    gov.reload_soon()
    auth(gov, key)

    admin.revoke_key(ADMIN, key_id)
    gov.reload_soon()
    messages["revoked"] = refused(gov, key)
    assert messages["revoked"] == "invalid API key"

    distinct = {messages[k] for k in ("missing", "expired", "disabled", "tenant disabled", "revoked")}
    assert len(distinct) == 5
    reasons = sorted(e.outcome for e in store.audit_entries(action="auth.failure"))
    assert reasons == sorted(
        ["missing", "invalid", "invalid", "invalid", "expired", "disabled", "tenant_disabled", "invalid"]
    )


def test_a_remembered_key_is_refused_once_revoked(admin: AdminService, gov: Governance) -> None:
    key_id, key = new_key(admin, gov)
    for _ in range(3):
        assert auth(gov, key).key_id == key_id  # remembered after the first
    assert refused(gov, key + "x") == "invalid API key"
    admin.revoke_key(ADMIN, key_id)
    gov.reload_soon()
    assert refused(gov, key) == "invalid API key"


def test_deleting_a_tenant_revokes_its_keys(admin: AdminService, gov: Governance) -> None:
    _, key = new_key(admin, gov, tenant="gone")
    auth(gov, key)
    admin.delete_tenant(ADMIN, "gone")
    gov.reload_soon()
    assert refused(gov, key) == "invalid API key"


def test_the_store_never_holds_a_raw_key(
    admin: AdminService, gov: Governance, store: SqliteStore, tmp_path: Path
) -> None:
    created = [new_key(admin, gov, name=f"k{i}")[1] for i in range(5)]
    for key in created:
        auth(gov, key)
    wrong = created[0][:-4] + "wxyz"
    refused(gov, wrong)  # a failed attempt is audited: by key id, never by what was presented
    listed = admin.list_keys()
    assert all("key" not in doc and "key_hash" not in doc for doc in listed)
    store.maintain()
    files = [p for p in tmp_path.iterdir() if p.name.startswith(store.path.name)]
    assert store.path in files
    blob = b"".join(p.read_bytes() for p in files)
    for key in [*created, wrong]:
        secret = key.split("_", 2)[2]
        assert key.encode() not in blob and secret.encode() not in blob
        assert keys.hash_key(key).encode() in blob or key == wrong


def test_ensure_admin_key_creates_exactly_once(tmp_path: Path, clock: FakeClock) -> None:
    state = tmp_path / "state"
    store = SqliteStore(state)
    try:
        key = ensure_admin_key(store, state, clock)
        assert key is not None and KEY_SHAPE.match(key)
        path = state / ADMIN_KEY_FILE
        assert path.read_text() == key + "\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        admins = [k for k in store.api_keys() if "admin" in k.roles]
        assert len(admins) == 1 and admins[0].tenant == "admin" and keys.matches(key, admins[0].key_hash)
        assert ensure_admin_key(store, state, clock) is None
        assert len(store.api_keys()) == 1
        assert path.read_text() == key + "\n"
        assert [e.action for e in store.audit_entries(action="admin.*")] == ["admin.bootstrap"]
        gov = new_governance(store, clock)
        try:
            assert auth(gov, key).is_admin
        finally:
            asyncio.run(gov.close())
    finally:
        store.close()


def test_ensure_admin_key_keeps_an_existing_admin_tenant(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteStore(tmp_path)
    try:
        store.put_tenant(Tenant("admin", created=5.0))
        store.put_key(ApiKey("0123456789ab", "admin", "h", frozenset({"user"})))
        assert ensure_admin_key(store, tmp_path, clock) is not None
        assert [t.created for t in store.tenants()] == [5.0]
        assert len(store.api_keys()) == 2
    finally:
        store.close()
