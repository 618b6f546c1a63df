"""The wire side of the V2 load generator: one REST sender (aiohttp) and one gRPC sender (grpc.aio).

A sender fetches the model's metadata, builds its request once (`prepare`), then sends those same bytes
again and again; replies are read in full but not decoded (gRPC uses identity serializers).
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import quote

from inferd.loadgen.auth import auth_headers
from inferd.loadgen.v2_inputs import (
    ModelMeta,
    binary_body,
    grpc_request,
    json_body,
    make_inputs,
    metadata_from_grpc,
    parse_metadata_json,
)

GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
DETAIL_CHARS = 300
"""How much of a failure's message is kept to show."""

Failure = tuple[str, str]
"""An error kind (`http_503`, `grpc_UNAVAILABLE`, an exception class) and a detail message."""


class BenchError(Exception):
    """The run could not start: bad options, unreachable server, metadata or a first request refused."""


class Sender(Protocol):
    """Sends one pre-built inference request over and over."""

    async def metadata(self) -> ModelMeta:
        """The model's V2 metadata; BenchError when the server refuses."""
        ...

    def prepare(self, meta: ModelMeta, batch_size: int, seed: int) -> None:
        """Build the request body from random inputs shaped per `meta`."""
        ...

    async def send(self) -> Failure | None:
        """Send the request once; the failure, or None on success."""
        ...

    async def close(self) -> None: ...


class RestSender:
    """V2 REST over one aiohttp session whose connection pool holds `connections` keep-alive connections."""

    def __init__(
        self,
        url: str,
        model: str,
        version: str | None,
        *,
        binary: bool,
        timeout_s: float,
        connections: int,
        api_key: str | None = None,
    ) -> None:
        import aiohttp

        self._client_errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)
        base = url.rstrip("/")
        if "://" not in base:
            base = "http://" + base
        path = f"/v2/models/{quote(model, safe='')}"
        if version:
            path += f"/versions/{quote(version, safe='')}"
        self.meta_url = base + path
        self.infer_url = base + path + "/infer"
        self.binary = binary
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            auto_decompress=False,
            headers=auth_headers(api_key),
        )
        self.body = b""
        self.headers: dict[str, str] = {}

    async def metadata(self) -> ModelMeta:
        async with self.session.get(self.meta_url) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise BenchError(f"GET {self.meta_url}: HTTP {resp.status}: {text[:DETAIL_CHARS]}")
        return parse_metadata_json(json.loads(text))

    def prepare(self, meta: ModelMeta, batch_size: int, seed: int) -> None:
        inputs = make_inputs(meta, batch_size, seed)
        body = binary_body(inputs, [o.name for o in meta.outputs]) if self.binary else json_body(inputs)
        self.body, self.headers = body.data, body.headers

    async def send(self) -> Failure | None:
        try:
            async with self.session.post(self.infer_url, data=self.body, headers=self.headers) as resp:
                payload = await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"http_{resp.status}", payload[:DETAIL_CHARS].decode("utf-8", "replace")
        except self._client_errors as e:
            return type(e).__name__, str(e)[:DETAIL_CHARS]

    async def close(self) -> None:
        await self.session.close()


class GrpcSender:
    """V2 gRPC (`inference.GRPCInferenceService`) over one grpc.aio channel; `target` is `host:port`,
    optionally prefixed `grpc://`."""

    def __init__(
        self, target: str, model: str, version: str | None, *, timeout_s: float, api_key: str | None = None
    ) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        for scheme in ("grpc://", "http://"):
            target = target.removeprefix(scheme)
        self._rpc_error: type[BaseException] = grpc.aio.AioRpcError
        self.target = target.rstrip("/")
        self.model, self.version, self.timeout_s = model, version, timeout_s
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.aio.insecure_channel(self.target, options=unlimited)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        # Identity (de)serializers: the request is serialized once and replies are not parsed.
        self.infer = self.channel.unary_unary(GRPC_INFER_METHOD)
        self.body = b""
        self.metadata_pairs = tuple(auth_headers(api_key).items())

    async def metadata(self) -> ModelMeta:
        from tritonclient.grpc import service_pb2

        req = service_pb2.ModelMetadataRequest(name=self.model, version=self.version or "")
        try:
            resp = await self.stub.ModelMetadata(req, timeout=self.timeout_s, metadata=self.metadata_pairs)
        except self._rpc_error as e:
            raise BenchError(f"ModelMetadata at {self.target}: {_rpc_failure(e)[1]}") from e
        return metadata_from_grpc(resp)

    def prepare(self, meta: ModelMeta, batch_size: int, seed: int) -> None:
        inputs = make_inputs(meta, batch_size, seed)
        self.body = grpc_request(self.model, self.version, inputs).SerializeToString()

    async def send(self) -> Failure | None:
        try:
            await self.infer(self.body, timeout=self.timeout_s, metadata=self.metadata_pairs)
        except self._rpc_error as e:
            return _rpc_failure(e)
        return None

    async def close(self) -> None:
        await self.channel.close()


def _rpc_failure(error: Any) -> Failure:
    """(`grpc_<CODE>`, "<CODE>: details") of a grpc.aio.AioRpcError."""
    code = error.code().name
    return f"grpc_{code}", f"{code}: {error.details()}"[:DETAIL_CHARS]
