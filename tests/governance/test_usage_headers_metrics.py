"""Usage reported to clients and to Prometheus: the V2 success headers (request id and cost, no rate-limit
state), the rate-limit state on a V2 refusal, and `inferd_tokens_total` / `inferd_cost_total` equal to
what the ledger and the `x-inferd-cost` headers say (summed on the request path, read at scrape time)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.governance.conftest import IDENTITY, LLM, MESSAGES, Governed, bearer, metric

V2_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@contextlib.contextmanager
def priced(governed: Governed, model: str, **price: float) -> Iterator[None]:
    """`model` at `price` for the block, then back to what it was (the server is shared by the package)."""
    before = [p for p in governed.admin.call("GET", "/prices") if p["model"] == model]
    governed.admin.call("PUT", "/prices", json={"model": model, **price})
    try:
        yield
    finally:
        if before:
            governed.admin.call("PUT", "/prices", json=before[0])
        else:
            governed.admin.call("DELETE", f"/prices/{model}")


@pytest.fixture
def identity_price(governed: Governed) -> Iterator[None]:
    with priced(governed, IDENTITY, per_inference=0.000123):
        yield


def test_v2_success_headers_carry_cost_not_rate_limits(governed: Governed, identity_price: None) -> None:
    tenant = governed.admin.tenant("hdr-v2")
    _, key = governed.admin.create_key(tenant, models=["alpha*"], rpm=1000)
    r = httpx.post(f"{governed.base}/v2/models/{IDENTITY}/infer", json=V2_BODY, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.headers["x-inferd-cost"] == "0.000123"
    assert r.headers["x-request-id"]
    assert not [h for h in r.headers if h.startswith("x-ratelimit-")]


def test_v2_refusal_carries_rate_limit_state(governed: Governed) -> None:
    tenant = governed.admin.tenant("hdr-v2-429")
    _, key = governed.admin.create_key(tenant, models=["alpha*"], rpm=1)
    url = f"{governed.base}/v2/models/{IDENTITY}/infer"
    assert httpx.post(url, json=V2_BODY, headers=bearer(key)).status_code == 200
    r = httpx.post(url, json=V2_BODY, headers=bearer(key))
    assert r.status_code == 429
    assert "rate limit" in r.json()["error"]
    assert r.headers["x-ratelimit-limit-requests"] == "1"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(r.headers["retry-after"]) >= 1


def test_grpc_success_trailers_carry_cost(governed: Governed, identity_price: None) -> None:
    tenant = governed.admin.tenant("hdr-grpc")
    _, key = governed.admin.create_key(tenant, models=["alpha*"], rpm=1000)
    request = service_pb2.ModelInferRequest(model_name=IDENTITY)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    with grpc.insecure_channel(governed.server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ModelInfer.with_call(request, metadata=(("authorization", f"Bearer {key}"),))
    trailers = dict(call.trailing_metadata())
    assert trailers["x-inferd-cost"] == "0.000123"
    assert trailers["x-request-id"]
    assert not [k for k in trailers if k.startswith("x-ratelimit-")]


def test_token_and_cost_metrics_match_the_ledger_and_headers(
    governed: Governed, identity_price: None
) -> None:
    tenant = governed.admin.tenant("metrics")
    _, key = governed.admin.create_key(tenant, models=["alpha*"])
    chat = {"model": LLM, "messages": MESSAGES, "max_tokens": 3, "ignore_eos": True}
    llm_cost = 0.0
    with (
        priced(governed, LLM, prompt_per_1k=1.5, completion_per_1k=3.25),
        httpx.Client(base_url=governed.base, headers=bearer(key), timeout=60) as client,
    ):
        for _ in range(3):
            r = client.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
            llm_cost += float(r.headers["x-inferd-cost"])
        for _ in range(4):
            assert client.post(f"/v2/models/{IDENTITY}/infer", json=V2_BODY).status_code == 200
    assert llm_cost > 0
    usage = {row["model"]: row for row in governed.admin.usage(tenant)}
    llm = usage[LLM]
    assert (
        metric(governed, "inferd_tokens_total", tenant=tenant, model=LLM, kind="prompt")
        == (llm["prompt_tokens"])
    )
    assert metric(governed, "inferd_tokens_total", tenant=tenant, model=LLM, kind="completion") == 9
    assert llm["completion_tokens"] == 9
    # Cost is summed exactly in micro-units: the metric equals the headers' sum and the ledger's.
    assert metric(governed, "inferd_cost_total", tenant=tenant, model=LLM) == pytest.approx(
        llm_cost, abs=1e-9
    )
    assert llm["cost"] == pytest.approx(llm_cost, abs=1e-9)
    assert metric(governed, "inferd_cost_total", tenant=tenant, model=IDENTITY) == pytest.approx(4 * 0.000123)
    # A free model's zero cost and a tensor model's zero tokens make no series.
    assert metric(governed, "inferd_tokens_total", tenant=tenant, model=IDENTITY, kind="prompt") is None
