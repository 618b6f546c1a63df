"""Quality of service of one request: its deadline and its priority tier, shared by the tensor and LLM paths.

Transports carry what the client asked for (the V2 `timeout` parameter, the `x-inferd-timeout-ms` header or
gRPC metadata, a gRPC deadline, the `x-inferd-priority` header or metadata); the gateway completes it with the
key's and the model's defaults; the schedulers act on it: the dynamic batcher serves the interactive tier
before the batch tier and drops work whose deadline passed before it ran, the LLM path likewise before the
first token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

from inferd.errors import DeadlineExceeded, InvalidInput

Tier = Literal["interactive", "batch"]
"""`interactive` requests are served before `batch` ones."""
TIERS: tuple[Tier, ...] = ("interactive", "batch")
TIMEOUT_HEADER = "x-inferd-timeout-ms"
PRIORITY_HEADER = "x-inferd-priority"


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a request's client stops waiting, on the `time.monotonic()` clock."""

    start: float
    """When the clock started (the request arrived)."""
    budget_s: float
    """Seconds the client waits from `start`."""

    @classmethod
    def after(cls, seconds: float, now: float | None = None) -> Deadline:
        return cls(time.monotonic() if now is None else now, seconds)

    @property
    def at(self) -> float:
        """The monotonic time at which the request expires."""
        return self.start + self.budget_s

    def remaining(self, now: float | None = None) -> float:
        return self.at - (time.monotonic() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0

    def exceeded(self, stage: str, model: str, now: float | None = None) -> DeadlineExceeded:
        """The error for a request dropped at `stage` (`while queued`, ...) because it ran out of time."""
        waited = (time.monotonic() if now is None else now) - self.start
        return DeadlineExceeded(
            f"deadline exceeded {stage} for model {model!r} (waited {waited * 1000:.0f} ms of "
            f"{self.budget_s * 1000:.0f} ms)"
        )


@dataclass(frozen=True, slots=True)
class QoS:
    """What the schedulers need of a request beyond its payload."""

    tier: Tier = "interactive"
    deadline: Deadline | None = None


DEFAULT_QOS = QoS()


def parse_tier(value: str) -> Tier:
    """A tier from a header value (InvalidInput otherwise)."""
    lowered = value.strip().lower()
    for tier in TIERS:
        if lowered == tier:
            return tier
    raise InvalidInput(f"{PRIORITY_HEADER} must be 'interactive' or 'batch', not {value[:40]!r}")


def parse_timeout_ms(value: str) -> float:
    """Seconds from a `x-inferd-timeout-ms` value: a positive number of milliseconds."""
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms <= 0:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be a positive number of milliseconds, not {value[:40]!r}")
    return ms / 1000.0
