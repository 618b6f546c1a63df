"""V2 gRPC: `inference.GRPCInferenceService`, wire-compatible with `tritonclient.grpc`.

The message definitions are the ones tritonclient generates from Triton's grpc_service.proto, so field numbers
match the official clients by construction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from inferd import datatypes
from inferd.errors import InvalidInput
from inferd.gateway.context import CallContext
from inferd.gateway.stage import Gateway
from inferd.server import model_views, status
from inferd.server.http_headers import metadata_dict
from inferd.server.usage_headers import error_headers, success_headers
from inferd.tensors import Array, InferRequest, InferResponse, OutputRequest, Tensor, uint_parameter

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Each typed-contents field's element type (numpy alone reads a uint64 field as float64, losing precision).
_FIELD_DTYPE: dict[str, np.dtype[Any]] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


def _param(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def decode_request(msg: Any) -> InferRequest:
    """A ModelInferRequest as an InferRequest (typed `contents` or `raw_input_contents`)."""
    params = {k: _param(v) for k, v in msg.parameters.items()}
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs; give one per input")
    if not msg.inputs:
        raise InvalidInput("request has no inputs")
    inputs = []
    for i, t in enumerate(msg.inputs):
        name = t.name
        dtype = datatypes.lookup(t.datatype)
        shape = datatypes.check_shape(tuple(int(d) for d in t.shape), name)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input {name!r} has both typed contents and raw_input_contents")
            data = datatypes.from_raw(raw[i], dtype, shape, name)
        else:
            data = _from_contents(t.contents, dtype, shape, name)
        inputs.append(Tensor(name, dtype, data))
    outputs = [OutputRequest(o.name) for o in msg.outputs] if msg.outputs else None
    return InferRequest(
        model=msg.model_name,
        version=msg.model_version or None,
        inputs=inputs,
        outputs=outputs,
        id=msg.id,
        timeout_us=uint_parameter(params, "timeout"),
        priority=uint_parameter(params, "priority") or 0,
        parameters=params,
    )


def _from_contents(contents: Any, dtype: datatypes.DataType, shape: tuple[int, ...], name: str) -> Array:
    field = _CONTENTS_FIELD.get(dtype.name)
    if field is None:
        raise InvalidInput(f"input {name!r}: {dtype.name} data must be sent in raw_input_contents")
    values = getattr(contents, field)
    count = datatypes.element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: {len(values)} elements in contents for shape {list(shape)}")
    if dtype.name == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        arr[:] = list(values)
        return arr.reshape(shape)
    source = np.array(values, dtype=_FIELD_DTYPE[field])
    if source.dtype != dtype.numpy:  # INT8/INT16/UINT8/UINT16 travel widened
        info = np.iinfo(dtype.numpy.name)
        if source.size and (source.min() < info.min or source.max() > info.max):
            raise InvalidInput(f"input {name!r}: values out of range for {dtype.name}")
    return source.astype(dtype.numpy).reshape(shape)


def encode_response(response: InferResponse) -> Any:
    msg = service_pb2.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    for t in response.outputs:
        out = msg.outputs.add()
        out.name = t.name
        out.datatype = t.datatype.name
        out.shape.extend(t.shape)
        msg.raw_output_contents.append(datatypes.to_raw(t.data))
    return msg


class V2Grpc(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The gRPC servicer; every handler maps inferd errors to status codes through `status`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.dataplane = gateway.dataplane

    async def _fail(self, context: Any, exc: BaseException) -> None:
        headers = error_headers(exc)
        if headers:
            context.set_trailing_metadata(tuple(headers.items()))
        await context.abort(status.grpc_code(exc), status.message(exc))

    def _begin(self, context: Any) -> CallContext:
        headers = metadata_dict(context.invocation_metadata())
        return self.gateway.begin("grpc", headers, status.grpc_code_label)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            ready = self.gateway.model_ready(self._begin(context), request.name, request.version or None)
        except Exception as exc:
            await self._fail(context, exc)
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.dataplane.server_metadata()
        return service_pb2.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            ctx = self._begin(context)
            loaded = self.gateway.model(ctx, request.name, request.version or None)
            doc = model_views.metadata(loaded, self.gateway.model_versions(ctx, request.name))
        except Exception as exc:
            await self._fail(context, exc)
        doc.pop("parameters", None)
        return json_format.ParseDict(doc, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            loaded = self.gateway.model(self._begin(context), request.name, request.version or None)
            doc = model_views.model_config(loaded)
        except Exception as exc:
            await self._fail(context, exc)
        config = json_format.ParseDict(doc, model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        try:
            ctx = self._begin(context)
            stats = self.gateway.statistics(ctx, request.name or None, request.version or None)
        except Exception as exc:
            await self._fail(context, exc)
        return json_format.ParseDict({"model_stats": stats}, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        try:
            entries = self.gateway.repository_index(self._begin(context), request.ready)
        except Exception as exc:
            await self._fail(context, exc)
        resp = service_pb2.RepositoryIndexResponse()
        for e in entries:
            resp.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
        return resp

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        try:
            await self.gateway.load(self._begin(context), request.model_name)
        except Exception as exc:
            await self._fail(context, exc)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        try:
            await self.gateway.unload(self._begin(context), request.model_name)
        except Exception as exc:
            await self._fail(context, exc)
        return service_pb2.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        ctx = self._begin(context)
        try:
            self.gateway.check_model(ctx, request.model_name)
            infer_request = decode_request(request)
            _apply_deadline(infer_request, context)
        except Exception as exc:
            self.gateway.record(ctx, request.model_name, request.model_version, exc, started)
            await self._fail(context, exc)
        try:
            response = await self.gateway.infer(ctx, infer_request)
        except Exception as exc:
            await self._fail(context, exc)
        context.set_trailing_metadata(tuple(success_headers(ctx, rate_limits=False).items()))
        return encode_response(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        ctx = self._begin(context)
        if ctx.auth_error is not None:
            await self._fail(context, ctx.auth_error)
        results: asyncio.Queue[Any] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(msg: Any) -> None:
            started = time.perf_counter()
            try:
                infer_request = decode_request(msg)
            except Exception as exc:
                self.gateway.record(ctx, msg.model_name, msg.model_version, exc, started)
                await results.put(service_pb2.ModelStreamInferResponse(error_message=status.message(exc)))
                return
            try:
                response = await self.gateway.infer(ctx, infer_request)
                await results.put(
                    service_pb2.ModelStreamInferResponse(infer_response=encode_response(response))
                )
            except Exception as exc:
                await results.put(service_pb2.ModelStreamInferResponse(error_message=status.message(exc)))

        async def reader() -> None:
            async for msg in request_iterator:
                task = asyncio.get_running_loop().create_task(one(msg))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*list(pending))
            await results.put(None)

        read_task = asyncio.get_running_loop().create_task(reader())
        try:
            while True:
                item = await results.get()
                if item is None:
                    break
                yield item
        finally:
            read_task.cancel()
            for task in list(pending):
                task.cancel()


def _apply_deadline(request: InferRequest, context: Any) -> None:
    """A gRPC deadline shorter than the request's own timeout becomes its timeout."""
    remaining = context.time_remaining()
    if remaining is None:
        return
    remaining_us = max(int(remaining * 1e6), 1)
    if request.timeout_us is None or remaining_us < request.timeout_us:
        request.timeout_us = remaining_us


def add_to_server(servicer: V2Grpc, server: Any) -> None:
    """Register the service on `server`. A request message that does not parse is INVALID_ARGUMENT naming
    the message type (grpc itself would answer UNKNOWN and log a traceback)."""
    registrar = _Registrar()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, registrar)
    handlers = {method: _refusing_unparsed(h) for method, h in registrar.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(registrar.service, handlers),))
    server.add_registered_method_handlers(registrar.service, handlers)


class _Registrar:
    """Takes the generated code's method handlers instead of a server."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive below, by name

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


class _Unparsed:
    """What the deserializer returns for bytes that are not a message of its type."""

    def __init__(self, error: DecodeError) -> None:
        self.message = f"the request is not a valid protobuf message: {error}"


def _refusing_unparsed(handler: Any) -> Any:
    parse = handler.request_deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Unparsed(exc)

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def checked_unary(request: Any, context: Any) -> Any:
            if isinstance(request, _Unparsed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await unary(request, context)

        return handler._replace(request_deserializer=deserialize, unary_unary=checked_unary)
    stream = handler.stream_stream

    async def checked_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        # The messages before a bad one are answered; then the stream ends with INVALID_ARGUMENT.
        bad: list[_Unparsed] = []

        async def parsed() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Unparsed):
                    bad.append(request)
                    return
                yield request

        async for response in stream(parsed(), context):
            yield response
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad[0].message)

    return handler._replace(request_deserializer=deserialize, stream_stream=checked_stream)
