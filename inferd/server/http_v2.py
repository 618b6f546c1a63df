"""V2 REST (Open Inference Protocol plus Triton's repository and statistics extensions) on Starlette."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from inferd.errors import Cancelled, InvalidInput, PayloadTooLarge, Unauthenticated
from inferd.gateway.context import CallContext
from inferd.gateway.stage import Gateway
from inferd.server import model_views, status
from inferd.server.http_headers import header_dict, raw_headers
from inferd.server.usage_headers import error_headers, success_headers
from inferd.server.v2_codec import HEADER_LENGTH, decode_request, encode_response

JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
REASON_HEADER = "x-inferd-reason"
"""Why a model is not ready (on a 503 from its ready endpoint)."""


def json_response(doc: Any, code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=code, media_type=JSON, headers=headers)


def error_response(exc: BaseException, request_id: str | None = None) -> Response:
    headers = error_headers(exc)
    if isinstance(exc, Unauthenticated):
        headers["www-authenticate"] = "Bearer"
    if request_id:
        headers["x-request-id"] = request_id
    return json_response({"error": status.message(exc)}, status.http_status(exc), headers)


async def read_body(request: Request, limit: int, headers: Mapping[str, str] | None = None) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes (413). `headers`: the request's
    as a dict when the caller has them (`request.headers` rescans the raw list on every get)."""
    if headers is None:
        headers = request.headers
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:  # not a server fault: counted as a closed client, not as a 500
        raise Cancelled(f"the client closed the connection after {size} bytes of its body") from None
    body = b"".join(chunks)
    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        try:
            obj = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
            body = obj.decompress(body, limit + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidInput(f"request body is not valid {encoding}: {exc}") from None
        if len(body) > limit:
            raise PayloadTooLarge(f"decompressed request body exceeds the {limit}-byte limit")
    elif encoding not in ("", "identity"):
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r}")
    return body


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work` in this task, cancelling it if the client disconnects first (then Cancelled): a request
    whose client went away leaves the batcher's queue or the engine, and its reservations are released.
    Call it once the body is read (the watcher takes over the connection's receive channel)."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always called from a task
        return await work
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise Cancelled("the client closed the connection before its response") from None
        raise
    finally:
        watcher.cancel()


class V2Http:
    """Route handlers of the V2 REST API."""

    def __init__(self, gateway: Gateway, max_body_bytes: int) -> None:
        self.gateway = gateway
        self.dataplane = gateway.dataplane
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[BaseRoute]:
        g = self._guard
        return [
            Route("/v2/health/live", g(self.live), methods=["GET"]),
            Route("/v2/health/ready", g(self.ready), methods=["GET"]),
            Route("/v2", g(self.server_metadata), methods=["GET"]),
            Route("/v2/models/stats", g(self.stats), methods=["GET"]),
            Route("/v2/models/{model}", g(self.model_metadata), methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}", g(self.model_metadata), methods=["GET"]),
            Route("/v2/models/{model}/ready", g(self.model_ready), methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}/ready", g(self.model_ready), methods=["GET"]),
            Route("/v2/models/{model}/config", g(self.model_config), methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}/config", g(self.model_config), methods=["GET"]),
            Route("/v2/models/{model}/stats", g(self.stats), methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}/stats", g(self.stats), methods=["GET"]),
            Route("/v2/models/{model}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/infer", self.infer, methods=["POST"]),
            Route("/v2/repository/index", g(self.repository_index), methods=["POST"]),
            Route("/v2/repository/models/{model}/load", g(self.load), methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", g(self.unload), methods=["POST"]),
        ]

    def _guard(self, handler: Handler) -> Handler:
        """Errors in the V2 shape, and an `x-request-id` on every response (the client's, or a new one)."""

        async def guarded(request: Request) -> Response:
            request_id = self.gateway.request_id(request.headers.get("x-request-id"))
            request.state.request_id = request_id
            try:
                response = await handler(request)
            except Exception as exc:
                return error_response(exc, request_id)
            response.headers.setdefault("x-request-id", request_id)
            return response

        return guarded

    def _begin(self, request: Request) -> CallContext:
        request_id = getattr(request.state, "request_id", None)
        headers = header_dict(request.scope["headers"])
        return self.gateway.begin("http", headers, status.http_code_label, request_id)

    async def live(self, request: Request) -> Response:
        live = self.dataplane.live()
        return json_response({"live": live}, 200 if live else 503)

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        meta = self.dataplane.server_metadata()
        return json_response(
            {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
        )

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model_path(request)
        ctx = self._begin(request)
        loaded = self.gateway.model(ctx, name, version)
        return json_response(model_views.metadata(loaded, self.gateway.model_versions(ctx, name)))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model_path(request)
        ready, reason = self.gateway.model_readiness(self._begin(request), name, version)
        headers = {REASON_HEADER: _header_text(reason)} if reason else None
        return json_response({"name": name, "ready": ready}, 200 if ready else 503, headers)

    async def model_config(self, request: Request) -> Response:
        name, version = _model_path(request)
        loaded = self.gateway.model(self._begin(request), name, version)
        return json_response(model_views.model_config(loaded))

    async def stats(self, request: Request) -> Response:
        name, version = _model_path(request)
        stats = self.gateway.statistics(self._begin(request), name or None, version)
        return json_response({"model_stats": stats})

    async def repository_index(self, request: Request) -> Response:
        ctx = self._begin(request)
        self.gateway.require(ctx)
        body = await read_body(request, self.max_body_bytes)
        doc = _optional_json(body)
        ready_only = bool(doc.get("ready", False))
        entries = self.gateway.repository_index(ctx, ready_only)
        return json_response(
            [
                {
                    k: v
                    for k, v in (
                        ("name", e.name),
                        ("version", e.version),
                        ("state", e.state),
                        ("reason", e.reason),
                    )
                    if v
                }
                for e in entries
            ]
        )

    async def load(self, request: Request) -> Response:
        ctx = self._begin(request)
        self.gateway.require_admin(ctx)
        await read_body(request, self.max_body_bytes)
        await self.gateway.load(ctx, request.path_params["model"])
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        ctx = self._begin(request)
        self.gateway.require_admin(ctx)
        await read_body(request, self.max_body_bytes)
        await self.gateway.unload(ctx, request.path_params["model"])
        return Response(status_code=200)

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name, version = _model_path(request)
        ctx = self._begin(request)
        try:
            self.gateway.check_model(ctx, name)
            body = await read_body(request, self.max_body_bytes, ctx.headers)
            infer_request = decode_request(body, ctx.headers.get(HEADER_LENGTH), name, version)
        except Exception as exc:
            self.gateway.record(ctx, name, version or "", exc, started)
            return error_response(exc, ctx.request_id)
        try:
            response = await unless_disconnected(request, self.gateway.infer(ctx, infer_request))
            out, header_len = encode_response(response, infer_request)
        except Exception as exc:
            return error_response(exc, ctx.request_id)
        headers = success_headers(ctx, rate_limits=False)
        if header_len is None:
            reply = Response(out, media_type=JSON)
        else:
            headers[HEADER_LENGTH] = str(header_len)
            reply = Response(out, media_type="application/octet-stream")
        # Encoded by the compiled helper, not starlette's per-header loop (names are lower case already).
        reply.raw_headers.extend(raw_headers(headers))
        return reply


def _header_text(text: str) -> str:
    """`text` as a header value: printable ASCII, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:512])


def _model_path(request: Request) -> tuple[str, str | None]:
    params = request.path_params
    return params.get("model", ""), params.get("version") or None


def _optional_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc
