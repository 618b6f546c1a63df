"""Governance of the request path: who calls (API keys), what they may use, and what they may spend.

The gateway asks it to `authenticate` a call's headers, `admit` a request with an upper bound of what it can
use (rate limits, concurrency caps and budgets checked and reserved at once), and `settle` it with what it
actually used: the reservation becomes settled usage and the request's ledger row (and audit entry) is
appended to the store's journal, durable when `settle` returns, so the caller answers the client only after
it. Nothing here touches the database on the request path; configuration is read from an in-memory snapshot
that a watcher refreshes when any process changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from inferd.errors import (
    InferdError,
    LedgerWriteFailed,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
)
from inferd.gateway import keys
from inferd.gateway.budgets import Amount, BudgetBook, Refusal, Reservation, period_end, period_start
from inferd.gateway.context import CallContext, Principal
from inferd.gateway.policy import KeyPolicy, PolicySnapshot
from inferd.gateway.ratelimit import Buckets, Concurrency, InFlight, Take, TokenBucket, limit_states
from inferd.metrics.registry import Metrics
from inferd.store.records import MICROS, PERIODS, ApiKey, AuditEntry, Tenant, UsageFields
from inferd.store.sqlite import SqliteStore

log = logging.getLogger("inferd.governance")

ADMIN_TENANT: Final = "admin"
ADMIN_KEY_FILE: Final = "admin.key"
IDEMPOTENCY_MEMORY: Final = 100_000
"""Idempotency keys remembered (per server) to link retries to their first request."""


# The request path builds these per request: plain classes with their own `__init__` (compiled, a small
# fraction of a dataclass's interpreted one).


class Demand:
    """The most a request can use: what is reserved at admission. Immutable."""

    def __init__(self, prompt_tokens: int = 0, completion_tokens: int = 0, inferences: int = 0) -> None:
        self.prompt_tokens: Final = prompt_tokens
        self.completion_tokens: Final = completion_tokens
        self.inferences: Final = inferences

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Consumed:
    """What a request used, settled when it ends. Immutable."""

    def __init__(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        inferences: int = 0,
    ) -> None:
        self.prompt_tokens: Final = prompt_tokens
        self.completion_tokens: Final = completion_tokens
        self.cached_tokens: Final = cached_tokens
        self.inferences: Final = inferences

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Lease:
    """An admitted request's hold on limits and budgets, until `settle`."""

    def __init__(
        self,
        ctx: CallContext,
        model: str,
        version: str,
        workflow: str,
        demand: Demand,
        reservation: Reservation,
        token_buckets: list[TokenBucket],
        in_flight: tuple[InFlight, ...],
        started: float,
        retry_of: str = "",
        idempotency_key: str = "",
        payload_logging: str = "none",
    ) -> None:
        self.ctx: Final = ctx
        self.model: Final = model
        self.version: Final = version
        self.workflow: Final = workflow
        self.demand: Final = demand
        self.reservation: Final = reservation
        self.token_buckets: Final = token_buckets
        self.in_flight: Final = in_flight
        """The concurrency counters the request entered (its key's and its tenant's)."""
        self.started: Final = started
        self.retry_of: Final = retry_of
        self.idempotency_key: Final = idempotency_key
        self.payload_logging: Final = payload_logging
        """The tenant's payload logging when admitted."""
        self.settled = False


MAX_PLANS: Final = 100_000


@dataclass(frozen=True)
class _Plan:
    """What admitting one key's request checks: its and its tenant's concurrency caps and rate buckets."""

    version: int
    """The configuration snapshot it was resolved from."""
    caps: tuple[tuple[str, InFlight, int], ...]
    """(owner, its requests in flight, its concurrency cap)."""
    checks: tuple[tuple[str, str, TokenBucket], ...]
    """(owner, `requests` or `tokens`, bucket)."""
    in_flight: tuple[InFlight, ...]
    """Every owner's requests in flight (capped or not: reported either way)."""
    request_takes: tuple[Take, ...]
    """What a request without tokens (a tensor inference) takes: one from each requests bucket."""


def status_of(exc: BaseException | None) -> str:
    """The ledger's status for an outcome."""
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class Governance:
    """Keys, limits, budgets, ledger and audit for one server."""

    def __init__(
        self,
        store: SqliteStore,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.snapshot = PolicySnapshot.load(store)
        self.book = BudgetBook()
        self.buckets = Buckets()
        self.concurrency = Concurrency()
        self.journal = store.open_journal()
        self._digests = keys.KnownDigests()
        self._idempotency: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._plans: dict[str, _Plan] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._gauged: set[tuple[str, str]] = set()
        self._rebuild_budgets()
        self._update_budget_gauges()

    # -- lifecycle -----------------------------------------------------------------------------------

    def _rebuild_budgets(self) -> None:
        """Settled usage of the current day, month and all time, from the ledger."""
        now = self.clock()
        rows = []
        for period in PERIODS:
            start = period_start(period, now)
            for s in self.store.usage_sums(start):
                rows.append(
                    (period, start, s.tenant, s.workflow, Amount(s.tokens, s.cost_micros, s.requests))
                )
        self.book.load(rows)

    def start_watching(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                version = await asyncio.to_thread(self.store.config_version)
                if version != self.snapshot.version:
                    await self.reload()
                self._update_budget_gauges()
                await asyncio.to_thread(self.store.maintain)
            except Exception:
                log.exception("reloading the governance configuration failed")

    async def reload(self) -> None:
        """Re-read tenants, keys, budgets and prices."""
        self.snapshot = await asyncio.to_thread(PolicySnapshot.load, self.store)
        self._update_budget_gauges()

    def reload_soon(self) -> None:
        """Reload now, from a worker thread (the admin API's writes); the gauges follow at the watcher's
        next tick."""
        self.snapshot = PolicySnapshot.load(self.store)

    async def close(self) -> None:
        """Stop watching; import the journal's last rows into the database and close it."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.store.close()

    # -- identity ------------------------------------------------------------------------------------

    def authenticate(self, headers: dict[str, str], protocol: str, request_id: str) -> Principal:
        """The principal of the presented key, or Unauthenticated (audited, counted)."""
        presented = keys.presented_key(headers)
        if presented is None:
            self._auth_failure("missing", "", protocol, request_id)
            raise Unauthenticated(
                "missing API key: send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header"
            )
        digest = self._digests.digest(presented)
        usable = self.snapshot.usable.get(digest)
        if usable is not None:
            self._digests.remember(presented, digest)
            expires = usable.key.expires_at
            if expires is None or self.clock() < expires:
                return usable.principal
        # Refused (or expired): find out why, for the client's message and the audit log.
        key_id = keys.key_id_of(presented)
        record = self.snapshot.keys.get(key_id) if key_id else None
        if not keys.matches(presented, record.key_hash if record else None) or record is None:
            self._auth_failure("invalid", key_id or "", protocol, request_id)
            raise Unauthenticated("invalid API key")
        if record.disabled:
            self._auth_failure("disabled", record.key_id, protocol, request_id, record.tenant)
            raise Unauthenticated(f"API key {record.key_id} is disabled")
        if record.expires_at is not None and self.clock() >= record.expires_at:
            self._auth_failure("expired", record.key_id, protocol, request_id, record.tenant)
            raise Unauthenticated(f"API key {record.key_id} has expired")
        policy = self.snapshot.policies.get(record.key_id)
        if policy is None or policy.tenant.disabled:
            self._auth_failure("tenant_disabled", record.key_id, protocol, request_id, record.tenant)
            raise Unauthenticated(f"tenant {record.tenant!r} is disabled")
        return policy.principal

    def _auth_failure(
        self, reason: str, key_id: str, protocol: str, request_id: str, tenant: str = ""
    ) -> None:
        self.metrics.rejections.labels(tenant, "auth").inc()
        self.audit(
            AuditEntry(
                self.clock(),
                "auth.failure",
                tenant,
                key_id,
                protocol,
                reason,
                request_id,
            )
        )

    # -- admission -----------------------------------------------------------------------------------

    def ceiling(self, principal: Principal) -> int | None:
        """The per-request completion-token ceiling of the key and its tenant (the lower one)."""
        return self._policy(principal).ceiling

    def _policy(self, principal: Principal) -> KeyPolicy:
        policy = self.snapshot.policies.get(principal.key_id)
        if policy is None:  # revoked while the call ran: its tenant's limits and budgets still apply
            key = ApiKey(principal.key_id, principal.tenant, "", frozenset({"user"}))
            tenant = self.snapshot.tenants.get(principal.tenant) or Tenant(principal.tenant)
            policy = KeyPolicy.of(key, tenant, self.snapshot.budgets.get(principal.tenant, ()))
        return policy

    def _plan(self, principal: Principal, policy: KeyPolicy, now: float) -> _Plan:
        """The key's checks, resolved once per configuration snapshot."""
        plan = self._plans.get(principal.key_id)
        if plan is None or plan.version != self.snapshot.version:
            caps, checks = [], []
            for owner, lim in policy.limits:
                if lim.max_concurrent is not None:
                    caps.append((owner, self.concurrency.slot(owner), lim.max_concurrent))
                if lim.rpm is not None:
                    checks.append((owner, "requests", self.buckets.get(owner, "requests", lim.rpm, now)))
                if lim.tpm is not None:
                    checks.append((owner, "tokens", self.buckets.get(owner, "tokens", lim.tpm, now)))
            in_flight = tuple(self.concurrency.slot(owner) for owner, _ in policy.limits)
            request_takes = tuple((o, k, b, 1) for o, k, b in checks if k == "requests")
            plan = _Plan(self.snapshot.version, tuple(caps), tuple(checks), in_flight, request_takes)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[principal.key_id] = plan
        return plan

    def admit(self, ctx: CallContext, model: str, version: str, demand: Demand, workflow: str) -> Lease:
        """Check every limit and budget and reserve `demand`, or raise RateLimited / QuotaExceeded
        (nothing is taken from any limit when one refuses)."""
        now = self.clock()
        principal = ctx.principal
        policy = self._policy(principal)
        plan = self._plan(principal, policy, now)
        tokens = demand.tokens
        for owner, counter, cap in plan.caps:
            if counter.n >= cap:
                self._refuse(ctx, model, "concurrency")
                raise RateLimited(
                    f"too many concurrent requests for {_owner_words(owner)}: the limit is {cap}",
                    "concurrent_requests_exceeded",
                    1.0,
                )
        # What to take from which bucket once everything fits (nothing from a tokens bucket for no tokens).
        taken: Sequence[Take] = (
            [(owner, kind, bucket, tokens if kind == "tokens" else 1) for owner, kind, bucket in plan.checks]
            if tokens
            else plan.request_takes
        )
        for owner, kind, bucket, amount in taken:
            if not bucket.fits(amount, now):
                self._rate_limited(ctx, model, owner, kind, bucket, amount, taken, now)
        price = self.snapshot.price(model)
        reserve = Amount(
            tokens,
            price.cost_micros(demand.prompt_tokens, demand.completion_tokens, demand.inferences),
            1,
        )
        if policy.budgets:
            refusal = self.book.check(principal.tenant, workflow, policy.budgets, reserve, now)
            if refusal is not None:
                self._over_budget(ctx, model, workflow, refusal)
        # Everything fits: take.
        token_buckets = []
        for _, kind, bucket, amount in taken:
            bucket.take(amount, now)
            if kind == "tokens":
                token_buckets.append(bucket)
        for counter in plan.in_flight:
            counter.n += 1
        ctx.limit_buckets = taken
        ctx.admitted_at = now
        idempotency_key = ctx.headers.get("idempotency-key", "")[:256]
        reservation = self.book.reserve(principal.tenant, workflow, reserve, now)
        return Lease(
            ctx,
            model,
            version,
            workflow,
            demand,
            reservation,
            token_buckets,
            plan.in_flight,
            time.perf_counter(),
            self._retry_of(ctx, idempotency_key),
            idempotency_key,
            payload_logging=policy.tenant.payload_logging,
        )

    def _rate_limited(
        self,
        ctx: CallContext,
        model: str,
        owner: str,
        kind: str,
        bucket: TokenBucket,
        amount: int,
        taken: Sequence[Take],
        now: float,
    ) -> NoReturn:
        wait = bucket.wait_s(amount, now)
        self._refuse(ctx, model, "rate_limit")
        if wait == float("inf"):
            message = (
                f"request too large for {_owner_words(owner)}: it needs {amount} tokens (prompt + "
                f"max_tokens) and the limit is {bucket.capacity} tokens per minute; lower max_tokens"
            )
            wait = 60.0
        else:
            message = (
                f"rate limit reached for {_owner_words(owner)}: {bucket.capacity} {kind} per minute; "
                f"retry in {wait:.2f}s"
            )
        raise RateLimited(message, f"{kind}_per_minute_exceeded", wait, limit_states(taken, now))

    def _over_budget(self, ctx: CallContext, model: str, workflow: str, refusal: Refusal) -> NoReturn:
        b = refusal.budget
        scope = f"workflow {workflow!r} of tenant" if b.scope == "workflow" else "tenant"
        unit = "micro-units of cost" if refusal.dimension == "cost" else refusal.dimension
        self._refuse(ctx, model, "workflow" if b.scope == "workflow" else "budget")
        raise QuotaExceeded(
            f"{b.period} {refusal.dimension} budget of {scope} {ctx.principal.tenant!r} exhausted: "
            f"{refusal.used} settled + {refusal.in_flight} in flight + {refusal.asked} for this request "
            f"> {refusal.cap} {unit}",
            "workflow_quota_exceeded" if b.scope == "workflow" else "budget_exceeded",
        )

    def _retry_of(self, ctx: CallContext, key: str) -> str:
        """The request this one retries: `x-inferd-retry-of`, or the first request seen with the same
        `Idempotency-Key` (per tenant)."""
        declared = ctx.headers.get("x-inferd-retry-of", "")
        if declared:
            return declared[:128]
        if not key:
            return ""
        slot = (ctx.principal.tenant, key)
        first = self._idempotency.get(slot)
        if first is None:
            self._idempotency[slot] = ctx.request_id
            if len(self._idempotency) > IDEMPOTENCY_MEMORY:
                self._idempotency.popitem(last=False)
            return ""
        return first

    def _refuse(self, ctx: CallContext, model: str, reason: str) -> None:
        self.metrics.rejections.labels(ctx.principal.tenant, reason).inc()
        self.audit(
            AuditEntry(
                self.clock(),
                "limit.refused",
                ctx.principal.tenant,
                ctx.principal.key_id,
                model,
                reason,
                ctx.request_id,
            )
        )

    # -- settlement ----------------------------------------------------------------------------------

    def settle(
        self,
        lease: Lease,
        consumed: Consumed,
        exc: BaseException | None,
        payload: Mapping[str, Any] | None = None,
    ) -> int:
        """Settle the lease with what the request used and append its ledger row (durable when this
        returns); returns the cost in micro-units. LedgerWriteFailed when the row could not be written
        (the client must not see a response whose usage is not recorded); limits and budgets are settled
        all the same."""
        if lease.settled:
            return 0
        lease.settled = True
        now = self.clock()
        ctx = lease.ctx
        principal = ctx.principal
        # Never more than reserved: the guarantee that settled usage stays within budgets.
        prompt = min(consumed.prompt_tokens, lease.demand.prompt_tokens)
        completion = min(consumed.completion_tokens, lease.demand.completion_tokens)
        inferences = min(consumed.inferences, lease.demand.inferences)
        cost = min(
            self.snapshot.price(lease.model).cost_micros(prompt, completion, inferences),
            lease.reservation.amount.cost_micros,
        )
        self.book.settle(lease.reservation, Amount(prompt + completion, cost, 1), now)
        if lease.token_buckets:
            unused = lease.demand.tokens - (prompt + completion)
            for bucket in lease.token_buckets:
                bucket.give_back(unused, now)
        for counter in lease.in_flight:
            counter.n -= 1
        ctx.cost_micros = cost
        status = status_of(exc)
        # Microsecond resolution, rounded half up (cheaper than `round(x, 3)`'s decimal conversion).
        latency_ms = int((time.perf_counter() - lease.started) * 1e6 + 0.5) / 1000.0
        row: UsageFields = (
            ctx.request_id, now, principal.tenant, principal.key_id, lease.workflow, lease.model,
            lease.version, ctx.protocol, prompt, completion, consumed.cached_tokens, cost, status,
            latency_ms, lease.idempotency_key, lease.retry_of,
        )  # fmt: skip
        tenant = principal.tenant
        # The ledger row is the inference's audit entry (the store merges them); a tenant that logs
        # payloads gets its own entry with the request's metadata or full text.
        audit: tuple[AuditEntry, ...] = ()
        policy = lease.payload_logging
        if payload and policy != "none":
            detail: dict[str, Any] = {
                "model": lease.model,
                "version": lease.version,
                "workflow": lease.workflow,
                "status": status,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "latency_ms": latency_ms,
            }
            detail["request"] = payload.get("metadata", {})
            if policy == "full":
                detail["payload"] = payload.get("full", {})
            audit = (AuditEntry(now, "inference", tenant, principal.key_id, lease.model, status,
                                ctx.request_id, detail),)  # fmt: skip
        try:
            if audit:
                self.journal.append((row,), audit)
            else:
                self.journal.append_usage(row)
        except OSError as err:
            log.error("usage ledger write failed for request %s: %s", ctx.request_id, err)
            raise LedgerWriteFailed(f"usage ledger write failed: {err}") from None
        self.metrics.usage.add(
            tenant, lease.model, prompt, completion, consumed.cached_tokens, cost, bool(lease.retry_of)
        )
        return cost

    def release(self, lease: Lease) -> None:
        """Free a lease without a ledger row (the request was refused before any work, e.g. by a
        validation error raised while admitting)."""
        if lease.settled:
            return
        lease.settled = True
        self.book.release(lease.reservation)
        now = self.clock()
        for bucket in lease.token_buckets:
            bucket.give_back(lease.demand.tokens, now)
        for counter in lease.in_flight:
            counter.n -= 1

    def _update_budget_gauges(self) -> None:
        """Point `inferd_budget_remaining` at the budgets of the current snapshot (computed at scrape time,
        nothing on the request path)."""
        wanted = {
            (b.tenant, kind)
            for budgets in self.snapshot.budgets.values()
            for b in budgets
            if b.scope == "tenant"
            for kind, cap in (
                ("tokens", b.max_tokens),
                ("cost", b.max_cost_micros),
                ("requests", b.max_requests),
            )
            if cap is not None
        }
        gauge = self.metrics.budget_remaining
        for tenant, kind in self._gauged - wanted:
            with contextlib.suppress(KeyError):
                gauge.remove(tenant, kind)
        for tenant, kind in wanted - self._gauged:
            gauge.labels(tenant, kind).set_function(functools.partial(self._remaining, tenant, kind))
        self._gauged = wanted

    def _remaining(self, tenant: str, kind: str) -> float:
        """What is left of the tenant's tightest budget of `kind` (cost in the currency)."""
        now = self.clock()
        left: int | None = None
        for b in self.snapshot.budgets.get(tenant, ()):
            cap = {"tokens": b.max_tokens, "cost": b.max_cost_micros, "requests": b.max_requests}[kind]
            if b.scope != "tenant" or cap is None:
                continue
            used = self.book.settled(tenant, "", b.period, now)
            value = cap - {"tokens": used.tokens, "cost": used.cost_micros, "requests": used.requests}[kind]
            left = value if left is None else min(left, value)
        if left is None:
            return float("nan")
        return left / MICROS if kind == "cost" else float(left)

    # -- audit ---------------------------------------------------------------------------------------

    def audit(self, entry: AuditEntry) -> None:
        """Append an audit entry nobody waits for."""
        try:
            self.journal.append((), (entry,))
        except OSError as err:
            log.error("audit log write failed (%s): %s", entry.action, err)

    def budget_status(self, tenant: str) -> list[dict[str, Any]]:
        """Each budget of the tenant with its settled and in-flight usage now."""
        now = self.clock()
        out = []
        for b in self.snapshot.budgets.get(tenant, ()):
            if b.scope == "workflow":
                out.append({**b.describe(), "note": "applies to each workflow separately"})
                continue
            used = self.book.settled(tenant, "", b.period, now)
            held = self.book.reserved(tenant, "", b.period, now)
            out.append(
                {
                    **b.describe(),
                    "used_tokens": used.tokens,
                    "used_cost": used.cost_micros / MICROS,
                    "used_requests": used.requests,
                    "in_flight_tokens": held.tokens,
                    "resets_at": period_end(b.period, now),
                }
            )
        return out


def _owner_words(owner: str) -> str:
    kind, _, name = owner.partition(":")
    return f"API key {name}" if kind == "key" else f"tenant {name!r}"


def ensure_admin_key(
    store: SqliteStore, state_dir: Path, clock: Callable[[], float] = time.time
) -> str | None:
    """On first start (no admin key in the store), create the admin tenant and key, write the key to
    `<state_dir>/admin.key` (mode 0600) and return it so the caller can print it once."""
    if any("admin" in k.roles for k in store.api_keys()):
        return None
    now = clock()
    if ADMIN_TENANT not in {t.name for t in store.tenants()}:
        store.put_tenant(Tenant(ADMIN_TENANT, created=now))
    key_id, key = keys.generate_key()
    store.put_key(
        ApiKey(key_id, ADMIN_TENANT, keys.hash_key(key), frozenset({"admin", "user"}), ("*",),
               name="bootstrap admin key", created=now),
        AuditEntry(now, "admin.bootstrap", ADMIN_TENANT, key_id, key_id),
    )  # fmt: skip
    path = state_dir / ADMIN_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return key


def error_code(exc: BaseException) -> str | None:
    """The machine-readable code of a governance refusal, if `exc` is one."""
    if isinstance(exc, (RateLimited, QuotaExceeded)):
        return exc.code
    if isinstance(exc, Unauthenticated):
        return "invalid_api_key"
    if isinstance(exc, InferdError):
        return None
    return None
