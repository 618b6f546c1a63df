"""Administration of tenants, keys, budgets and prices, and queries of usage and the audit log.

One service behind both the admin HTTP API (`/admin/v1/...`) and the CLI's direct mode (on the state dir):
each operation takes a plain mapping (a JSON body or CLI flags), validates it strictly (unknown keys and
wrong types are InvalidInput naming the key), writes the store together with its audit entry, and asks a
running server's governance (when there is one in this process) to reload. A server in another process
picks the change up through the store's `config_version`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from inferd.configfile import ConfigError, parse
from inferd.errors import InvalidInput, NotFound
from inferd.gateway import keys
from inferd.gateway.context import Principal
from inferd.qos import Tier
from inferd.store.records import (
    MICROS,
    ApiKey,
    AuditEntry,
    Budget,
    Limits,
    PayloadPolicy,
    Period,
    Price,
    Role,
    Scope,
    Tenant,
)
from inferd.store.sqlite import USAGE_GROUPS, SqliteStore

T = TypeVar("T")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class TenantSpec:
    """Body of `PUT /admin/v1/tenants/{name}`."""

    rpm: int | None = None
    """Requests per minute of the whole tenant."""
    tpm: int | None = None
    """Tokens per minute of the whole tenant."""
    max_concurrent: int | None = None
    """Requests in flight at once."""
    max_tokens: int | None = None
    """Ceiling on one request's completion tokens."""
    payload_logging: PayloadPolicy = "none"
    """What the audit log keeps of each inference: none, metadata or full."""
    disabled: bool = False


@dataclass
class KeySpec:
    """Body of `POST /admin/v1/keys`."""

    tenant: str
    models: list[str] = field(default_factory=lambda: ["*"])
    """Model name patterns (fnmatch) the key may use."""
    roles: list[Role] = field(default_factory=lambda: ["user"])
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    max_tokens: int | None = None
    expires_in_s: float | None = None
    """Seconds from now until the key expires."""
    expires_at: float | None = None
    """Unix time at which the key expires (alternative to `expires_in_s`)."""
    name: str = ""
    priority: Tier | None = None
    """Tier of the key's requests that send no `x-inferd-priority`: `interactive` (default) or `batch`."""


@dataclass
class KeyPatch:
    """Body of `PATCH /admin/v1/keys/{key_id}`; absent fields keep their value."""

    disabled: bool | None = None
    models: list[str] | None = None
    expires_at: float | None = None
    """Unix time; 0 removes the expiry."""
    name: str | None = None
    priority: Tier | None = None
    """`interactive` or `batch`."""


@dataclass
class BudgetSpec:
    """Body of `PUT /admin/v1/budgets`."""

    tenant: str
    period: Period = "month"
    scope: Scope = "tenant"
    """`tenant`: the whole tenant; `workflow`: each workflow of the tenant separately."""
    max_tokens: int | None = None
    max_cost: float | None = None
    """In the currency."""
    max_requests: int | None = None


@dataclass
class PriceSpec:
    """Body of `PUT /admin/v1/prices` (`model` may be `*`: the default price)."""

    model: str
    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0
    per_inference: float = 0.0


def _parse(cls: type[T], doc: Any, where: str) -> T:
    try:
        return parse(cls, doc, where)
    except ConfigError as exc:
        raise InvalidInput(str(exc)) from None


MAX_COUNT = 2**53
"""Largest count (tokens, requests, limits) accepted: exact in JSON doubles, inside SQLite's 64 bits."""
MAX_MONEY = 10**12
"""Largest amount of money accepted (its micro-units must fit SQLite's 64-bit integers)."""


def _non_negative(where: str, money: bool = False, **values: float | None) -> None:
    top = MAX_MONEY if money else MAX_COUNT
    for name, value in values.items():
        if value is None:
            continue
        if not 0 <= value <= top:  # also refuses NaN
            raise InvalidInput(f"{where}.{name} must be >= 0 and <= {top}, got {value}")


def _positive_limits(where: str, limits: Limits) -> None:
    for name, value in limits.as_dict().items():
        if value is not None and not 1 <= value <= MAX_COUNT:
            raise InvalidInput(
                f"{where}.{name} must be >= 1 and <= {MAX_COUNT} (omit it for no limit), got {value}"
            )


def _micros(value: float | None) -> int | None:
    return None if value is None else round(value * MICROS)


def parse_since(text: str | None, now: float) -> float:
    """`7d`, `24h`, `30m`, `90s`, an ISO date or time (UTC), or unix seconds; absent = all time."""
    if not text:
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):  # `nan` would silently match nothing, `-inf` everything
            return seconds
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"since: expected 7d, 24h, 30m, an ISO date or unix seconds, got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class AdminService:
    """Operations of the admin API and CLI. `on_change` (a running server's reload) runs after writes."""

    def __init__(
        self,
        store: SqliteStore,
        on_change: Callable[[], None] | None = None,
        budget_status: Callable[[str], list[dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._on_change = on_change
        self._budget_status = budget_status
        self.clock = clock

    def _audit(self, actor: Principal, action: str, target: str, detail: dict[str, Any]) -> AuditEntry:
        return AuditEntry(self.clock(), action, actor.tenant, actor.key_id, target, "ok", "", detail)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- tenants -------------------------------------------------------------------------------------

    def put_tenant(self, actor: Principal, name: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        if not NAME.match(name):
            raise InvalidInput(f"tenant name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        spec = _parse(TenantSpec, dict(doc), "tenant")
        limits = Limits(spec.rpm, spec.tpm, spec.max_concurrent, spec.max_tokens)
        _positive_limits("tenant", limits)
        existing = {t.name: t for t in self.store.tenants()}.get(name)
        tenant = Tenant(
            name, limits, spec.payload_logging, spec.disabled, existing.created if existing else self.clock()
        )
        self.store.put_tenant(tenant, self._audit(actor, "admin.tenant_put", name, dict(doc)))
        self._changed()
        return describe_tenant(tenant)

    def get_tenant(self, name: str) -> dict[str, Any]:
        for t in self.store.tenants():
            if t.name == name:
                return describe_tenant(t)
        raise NotFound(f"unknown tenant {name!r}")

    def list_tenants(self) -> list[dict[str, Any]]:
        return [describe_tenant(t) for t in self.store.tenants()]

    def delete_tenant(self, actor: Principal, name: str) -> None:
        if name == actor.tenant:
            raise InvalidInput("an admin cannot delete its own tenant")
        if not self.store.delete_tenant(name, self._audit(actor, "admin.tenant_delete", name, {})):
            raise NotFound(f"unknown tenant {name!r}")
        self._changed()

    # -- keys ----------------------------------------------------------------------------------------

    def create_key(self, actor: Principal, doc: Mapping[str, Any]) -> dict[str, Any]:
        """A new key; the response is the only place the key itself ever appears."""
        spec = _parse(KeySpec, dict(doc), "key")
        if spec.tenant not in {t.name for t in self.store.tenants()}:
            raise InvalidInput(f"key.tenant: unknown tenant {spec.tenant!r}; create it first")
        if not spec.models or not all(isinstance(m, str) and m for m in spec.models):
            raise InvalidInput("key.models must be a non-empty list of model name patterns")
        if not spec.roles:
            raise InvalidInput("key.roles must name at least one role (admin, user)")
        limits = Limits(spec.rpm, spec.tpm, spec.max_concurrent, spec.max_tokens)
        _positive_limits("key", limits)
        _non_negative("key", expires_in_s=spec.expires_in_s, expires_at=spec.expires_at)
        now = self.clock()
        expires = spec.expires_at
        if spec.expires_in_s is not None:
            expires = now + spec.expires_in_s
        key_id, key = keys.generate_key()
        record = ApiKey(
            key_id, spec.tenant, keys.hash_key(key), frozenset(spec.roles), tuple(spec.models), limits,
            expires, False, spec.name, now, spec.priority,
        )  # fmt: skip
        self.store.put_key(record, self._audit(actor, "admin.key_create", key_id, dict(doc)))
        self._changed()
        return {"key": key, **record.describe()}

    def list_keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [k.describe() for k in self.store.api_keys(tenant)]

    def _key(self, key_id: str, tenant: str | None = None) -> ApiKey:
        for k in self.store.api_keys(tenant):
            if k.key_id == key_id:
                return k
        raise NotFound(f"unknown API key {key_id!r}")

    def update_key(self, actor: Principal, key_id: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        patch = _parse(KeyPatch, dict(doc), "key")
        key = self._key(key_id)
        if patch.models is not None and not patch.models:
            raise InvalidInput("key.models must be a non-empty list of model name patterns")
        expires = key.expires_at
        _non_negative("key", expires_at=patch.expires_at)
        if patch.expires_at is not None:
            expires = None if patch.expires_at == 0 else patch.expires_at
        updated = ApiKey(
            key.key_id, key.tenant, key.key_hash, key.roles,
            tuple(patch.models) if patch.models is not None else key.models, key.limits, expires,
            patch.disabled if patch.disabled is not None else key.disabled,
            patch.name if patch.name is not None else key.name, key.created,
            patch.priority if patch.priority is not None else key.priority,
        )  # fmt: skip
        self.store.put_key(updated, self._audit(actor, "admin.key_update", key_id, dict(doc)))
        self._changed()
        return updated.describe()

    def revoke_key(self, actor: Principal, key_id: str) -> None:
        if key_id == actor.key_id:
            raise InvalidInput("a key cannot revoke itself; use another admin key")
        if not self.store.delete_key(key_id, self._audit(actor, "admin.key_revoke", key_id, {})):
            raise NotFound(f"unknown API key {key_id!r}")
        self._changed()

    # -- budgets and prices --------------------------------------------------------------------------

    def set_budget(self, actor: Principal, doc: Mapping[str, Any]) -> dict[str, Any]:
        spec = _parse(BudgetSpec, dict(doc), "budget")
        if spec.tenant not in {t.name for t in self.store.tenants()}:
            raise InvalidInput(f"budget.tenant: unknown tenant {spec.tenant!r}")
        _non_negative("budget", max_tokens=spec.max_tokens, max_requests=spec.max_requests)
        _non_negative("budget", money=True, max_cost=spec.max_cost)
        if spec.max_tokens is None and spec.max_cost is None and spec.max_requests is None:
            raise InvalidInput("budget: give at least one of max_tokens, max_cost, max_requests")
        budget = Budget(
            spec.tenant, spec.scope, spec.period, spec.max_tokens, _micros(spec.max_cost), spec.max_requests
        )
        target = f"{spec.tenant}/{spec.scope}/{spec.period}"
        self.store.put_budget(budget, self._audit(actor, "admin.budget_set", target, dict(doc)))
        self._changed()
        return budget.describe()

    def delete_budget(self, actor: Principal, tenant: str, scope: str, period: str) -> None:
        target = f"{tenant}/{scope}/{period}"
        if not self.store.delete_budget(
            tenant, scope, period, self._audit(actor, "admin.budget_delete", target, {})
        ):
            raise NotFound(f"no {period} {scope} budget for tenant {tenant!r}")
        self._changed()

    def list_budgets(self, tenant: str | None = None) -> list[dict[str, Any]]:
        if self._budget_status is not None and tenant is not None:
            return self._budget_status(tenant)
        return [b.describe() for b in self.store.budgets(tenant)]

    def set_price(self, actor: Principal, doc: Mapping[str, Any]) -> dict[str, Any]:
        spec = _parse(PriceSpec, dict(doc), "price")
        _non_negative("price", money=True, prompt_per_1k=spec.prompt_per_1k,
                      completion_per_1k=spec.completion_per_1k, per_inference=spec.per_inference)  # fmt: skip
        price = Price(
            spec.model,
            round(spec.prompt_per_1k * MICROS),
            round(spec.completion_per_1k * MICROS),
            round(spec.per_inference * MICROS),
        )
        self.store.put_price(price, self._audit(actor, "admin.price_set", spec.model, dict(doc)))
        self._changed()
        return price.describe()

    def delete_price(self, actor: Principal, model: str) -> None:
        if not self.store.delete_price(model, self._audit(actor, "admin.price_delete", model, {})):
            raise NotFound(f"no price for model {model!r}")
        self._changed()

    def list_prices(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.store.prices()]

    # -- queries -------------------------------------------------------------------------------------

    def usage(self, tenant: str | None, since: str | None, by: str) -> list[dict[str, Any]]:
        if by not in USAGE_GROUPS:
            raise InvalidInput(f"by: expected one of {', '.join(USAGE_GROUPS)}, got {by!r}")
        rows = self.store.usage_report(by, tenant, parse_since(since, self.clock()))
        for row in rows:
            row["cost"] = row.pop("cost_micros") / MICROS
        return rows

    def audit(
        self, tenant: str | None, since: str | None, action: str | None, limit: int
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= 100_000:
            raise InvalidInput(f"limit must be in [1, 100000], got {limit}")
        entries = self.store.audit_entries(tenant, parse_since(since, self.clock()), action, limit)
        return [
            {
                "time": e.time,
                "action": e.action,
                "tenant": e.tenant,
                "key_id": e.key_id,
                "target": e.target,
                "outcome": e.outcome,
                "request_id": e.request_id,
                "detail": e.detail,
            }
            for e in entries
        ]


def describe_tenant(t: Tenant) -> dict[str, Any]:
    return {
        "name": t.name,
        **t.limits.as_dict(),
        "payload_logging": t.payload_logging,
        "disabled": t.disabled,
        "created": t.created,
    }
