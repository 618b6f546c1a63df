"""The one error tree of inferd.

Core code raises these; each transport maps them to its protocol's status in one table
(`inferd/server/status.py`). No error here carries an HTTP or gRPC code.

    InferdError
    ├── InvalidInput            the request is malformed or does not match the model
    ├── NotFound                unknown model or version (also: a model the caller may not see)
    ├── NotReady                the model or server exists but cannot serve now
    ├── PayloadTooLarge         the body is over the configured limit
    ├── ResourceExhausted       refused for capacity; retry later (`retry_after_s`)
    │   └── QueueFull           the model version's queue is at `max_queue_size`
    ├── DeadlineExceeded        the request's timeout expired before its work ran
    ├── ExecutionFailed         the runtime raised while running the request's batch
    ├── ModelLoadError          a model failed to load (reason in the message)
    └── InternalError           a fault of inferd itself
"""

from __future__ import annotations


class InferdError(Exception):
    """Base of every error inferd raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferdError):
    """The request is malformed or does not match the model's signature."""


class NotFound(InferdError):
    """Unknown model or version."""


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


class DeadlineExceeded(InferdError):
    """The request's timeout expired before its work could run."""


class ExecutionFailed(InferdError):
    """The runtime raised while executing the batch that held this request."""


class ModelLoadError(InferdError):
    """A model version failed to load."""


class InternalError(InferdError):
    """A fault inside inferd."""
