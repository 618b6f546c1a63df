"""An immutable snapshot of the governance configuration (tenants, keys, budgets, prices) that the request
path reads without touching the database; rebuilt when the configuration changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from inferd.gateway.context import Principal
from inferd.qos import Tier
from inferd.store.records import ApiKey, Budget, Limits, Price, Tenant
from inferd.store.sqlite import SqliteStore

FREE: Final = Price("*")


@dataclass(frozen=True)
class KeyPolicy:
    """What the request path needs about one key, resolved once per snapshot."""

    key: ApiKey
    tenant: Tenant
    principal: Principal
    key_owner: str
    """Name of the key's rate-limit and concurrency counters."""
    tenant_owner: str
    budgets: tuple[Budget, ...]
    ceiling: int | None
    """The lower of the key's and the tenant's per-request `max_tokens` ceilings."""
    priority: Tier = "interactive"
    """The tier of the key's requests that send no `x-inferd-priority`."""

    @classmethod
    def of(cls, key: ApiKey, tenant: Tenant, budgets: tuple[Budget, ...]) -> KeyPolicy:
        caps = [c for c in (key.limits.max_tokens, tenant.limits.max_tokens) if c is not None]
        principal = Principal(key.tenant, key.key_id, frozenset(key.roles), key.models)
        return cls(
            key, tenant, principal, "key:" + key.key_id, "tenant:" + tenant.name, budgets,
            min(caps) if caps else None, key.priority or "interactive",
        )  # fmt: skip

    @property
    def limits(self) -> tuple[tuple[str, Limits], tuple[str, Limits]]:
        return (self.key_owner, self.key.limits), (self.tenant_owner, self.tenant.limits)


@dataclass(frozen=True)
class PolicySnapshot:
    version: int = -1
    tenants: dict[str, Tenant] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    budgets: dict[str, tuple[Budget, ...]] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    policies: dict[str, KeyPolicy] = field(default_factory=dict)
    """Per key id, for keys whose tenant exists."""
    usable: dict[str, KeyPolicy] = field(default_factory=dict)
    """Per key hash, the keys that authenticate (neither they nor their tenant disabled; expiry is checked
    per request): the request path finds a key by the SHA-256 of what it presents."""

    @classmethod
    def load(cls, store: SqliteStore) -> PolicySnapshot:
        version = store.config_version()
        budgets: dict[str, list[Budget]] = {}
        for b in store.budgets():
            budgets.setdefault(b.tenant, []).append(b)
        tenants = {t.name: t for t in store.tenants()}
        keys = {k.key_id: k for k in store.api_keys()}
        by_tenant = {t: tuple(bs) for t, bs in budgets.items()}
        policies = {
            k.key_id: KeyPolicy.of(k, tenants[k.tenant], by_tenant.get(k.tenant, ()))
            for k in keys.values()
            if k.tenant in tenants
        }
        usable = {
            p.key.key_hash: p for p in policies.values() if not p.key.disabled and not p.tenant.disabled
        }
        prices = {p.model: p for p in store.prices()}
        return cls(version, tenants, keys, by_tenant, prices, policies, usable)

    def price(self, model: str) -> Price:
        """The model's price, else the `*` default, else free."""
        return self.prices.get(model) or self.prices.get("*") or FREE
