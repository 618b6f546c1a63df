"""Response headers that report limits and spend: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
(OpenAI's names), `retry-after`, and `x-inferd-cost`. Shared by every HTTP transport (and gRPC metadata)."""

from __future__ import annotations

import math
from typing import Final

from inferd.errors import LimitState, RateLimited, ResourceExhausted
from inferd.gateway.context import CallContext
from inferd.gateway.ratelimit import tightest
from inferd.store.records import MICROS


def _reset(seconds: float) -> str:
    """OpenAI's duration format: `1s`, `6m0s`, `250ms`."""
    if seconds < 1.0:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def decimal_micros(micros: int) -> str:
    """Micro-units as a decimal with six places (`1234567` -> `1.234567`), exactly, without a float."""
    whole = micros // MICROS
    padded = str(micros - whole * MICROS + MICROS)  # "1" and the six digits of the fraction
    return f"{whole}.{padded[1:]}"


_NAMES: Final = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
}


def _put_limit(headers: dict[str, str], kind: str, limit: int, remaining: int, reset_s: float) -> None:
    limit_name, remaining_name, reset_name = _NAMES[kind]
    headers[limit_name] = str(limit)
    headers[remaining_name] = str(remaining)
    headers[reset_name] = _reset(reset_s)


def limit_headers(limits: dict[str, LimitState]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, state in limits.items():
        _put_limit(headers, kind, state.limit, state.remaining, state.reset_s)
    return headers


def error_headers(exc: BaseException) -> dict[str, str]:
    """`retry-after` for retryable refusals, plus the limit state of a rate limit."""
    headers: dict[str, str] = {}
    if isinstance(exc, ResourceExhausted):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, RateLimited):
        headers.update(limit_headers(exc.limits))
    return headers


def success_headers(ctx: CallContext, rate_limits: bool) -> dict[str, str]:
    """Request id and the settled cost when known; with `rate_limits`, also the `x-ratelimit-*` state after
    admission. The OpenAI API sends them on every response (its clients read them); V2 clients have no use
    for them on a success, and each header costs the HTTP server microseconds per response, so V2 sends
    them only with a refusal (`error_headers`)."""
    headers = {"x-request-id": ctx.request_id}
    if rate_limits and ctx.limit_buckets:
        for kind, bucket in tightest(ctx.limit_buckets, ctx.admitted_at).items():
            limit, remaining, reset_s = bucket.report()
            _put_limit(headers, kind, limit, remaining, reset_s)
    if ctx.cost_micros is not None:
        headers["x-inferd-cost"] = decimal_micros(ctx.cost_micros)
    return headers
