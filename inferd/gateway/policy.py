"""An immutable snapshot of the governance configuration (tenants, keys, budgets, prices) that the request
path reads without touching the database; rebuilt when the configuration changes."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferd.store.records import ApiKey, Budget, Price, Tenant
from inferd.store.sqlite import SqliteStore

FREE = Price("*")


@dataclass(frozen=True)
class PolicySnapshot:
    version: int = -1
    tenants: dict[str, Tenant] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    budgets: dict[str, tuple[Budget, ...]] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)

    @classmethod
    def load(cls, store: SqliteStore) -> PolicySnapshot:
        version = store.config_version()
        budgets: dict[str, list[Budget]] = {}
        for b in store.budgets():
            budgets.setdefault(b.tenant, []).append(b)
        return cls(
            version,
            {t.name: t for t in store.tenants()},
            {k.key_id: k for k in store.api_keys()},
            {t: tuple(bs) for t, bs in budgets.items()},
            {p.model: p for p in store.prices()},
        )

    def price(self, model: str) -> Price:
        """The model's price, else the `*` default, else free."""
        return self.prices.get(model) or self.prices.get("*") or FREE
