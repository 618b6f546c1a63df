"""The one error tree of inferd.

Core code raises these; each transport maps them to its protocol's status in one table
(`inferd/server/status.py`). No error here carries an HTTP or gRPC code.

    InferdError
    ├── InvalidInput            the request is malformed or does not match the model
    ├── NotFound                unknown model or version (also: a model the caller may not see)
    ├── Unauthenticated         no API key, or one that is unknown, expired or disabled
    ├── PermissionDenied        a valid key without the role the operation needs
    ├── NotReady                the model or server exists but cannot serve now
    ├── PayloadTooLarge         the body is over the configured limit
    ├── ResourceExhausted       refused for capacity; retry later (`retry_after_s`)
    │   ├── QueueFull           the model version's queue is at `max_queue_size`
    │   ├── ModelBusy           the model's `max_concurrent_requests` are in flight
    │   └── RateLimited         a key's or tenant's rate or concurrency limit (`limits` for headers)
    ├── QuotaExceeded           a budget or workflow cap is spent; not retryable within its period
    ├── DeadlineExceeded        the request's timeout expired before its work ran
    ├── ExecutionFailed         the runtime raised while running the request's batch
    │   └── ExecutionTimeout    the runtime ran past the model's `execution_timeout_s` (hung)
    ├── Cancelled               the client went away (disconnect, gRPC cancel) before its answer
    ├── ModelLoadError          a model failed to load (reason in the message)
    └── InternalError           a fault of inferd itself

Two failures of the server itself stand outside the tree (no transport maps them; a request that meets
one answers as an internal error): `JournalLocked` and `LedgerWriteFailed`.
"""

from __future__ import annotations

from typing import NamedTuple


class InferdError(Exception):
    """Base of every error inferd raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferdError):
    """The request is malformed or does not match the model's signature."""


class NotFound(InferdError):
    """Unknown model or version."""


class Unauthenticated(InferdError):
    """No API key, or an unknown, expired or disabled one."""


class PermissionDenied(InferdError):
    """The key is valid but lacks the role the operation needs."""


class NotReady(InferdError):
    """The model or server exists but is not ready to serve."""


class PayloadTooLarge(InferdError):
    """The request body exceeds the configured limit."""


class ResourceExhausted(InferdError):
    """Refused for lack of capacity; the client may retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(ResourceExhausted):
    """The model version's request queue is full."""


class ModelBusy(ResourceExhausted):
    """The model has its `max_concurrent_requests` in flight."""


class LimitState(NamedTuple):
    """One rate limit's state for the `x-ratelimit-*` headers (a tuple: made for every response)."""

    limit: int
    remaining: int
    reset_s: float
    """Seconds until the limit is fully replenished."""


class RateLimited(ResourceExhausted):
    """A rate or concurrency limit refused the request; `limits` maps `requests` / `tokens` to their
    state, `code` names the limit (e.g. `tenant_requests_per_minute`)."""

    def __init__(
        self, message: str, code: str, retry_after_s: float, limits: dict[str, LimitState] | None = None
    ) -> None:
        super().__init__(message, retry_after_s)
        self.code = code
        self.limits = limits or {}


class QuotaExceeded(InferdError):
    """A budget or workflow cap is spent for its period; `code` names it. Not retryable."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class DeadlineExceeded(InferdError):
    """The request's timeout expired before its work could run."""


class ExecutionFailed(InferdError):
    """The runtime raised while executing the batch that held this request."""


class ExecutionTimeout(ExecutionFailed):
    """The runtime did not finish a batch within the model's execution timeout; the version is taken out of
    service."""


class Cancelled(InferdError):
    """The client went away (closed its connection, cancelled its call) before it got its answer."""


class ModelLoadError(InferdError):
    """A model version failed to load."""


class InternalError(InferdError):
    """A fault inside inferd."""


class JournalLocked(RuntimeError):
    """Another process has the ledger journal open for writing (another server on the same state dir)."""


class LedgerWriteFailed(RuntimeError):
    """A settled request's ledger row could not be made durable (a full or failing disk)."""
