"""The OpenAI API on the HTTP port: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (with SSE),
`/v1/embeddings`.

Bodies are parsed by `openai_schema`; generation goes through the gateway; errors have OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`. A client that disconnects has its requests aborted:
streaming ones through the stream's cancellation, the others through a watcher of the connection
(`unless_disconnected`); either way the engine streams are closed and the call is settled. Every response
carries `x-request-id`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from inferd import datatypes
from inferd.errors import NotFound, PermissionDenied, QuotaExceeded, RateLimited, Unauthenticated
from inferd.gateway.context import CallContext
from inferd.gateway.governance import Consumed, Demand
from inferd.gateway.stage import Gateway, GenerationCall
from inferd.generation import GenerateRequest, GenerationChunk, GenerationStream, TokenLogprob, collect
from inferd.runtimes.embedding_io import INPUT as EMBEDDING_INPUT
from inferd.runtimes.embedding_io import OUTPUT as EMBEDDING_OUTPUT
from inferd.runtimes.embedding_io import PLATFORM as EMBEDDING_PLATFORM
from inferd.runtimes.embedding_io import TOKENS as EMBEDDING_TOKENS
from inferd.server import status
from inferd.server.http_headers import header_dict
from inferd.server.http_v2 import read_body, unless_disconnected
from inferd.server.openai_schema import (
    InvalidParam,
    OpenAIRequest,
    parse_body,
    parse_chat,
    parse_completion,
    parse_embeddings,
)
from inferd.server.usage_headers import error_headers, success_headers
from inferd.store.records import MICROS
from inferd.tensors import Array, InferRequest, InferResponse, Tensor

JSON = "application/json"
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
    504: "timeout",
}


def openai_error(exc: BaseException, request_id: str, *, models: bool = True) -> Response:
    """The OpenAI error shape; `models` False (the admin API) does not label a 404 as an unknown model."""
    code = status.http_status(exc)
    headers = {"x-request-id": request_id, **error_headers(exc)}
    error_type = _ERROR_TYPES.get(code, "server_error")
    error_code: str | None = None
    param: str | None = None
    if isinstance(exc, InvalidParam):
        param = exc.param
    elif isinstance(exc, NotFound):
        param, error_code = ("model", "model_not_found") if models else (None, "not_found")
    elif isinstance(exc, Unauthenticated):
        error_type, error_code = "invalid_request_error", "invalid_api_key"
        headers["www-authenticate"] = "Bearer"
    elif isinstance(exc, PermissionDenied):
        error_type, error_code = "permission_error", "permission_denied"
    elif isinstance(exc, QuotaExceeded):
        error_type, error_code = "insufficient_quota", exc.code
    elif isinstance(exc, RateLimited):
        error_code = exc.code
    error = {"message": status.message(exc), "type": error_type, "param": param, "code": error_code}
    return Response(orjson.dumps({"error": error}), status_code=code, media_type=JSON, headers=headers)


def _usage(streams: Sequence[GenerationStream]) -> dict[str, Any]:
    prompt = sum(s.usage.prompt_tokens for s in streams)
    completion = sum(s.usage.completion_tokens for s in streams)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(s.usage.cached_tokens for s in streams)},
    }


def _completion_logprobs(items: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item.token)
    return {
        "tokens": [i.token for i in items],
        "token_logprobs": [i.logprob for i in items],
        "top_logprobs": [dict(i.top) for i in items],
        "text_offset": offsets,
    }


def _chat_logprobs(items: Sequence[TokenLogprob]) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(i.token, i.logprob), "top_logprobs": [entry(t, lp) for t, lp in i.top]} for i in items
        ]
    }


async def _merged(streams: Sequence[GenerationStream]) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """The chunks of several streams as they come, with the index of their stream."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: GenerationStream) -> None:
        try:
            async for chunk in stream:
                queue.put_nowait((i, chunk))
            queue.put_nowait((i, None))
        except Exception as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.get_running_loop().create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()


class _EventStream(StreamingResponse):
    """An SSE response that always settles its call: also when the client left before the first event
    (then the event generator never started, and its own cleanup would never run)."""

    def __init__(
        self, events: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]], headers: dict[str, str]
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


class _Settlement:
    """Closes a call's streams and settles it, once."""

    def __init__(self, gateway: Gateway, ctx: CallContext, call: GenerationCall, start: float) -> None:
        self._gateway = gateway
        self._ctx = ctx
        self._call = call
        self._start = start
        self.done = False

    async def __call__(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        try:
            for stream in self._call.streams:
                await stream.aclose()
        finally:
            await self._gateway.finish(self._ctx, self._call, error, self._start)

    async def abandoned(self) -> None:
        """The response ended without the stream settling the call: its client went away."""
        await self(asyncio.CancelledError())


class OpenAIHttp:
    """Route handlers of the OpenAI API."""

    def __init__(self, gateway: Gateway, max_body_bytes: int) -> None:
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]

    def _begin(self, request: Request) -> CallContext:
        return self.gateway.begin("openai", header_dict(request.scope["headers"]), status.http_code_label)

    async def models(self, request: Request) -> Response:
        ctx = self._begin(request)
        try:
            self.gateway.require(ctx)
        except Exception as exc:
            return openai_error(exc, ctx.request_id)
        created: dict[str, int] = {}  # one entry per model, however many versions it serves
        for v in self.gateway.dataplane.llm_versions():
            created[v.name] = min(created.get(v.name, v.created), v.created)
        for e in self.gateway.dataplane.embedding_versions():
            created.setdefault(e.name, e.created)
        created = {name: when for name, when in created.items() if self.gateway.visible(ctx, name)}
        data = [
            {"id": name, "object": "model", "created": when, "owned_by": "inferd"}
            for name, when in sorted(created.items())
        ]
        return Response(
            orjson.dumps({"object": "list", "data": data}),
            media_type=JSON,
            headers={"x-request-id": ctx.request_id},
        )

    async def embeddings(self, request: Request) -> Response:
        """Texts through an embedding model's dynamic batcher, in chunks of its max_batch_size."""
        ctx = self._begin(request)
        start = time.perf_counter()
        model = ""
        recorded = False
        try:
            self.gateway.require(ctx)
            parsed = parse_embeddings(parse_body(await read_body(request, self.max_body_bytes)))
            model = parsed.model
            loaded = self.gateway.model(ctx, model)
            signature = loaded.signature
            if signature.platform != EMBEDDING_PLATFORM:
                raise InvalidParam("model", f"model {model!r} is not an embedding model")
            chunk = max(signature.max_batch_size, 1)
            pieces = [parsed.texts[i : i + chunk] for i in range(0, len(parsed.texts), chunk)]
            demand = Demand(prompt_tokens=len(parsed.texts) * signature.tokens_per_row, inferences=1)
            recorded = True  # from here on the gateway records the call
            call = self.gateway.infer_many(
                ctx,
                model,
                loaded.version,
                [_embedding_request(model, loaded.version, p) for p in pieces],
                demand,
                lambda rs: Consumed(prompt_tokens=_embedding_tokens(rs), inferences=1),
                self.gateway.workflow(ctx, parsed.user),
            )
            responses = await unless_disconnected(request, call)
        except Exception as exc:
            if not recorded:
                self.gateway.record(ctx, model, "", exc, start)
            return openai_error(exc, ctx.request_id)
        vectors = np.concatenate([_output(r, EMBEDDING_OUTPUT) for r in responses])
        tokens = _embedding_tokens(responses)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                if parsed.encoding_format == "base64"
                else v,
            }
            for i, v in enumerate(vectors)
        ]
        doc = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, media_type=JSON, headers=success_headers(ctx, rate_limits=True))

    async def completions(self, request: Request) -> Response:
        return await self._handle(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._handle(request, chat=True)

    async def _handle(self, request: Request, *, chat: bool) -> Response:
        ctx = self._begin(request)
        start = time.perf_counter()
        model = ""
        call: GenerationCall | None = None
        try:
            self.gateway.require(ctx)
            doc = parse_body(await read_body(request, self.max_body_bytes))
            parsed = parse_chat(doc) if chat else parse_completion(doc)
            model = parsed.model
            generates = [
                GenerateRequest(
                    model,
                    parsed.sampling,
                    prompt=prompt,
                    messages=parsed.messages,
                    add_generation_prompt=parsed.add_generation_prompt,
                    request_id=ctx.request_id,
                    skip_special_tokens=parsed.skip_special_tokens,
                )
                for prompt in ((None,) if chat else parsed.prompts)
            ]
            call = await unless_disconnected(request, self.gateway.generate(ctx, generates, parsed.user))
            if parsed.stream:
                headers = {**success_headers(ctx, rate_limits=True), "cache-control": "no-cache"}
                settle = _Settlement(self.gateway, ctx, call, start)
                events = self._events(ctx, parsed, call, chat, settle)
                return _EventStream(events, settle.abandoned, headers)
            doc = await unless_disconnected(request, self._whole(ctx, parsed, call.streams, chat))
        except BaseException as exc:
            if call is None:
                self.gateway.record(ctx, model, "", exc, start)
            else:
                for stream in call.streams:
                    await stream.aclose()
                await self.gateway.finish(ctx, call, exc, start)
            if isinstance(exc, Exception):
                return openai_error(exc, ctx.request_id)
            raise
        await self.gateway.finish(ctx, call, None, start)
        if ctx.cost_micros is not None:
            doc["usage"]["cost"] = ctx.cost_micros / MICROS
        return Response(orjson.dumps(doc), media_type=JSON, headers=success_headers(ctx, rate_limits=True))

    async def _whole(
        self, ctx: CallContext, parsed: OpenAIRequest, streams: list[GenerationStream], chat: bool
    ) -> dict[str, Any]:
        n = parsed.sampling.n
        results = await asyncio.gather(*(collect(s, n) for s in streams))
        choices: list[dict[str, Any]] = []
        for p, prompt_choices in enumerate(results):
            for c in prompt_choices:
                choice: dict[str, Any] = {"index": p * n + c.index, "finish_reason": c.finish_reason}
                if chat:
                    choice["message"] = {"role": "assistant", "content": c.text}
                    choice["logprobs"] = _chat_logprobs(c.logprobs) if parsed.sampling.logprobs else None
                else:
                    choice["text"] = c.text
                    choice["logprobs"] = (
                        _completion_logprobs(c.logprobs, 0) if parsed.sampling.logprobs else None
                    )
                if c.stop_reason is not None:
                    choice["stop_reason"] = c.stop_reason
                choices.append(choice)
        return {
            "id": ("chatcmpl-" if chat else "cmpl-") + ctx.request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": parsed.model,
            "choices": choices,
            "usage": _usage(streams),
        }

    async def _events(
        self,
        ctx: CallContext,
        parsed: OpenAIRequest,
        call: GenerationCall,
        chat: bool,
        settle: _Settlement,
    ) -> AsyncIterator[bytes]:
        n = parsed.sampling.n
        streams = call.streams
        base = {
            "id": ("chatcmpl-" if chat else "cmpl-") + ctx.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": parsed.model,
        }
        offsets: dict[int, int] = {}
        error: BaseException | None = None
        try:
            if chat:
                first = [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}
                    for i in range(n * len(streams))
                ]  # fmt: skip
                yield self._event({**base, "choices": first}, parsed)
            async for p, chunk in _merged(streams):
                index = p * n + chunk.index
                choice: dict[str, Any] = {"index": index, "finish_reason": chunk.finish_reason}
                logprobs = None
                if chat:
                    choice["delta"] = {"content": chunk.text} if chunk.text else {}
                    if parsed.sampling.logprobs:
                        logprobs = _chat_logprobs(chunk.logprobs)
                else:
                    choice["text"] = chunk.text
                    if parsed.sampling.logprobs:
                        logprobs = _completion_logprobs(chunk.logprobs, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + len(chunk.text)
                choice["logprobs"] = logprobs
                if chunk.stop_reason is not None:
                    choice["stop_reason"] = chunk.stop_reason
                yield self._event({**base, "choices": [choice]}, parsed)
            # The ledger row is durable before the client sees the end of the response.
            await settle(None)
            if parsed.include_usage:
                usage = _usage(streams)
                if ctx.cost_micros is not None:
                    usage["cost"] = ctx.cost_micros / MICROS
                yield self._event({**base, "choices": [], "usage": usage}, parsed)
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError as exc:  # the client went away
            error = exc
            raise
        except Exception as exc:
            error = exc
            message = {"error": {"message": status.message(exc), "type": _ERROR_TYPES.get(
                status.http_status(exc), "server_error"), "param": None, "code": None}}  # fmt: skip
            yield b"data: " + orjson.dumps(message) + b"\n\n"
        finally:
            await settle(error)

    @staticmethod
    def _event(doc: dict[str, Any], parsed: OpenAIRequest) -> bytes:
        if parsed.include_usage and "usage" not in doc:
            doc["usage"] = None
        return b"data: " + orjson.dumps(doc) + b"\n\n"


def _embedding_request(model: str, version: str, texts: Sequence[str]) -> InferRequest:
    data = np.empty(len(texts), dtype=np.object_)
    data[:] = [t.encode("utf-8") for t in texts]
    return InferRequest(model, version, [Tensor(EMBEDDING_INPUT, datatypes.BY_NAME["BYTES"], data)])


def _embedding_tokens(responses: Sequence[InferResponse]) -> int:
    return int(sum(int(_output(r, EMBEDDING_TOKENS).sum()) for r in responses))


def _output(response: InferResponse, name: str) -> Array:
    return next(t.data for t in response.outputs if t.name == name)
