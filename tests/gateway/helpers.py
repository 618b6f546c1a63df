"""Real governance parts on a temporary state dir, with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from inferd.gateway.context import CallContext, Principal
from inferd.gateway.governance import Governance
from inferd.metrics.registry import Metrics
from inferd.store.records import Tenant
from inferd.store.sqlite import SqliteStore


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Unix time of a UTC date and time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@dataclass
class FakeClock:
    now: float = field(default_factory=lambda: utc(2024, 3, 10, 12))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_governance(store: SqliteStore, clock: FakeClock) -> Governance:
    return Governance(store, Metrics(CollectorRegistry(auto_describe=True)), clock=clock)


def ctx(
    tenant: str, key_id: str = "", request_id: str = "r", headers: dict[str, str] | None = None
) -> CallContext:
    return CallContext(
        "openai", request_id, lambda exc: "ok", headers or {}, Principal(tenant, key_id, frozenset({"user"}))
    )


def store_with_tenants(path: Path, *tenants: Tenant) -> SqliteStore:
    store = SqliteStore(path)
    for t in tenants:
        store.put_tenant(t)
    return store
