"""The one gateway stage every request passes through.

It assigns request ids, authenticates (the seam: `Authenticator`; a later issue adds keys, tenants, limits
and budgets), and records the per-request metrics. Transports call the gateway, never the dataplane.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol as TypingProtocol

from inferd.dataplane import DataPlane
from inferd.errors import NotFound
from inferd.gateway.context import ANONYMOUS, CallContext, Principal, Protocol, StatusOf, new_request_id
from inferd.generation import GenerateRequest, GenerationStream
from inferd.metrics.registry import Metrics
from inferd.tensors import InferRequest, InferResponse

UNKNOWN_MODEL = "_unknown"


class Authenticator(TypingProtocol):
    """Turns request headers into a principal, or raises (a later issue: API keys)."""

    def authenticate(self, headers: Mapping[str, str]) -> Principal: ...


class AllowAll:
    """No authentication: every caller is the anonymous principal."""

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        return ANONYMOUS


class Gateway:
    """Policy in front of the dataplane."""

    def __init__(
        self, dataplane: DataPlane, metrics: Metrics, authenticator: Authenticator | None = None
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self._auth = authenticator or AllowAll()

    def begin(
        self,
        protocol: Protocol,
        headers: Mapping[str, str],
        status_of: StatusOf,
        request_id: str | None = None,
    ) -> CallContext:
        """Open a call: request id and principal."""
        ctx = CallContext(
            protocol, new_request_id(request_id or headers.get("x-request-id")), status_of, headers
        )
        ctx.principal = self._auth.authenticate(headers)
        return ctx

    async def infer(self, ctx: CallContext, request: InferRequest) -> InferResponse:
        start = time.perf_counter()
        version = request.version or ""
        try:
            loaded = self.dataplane.model(request.model, request.version)
            version = loaded.version
            response = await self.dataplane.infer_on(loaded, request)
        except BaseException as exc:
            self.record(ctx, request.model, version, exc, start)
            raise
        self.record(ctx, request.model, version, None, start)
        return response

    async def generate(self, ctx: CallContext, request: GenerateRequest) -> GenerationStream:
        """Admit a generation and queue it. The transport records the call (`record`) when the stream
        ends, since a stream outlives this call."""
        loaded = self.dataplane.llm(request.model, request.version)
        return await self.dataplane.generate_on(loaded, request)

    def record(
        self, ctx: CallContext, model: str, version: str, exc: BaseException | None, start: float
    ) -> None:
        """Count a finished call (also one refused before it reached the dataplane)."""
        m = self.metrics
        if isinstance(exc, NotFound) or not self.dataplane.model_exists(model):
            model, version = UNKNOWN_MODEL, ""  # client-chosen names must not create metric series
        m.requests.labels(model, version, ctx.protocol, ctx.status_of(exc)).inc()
        m.request_duration.labels(model, version, ctx.protocol).observe(time.perf_counter() - start)
