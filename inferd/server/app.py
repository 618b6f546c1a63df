"""The inferd server: one asyncio process hosting the HTTP and gRPC transports over one gateway."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferd.config import ServerConfig
from inferd.dataplane import DataPlane
from inferd.gateway.governance import ADMIN_KEY_FILE, Governance, ensure_admin_key
from inferd.gateway.stage import Gateway
from inferd.metrics.registry import Metrics
from inferd.repository.manager import ModelManager, RuntimeLoader
from inferd.server import openapi, status
from inferd.server.admin_api import AdminHttp
from inferd.server.grpc_v2 import V2Grpc, add_to_server
from inferd.server.http_headers import header_dict
from inferd.server.http_v2 import V2Http, error_response, json_response
from inferd.server.openai_api import OpenAIHttp
from inferd.store.sqlite import SqliteStore

log = logging.getLogger("inferd")

GRPC_MAX_MESSAGE = 1 << 30
SETTLE_AFTER_GRACE_S = 5.0
"""After the grace period: how long requests failed by the shutdown get to settle (their ledger rows)."""
LISTENER_CLOSE_S = 5.0
"""Longest the listeners wait for open connections once the work has drained."""


GC_YOUNG_THRESHOLD = 50_000
"""Allocations (net) between collections of the youngest generation, once the server has started."""


class InferdServer:
    """Builds the layers (manager → dataplane → gateway → transports) and runs them."""

    def __init__(self, config: ServerConfig, loaders: dict[str, RuntimeLoader] | None = None) -> None:
        """`loaders` replaces the runtime loaders by `runtime` name (a seam for fault-injection tests)."""
        self.config = config
        self.metrics = Metrics()
        self.manager = ModelManager(
            Path(config.model_repository),
            self.metrics,
            control_mode=config.model_control,
            poll_interval_s=config.poll_interval_s,
            loaders=loaders,
        )
        self.dataplane = DataPlane(self.manager)
        self.governance: Governance | None = None
        self.admin_key: str | None = None
        """The admin key created at this start (first start of a state dir), to print once."""
        if config.auth:
            state_dir = Path(config.state_dir)
            store = SqliteStore(state_dir)
            self.admin_key = ensure_admin_key(store, state_dir)
            self.governance = Governance(store, self.metrics)
        else:
            log.warning("authentication is off (--no-auth): every caller is an anonymous admin")
        self.gateway = Gateway(self.dataplane, self.metrics, self.governance)
        self.http_port = 0
        self.grpc_port = 0
        self._uvicorn: uvicorn.Server | None = None
        self._uvicorn_task: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    def http_app(self) -> Starlette:
        v2 = V2Http(self.gateway, self.config.max_request_bytes)
        openai = OpenAIHttp(self.gateway, self.config.max_request_bytes)
        admin = AdminHttp(self.gateway, self.config.max_request_bytes)

        async def metrics(request: Request) -> Response:
            # Metrics carry every tenant's names, tokens and cost: with auth on, only admin keys read them
            # (Prometheus sends one with `authorization` in its scrape config).
            ctx = self.gateway.begin("http", header_dict(request.scope["headers"]), status.http_code_label)
            try:
                self.gateway.require_admin(ctx)
            except Exception as exc:
                return error_response(exc, ctx.request_id)
            return Response(
                self.metrics.render(),
                media_type="text/plain; version=0.0.4; charset=utf-8",
                headers={"x-request-id": ctx.request_id},
            )

        async def not_found(request: Request, exc: Exception) -> Response:
            code = getattr(exc, "status_code", 404)
            if request.url.path.startswith(("/v1/", "/admin/")):  # the OpenAI error shape there
                what = "not found" if code == 404 else "method not allowed"
                message = f"{request.method} {request.url.path}: {what}"
                error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
                return json_response({"error": error}, code)
            return Response(
                b'{"error":"' + (b"not found" if code == 404 else b"method not allowed") + b'"}',
                status_code=code,
                media_type="application/json",
            )

        async def internal(request: Request, exc: Exception) -> Response:
            return error_response(exc)

        return Starlette(
            routes=[
                *v2.routes(),
                *openai.routes(),
                *admin.routes(),
                Route("/metrics", metrics, methods=["GET"]),
                openapi.route(),
            ],
            exception_handlers={404: not_found, 405: not_found, 500: internal},
        )

    async def start(self) -> None:
        """Load the startup models, open both listeners, report the ports."""
        cfg = self.config
        if self.governance is not None:
            self.governance.start_watching()
        await self.manager.start(cfg.load_models or None)
        sock = _bind(cfg.host, cfg.http_port)
        self.http_port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.http_app(),
            log_level="warning",
            access_log=False,
            # Nothing here reads the client's address, so the X-Forwarded-* rewriting middleware would
            # only cost every request a pass over its headers.
            proxy_headers=False,
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=min(LISTENER_CLOSE_S, max(cfg.shutdown_grace_s, 0.5)),  # type: ignore[arg-type]
            loop="none",
        )
        self._uvicorn = _Uvicorn(uv_config)
        self._uvicorn_task = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]))
        if cfg.grpc_port >= 0:
            self._grpc = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", min(cfg.max_request_bytes, GRPC_MAX_MESSAGE)),
                    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                    ("grpc.so_reuseport", 0),
                ]
            )
            add_to_server(V2Grpc(self.gateway), self._grpc)
            self.grpc_port = self._grpc.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}")
            await self._grpc.start()
        while not self._uvicorn.started:
            await asyncio.sleep(0.01)
        # Everything allocated so far (modules, models, tokenizers) lives as long as the server: keep it out
        # of the collector's generations, or each full collection walks it and stalls every request (~80 ms
        # with torch loaded, measured under load).
        gc.collect()
        gc.freeze()
        # Each request allocates a few hundred short-lived objects, with 64 requests in flight: at the
        # default threshold (700) the young generation is collected every few requests. 50,000 makes that
        # every few hundred (about 7% more V2 requests per second on 2 cores, measured), for a few MB.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.dataplane.set_ready(True)

    async def stop(self) -> None:
        """Graceful shutdown: readiness goes false and new requests are refused at once; requests in flight
        get `shutdown_grace_s` to finish (queued batches run without waiting to fill), then what is left is
        failed; the listeners close, the models unload, and the ledger is flushed."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.dataplane.set_ready(False)
        grace = self.config.shutdown_grace_s
        if not await self.dataplane.drain(grace):
            log.warning(
                "%d requests still in flight after %.0f s: failing them", self.dataplane.in_flight, grace
            )
            await self.dataplane.abandon(SETTLE_AFTER_GRACE_S)
        if self._grpc is not None:
            await self._grpc.stop(grace=min(LISTENER_CLOSE_S, max(self.config.shutdown_grace_s, 0.5)))
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._uvicorn_task is not None:
            await self._uvicorn_task
        await self.manager.stop()
        if self.governance is not None:
            await self.governance.close()
        self._stopped.set()

    async def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        await self.start()
        if self.admin_key is not None:
            key_file = Path(self.config.state_dir) / ADMIN_KEY_FILE
            print(
                f"inferd: created the admin API key (shown once; also in {key_file}, mode 0600):\n"
                f"  {self.admin_key}",
                flush=True,
            )
        print(f"inferd: listening http={self.http_port} grpc={self.grpc_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: draining requests in flight (up to %.0f s)", self.config.shutdown_grace_s)
        await self.stop()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the server owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only disables Nagle (TCP_NODELAY) on accepted sockets whose proto is TCP,
    # and without it every response stalls on the peer's delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[InferdServer]:
    """A started server for the duration of the block (tests, embedding)."""
    server = InferdServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
