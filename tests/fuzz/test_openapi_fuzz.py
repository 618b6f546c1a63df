"""Schemathesis against a live governed server with the server's own OpenAPI document.

Every operation is called as a user key and as the admin key, with the document's examples, its coverage
cases (boundaries, values just outside them, missing and wrong-typed fields, unexpected methods) and generated
bodies, parameters and headers; and with a key the server never issued (examples and a few generated cases).
No response may be a server error (5xx) and each must match the document (its status and the schema of its
content type).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inferd.server import openapi
from tests.fuzz.conftest import FuzzServer, examples

MAX_EXAMPLES = examples(12)
"""Generated cases per operation in the fuzzing phase, for each principal (the examples phase adds the
document's examples; the coverage phase, run once, its boundary cases)."""
SEED = int(os.environ.get("FUZZ_SEED", "20240601"))
"""Fixed, so a run is reproducible; set FUZZ_SEED to explore further."""


def _schema(**config: Any) -> Any:
    base = {"seed": SEED, "generation": {"with-security-parameters": False, "database": "none"}}
    loaded = schemathesis.config.SchemathesisConfig.from_dict({**base, **config})
    return schemathesis.openapi.from_dict(openapi.build(), config=loaded)


# The coverage phase (deterministic boundary and type cases, most of the run's time) runs once, as the admin,
# who reaches every operation's handler; the other principals get the examples and generated cases.
SCHEMA = _schema()
NO_COVERAGE = _schema(phases={"coverage": {"enabled": False}})

# Readiness answers "not ready" with 503 and a `{"ready": false}` body: a documented boolean answer, not a
# server fault (the schema check still holds it to the documented shape).
READINESS = {"v2Ready", "v2ModelReady", "v2VersionReady"}


def _operation_id(case: Any) -> str:
    return str(case.operation.definition.raw.get("operationId", ""))


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """`not_a_server_error`, but readiness's 503 is an answer."""
    if _operation_id(case) in READINESS and response.status_code == 503:
        assert response.json()["ready"] is False, response.text
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _call(case: Any, server: FuzzServer, who: str) -> None:
    response = case.call(base_url=server.base, headers=server.headers(who), timeout=30)
    case.validate_response(response, checks=CHECKS)


def _settings(max_examples: int) -> Any:
    return settings(
        max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )


@NO_COVERAGE.parametrize()
@_settings(MAX_EXAMPLES)
def test_api_as_user(case: Any, fuzz_server: FuzzServer) -> None:
    _call(case, fuzz_server, "user")


@SCHEMA.parametrize()
@_settings(MAX_EXAMPLES // 2)
def test_api_as_admin(case: Any, fuzz_server: FuzzServer) -> None:
    _call(case, fuzz_server, "admin")


@NO_COVERAGE.parametrize()
@_settings(examples(3))
def test_api_with_an_unknown_key(case: Any, fuzz_server: FuzzServer) -> None:
    _call(case, fuzz_server, "nobody")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/tenants/fuzz-big", {"rpm": 2**63}),
        ("POST", "/keys", {"tenant": openapi.TENANT, "tpm": 2**63}),
        ("PUT", "/budgets", {"tenant": openapi.TENANT, "max_cost": 1e300}),
        ("PUT", "/prices", {"model": "fuzz-big", "per_inference": 1e300}),
    ],
)
def test_admin_numbers_past_64_bits_are_refused(
    fuzz_server: FuzzServer, method: str, path: str, body: dict[str, Any]
) -> None:
    """Found by the fuzzing above: they reached SQLite unchecked (500 OverflowError)."""
    with httpx.Client(
        base_url=fuzz_server.base + "/admin/v1", headers=fuzz_server.headers("admin"), timeout=30
    ) as admin:
        response = admin.request(method, path, json=body)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/admin/v1/tenants/a%2Fb", 404),
        ("GET", "/admin/v1/nope", 404),
        ("GET", "/v1/models/x", 404),
        ("PATCH", "/v1/completions", 405),
        ("GET", "/v2/models/a%2Fb/ready", 404),
        ("PUT", "/v2/models/identity_fp32", 405),
    ],
)
def test_unrouted_requests_answer_in_their_api_error_shape(
    fuzz_server: FuzzServer, method: str, path: str, code: int
) -> None:
    """What no route takes (a path parameter holding '/', an unknown path, a wrong method) still answers in
    the error shape of the API the path belongs to."""
    response = httpx.request(
        method, fuzz_server.base + path, headers=fuzz_server.headers("admin"), timeout=30
    )
    assert response.status_code == code
    error = response.json()["error"]
    if path.startswith("/v2/"):
        assert isinstance(error, str) and error
    else:
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["message"].startswith(f"{method} /"), error


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v2/models/{long}", None),
        (
            "POST",
            "/v2/models/{long}/infer",
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        ),
        ("POST", "/v1/completions", {"model": "{long}", "prompt": "ka"}),
        ("POST", "/v1/embeddings", {"model": "{long}", "input": "ka"}),
    ],
)
def test_too_long_model_names_are_unknown_models(
    fuzz_server: FuzzServer, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """Found by the fuzzing above: a name past the file system's limit raised OSError (500, and a reset
    connection on /v1/embeddings)."""
    long = "m" * 300
    if body is not None and "model" in body:
        body = {**body, "model": long}
    with httpx.Client(base_url=fuzz_server.base, headers=fuzz_server.headers("admin"), timeout=30) as http:
        response = http.request(method, path.format(long=long), json=body)
    assert response.status_code == 404, response.text


def test_openapi_document_is_served_without_auth(fuzz_server: FuzzServer) -> None:
    response = httpx.get(fuzz_server.base + "/openapi.json", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi.build()


@pytest.mark.parametrize("who", ["user", "admin"])
def test_server_still_serves_after_fuzzing(fuzz_server: FuzzServer, who: str) -> None:
    """Nothing the fuzzer sent broke a model, the LLM engine, the embedding model or governance."""
    with httpx.Client(base_url=fuzz_server.base, headers=fuzz_server.headers(who), timeout=30) as http:
        infer = http.post(
            "/v2/models/identity_fp32/infer",
            json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        )
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == [1, 2, 3, 4]
        done = http.post(
            "/v1/completions",
            json={"model": "tiny-llama", "prompt": "ka lo", "max_tokens": 3, "ignore_eos": True},
        )
        assert done.status_code == 200, done.text
        assert done.json()["usage"]["completion_tokens"] == 3
        embedded = http.post("/v1/embeddings", json={"model": "tiny-embed", "input": "hello"})
        assert embedded.status_code == 200, embedded.text
