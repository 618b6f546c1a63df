"""The one gateway stage every request passes through.

It assigns request ids, authenticates (API keys, through `Governance`; or nobody with `--no-auth`), hides
the models a key may not use (the same 404 as a model that does not exist), admits requests against rate
limits and budgets before any work starts, settles their usage (ledger row durable before the response),
and records the per-request metrics. Transports call the gateway, never the dataplane.

It also sets each call's quality of service: its tier (`x-inferd-priority`, else the key's `priority`, else
interactive) and its deadline (the shortest of the V2 `timeout`, `x-inferd-timeout-ms` and a gRPC deadline,
else the model's default), and holds the model's concurrency slot for the length of the call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from inferd.dataplane import DataPlane, Slot
from inferd.errors import NotFound, PermissionDenied, Unauthenticated
from inferd.gateway.access import allowed
from inferd.gateway.captured import CapturedStream
from inferd.gateway.context import CallContext, Protocol, RequestIds, StatusOf
from inferd.gateway.governance import Consumed, Demand, Governance, Lease
from inferd.generation import GenerateRequest, GenerationStream
from inferd.metrics.registry import Metrics
from inferd.qos import PRIORITY_HEADER, TIMEOUT_HEADER, Deadline, QoS, Tier, parse_tier, parse_timeout_ms
from inferd.repository.llm_version import LLMVersion
from inferd.repository.manager import IndexEntry
from inferd.repository.model_version import ModelVersion
from inferd.store.records import AuditEntry
from inferd.tensors import InferRequest, InferResponse

UNKNOWN_MODEL: Final = "_unknown"
ONE_INFERENCE: Final = Demand(inferences=1)
"""What a V2 inference reserves and (`_one_inference`) uses: one inference (value objects, shared)."""
_USED_ONE_INFERENCE: Final = Consumed(inferences=1)
PAYLOAD_CHARS: Final = 65536
"""Most characters of prompt or output kept per inference by `full` payload logging."""


@dataclass
class GenerationCall:
    """The streams of one generation call (several prompts, `n` choices each) and its lease."""

    streams: list[GenerationStream]
    lease: Lease | None
    payload: dict[str, Any] = field(default_factory=dict)
    outputs: dict[tuple[int, int], list[str]] | None = None
    """Output text per (prompt, choice) when the tenant logs full payloads."""
    slot: Slot | None = None
    """The model's concurrency slot, released by `finish`."""

    @property
    def version(self) -> str:
        return self.streams[0].version if self.streams else ""

    def consumed(self) -> Consumed:
        return Consumed(
            sum(s.usage.prompt_tokens for s in self.streams),
            sum(s.usage.completion_tokens for s in self.streams),
            sum(s.usage.cached_tokens for s in self.streams),
        )


class Gateway:
    """Policy in front of the dataplane."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, governance: Governance | None = None) -> None:
        """`governance` None: no authentication, limits or ledger (`--no-auth`)."""
        self.dataplane = dataplane
        self.metrics = metrics
        self.governance = governance
        self._request_ids = RequestIds()

    def request_id(self, given: str | None = None) -> str:
        """The client's request id when usable, else a new one."""
        return self._request_ids(given)

    # -- identity and access -------------------------------------------------------------------------

    def begin(
        self,
        protocol: Protocol,
        headers: Mapping[str, str],
        status_of: StatusOf,
        request_id: str | None = None,
    ) -> CallContext:
        """Open a call: request id and principal. A failed authentication is kept in the context and raised
        by the first gateway operation (so the transport answers it in its own shape, with the id)."""
        # The gateway reads several headers: one pass (transports already hand over a dict), then O(1) gets.
        table = headers if isinstance(headers, dict) else dict(headers.items())
        ctx = CallContext(
            protocol, self._request_ids(request_id or table.get("x-request-id")), status_of, table
        )
        if self.governance is not None:
            try:
                ctx.principal = self.governance.authenticate(table, protocol, ctx.request_id)
            except Unauthenticated as exc:
                ctx.auth_error = exc
        return ctx

    @staticmethod
    def require(ctx: CallContext) -> None:
        """Raise the call's authentication failure, if any."""
        if ctx.auth_error is not None:
            raise ctx.auth_error

    def require_admin(self, ctx: CallContext) -> None:
        self.require(ctx)
        if not ctx.principal.is_admin:
            raise PermissionDenied("this operation needs an API key with the admin role")

    def visible(self, ctx: CallContext, model: str) -> bool:
        """Whether the caller may see and use `model`."""
        return ctx.auth_error is None and allowed(ctx.principal.models, model)

    def check_model(self, ctx: CallContext, model: str) -> None:
        """Authenticated and allowed to use `model`; else the same NotFound as an unknown model."""
        self.require(ctx)
        if model == ctx.allowed_model:  # the transport checks before reading the body, the call again
            return
        if not allowed(ctx.principal.models, model):
            self.metrics.rejections.labels(ctx.principal.tenant, "access").inc()
            raise NotFound(f"unknown model {model!r}")
        ctx.allowed_model = model

    def model(self, ctx: CallContext, name: str, version: str | None = None) -> ModelVersion:
        self.check_model(ctx, name)
        return self.dataplane.model(name, version)

    def llm(self, ctx: CallContext, name: str, version: str | None = None) -> LLMVersion:
        self.check_model(ctx, name)
        return self.dataplane.llm(name, version)

    def model_ready(self, ctx: CallContext, name: str, version: str | None = None) -> bool:
        """Readiness of a model the caller may see (a hidden model reads as an unknown one: not ready)."""
        return self.model_readiness(ctx, name, version)[0]

    def model_readiness(self, ctx: CallContext, name: str, version: str | None = None) -> tuple[bool, str]:
        """Readiness and, when not ready, why (a hidden model reads as an unknown one)."""
        self.require(ctx)
        if not self.visible(ctx, name):
            return False, f"unknown model {name!r}"
        return self.dataplane.model_readiness(name, version)

    def model_versions(self, ctx: CallContext, name: str) -> list[str]:
        self.check_model(ctx, name)
        return self.dataplane.model_versions(name)

    def repository_index(self, ctx: CallContext, ready_only: bool = False) -> list[IndexEntry]:
        """The repository index, only the models the caller may see."""
        self.require(ctx)
        return [e for e in self.dataplane.repository_index(ready_only) if self.visible(ctx, e.name)]

    def statistics(
        self, ctx: CallContext, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        if name:
            self.check_model(ctx, name)
            return self.dataplane.statistics(name, version)
        self.require(ctx)
        return [s for s in self.dataplane.statistics() if self.visible(ctx, str(s["name"]))]

    async def load(self, ctx: CallContext, name: str) -> None:
        """Load a model (admin only), audited."""
        self.require_admin(ctx)
        await self.dataplane.load(name)
        self._audit_admin(ctx, "admin.model_load", name)

    async def unload(self, ctx: CallContext, name: str) -> None:
        self.require_admin(ctx)
        await self.dataplane.unload(name)
        self._audit_admin(ctx, "admin.model_unload", name)

    def _audit_admin(self, ctx: CallContext, action: str, target: str) -> None:
        if self.governance is not None:
            self.governance.audit(
                AuditEntry(
                    self.governance.clock(),
                    action,
                    ctx.principal.tenant,
                    ctx.principal.key_id,
                    target,
                    request_id=ctx.request_id,
                )
            )

    def workflow(self, ctx: CallContext, user: str | None = None) -> str:
        """The call's workflow: the `x-inferd-workflow` header, else the OpenAI `user` field. Without NUL
        characters: the budget book names a tenant's own counters with one (`budgets.ALL_WORKFLOWS`), and a
        workflow of that name would settle each request twice into them."""
        workflow = ctx.workflow_header or user or ""
        if "\x00" in workflow:
            workflow = workflow.replace("\x00", "")
        return workflow[:256]

    # -- quality of service --------------------------------------------------------------------------

    def qos(self, ctx: CallContext, model_default_s: float | None, timeout_s: float | None = None) -> QoS:
        """The call's tier (the `x-inferd-priority` header, at most the key's tier) and deadline: the
        shorter of `timeout_s` (the request's own, e.g. V2 `timeout`) and the `x-inferd-timeout-ms` header,
        else the model's default. InvalidInput for a malformed header."""
        headers = ctx.headers
        raw = headers.get(PRIORITY_HEADER)
        key_tier = self._key_tier(ctx)
        # The key's tier is a ceiling: a batch-tier key may not ask for interactive service.
        tier = parse_tier(raw) if raw and key_tier == "interactive" else key_tier
        raw = headers.get(TIMEOUT_HEADER)
        if raw:
            header_s = parse_timeout_ms(raw)
            timeout_s = min(timeout_s, header_s) if timeout_s else header_s
        budget = timeout_s or model_default_s
        return QoS(tier, Deadline.after(budget) if budget else None)

    def _key_tier(self, ctx: CallContext) -> Tier:
        if self.governance is None or not ctx.principal.key_id:
            return "interactive"
        policy = self.governance.snapshot.policies.get(ctx.principal.key_id)
        return policy.priority if policy is not None else "interactive"

    # -- tensor inference ----------------------------------------------------------------------------

    async def infer(self, ctx: CallContext, request: InferRequest) -> InferResponse:
        """One V2 inference: admitted, run, settled (ledger durable), recorded."""
        responses = await self.infer_many(
            ctx,
            request.model,
            request.version,
            [request],
            ONE_INFERENCE,
            _one_inference,
        )
        return responses[0]

    async def infer_many(
        self,
        ctx: CallContext,
        model: str,
        version: str | None,
        requests: Sequence[InferRequest],
        demand: Demand,
        consumed_of: Callable[[Sequence[InferResponse]], Consumed],
        workflow: str = "",
    ) -> list[InferResponse]:
        """Several inferences on one model as one accounted call (embeddings split into batches)."""
        start = time.perf_counter()
        resolved = version or ""
        lease: Lease | None = None
        slot: Slot | None = None
        try:
            loaded = self.model(ctx, model, version)
            resolved = loaded.version
            timeout_us = requests[0].timeout_us if requests else None
            qos = self.qos(ctx, loaded.default_timeout_s, timeout_us / 1e6 if timeout_us else None)
            slot = self.dataplane.admit(loaded)
            if self.governance is not None:
                lease = self.governance.admit(ctx, model, resolved, demand, workflow or self.workflow(ctx))
            if len(requests) == 1:
                responses = [await self.dataplane.infer_on(loaded, requests[0], qos)]
            else:
                responses = list(
                    await asyncio.gather(*[self.dataplane.infer_on(loaded, r, qos) for r in requests])
                )
        except BaseException as exc:
            try:
                self._settle(lease, Consumed(), exc, requests, None)
                self.record(ctx, model, resolved, exc, start)
            finally:
                if slot is not None:
                    slot.release()
            raise
        try:
            self._settle(lease, consumed_of(responses), None, requests, responses)
            self.record(ctx, model, resolved, None, start)
        finally:
            if slot is not None:
                slot.release()
        return responses

    def _settle(
        self,
        lease: Lease | None,
        consumed: Consumed,
        exc: BaseException | None,
        requests: Sequence[InferRequest],
        responses: Sequence[InferResponse] | None,
    ) -> None:
        if lease is None or self.governance is None:
            return
        logged = lease.payload_logging != "none"
        payload = _tensor_payload(requests, responses) if logged else None
        self.governance.settle(lease, consumed, exc, payload)

    # -- generation ----------------------------------------------------------------------------------

    async def generate(
        self, ctx: CallContext, requests: Sequence[GenerateRequest], user: str | None = None
    ) -> GenerationCall:
        """Admit and queue one call's prompts (each with its `n` choices). The transport drains the streams
        and then calls `finish` (also on failure or disconnect), which settles the call."""
        if not requests:
            raise ValueError("no prompts")
        model, version = requests[0].model, requests[0].version
        loaded = self.llm(ctx, model, version)
        qos = self.qos(ctx, loaded.default_timeout_s)
        prepared = [
            dataclasses.replace(
                self._prepare(ctx, loaded, r),
                priority=qos.tier,
                deadline=qos.deadline,
                tenant=ctx.principal.tenant if self.governance is not None else "",
            )
            for r in requests
        ]
        call = GenerationCall([], None, slot=self.dataplane.admit(loaded))
        try:
            if self.governance is not None:
                demand = Demand(
                    sum(len(_ids(r)) * r.sampling.n for r in prepared),
                    sum((r.sampling.max_tokens or 0) * r.sampling.n for r in prepared),
                )
                call.lease = self.governance.admit(
                    ctx, model, loaded.version, demand, self.workflow(ctx, user)
                )
                policy = call.lease.payload_logging
                if policy != "none":
                    call.payload = _generation_payload(requests, policy)
                if policy == "full":
                    call.outputs = {}
            for r in prepared:
                call.streams.append(await self.dataplane.generate_on(loaded, r))
        except BaseException:
            try:
                for s in call.streams:
                    await s.aclose()
                if call.lease is not None and self.governance is not None:
                    self.governance.release(call.lease)  # refused before any work: no usage
            finally:
                if call.slot is not None:
                    call.slot.release()
            raise
        if call.outputs is not None:
            call.streams = [CapturedStream(s, i, call.outputs) for i, s in enumerate(call.streams)]
        return call

    def _prepare(self, ctx: CallContext, loaded: LLMVersion, request: GenerateRequest) -> GenerateRequest:
        """Tokenize (the reservation needs the prompt's length) and bound max_tokens by the context and the
        key's ceiling, so the reservation is an upper bound of what the request can use."""
        if self.governance is None:
            return request
        ids = loaded.prompt_token_ids(request)
        room = max(loaded.max_model_len - len(ids), 1)
        max_tokens = request.sampling.max_tokens or room
        ceiling = self.governance.ceiling(ctx.principal)
        if ceiling is not None:
            max_tokens = min(max_tokens, ceiling)
        sampling = dataclasses.replace(request.sampling, max_tokens=max_tokens)
        return dataclasses.replace(request, prompt=ids, messages=None, sampling=sampling)

    async def finish(
        self, ctx: CallContext, call: GenerationCall, exc: BaseException | None, start: float
    ) -> None:
        """Settle a generation call (its ledger row is durable when this returns) and record it."""
        model = call.lease.model if call.lease else (call.streams[0].model if call.streams else "")
        try:
            if call.lease is not None and self.governance is not None:
                payload = dict(call.payload)
                if call.outputs is not None:
                    payload.setdefault("full", {})["outputs"] = {
                        f"{p}.{c}": "".join(parts)[:PAYLOAD_CHARS]
                        for (p, c), parts in sorted(call.outputs.items())
                    }
                self.governance.settle(call.lease, call.consumed(), exc, payload or None)
            self.record(ctx, model, call.version, exc, start)
        finally:
            if call.slot is not None:
                call.slot.release()

    # -- metrics -------------------------------------------------------------------------------------

    def record(
        self, ctx: CallContext, model: str, version: str, exc: BaseException | None, start: float
    ) -> None:
        """Count a finished call (also one refused before it reached the dataplane)."""
        m = self.metrics
        if isinstance(exc, NotFound) or not self.dataplane.model_exists(model):
            model, version = UNKNOWN_MODEL, ""  # client-chosen names must not create metric series
        m.requests.add(model, version, ctx.protocol, ctx.status_of(exc), time.perf_counter() - start)


def _one_inference(_: Sequence[InferResponse]) -> Consumed:
    return _USED_ONE_INFERENCE


def _ids(request: GenerateRequest) -> Sequence[int]:
    prompt = request.prompt
    return prompt if prompt is not None and not isinstance(prompt, str) else ()


def _generation_payload(requests: Sequence[GenerateRequest], policy: str) -> dict[str, Any]:
    """What the audit log keeps of a generation's request: parameters (metadata) and text (full)."""
    first = requests[0]
    s = first.sampling
    metadata = {
        "prompts": len(requests),
        "messages": len(first.messages) if first.messages is not None else None,
        "n": s.n,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stop": list(s.stop),
        "stream_logprobs": s.logprobs,
    }
    doc: dict[str, Any] = {"metadata": metadata}
    if policy == "full":
        if first.messages is not None:
            doc["full"] = {"messages": [dict(m) for m in first.messages]}
        else:
            doc["full"] = {
                "prompts": [
                    (r.prompt if isinstance(r.prompt, str) else list(r.prompt or ()))
                    if not isinstance(r.prompt, str)
                    else r.prompt[:PAYLOAD_CHARS]
                    for r in requests
                ]
            }
    return doc


def _tensor_payload(
    requests: Sequence[InferRequest], responses: Sequence[InferResponse] | None
) -> dict[str, Any]:
    """Shapes and datatypes (metadata) and values, truncated (full), of V2 inputs and outputs."""

    def describe(tensors: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype.name, "shape": list(t.data.shape)} for t in tensors]

    def values(tensors: Sequence[Any]) -> dict[str, str]:
        return {t.name: repr(t.data.tolist())[:PAYLOAD_CHARS] for t in tensors}

    metadata = {"inputs": [describe(r.inputs) for r in requests]}
    full: dict[str, Any] = {"inputs": [values(r.inputs) for r in requests]}
    if responses is not None:
        metadata["outputs"] = [describe(r.outputs) for r in responses]
        full["outputs"] = [values(r.outputs) for r in responses]
    return {"metadata": metadata, "full": full}
