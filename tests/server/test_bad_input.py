"""Every malformed request gets a 4xx (REST) or INVALID_ARGUMENT / NOT_FOUND (gRPC) naming the problem.

Table-driven: each case is a request and the status plus a distinguishing fragment of the error message. The
last tests check that none of them hurt the server.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import RunningServer

INFER = "/v2/models/identity_fp32/infer"
HLEN = "Inference-Header-Content-Length"
LIMIT = 1 << 20  # the shared server's max_request_bytes


def tensor(
    name: str = "input", datatype: str = "FP32", shape: Any = (1, 4), data: Any = None, **extra: Any
) -> Any:
    t: dict[str, Any] = {
        "name": name,
        "datatype": datatype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
    }
    if data is not None:
        t["data"] = data
    t.update(extra)
    return t


def good(name: str = "input", rows: int = 1) -> Any:
    return tensor(name, shape=(rows, 4), data=[0.5] * (4 * rows))


def body(*inputs: Any, **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: JSON header, then the raw tensor bytes."""
    head = json.dumps(header).encode()
    return head + blob, {HLEN: str(len(head))}


def bin_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def bytes_elems(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


FP32_ROW = np.arange(4, dtype=np.float32).tobytes()


@dataclass
class Rest:
    """One malformed REST request and what the server must answer."""

    content: bytes | None
    status: int
    fragment: str
    path: str = INFER
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


def rest_binary(header: dict[str, Any], blob: bytes, status: int, fragment: str, **kw: Any) -> Rest:
    content, headers = binary(header, blob)
    headers.update(kw.pop("headers", {}))
    return Rest(content, status, fragment, headers=headers, **kw)


REST_CASES: dict[str, Rest] = {
    # -- the body as a whole
    "invalid_json": Rest(b'{"inputs": [', 400, "not valid JSON"),
    "not_utf8_json": Rest(b'{"inputs": "\xff"}', 400, "not valid JSON"),
    "empty_body": Rest(b"", 400, "not valid JSON"),
    "body_is_array": Rest(b"[1, 2]", 400, "JSON object"),
    "body_is_string": Rest(b'"hello"', 400, "JSON object"),
    "no_inputs_key": Rest(b"{}", 400, "inputs"),
    "empty_inputs": Rest(body(), 400, "inputs"),
    "inputs_not_list": Rest(b'{"inputs": {"name": "input"}}', 400, "inputs"),
    "input_not_object": Rest(b'{"inputs": [3]}', 400, "inputs[0]"),
    "input_without_name": Rest(
        body({"datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}), 400, "name"
    ),
    "parameters_not_object": Rest(body(good(), parameters=[1]), 400, "parameters"),
    "id_not_string": Rest(body(good(), id=5), 400, "'id'"),
    # -- inputs vs the model's signature
    "missing_input": Rest(body(good("a")), 400, "missing input 'b'", path="/v2/models/add_sub/infer"),
    "unknown_input_name": Rest(body(good("nope")), 400, "'nope'"),
    "duplicate_input": Rest(body(good(), good()), 400, "more than once"),
    "wrong_datatype": Rest(body(tensor(datatype="FP64", data=[1.0] * 4)), 400, "FP64"),
    "unknown_datatype": Rest(body(tensor(datatype="FLOAT32", data=[1.0] * 4)), 400, "'FLOAT32'"),
    "datatype_not_string": Rest(body(tensor(datatype=7, data=[1.0] * 4)), 400, "datatype 7"),
    "wrong_rank": Rest(body(tensor(shape=(4,), data=[1.0] * 4)), 400, "shape [4]"),
    "wrong_rank_high": Rest(body(tensor(shape=(1, 2, 2), data=[1.0] * 4)), 400, "shape [1, 2, 2]"),
    "scalar_for_batched": Rest(body(tensor(shape=(), data=1.0)), 400, "batch dimension"),
    "wrong_fixed_dim": Rest(body(tensor(shape=(1, 5), data=[1.0] * 5)), 400, "shape [1, 5]"),
    "fixed_model_shape": Rest(
        body(tensor(shape=(3, 2), data=[1.0] * 6)), 400, "shape [3, 2]", path="/v2/models/fixed/infer"
    ),
    "count_vs_shape": Rest(body(tensor(data=[1.0] * 3)), 400, "3 data elements"),
    "count_vs_shape_nested": Rest(body(tensor(shape=(2, 4), data=[[1.0] * 4])), 400, "4 data elements"),
    "negative_dim": Rest(body(tensor(shape=(-1, 4), data=[1.0] * 4)), 400, "negative"),
    "float_dim": Rest(body(tensor(shape=[1.5, 4], data=[1.0] * 4)), 400, "list of integers"),
    "bool_dim": Rest(body(tensor(shape=[True, 4], data=[1.0] * 4)), 400, "list of integers"),
    "shape_not_list": Rest(body(tensor(shape="1,4", data=[1.0] * 4)), 400, "list of integers"),
    "shape_missing": Rest(body({"name": "input", "datatype": "FP32", "data": [1.0] * 4}), 400, "shape"),
    "too_many_dims": Rest(body(tensor(shape=[1] * 70, data=[1.0])), 400, "dimensions"),
    "batch_zero": Rest(body(tensor(shape=(0, 4), data=[])), 400, "batch size 0"),
    "batch_above_max": Rest(body(tensor(shape=(9, 4), data=[1.0] * 36)), 400, "max_batch_size 8"),
    "batch_mismatch": Rest(
        body(good("a", rows=2), tensor("b", "INT64", (1, 4), [1, 2, 3, 4])),
        400,
        "batch size 1",
        path="/v2/models/add_sub/infer",
    ),
    "no_data": Rest(body(tensor()), 400, "neither 'data' nor binary_data_size"),
    # -- JSON data values
    "bytes_json_number": Rest(
        body(tensor(datatype="BYTES", data=[1, 2, 3, 4])),
        400,
        "JSON strings",
        path="/v2/models/identity_bytes/infer",
    ),
    "bytes_json_mixed": Rest(
        body(tensor(datatype="BYTES", data=["a", "b", 3, "d"])),
        400,
        "JSON strings",
        path="/v2/models/identity_bytes/infer",
    ),
    "bytes_json_null": Rest(
        body(tensor(datatype="BYTES", data=["a", None, "c", "d"])),
        400,
        "JSON strings",
        path="/v2/models/identity_bytes/infer",
    ),
    "uint8_out_of_range": Rest(
        body(tensor(datatype="UINT8", data=[1, 2, 300, 4])),
        400,
        "out of range for UINT8",
        path="/v2/models/identity_uint8/infer",
    ),
    "int8_negative_out_of_range": Rest(
        body(tensor(datatype="INT8", data=[1, 2, -129, 4])),
        400,
        "out of range for INT8",
        path="/v2/models/identity_int8/infer",
    ),
    "uint32_negative": Rest(
        body(tensor(datatype="UINT32", data=[1, 2, -1, 4])),
        400,
        "out of range for UINT32",
        path="/v2/models/identity_uint32/infer",
    ),
    "int64_mixed_sign_overflow": Rest(
        body(tensor(datatype="INT64", data=[-1, 2**64 - 1, 0, 0])),
        400,
        "out of range for INT64",
        path="/v2/models/identity_int64/infer",
    ),
    "fp16_overflow": Rest(
        body(tensor(datatype="FP16", data=[1.0, 1e10, 0.0, 0.0])),
        400,
        "out of range for FP16",
        path="/v2/models/identity_fp16/infer",
    ),
    "float_for_int32": Rest(
        body(tensor(datatype="INT32", data=[1.5, 2, 3, 4])),
        400,
        "INT32",
        path="/v2/models/identity_int32/infer",
    ),
    "string_for_fp32": Rest(body(tensor(data=["1", "2", "3", "4"])), 400, "not valid FP32"),
    "null_for_fp32": Rest(body(tensor(data=[1.0, None, 3.0, 4.0])), 400, "not valid FP32"),
    "object_for_fp32": Rest(body(tensor(data=[{"v": 1}, 2, 3, 4])), 400, "not valid FP32"),
    "int_for_bool": Rest(
        body(tensor(datatype="BOOL", data=[1, 0, 1, 0])),
        400,
        "not valid BOOL",
        path="/v2/models/identity_bool/infer",
    ),
    "ragged_list": Rest(body(tensor(shape=(2, 4), data=[[1.0] * 4, [1.0] * 3])), 400, "ragged"),
    "ragged_depth": Rest(body(tensor(shape=(1, 4), data=[[1.0, 2.0], 3.0, 4.0])), 400, "ragged"),
    # -- outputs and parameters
    "unknown_output": Rest(body(good(), outputs=[{"name": "nope"}]), 400, "unknown output 'nope'"),
    "outputs_not_list": Rest(body(good(), outputs={"name": "output"}), 400, "'outputs'"),
    "output_without_name": Rest(body(good(), outputs=[{}]), 400, "outputs[0]"),
    "output_binary_not_bool": Rest(
        body(good(), outputs=[{"name": "output", "parameters": {"binary_data": "yes"}}]), 400, "binary_data"
    ),
    "binary_data_output_not_bool": Rest(
        body(good(), parameters={"binary_data_output": 1}), 400, "binary_data_output"
    ),
    "classification": Rest(
        body(good(), outputs=[{"name": "output", "parameters": {"classification": 2}}]), 400, "classification"
    ),
    "timeout_negative": Rest(body(good(), parameters={"timeout": -5}), 400, "'timeout'"),
    "timeout_string": Rest(body(good(), parameters={"timeout": "5"}), 400, "'timeout'"),
    "priority_negative": Rest(body(good(), parameters={"priority": -1}), 400, "'priority'"),
    # -- binary tensor extension
    "header_length_not_integer": Rest(body(good()), 400, HLEN, headers={HLEN: "ten"}),
    "header_length_past_body": Rest(body(good()), 400, HLEN, headers={HLEN: "100000"}),
    "header_length_zero": Rest(body(good()), 400, HLEN, headers={HLEN: "0"}),
    "header_length_negative": Rest(body(good()), 400, HLEN, headers={HLEN: "-3"}),
    "binary_size_past_end": rest_binary(
        {"inputs": [bin_input("input", "FP32", [1, 4], 32)]}, FP32_ROW, 400, "binary_data_size 32"
    ),
    "binary_size_negative": rest_binary(
        {"inputs": [bin_input("input", "FP32", [1, 4], -16)]}, FP32_ROW, 400, "binary_data_size"
    ),
    "binary_size_string": rest_binary(
        {"inputs": [bin_input("input", "FP32", [1, 4], "16")]}, FP32_ROW, 400, "binary_data_size"
    ),
    "binary_leftover_bytes": rest_binary(
        {"inputs": [bin_input("input", "FP32", [1, 4], 16)]}, FP32_ROW + b"xyz", 400, "3 bytes"
    ),
    "binary_wrong_byte_count": rest_binary(
        {"inputs": [bin_input("input", "FP32", [1, 4], 15)]}, FP32_ROW[:15], 400, "15 bytes of FP32"
    ),
    "binary_bytes_truncated_prefix": rest_binary(
        {"inputs": [bin_input("input", "BYTES", [1, 4], 17)]},
        bytes_elems(b"a", b"b", b"c") + b"\x01\x00",
        400,
        "fewer than the 4 elements",
        path="/v2/models/identity_bytes/infer",
    ),
    "binary_bytes_length_past_end": rest_binary(
        {"inputs": [bin_input("input", "BYTES", [1, 1], 6)]},
        struct.pack("<I", 99) + b"ab",
        400,
        "past the end",
        path="/v2/models/identity_bytes/infer",
    ),
    "binary_bytes_extra": rest_binary(
        {"inputs": [bin_input("input", "BYTES", [1, 1], 8)]},
        bytes_elems(b"ab") + b"zz",
        400,
        "beyond",
        path="/v2/models/identity_bytes/infer",
    ),
    "huge_bytes_shape_tiny_data": rest_binary(
        {"inputs": [bin_input("input", "BYTES", [1, 4_000_000_000], 8)]},
        bytes_elems(b"abcd"),
        400,
        "4000000000",
        path="/v2/models/identity_bytes/infer",
    ),
    "huge_fp32_shape_tiny_data": rest_binary(
        {"inputs": [bin_input("input", "FP32", [4_000_000_000, 4_000_000_000], 16)]},
        FP32_ROW,
        400,
        "4000000000",
    ),
    "large_fp32_shape_tiny_data": rest_binary(
        {"inputs": [bin_input("input", "FP32", [1, 4_000_000_000], 16)]},
        FP32_ROW,
        400,
        "expected 16000000000",
    ),
    "huge_shape_with_zero_dim": Rest(
        body(tensor(shape=[0, 4_000_000_000, 4_000_000_000, 4_000_000_000], data=[])), 400, "too large"
    ),
    "huge_shape_json": Rest(
        body(tensor(datatype="BYTES", shape=[1, 4_000_000_000], data=["a"])),
        400,
        "4000000000",
        path="/v2/models/identity_bytes/infer",
    ),
    "bytes_not_utf8_for_onnx": rest_binary(
        {"inputs": [bin_input("input", "BYTES", [1, 4], 20)]},
        bytes_elems(b"\xff", b"a", b"b", b"c"),
        400,
        "UTF-8",
        path="/v2/models/identity_bytes/infer",
    ),
    # -- model and version in the path
    "unknown_model": Rest(body(good()), 404, "no_such_model", path="/v2/models/no_such_model/infer"),
    "unknown_version": Rest(body(good()), 404, "'9'", path="/v2/models/versioned/versions/9/infer"),
    "non_numeric_version": Rest(body(good()), 400, "'abc'", path="/v2/models/versioned/versions/abc/infer"),
    "unknown_model_metadata": Rest(None, 404, "no_such_model", path="/v2/models/no_such_model", method="GET"),
    "unknown_version_metadata": Rest(None, 404, "'9'", path="/v2/models/versioned/versions/9", method="GET"),
    "unknown_model_config": Rest(
        None, 404, "no_such_model", path="/v2/models/no_such_model/config", method="GET"
    ),
    "unknown_model_stats": Rest(
        None, 404, "no_such_model", path="/v2/models/no_such_model/stats", method="GET"
    ),
    # -- HTTP framing
    "gzip_garbage": Rest(b"this is not gzip", 400, "gzip", headers={"Content-Encoding": "gzip"}),
    "deflate_garbage": Rest(b"this is not deflate", 400, "deflate", headers={"Content-Encoding": "deflate"}),
    "gzip_of_garbage_json": Rest(
        gzip.compress(b"{nope"), 400, "not valid JSON", headers={"Content-Encoding": "gzip"}
    ),
    "unsupported_encoding": Rest(body(good()), 400, "Content-Encoding", headers={"Content-Encoding": "br"}),
    "body_too_large": Rest(b"[" + b"1," * LIMIT + b"1]", 413, "limit"),
    "gzip_bomb": Rest(gzip.compress(b" " * (4 * LIMIT)), 413, "limit", headers={"Content-Encoding": "gzip"}),
    "index_body_not_object": Rest(b"[]", 400, "JSON object", path="/v2/repository/index"),
    "wrong_method_infer": Rest(None, 405, "method not allowed", method="GET"),
    "wrong_method_health": Rest(b"{}", 405, "method not allowed", path="/v2/health/ready"),
    "wrong_method_metadata": Rest(
        b"{}", 405, "method not allowed", path="/v2/models/identity_fp32", method="PUT"
    ),
    "unknown_path": Rest(body(good()), 404, "not found", path="/v2/modelz/identity_fp32/infer"),
    "unknown_path_get": Rest(None, 404, "not found", path="/v3", method="GET"),
}


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=60) as client:
        yield client


@pytest.mark.parametrize("case", REST_CASES.values(), ids=REST_CASES.keys())
def test_rest_bad_input(http: httpx.Client, case: Rest) -> None:
    response = http.request(case.method, case.path, content=case.content, headers=case.headers)
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"}, doc
    assert isinstance(doc["error"], str)
    assert case.fragment in doc["error"], doc["error"]
    assert "internal error" not in doc["error"]
    if case.path.startswith("/v2/models/") and case.path.endswith("/infer") and case.method == "POST":
        assert response.headers.get("x-request-id")


def test_rest_declared_content_length_too_large(server: RunningServer) -> None:
    """A Content-Length over the limit is refused before the body is read."""
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {LIMIT * 50}\r\nConnection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"413", head
    assert b"limit" in payload


# -- gRPC ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


Request = Any


def grpc_request(model: str = "identity_fp32", version: str = "") -> Request:
    return service_pb2.ModelInferRequest(model_name=model, model_version=version)


def add_input(
    msg: Request, name: str = "input", datatype: str = "FP32", shape: tuple[int, ...] = (1, 4)
) -> Any:
    return msg.inputs.add(name=name, datatype=datatype, shape=list(shape))


def raw_fp32(rows: int = 1, model: str = "identity_fp32", **kw: Any) -> Request:
    msg = grpc_request(model, **kw)
    add_input(msg, shape=(rows, 4))
    msg.raw_input_contents.append(np.zeros((rows, 4), np.float32).tobytes())
    return msg


def build(fn: Callable[[Request], None], model: str = "identity_fp32", version: str = "") -> Request:
    msg = grpc_request(model, version)
    fn(msg)
    return msg


def _raw(*blobs: bytes) -> Callable[[Request], None]:
    def fill(msg: Request) -> None:
        msg.raw_input_contents.extend(blobs)

    return fill


def _steps(*fns: Callable[[Request], None]) -> Callable[[Request], None]:
    def fill(msg: Request) -> None:
        for fn in fns:
            fn(msg)

    return fill


def _in(
    name: str = "input", datatype: str = "FP32", shape: tuple[int, ...] = (1, 4)
) -> Callable[[Request], None]:
    return lambda msg: add_input(msg, name, datatype, shape)


def _typed(
    field_name: str, values: list[Any], datatype: str, shape: tuple[int, ...] = (1, 4)
) -> Callable[[Request], None]:
    def fill(msg: Request) -> None:
        t = add_input(msg, "input", datatype, shape)
        getattr(t.contents, field_name).extend(values)

    return fill


def _param(key: str, **value: Any) -> Callable[[Request], None]:
    def fill(msg: Request) -> None:
        for attr, v in value.items():
            setattr(msg.parameters[key], attr, v)

    return fill


def _out(name: str) -> Callable[[Request], None]:
    return lambda msg: msg.outputs.add(name=name)


ROW = np.zeros(4, np.float32).tobytes()
INV = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND

GRPC_CASES: dict[str, tuple[Request, grpc.StatusCode, str]] = {
    "no_inputs": (build(lambda m: None), INV, "no inputs"),
    "missing_raw_contents": (build(_in()), INV, "0 elements in contents"),
    "raw_count_below_inputs": (
        build(_steps(_in("a"), _in("b", "INT64"), _raw(ROW)), "add_sub"),
        INV,
        "1 raw_input_contents for 2 inputs",
    ),
    "raw_count_above_inputs": (
        build(_steps(_in(), _raw(ROW, ROW))),
        INV,
        "2 raw_input_contents for 1 inputs",
    ),
    "raw_and_typed_contents": (
        build(_steps(_typed("fp32_contents", [1.0] * 4, "FP32"), _raw(ROW))),
        INV,
        "both",
    ),
    "fp16_typed_contents": (
        build(_typed("fp32_contents", [1.0] * 4, "FP16"), "identity_fp16"),
        INV,
        "FP16 data must be sent in raw_input_contents",
    ),
    "bf16_typed_contents": (
        build(_typed("fp32_contents", [1.0] * 4, "BF16"), "identity_bf16"),
        INV,
        "BF16 data must be sent in raw_input_contents",
    ),
    "typed_count_vs_shape": (build(_typed("fp32_contents", [1.0] * 3, "FP32")), INV, "3 elements"),
    "typed_wrong_field": (build(_typed("int_contents", [1] * 4, "FP32")), INV, "0 elements"),
    "typed_out_of_range": (
        build(_typed("int_contents", [1, 2, 300, 4], "INT8"), "identity_int8"),
        INV,
        "out of range for INT8",
    ),
    "typed_uint_out_of_range": (
        build(_typed("uint_contents", [1, 2, 70000, 4], "UINT16"), "identity_uint16"),
        INV,
        "out of range for UINT16",
    ),
    "raw_wrong_byte_count": (build(_steps(_in(), _raw(ROW[:15]))), INV, "15 bytes of FP32"),
    "raw_too_many_bytes": (build(_steps(_in(), _raw(ROW + ROW))), INV, "32 bytes of FP32"),
    "raw_bytes_truncated_prefix": (
        build(
            _steps(_in(datatype="BYTES"), _raw(bytes_elems(b"a", b"b", b"c") + b"\x01\x00")), "identity_bytes"
        ),
        INV,
        "fewer than the 4 elements",
    ),
    "raw_huge_bytes_shape": (
        build(
            _steps(_in(datatype="BYTES", shape=(1, 4_000_000_000)), _raw(bytes_elems(b"abcd"))),
            "identity_bytes",
        ),
        INV,
        "4000000000",
    ),
    "raw_huge_shape_zero_dim": (
        build(_steps(_in(shape=(0, 2**40, 2**40)), _raw(b""))),
        INV,
        "too large",
    ),
    "negative_dim": (build(_steps(_in(shape=(-1, 4)), _raw(ROW))), INV, "negative"),
    "unknown_datatype": (build(_steps(_in(datatype="FLOAT"), _raw(ROW))), INV, "'FLOAT'"),
    "wrong_datatype": (build(_steps(_in(datatype="INT32"), _raw(ROW))), INV, "INT32"),
    "wrong_shape": (build(_steps(_in(shape=(2, 2)), _raw(ROW))), INV, "shape [2, 2]"),
    "batch_above_max": (raw_fp32(rows=9), INV, "max_batch_size 8"),
    "unknown_input": (build(_steps(_in("nope"), _raw(ROW))), INV, "'nope'"),
    "unknown_output": (build(_steps(_in(), _raw(ROW), _out("nope"))), INV, "unknown output 'nope'"),
    "timeout_negative": (
        build(_steps(_in(), _raw(ROW), _param("timeout", int64_param=-1))),
        INV,
        "'timeout'",
    ),
    "priority_string": (
        build(_steps(_in(), _raw(ROW), _param("priority", string_param="hi"))),
        INV,
        "'priority'",
    ),
    "unknown_model": (raw_fp32(model="no_such_model"), NF, "no_such_model"),
    "unknown_version": (raw_fp32(model="versioned", version="9"), NF, "'9'"),
    "non_numeric_version": (raw_fp32(model="versioned", version="abc"), INV, "'abc'"),
}


@pytest.mark.parametrize("case", GRPC_CASES.values(), ids=GRPC_CASES.keys())
def test_grpc_bad_input(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, case: tuple[Request, grpc.StatusCode, str]
) -> None:
    msg, code, fragment = case
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(msg, timeout=60)
    error: Any = info.value
    assert error.code() == code, error.details()
    assert fragment in error.details(), error.details()
    assert "internal error" not in error.details()


def test_grpc_message_too_large(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """Over max_request_bytes gRPC itself refuses the message before inferd sees it."""
    msg = grpc_request()
    add_input(msg, shape=(1, 4))
    msg.raw_input_contents.append(b"\0" * (LIMIT + 16))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(msg, timeout=60)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("rpc", "request_msg"),
    [
        ("ModelMetadata", service_pb2.ModelMetadataRequest(name="no_such_model")),
        ("ModelMetadata", service_pb2.ModelMetadataRequest(name="versioned", version="9")),
        ("ModelConfig", service_pb2.ModelConfigRequest(name="no_such_model")),
        ("ModelStatistics", service_pb2.ModelStatisticsRequest(name="no_such_model")),
    ],
)
def test_grpc_unknown_model_queries(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, rpc: str, request_msg: Any
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(request_msg, timeout=60)
    error: Any = info.value
    assert error.code() == NF
    assert "no_such_model" in error.details() or "'9'" in error.details()


# -- the edges of the valid range are accepted (the out-of-range cases above are just past them) -------------


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("UINT8", [0, 255, 1, 254]),
        ("INT8", [-128, 127, 0, -1]),
        ("UINT32", [0, 2**32 - 1, 7, 8]),
        ("INT64", [-(2**63), 2**63 - 1, 0, -1]),
        ("UINT64", [0, 2**64 - 1, 2**63 + 1, 5]),  # numpy alone would read these as float64
        ("FP16", [65504.0, -65504.0, 0.5, 0.0]),
        ("BYTES", ["", "a", "\u00e9", "long" * 50]),
    ],
)
def test_rest_range_edges_accepted(http: httpx.Client, datatype: str, values: list[Any]) -> None:
    response = http.post(
        f"/v2/models/identity_{datatype.lower()}/infer", content=body(tensor(datatype=datatype, data=values))
    )
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["datatype"] == datatype
    assert out["data"] == values


# -- afterwards: nothing above hurt the server ---------------------------------------------------------------


def test_server_still_serves(http: httpx.Client, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert http.get("/v2/health/live").status_code == 200
    ready = http.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}
    response = http.post(INFER, content=body(tensor(data=[1.0, 2.0, 3.0, 4.0])))
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["data"] == [1.0, 2.0, 3.0, 4.0]
    reply = stub.ModelInfer(raw_fp32(), timeout=60)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [0.0] * 4
    assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=60).ready


def test_every_v2_response_carries_a_request_id(server: RunningServer) -> None:
    base = f"http://{server.http_url}"
    for path in ("/v2/health/live", "/v2", "/v2/models/mlp", "/v2/models/nope", "/v2/models/mlp/config"):
        r = httpx.get(base + path)
        assert r.headers.get("x-request-id"), path
        echoed = httpx.get(base + path, headers={"x-request-id": "abc-123"})
        assert echoed.headers["x-request-id"] == "abc-123", path
