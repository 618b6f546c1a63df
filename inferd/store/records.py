"""The governance records the store keeps: tenants, API keys, budgets, prices, usage rows, audit entries.

Plain frozen values; the store turns them into rows and back. Money is kept in integer micro-units of the
configured currency (`cost_micros`), so sums and budget checks are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from inferd.qos import Tier

Role = Literal["admin", "user"]
ROLES: Final[tuple[Role, ...]] = ("admin", "user")
PayloadPolicy = Literal["none", "metadata", "full"]
PAYLOAD_POLICIES: Final[tuple[PayloadPolicy, ...]] = ("none", "metadata", "full")
Period = Literal["day", "month", "total"]
PERIODS: Final[tuple[Period, ...]] = ("day", "month", "total")
Scope = Literal["tenant", "workflow"]
SCOPES: Final[tuple[Scope, ...]] = ("tenant", "workflow")
MICROS: Final = 1_000_000


@dataclass(frozen=True)
class Limits:
    """Rate and size limits of a tenant or a key; None = unlimited."""

    rpm: int | None = None
    """Requests per minute."""
    tpm: int | None = None
    """Tokens (prompt + completion) per minute."""
    max_concurrent: int | None = None
    """Requests in flight at once."""
    max_tokens: int | None = None
    """Ceiling on one request's completion tokens (its `max_tokens` is clamped to it)."""

    def as_dict(self) -> dict[str, int | None]:
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "max_tokens": self.max_tokens,
        }


@dataclass(frozen=True)
class Tenant:
    """A customer of the server: owns keys, budgets and usage."""

    name: str
    limits: Limits = Limits()
    payload_logging: PayloadPolicy = "none"
    """What the audit log keeps of each inference: `none` (counts only), `metadata` (request shape,
    parameters), `full` (prompts and outputs too)."""
    disabled: bool = False
    created: float = 0.0


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: never the key itself, only its hash."""

    key_id: str
    """Public identifier (the key's prefix), shown in listings, logs and the ledger."""
    tenant: str
    key_hash: str
    """Hex SHA-256 of the whole key."""
    roles: frozenset[Role] = frozenset({"user"})
    models: tuple[str, ...] = ("*",)
    """Model name patterns (fnmatch) this key may use."""
    limits: Limits = Limits()
    expires_at: float | None = None
    """Unix time after which the key is refused; None = never."""
    disabled: bool = False
    name: str = ""
    created: float = 0.0
    priority: Tier | None = None
    """Tier of the key's requests that send no `x-inferd-priority` (None: interactive)."""

    def describe(self) -> dict[str, Any]:
        """The key as the admin API shows it (no hash)."""
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "name": self.name,
            "roles": sorted(self.roles),
            "models": list(self.models),
            "limits": self.limits.as_dict(),
            "expires_at": self.expires_at,
            "disabled": self.disabled,
            "created": self.created,
            "priority": self.priority or "interactive",
        }


@dataclass(frozen=True)
class Budget:
    """A cap on a tenant's spend per period; with scope `workflow` it caps each workflow separately."""

    tenant: str
    scope: Scope = "tenant"
    period: Period = "month"
    max_tokens: int | None = None
    max_cost_micros: int | None = None
    max_requests: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "scope": self.scope,
            "period": self.period,
            "max_tokens": self.max_tokens,
            "max_cost": None if self.max_cost_micros is None else self.max_cost_micros / MICROS,
            "max_requests": self.max_requests,
        }


@dataclass(frozen=True)
class Price:
    """What one model costs, in micro-units of the currency."""

    model: str
    prompt_per_1k_micros: int = 0
    completion_per_1k_micros: int = 0
    per_inference_micros: int = 0

    def cost_micros(self, prompt_tokens: int, completion_tokens: int, inferences: int) -> int:
        """Exact cost (rounded up to a micro-unit per token kind)."""
        return (
            -(-prompt_tokens * self.prompt_per_1k_micros // 1000)
            + -(-completion_tokens * self.completion_per_1k_micros // 1000)
            + inferences * self.per_inference_micros
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_per_1k": self.prompt_per_1k_micros / MICROS,
            "completion_per_1k": self.completion_per_1k_micros / MICROS,
            "per_inference": self.per_inference_micros / MICROS,
        }


class UsageRow(NamedTuple):
    """One request's line in the usage ledger (a tuple in the table's column order: cheap to build on the
    request path and inserted as is)."""

    request_id: str
    time: float
    tenant: str
    key_id: str
    workflow: str
    model: str
    version: str
    protocol: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_micros: int = 0
    status: str = "ok"
    """`ok`, or the error kind that ended the request (`aborted`, `invalid_input`, ...)."""
    latency_ms: float = 0.0
    idempotency_key: str = ""
    retry_of: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


UsageFields = tuple[str, float, str, str, str, str, str, str, int, int, int, int, str, float, str, str]
"""A `UsageRow`'s fields in order, as a plain tuple: what the request path builds (a NamedTuple's constructor
runs interpreted, about 240 ns against 25 for the tuple). A `UsageRow` is one too."""


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log."""

    time: float
    action: str
    """`admin.<op>`, `auth.failure`, `limit.refused`, `inference`."""
    tenant: str = ""
    key_id: str = ""
    target: str = ""
    outcome: str = "ok"
    request_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
