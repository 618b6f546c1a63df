"""Model access patterns and the configuration snapshot the request path reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferd.gateway.access import allowed
from inferd.gateway.policy import FREE, PolicySnapshot
from inferd.store.records import ApiKey, Budget, Limits, Price, Tenant
from inferd.store.sqlite import SqliteStore
from tests.gateway.helpers import FakeClock, new_governance


@pytest.mark.parametrize(
    ("patterns", "model", "expected"),
    [
        (["*"], "anything", True),
        (["llama-*"], "llama-3", True),
        (["llama-*"], "Llama-3", False),  # case matters
        (["llama-*"], "my-llama-3", False),
        (["a", "b?"], "bc", True),
        (["a", "b?"], "bcd", False),
        (["[ab]x"], "bx", True),
        ([], "a", False),
        (["*", "x"], "y", True),
    ],
)
def test_allowed(patterns: list[str], model: str, expected: bool) -> None:
    assert allowed(patterns, model) is expected
    assert allowed(tuple(patterns), model) is expected  # cached: same answer


def test_snapshot_resolves_each_keys_policy(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    try:
        store.put_tenant(Tenant("t", Limits(max_tokens=50, rpm=7)))
        store.put_tenant(Tenant("u"))
        store.put_key(ApiKey("aaaaaaaaaaaa", "t", "h", models=("m*",), limits=Limits(max_tokens=80, tpm=9)))
        store.put_key(ApiKey("bbbbbbbbbbbb", "u", "h", limits=Limits(max_tokens=20)))
        store.put_budget(Budget("t", max_tokens=5))
        store.put_price(Price("m1", 1, 2, 3))
        snap = PolicySnapshot.load(store)
        assert snap.version == store.config_version()
        a, b = snap.policies["aaaaaaaaaaaa"], snap.policies["bbbbbbbbbbbb"]
        assert (a.ceiling, b.ceiling) == (50, 20)
        assert a.budgets == (Budget("t", max_tokens=5),) and b.budgets == ()
        assert a.principal.tenant == "t" and a.principal.models == ("m*",)
        assert a.limits == (
            ("key:aaaaaaaaaaaa", Limits(max_tokens=80, tpm=9)),
            ("tenant:t", Limits(rpm=7, max_tokens=50)),
        )
        assert snap.price("m1") == Price("m1", 1, 2, 3)
        assert snap.price("m2") is FREE
        store.put_price(Price("*", 9))
        assert PolicySnapshot.load(store).price("m2") == Price("*", 9)
    finally:
        store.close()


def test_ceiling_is_the_lower_of_key_and_tenant(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put_tenant(Tenant("t", Limits(max_tokens=100)))
    store.put_key(ApiKey("aaaaaaaaaaaa", "t", "h", limits=Limits(max_tokens=30)))
    store.put_key(ApiKey("bbbbbbbbbbbb", "t", "h"))
    gov = new_governance(store, FakeClock())
    try:
        principal = gov.snapshot.policies["aaaaaaaaaaaa"].principal
        assert gov.ceiling(principal) == 30
        assert gov.ceiling(gov.snapshot.policies["bbbbbbbbbbbb"].principal) == 100
    finally:
        asyncio.run(gov.close())
