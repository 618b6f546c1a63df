"""The one table from inferd's error tree to each protocol's status codes."""

from __future__ import annotations

import asyncio
import logging

import grpc

from inferd import errors

log = logging.getLogger("inferd.server")

CLIENT_CLOSED = 499
"""HTTP status recorded (never sent: nobody listens) for a request whose client went away (nginx's code)."""

_TABLE: list[tuple[type[errors.InferdError], int, grpc.StatusCode]] = [
    (errors.InvalidInput, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, 404, grpc.StatusCode.NOT_FOUND),
    (errors.Unauthenticated, 401, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, 403, grpc.StatusCode.PERMISSION_DENIED),
    (errors.QuotaExceeded, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.PayloadTooLarge, 413, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ResourceExhausted, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotReady, 503, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, 504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Cancelled, CLIENT_CLOSED, grpc.StatusCode.CANCELLED),
    (errors.ModelLoadError, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ExecutionFailed, 500, grpc.StatusCode.INTERNAL),
    (errors.InternalError, 500, grpc.StatusCode.INTERNAL),
]


def _lookup(exc: BaseException) -> tuple[int, grpc.StatusCode]:
    if isinstance(exc, asyncio.CancelledError):  # the client went away (disconnect, gRPC cancel)
        return CLIENT_CLOSED, grpc.StatusCode.CANCELLED
    for cls, http, code in _TABLE:
        if isinstance(exc, cls):
            return http, code
    return 500, grpc.StatusCode.INTERNAL


def http_status(exc: BaseException | None) -> int:
    return 200 if exc is None else _lookup(exc)[0]


def grpc_code(exc: BaseException | None) -> grpc.StatusCode:
    return grpc.StatusCode.OK if exc is None else _lookup(exc)[1]


def http_code_label(exc: BaseException | None) -> str:
    return str(http_status(exc))


def grpc_code_label(exc: BaseException | None) -> str:
    return str(grpc_code(exc).name)


def message(exc: BaseException) -> str:
    """The client-facing message: ours verbatim; anything else is an internal fault (logged)."""
    if isinstance(exc, errors.InferdError):
        return exc.message
    log.exception("internal error", exc_info=exc)
    return f"internal error: {type(exc).__name__}"
