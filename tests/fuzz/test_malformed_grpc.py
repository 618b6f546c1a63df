"""Hypothesis-made malformed gRPC `ModelInferRequest`s: raw_input_contents of random counts and sizes, wrong
datatypes, mismatched shapes, typed contents in the wrong field, and random bytes as the serialized message.

Complements `tests/server/test_bad_input.py`'s table. Every answer is a success or a client-error status
(INVALID_ARGUMENT, NOT_FOUND, ...) with a message; afterwards the server still serves good requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.server.openapi import DATATYPES
from tests.fuzz.conftest import FuzzServer, examples
from tests.fuzz.helpers import assert_grpc_refusal, assert_serves, grpc_metadata

FUZZ = settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = ["identity_fp32", "identity_int64", "identity_bytes", "add_sub", "versioned", "nope", ""]
NAMES = ["input", "a", "b", "text", "x", ""]
CONTENT_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
dims = st.one_of(st.integers(0, 9), st.integers(-(2**63), 2**63 - 1))
parameter = st.one_of(
    st.builds(lambda v: ("int64_param", v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: ("string_param", v), st.text(max_size=5)),
    st.builds(lambda v: ("bool_param", v), st.booleans()),
    st.builds(lambda v: ("uint64_param", v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: ("double_param", v), st.floats()),
)


@st.composite
def infer_requests(draw: st.DrawFn) -> Any:
    msg = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(MODELS)),
        model_version=draw(st.sampled_from(["", "", "1", "2", "9", "x", "-1"])),
        id=draw(st.text(max_size=4)),
    )
    n_inputs = draw(st.integers(0, 3))
    use_raw = draw(st.booleans())
    for _ in range(n_inputs):
        shape = draw(st.sampled_from([[1, 4], [2, 4], [4], [1, 2, 2]]) | st.lists(dims, max_size=4))
        tensor = msg.inputs.add(
            name=draw(st.sampled_from(NAMES)),
            datatype=draw(st.sampled_from([*DATATYPES, "FLOAT", ""])),
            shape=shape,
        )
        if not use_raw and draw(st.booleans()):
            field = draw(st.sampled_from(sorted(CONTENT_FIELDS)))
            values = draw(st.lists(CONTENT_FIELDS[field], max_size=9))
            getattr(tensor.contents, field).extend(values)
    if use_raw:
        count = draw(st.sampled_from([n_inputs, n_inputs, 0, 1, 2, 4]))
        for _ in range(count):
            size = draw(st.sampled_from([0, 1, 4, 8, 15, 16, 32, 64]) | st.integers(0, 200))
            msg.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
    for name in draw(st.lists(st.sampled_from(["output", "sum", "diff", "x"]), max_size=3)):
        msg.outputs.add(name=name)
    for key, (kind, value) in draw(
        st.dictionaries(st.sampled_from(["timeout", "priority", "other"]), parameter, max_size=2)
    ).items():
        setattr(msg.parameters[key], kind, value)
    return msg


@pytest.fixture(scope="module")
def channel(fuzz_server: FuzzServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.grpc_url) as ch:
        yield ch


@FUZZ
@given(msg=infer_requests())
def test_infer_messages(channel: grpc.Channel, fuzz_server: FuzzServer, msg: Any) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        stub.ModelInfer(msg, metadata=grpc_metadata(fuzz_server), timeout=30)
    except grpc.RpcError as exc:
        assert_grpc_refusal(exc)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_as_the_message(channel: grpc.Channel, fuzz_server: FuzzServer, raw: bytes) -> None:
    """Bytes that may not even parse as a ModelInferRequest."""
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        call(raw, metadata=grpc_metadata(fuzz_server), timeout=30)
    except grpc.RpcError as exc:
        assert_grpc_refusal(exc)


@FUZZ
@given(msgs=st.lists(infer_requests(), min_size=1, max_size=4))
def test_stream_infer_messages(channel: grpc.Channel, fuzz_server: FuzzServer, msgs: list[Any]) -> None:
    """The streaming RPC answers every message: a response or an error message, the stream stays open."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    replies = list(stub.ModelStreamInfer(iter(msgs), metadata=grpc_metadata(fuzz_server), timeout=30))
    assert len(replies) == len(msgs)
    for reply in replies:
        assert reply.error_message or reply.infer_response.model_name, reply
        assert "internal error" not in reply.error_message


UNARY_RPCS = [
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
    "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
]  # fmt: skip


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=80), rpc=st.sampled_from(UNARY_RPCS))
def test_random_bytes_to_every_rpc(
    channel: grpc.Channel, fuzz_server: FuzzServer, raw: bytes, rpc: str
) -> None:
    """Every RPC answers bytes that may not parse as its request with a result or a client error (the user
    key may not load or unload: PERMISSION_DENIED)."""
    call = channel.unary_unary(
        f"/inference.GRPCInferenceService/{rpc}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        call(raw, metadata=grpc_metadata(fuzz_server), timeout=30)
    except grpc.RpcError as exc:
        error: Any = exc
        if error.code() != grpc.StatusCode.PERMISSION_DENIED:
            assert_grpc_refusal(exc)


def test_still_serves(fuzz_server: FuzzServer) -> None:
    assert_serves(fuzz_server)


def test_stream_with_a_message_that_does_not_parse(channel: grpc.Channel, fuzz_server: FuzzServer) -> None:
    """Messages before the bad one are answered; then the stream ends with INVALID_ARGUMENT."""
    good = service_pb2.ModelInferRequest(model_name="identity_fp32")
    good.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    good.raw_input_contents.append(bytes(16))
    call = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda b: b,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    replies = call(
        iter([good.SerializeToString(), b"\xff\xff\xff"]), metadata=grpc_metadata(fuzz_server), timeout=30
    )
    first = next(replies)
    assert first.infer_response.model_name == "identity_fp32", first
    with pytest.raises(grpc.RpcError) as info:
        next(replies)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in error.details()
