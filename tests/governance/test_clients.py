"""Official clients against a governed server: the `openai` SDK sees its standard error classes and the usage
headers; `tritonclient` (HTTP and gRPC) authenticates through its `headers` argument and gets its own
error type with the protocol's status for 401, 404 and 429."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.governance.conftest import CHAT_PROMPT_TOKENS, IDENTITY, LLM, MESSAGES, MLP, Governed


def oai(governed: Governed, key: str, base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=governed.base + base, api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tenant_key(governed: Governed) -> tuple[str, str]:
    """(tenant, key) with RPM and TPM limits on the key, allowed the alpha models. The limits are low so a
    bucket takes a while to refill what one request took (0.6 s for a request, 0.66 s for 11 tokens): the
    headers, read after the request, still show it taken however slowly the request ran."""
    tenant = governed.admin.tenant("clients")
    _, key = governed.admin.create_key(tenant, models=["alpha*"], rpm=100, tpm=1000)
    governed.admin.call("PUT", "/prices", json={"model": LLM, "prompt_per_1k": 2.0, "completion_per_1k": 4.0})
    return tenant, key


def test_openai_authentication_error(governed: Governed) -> None:
    for key in ("not-a-key", "ik_0123456789ab_" + "y" * 43):
        with pytest.raises(openai.AuthenticationError) as info:
            oai(governed, key).models.list()
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        assert info.value.type == "invalid_request_error"
        assert info.value.response.headers["x-request-id"]


def test_openai_not_found_for_a_hidden_model(governed: Governed) -> None:
    tenant = governed.admin.tenant("beta-only")
    _, key = governed.admin.create_key(tenant, models=["beta*"])
    client = oai(governed, key)
    errors = []
    for model in (LLM, "beta-ghost"):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
        assert info.value.code == "model_not_found"
        errors.append(info.value.message.replace(model, "MODEL"))
    assert errors[0] == errors[1]
    assert [m.id for m in client.models.list()] == []


def test_openai_permission_denied(governed: Governed, tenant_key: tuple[str, str]) -> None:
    admin_api = oai(governed, tenant_key[1], base="/admin/v1")
    with pytest.raises(openai.PermissionDeniedError) as info:
        admin_api.get("/tenants", cast_to=object)
    assert info.value.status_code == 403
    assert info.value.code == "permission_denied"
    # Its own tenant's usage is readable.
    assert admin_api.get("/usage", cast_to=object) is not None


def test_openai_rate_limit_error(governed: Governed) -> None:
    tenant = governed.admin.tenant("clients-rpm")
    _, key = governed.admin.create_key(tenant, models=["alpha*"], rpm=1)
    client = oai(governed, key)
    client.chat.completions.create(model=LLM, messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=LLM, messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
    err = info.value
    assert err.status_code == 429
    assert err.type == "rate_limit_exceeded"
    assert err.code == "requests_per_minute_exceeded"
    assert isinstance(err.body, dict) and err.body["type"] == "rate_limit_exceeded"
    headers = err.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]


def test_openai_insufficient_quota(governed: Governed) -> None:
    tenant = governed.admin.tenant("clients-quota")
    _, key = governed.admin.create_key(tenant, models=["alpha*"])
    governed.admin.budget(tenant, period="total", max_requests=1)
    client = oai(governed, key)
    client.completions.create(model=LLM, prompt="ka", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model=LLM, prompt="ka", max_tokens=1)
    err = info.value
    assert (err.type, err.code) == ("insufficient_quota", "budget_exceeded")
    assert isinstance(err.body, dict) and err.body["code"] == "budget_exceeded"
    assert "retry-after" not in err.response.headers


def test_openai_usage_headers(governed: Governed, tenant_key: tuple[str, str]) -> None:
    client = oai(governed, tenant_key[1])
    raw = client.chat.completions.with_raw_response.create(
        model=LLM,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=4,
        extra_body={"ignore_eos": True},
        extra_headers={"x-request-id": "client-chosen-id-1"},
    )
    h = raw.headers
    assert h["x-request-id"] == "client-chosen-id-1"
    for kind, limit in (("requests", 100), ("tokens", 1000)):
        assert h[f"x-ratelimit-limit-{kind}"] == str(limit)
        assert 0 <= int(h[f"x-ratelimit-remaining-{kind}"]) < limit
        assert h[f"x-ratelimit-reset-{kind}"]
    completion = raw.parse()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == CHAT_PROMPT_TOKENS
    assert completion.usage.completion_tokens == 4
    # 7 prompt tokens at 2.0/1K + 4 completion tokens at 4.0/1K.
    assert float(h["x-inferd-cost"]) == pytest.approx(0.014 + 0.016)
    # Streaming: headers at the start, the cost in the usage chunk at the end.
    with client.chat.completions.with_streaming_response.create(
        model=LLM,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ) as response:
        assert response.headers["x-request-id"]
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        chunks = list(response.parse())
    usage: Any = chunks[-1].usage
    assert usage is not None and usage.model_extra["cost"] == pytest.approx(0.030)


@pytest.fixture(scope="module")
def triton_key(governed: Governed) -> str:
    tenant = governed.admin.tenant("triton")
    _, key = governed.admin.create_key(tenant, models=["alpha*"])
    return key


@pytest.fixture
def http_client(governed: Governed) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(governed.server.http_url)
    yield client
    client.close()


@pytest.fixture
def grpc_client(governed: Governed) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(governed.server.grpc_url)
    yield client
    client.close()


def http_inputs() -> list[httpclient.InferInput]:
    x = httpclient.InferInput("input", [2, 4], "FP32")
    x.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4), binary_data=True)
    return [x]


def grpc_inputs() -> list[grpcclient.InferInput]:
    x = grpcclient.InferInput("input", [2, 4], "FP32")
    x.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4))
    return [x]


def test_tritonclient_http_auth(http_client: httpclient.InferenceServerClient, triton_key: str) -> None:
    want = np.arange(8, dtype=np.float32).reshape(2, 4)
    for headers in ({"authorization": f"Bearer {triton_key}"}, {"x-api-key": triton_key}):
        result = http_client.infer(IDENTITY, http_inputs(), headers=dict(headers))
        np.testing.assert_array_equal(result.as_numpy("output"), want)
        assert http_client.get_model_metadata(IDENTITY, headers=headers)["name"] == IDENTITY
        assert [m["name"] for m in http_client.get_model_repository_index(headers=headers)] == [
            "alpha-embed",
            IDENTITY,
            LLM,
        ]
    for headers in ({}, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as info:
            http_client.infer(IDENTITY, http_inputs(), headers=headers)
        assert info.value.status() == "401"
    with pytest.raises(InferenceServerException) as info:
        http_client.infer(MLP, http_inputs(), headers={"authorization": f"Bearer {triton_key}"})
    assert info.value.status() == "404"
    assert info.value.message() == f"unknown model '{MLP}'"


def test_tritonclient_grpc_auth(grpc_client: grpcclient.InferenceServerClient, triton_key: str) -> None:
    want = np.arange(8, dtype=np.float32).reshape(2, 4)
    for headers in ({"authorization": f"Bearer {triton_key}"}, {"x-api-key": triton_key}):
        result = grpc_client.infer(IDENTITY, grpc_inputs(), headers=headers)
        np.testing.assert_array_equal(result.as_numpy("output"), want)
        assert grpc_client.is_model_ready(IDENTITY, headers=headers)
    for headers in ({}, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as info:
            grpc_client.infer(IDENTITY, grpc_inputs(), headers=headers)
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer(MLP, grpc_inputs(), headers={"authorization": f"Bearer {triton_key}"})
    assert info.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("limit", ["rpm", "budget"])
def test_tritonclient_429(
    governed: Governed,
    http_client: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
    limit: str,
) -> None:
    """Two inferences pass (one per protocol), the third is refused: HTTP 429, gRPC RESOURCE_EXHAUSTED."""
    tenant = governed.admin.tenant(f"triton-{limit}")
    _, key = governed.admin.create_key(tenant, models=["alpha*"], **({"rpm": 2} if limit == "rpm" else {}))
    if limit == "budget":
        governed.admin.budget(tenant, period="total", max_requests=2)
    headers = {"authorization": f"Bearer {key}"}
    http_client.infer(IDENTITY, http_inputs(), headers=dict(headers))  # it adds its own headers to the dict
    grpc_client.infer(IDENTITY, grpc_inputs(), headers=headers)
    with pytest.raises(InferenceServerException) as info:
        http_client.infer(IDENTITY, http_inputs(), headers=dict(headers))
    assert info.value.status() == "429"
    assert ("rate limit" if limit == "rpm" else "budget") in str(info.value.message())
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer(IDENTITY, grpc_inputs(), headers=headers)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    # The V2 REST shape itself: {"error": message}, Retry-After only when retrying can help.
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    r = httpx.post(f"{governed.base}/v2/models/{IDENTITY}/infer", json=body, headers=headers, timeout=30)
    assert r.status_code == 429 and set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    assert r.headers["x-request-id"]
    if limit == "rpm":
        assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-limit-requests"] == "2"
    else:
        assert "retry-after" not in r.headers
    # tritonclient drops trailing metadata; a raw stub shows what a rate limit sends along.
    request = service_pb2.ModelInferRequest(model_name=IDENTITY)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    with grpc.insecure_channel(governed.server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.ModelInfer(request, metadata=tuple(headers.items()))
    trailing = dict(raw.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    if limit == "rpm":
        assert int(trailing["retry-after"]) >= 1
        assert trailing["x-ratelimit-limit-requests"] == "2"
        assert trailing["x-ratelimit-remaining-requests"] == "0"
    else:
        assert "retry-after" not in trailing  # a spent budget is not retryable


def test_tritonclient_grpc_stream(governed: Governed) -> None:
    """The bidirectional stream authenticates once, then admits each message against the budget."""
    tenant = governed.admin.tenant("triton-stream")
    _, key = governed.admin.create_key(tenant, models=["alpha*"])
    governed.admin.budget(tenant, period="total", max_requests=2)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()

    client = grpcclient.InferenceServerClient(governed.server.grpc_url)
    try:
        client.start_stream(lambda result, error: results.put((result, error)), headers={"x-api-key": key})
        for i in range(3):
            client.async_stream_infer(IDENTITY, grpc_inputs(), request_id=str(i))
        got = [results.get(timeout=30) for _ in range(3)]
        client.stop_stream()
        ok = [r for r, e in got if e is None]
        refused = [e for r, e in got if e is not None]
        assert len(ok) == 2 and len(refused) == 1
        assert "budget" in refused[0].message()
        # Without a key the stream itself is refused, reported through the callback.
        client.start_stream(lambda result, error: results.put((result, error)), headers={})
        with contextlib.suppress(InferenceServerException):  # the stream may already be closed
            client.async_stream_infer(IDENTITY, grpc_inputs())
        result, error = results.get(timeout=30)
        assert result is None and error.status() == "StatusCode.UNAUTHENTICATED"
        client.stop_stream()
    finally:
        client.close()
