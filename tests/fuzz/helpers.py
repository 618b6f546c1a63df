"""What every fuzz test asserts about an answer, and the good requests that must still work afterwards."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.fuzz.conftest import FuzzServer

GOOD_V2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
GRPC_CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def assert_v2_answer(response: httpx.Response) -> None:
    """A success, or a 4xx in the V2 error shape whose message names a problem (never a 5xx)."""
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        return
    assert 400 <= response.status_code < 500, response.status_code
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"}, doc
    assert isinstance(doc["error"], str) and len(doc["error"]) > 5, doc
    assert "internal error" not in doc["error"]


def assert_openai_answer(response: httpx.Response) -> None:
    """A success, or a 4xx in the OpenAI error shape with a message (never a 5xx)."""
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert "internal error" not in error["message"]


def assert_grpc_refusal(error: Any) -> None:
    """A client-error status with a message that is not an internal fault."""
    assert error.code() in GRPC_CLIENT_ERRORS, (error.code(), error.details())
    assert error.details(), error.code()
    assert "internal error" not in error.details()


def assert_serves(server: FuzzServer) -> None:
    """A good REST and a good gRPC inference both succeed."""
    with httpx.Client(base_url=server.base, headers=server.headers("user"), timeout=30) as http:
        response = http.post("/v2/models/identity_fp32/infer", json=GOOD_V2)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        msg = service_pb2.ModelInferRequest(model_name="identity_fp32")
        msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        msg.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
        reply = stub.ModelInfer(msg, metadata=grpc_metadata(server), timeout=30)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [0.0, 1.0, 2.0, 3.0]


def grpc_metadata(server: FuzzServer) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", server.user_key),)
