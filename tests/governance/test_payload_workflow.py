"""Payload logging per tenant, per-workflow caps (the runaway agent loop guard), and retry linkage."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.governance.conftest import IDENTITY, LLM, Governed, bearer, metric

SECRET_PROMPT = "ba fe du si zo pe"
"""A prompt whose words appear nowhere else, to look for in the audit log."""


def post(governed: Governed, key: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    r = httpx.post(governed.base + path, json=body, headers={**bearer(key), **headers}, timeout=60)
    return r


def chat(max_tokens: int = 6, **extra: Any) -> dict[str, Any]:
    return {
        "model": LLM,
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "ignore_eos": True,
        **extra,
    }


V2_BODY = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [7.25, 8.5, 9.75, 11.125]}]
}


def inference_entries(governed: Governed, tenant: str) -> dict[str, dict[str, Any]]:
    """The tenant's `inference` audit entries by request id (written with the ledger row, before the
    response: no waiting needed)."""
    return {e["request_id"]: e for e in governed.admin.audit(tenant, action="inference")}


@pytest.mark.parametrize("policy", ["full", "metadata", "none"])
def test_payload_logging(governed: Governed, policy: str) -> None:
    tenant = governed.admin.tenant(f"payload-{policy}", payload_logging=policy)
    _, key = governed.admin.create_key(tenant, models=["alpha*"])
    r_chat = post(governed, key, "/v1/chat/completions", chat())
    completion = {"model": LLM, "prompt": SECRET_PROMPT, "max_tokens": 6, "ignore_eos": True, "stream": True}
    r_stream = post(governed, key, "/v1/completions", completion)
    r_v2 = post(governed, key, f"/v2/models/{IDENTITY}/infer", V2_BODY)
    for r in (r_chat, r_stream, r_v2):
        assert r.status_code == 200, r.text
    output = r_chat.json()["choices"][0]["message"]["content"]
    streamed = "".join(
        orjson.loads(line.removeprefix("data: "))["choices"][0]["text"]
        for line in r_stream.text.splitlines()
        if line.startswith("data: {")
    )
    assert len(output) > 8 and len(streamed) > 8  # six tokens (special ones decode to nothing)
    entries = inference_entries(governed, tenant)
    chat_entry = entries[r_chat.headers["x-request-id"]]
    stream_entry = entries[r_stream.headers["x-request-id"]]
    v2_entry = entries[r_v2.headers["x-request-id"]]
    for entry, model in ((chat_entry, LLM), (stream_entry, LLM), (v2_entry, IDENTITY)):
        assert entry["tenant"] == tenant and entry["target"] == model and entry["outcome"] == "ok"
        assert entry["detail"]["model"] == model
    text = str(chat_entry) + str(stream_entry)
    if policy == "full":
        assert chat_entry["detail"]["payload"]["messages"] == [{"role": "user", "content": SECRET_PROMPT}]
        assert chat_entry["detail"]["payload"]["outputs"] == {"0.0": output}
        assert stream_entry["detail"]["payload"]["prompts"] == [SECRET_PROMPT]
        assert stream_entry["detail"]["payload"]["outputs"] == {"0.0": streamed}
        assert "7.25" in str(v2_entry["detail"]["payload"]) and "11.125" in str(v2_entry["detail"]["payload"])
    else:
        assert SECRET_PROMPT not in text and output not in text and streamed not in text
        assert "payload" not in chat_entry["detail"] and "payload" not in v2_entry["detail"]
        assert "7.25" not in str(v2_entry)
    if policy in ("full", "metadata"):
        request = chat_entry["detail"]["request"]
        assert (request["max_tokens"], request["temperature"], request["n"]) == (6, 0.7, 1)
        assert request["messages"] == 1
        assert v2_entry["detail"]["request"]["inputs"] == [
            [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]
        ]
    else:
        for entry in (chat_entry, stream_entry, v2_entry):
            assert "request" not in entry["detail"] and "payload" not in entry["detail"]


def test_workflow_caps(governed: Governed) -> None:
    """A per-workflow cap refuses a runaway workflow while the tenant's other workflows still pass; the
    workflow is the `x-inferd-workflow` header, else the OpenAI `user` field."""
    admin = governed.admin
    tenant = admin.tenant("agents")
    _, key = admin.create_key(tenant, models=["alpha*"])
    admin.budget(tenant, scope="workflow", period="total", max_requests=3)
    body = chat(max_tokens=1)
    for _ in range(3):
        assert (
            post(governed, key, "/v1/chat/completions", body, **{"x-inferd-workflow": "runaway"}).status_code
            == 200
        )
    refused = post(governed, key, "/v1/chat/completions", body, **{"x-inferd-workflow": "runaway"})
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "workflow_quota_exceeded")
    assert "runaway" in error["message"] and "retry-after" not in refused.headers
    # The cap holds on every protocol for that workflow...
    assert (
        post(
            governed, key, f"/v2/models/{IDENTITY}/infer", V2_BODY, **{"x-inferd-workflow": "runaway"}
        ).status_code
        == 429
    )
    # ...while another workflow of the same tenant, named by the OpenAI `user` field, still passes.
    for _ in range(3):
        assert post(governed, key, "/v1/chat/completions", {**body, "user": "calm"}).status_code == 200
    r = post(governed, key, "/v1/chat/completions", {**body, "user": "calm"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "workflow_quota_exceeded"
    # The header wins over `user`; requests with no workflow are not capped per workflow.
    assert (
        post(
            governed,
            key,
            "/v1/chat/completions",
            {**body, "user": "runaway"},
            **{"x-inferd-workflow": "fresh"},
        ).status_code
        == 200
    )
    for _ in range(4):
        assert post(governed, key, "/v1/chat/completions", body).status_code == 200
    by_workflow = {row["workflow"]: row for row in admin.usage(tenant, by="workflow")}
    assert {w: row["requests"] for w, row in by_workflow.items()} == {
        "runaway": 3,
        "calm": 3,
        "fresh": 1,
        "": 4,
    }
    (status,) = admin.budgets(tenant)
    assert status["scope"] == "workflow"


def test_retries_are_linked(governed: Governed) -> None:
    """`Idempotency-Key` repeats and `x-inferd-retry-of` mark retries: per workflow in the usage report and
    in `inferd_retries_total`."""
    admin = governed.admin
    tenant = admin.tenant("retries")
    _, key = admin.create_key(tenant, models=["alpha*"])
    body = chat(max_tokens=1)
    flow = {"x-inferd-workflow": "flaky"}
    first = post(governed, key, "/v1/chat/completions", body, **flow, **{"idempotency-key": "op-1"})
    again = post(governed, key, "/v1/chat/completions", body, **flow, **{"idempotency-key": "op-1"})
    other = post(governed, key, "/v1/chat/completions", body, **flow, **{"idempotency-key": "op-2"})
    declared = post(governed, key, f"/v2/models/{IDENTITY}/infer", V2_BODY, **flow,
                    **{"x-inferd-retry-of": first.headers["x-request-id"]})  # fmt: skip
    steady = post(governed, key, "/v1/chat/completions", body, **{"x-inferd-workflow": "steady"})
    for r in (first, again, other, declared, steady):
        assert r.status_code == 200, r.text
    by_workflow = {row["workflow"]: row for row in admin.usage(tenant, by="workflow")}
    assert (by_workflow["flaky"]["requests"], by_workflow["flaky"]["retries"]) == (4, 2)
    assert by_workflow["flaky"]["retry_rate"] == pytest.approx(0.5)
    assert (by_workflow["steady"]["requests"], by_workflow["steady"]["retries"]) == (1, 0)
    assert metric(governed, "inferd_retries_total", tenant=tenant) == 2


def test_a_workflow_named_like_the_tenants_own_counters_counts_once(governed: Governed) -> None:
    """The budget book names a tenant's own counters with a NUL character: a workflow sent with one (the
    OpenAI `user` field is any JSON string) loses it, so its requests are not settled twice."""
    admin = governed.admin
    tenant = admin.tenant("nul-workflow")
    _, key = admin.create_key(tenant, models=["alpha*"])
    admin.budget(tenant, period="total", max_requests=2)
    body = chat(max_tokens=1, user="\x00all")
    assert post(governed, key, "/v1/chat/completions", body).status_code == 200
    (status,) = admin.budgets(tenant)
    assert status["used_requests"] == 1
    assert post(governed, key, "/v1/chat/completions", body).status_code == 200
    assert post(governed, key, "/v1/chat/completions", body).status_code == 429
    assert [row["workflow"] for row in admin.usage(tenant, by="workflow")] == ["all"]
