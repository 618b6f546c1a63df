"""The isolation matrix: who may do what, across the OpenAI API, V2 REST, V2 gRPC and the admin API.

Principals: the bootstrap admin key; tenant A's key (models `alpha*`, sent as a Bearer token and as
`x-api-key`); tenant B's key (models `beta*`); no key; a garbage key; a forged key (A's real key id with a
wrong secret); an expired key; a disabled key. Every operation is called by every principal and must give
exactly the status the table says (and, where it lists things, exactly the things the principal may see).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import eventually
from tests.governance.conftest import (
    EMBED,
    IDENTITY,
    LLM,
    MESSAGES,
    MLP,
    PROMPT,
    Governed,
    bearer,
    metric,
)

PRINCIPALS = ("admin", "a", "a_xkey", "b", "none", "garbage", "forged", "expired", "disabled")
UNAUTHENTICATED = ("none", "garbage", "forged", "expired", "disabled")
ALL_MODELS = {LLM, IDENTITY, EMBED, MLP}


@dataclass
class World:
    governed: Governed
    tenant_a: str
    tenant_b: str
    key_ids: dict[str, str]
    headers: dict[str, dict[str, str]]
    http: httpx.Client
    grpc: grpcclient.InferenceServerClient
    scratch_tenant: str


def poll_status(client: httpx.Client, headers: dict[str, str], want: int, deadline_s: float = 20.0) -> None:
    """Call a cheap endpoint until it answers `want` (keys expire on the server's clock)."""
    end = time.monotonic() + deadline_s
    while True:
        status = client.get("/v1/models", headers=headers).status_code
        if status == want:
            return
        assert time.monotonic() < end, f"still {status}, want {want}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(governed: Governed) -> Iterator[World]:
    admin = governed.admin
    tenant_a = admin.tenant("tenant-a")
    tenant_b = admin.tenant("tenant-b")
    scratch = admin.tenant("scratch")
    key_ids: dict[str, str] = {}
    raw: dict[str, str] = {}
    key_ids["a"], raw["a"] = admin.create_key(tenant_a, models=["alpha*"], name="a")
    key_ids["b"], raw["b"] = admin.create_key(tenant_b, models=["beta*"], name="b")
    key_ids["expired"], raw["expired"] = admin.create_key(tenant_a, models=["alpha*"], expires_in_s=0.2)
    key_ids["disabled"], raw["disabled"] = admin.create_key(tenant_a, models=["alpha*"])
    http = httpx.Client(base_url=governed.base, timeout=60)
    # The disabled key works until it is disabled; the expired one stops working once its time is up.
    assert http.get("/v1/models", headers=bearer(raw["disabled"])).status_code == 200
    admin.call("PATCH", f"/keys/{key_ids['disabled']}", json={"disabled": True})
    assert http.get("/v1/models", headers=bearer(raw["disabled"])).status_code == 401
    poll_status(http, bearer(raw["expired"]), 401)
    forged = f"ik_{key_ids['a']}_{'x' * 43}"
    headers = {
        "admin": bearer(admin.key),
        "a": bearer(raw["a"]),
        "a_xkey": {"x-api-key": raw["a"]},
        "b": bearer(raw["b"]),
        "none": {},
        "garbage": bearer("not-a-key"),
        "forged": bearer(forged),
        "expired": bearer(raw["expired"]),
        "disabled": bearer(raw["disabled"]),
    }
    grpc = grpcclient.InferenceServerClient(governed.server.grpc_url)
    try:
        yield World(governed, tenant_a, tenant_b, key_ids, headers, http, grpc, scratch)
    finally:
        grpc.close()
        http.close()


# -- operations ---------------------------------------------------------------------------------------

Result = tuple[int | str, Any]
"""(HTTP status or gRPC status code name, the parsed payload of a success)."""


@dataclass(frozen=True)
class Op:
    name: str
    call: Callable[[World, dict[str, str]], Result]
    expect: dict[str, int | str]
    """Status per principal class: `admin`, `a`, `b` (the unauthenticated ones get 401 unless `open`)."""
    sees: Callable[[World, Any], set[str]] | None = None
    """What a successful payload lists, compared with `visible`."""
    visible: dict[str, set[str]] = field(default_factory=dict)
    open: bool = False
    """Needs no key (health and server metadata: probes)."""
    grpc: bool = False


def _value(world: World, x: str | Callable[[World], str]) -> str:
    return x(world) if callable(x) else x


def http_op(
    method: str, path: str | Callable[[World], str], body: Any = None
) -> Callable[[World, dict[str, str]], Result]:
    def call(world: World, headers: dict[str, str]) -> Result:
        doc = body(world) if callable(body) else body
        r = world.http.request(method, _value(world, path), json=doc, headers=headers)
        payload = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        if isinstance(payload, dict) and str(payload.get("key", "")).startswith("ik_"):
            world.governed.admin.created_keys.append(payload["key"])
        return r.status_code, payload

    return call


def grpc_op(fn: Callable[[grpcclient.InferenceServerClient, dict[str, str]], Any]) -> Any:
    def call(world: World, headers: dict[str, str]) -> Result:
        try:
            return "OK", fn(world.grpc, headers)
        except InferenceServerException as exc:
            return str(exc.status()).removeprefix("StatusCode."), None

    return call


def v2_infer_body(model: str) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def grpc_infer(model: str) -> Callable[[grpcclient.InferenceServerClient, dict[str, str]], Any]:
    def fn(client: grpcclient.InferenceServerClient, headers: dict[str, str]) -> Any:
        x = grpcclient.InferInput("input", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        return client.infer(model, [x], headers=headers).as_numpy("output")

    return fn


def index_names(world: World, payload: Any) -> set[str]:
    return {str(e["name"]) for e in payload}


def stats_names(world: World, payload: Any) -> set[str]:
    return {str(s["name"]) for s in payload["model_stats"]}


def tenants_of(world: World, payload: Any) -> set[str]:
    return {str(k["tenant"]) for k in payload}


OK_ALL = {"admin": 200, "a": 200, "b": 200}
A_ONLY = {"admin": 200, "a": 200, "b": 404}
B_ONLY = {"admin": 200, "a": 404, "b": 200}
ADMIN_ONLY = {"admin": 200, "a": 403, "b": 403}
ADMIN_404 = {"admin": 404, "a": 403, "b": 403}
"""Admin operations on something missing: the admin learns it is missing, users only that they may not."""
G_A_ONLY = {"admin": "OK", "a": "OK", "b": "NOT_FOUND"}
G_B_ONLY = {"admin": "OK", "a": "NOT_FOUND", "b": "OK"}
G_ALL = {"admin": "OK", "a": "OK", "b": "OK"}
A_SEES = {"admin": ALL_MODELS, "a": {LLM, IDENTITY, EMBED}, "b": {MLP}}


def _uid() -> str:
    return uuid.uuid4().hex[:8]


OPS = [
    # OpenAI API.
    Op("openai models", http_op("GET", "/v1/models"), OK_ALL,
       lambda w, p: {m["id"] for m in p["data"]}, {"admin": {LLM, EMBED}, "a": {LLM, EMBED}, "b": set()}),
    Op("openai completion", http_op("POST", "/v1/completions",
                                    {"model": LLM, "prompt": PROMPT, "max_tokens": 1}), A_ONLY),
    Op("openai chat", http_op("POST", "/v1/chat/completions",
                              {"model": LLM, "messages": MESSAGES, "max_tokens": 1}), A_ONLY),
    Op("openai chat stream", http_op("POST", "/v1/chat/completions",
                                     {"model": LLM, "messages": MESSAGES, "max_tokens": 1, "stream": True}),
       A_ONLY),
    Op("openai embeddings", http_op("POST", "/v1/embeddings", {"model": EMBED, "input": ["the dog"]}),
       A_ONLY),
    # V2 REST.
    Op("v2 live", http_op("GET", "/v2/health/live"), OK_ALL, open=True),
    Op("v2 ready", http_op("GET", "/v2/health/ready"), OK_ALL, open=True),
    Op("v2 server metadata", http_op("GET", "/v2"), OK_ALL, open=True),
    Op("v2 infer alpha", http_op("POST", f"/v2/models/{IDENTITY}/infer", v2_infer_body(IDENTITY)), A_ONLY),
    Op("v2 infer beta", http_op("POST", f"/v2/models/{MLP}/infer", v2_infer_body(MLP)), B_ONLY),
    Op("v2 infer beta v1", http_op("POST", f"/v2/models/{MLP}/versions/1/infer", v2_infer_body(MLP)), B_ONLY),
    Op("v2 metadata alpha", http_op("GET", f"/v2/models/{IDENTITY}"), A_ONLY),
    Op("v2 metadata beta", http_op("GET", f"/v2/models/{MLP}"), B_ONLY),
    Op("v2 metadata embed", http_op("GET", f"/v2/models/{EMBED}"), A_ONLY),
    Op("v2 model ready alpha", http_op("GET", f"/v2/models/{IDENTITY}/ready"),
       {"admin": 200, "a": 200, "b": 503}),
    Op("v2 model ready beta", http_op("GET", f"/v2/models/{MLP}/versions/1/ready"),
       {"admin": 200, "a": 503, "b": 200}),
    Op("v2 config alpha", http_op("GET", f"/v2/models/{IDENTITY}/config"), A_ONLY),
    Op("v2 config beta", http_op("GET", f"/v2/models/{MLP}/config"), B_ONLY),
    Op("v2 stats alpha", http_op("GET", f"/v2/models/{IDENTITY}/stats"), A_ONLY),
    Op("v2 stats beta", http_op("GET", f"/v2/models/{MLP}/versions/1/stats"), B_ONLY),
    Op("v2 stats all", http_op("GET", "/v2/models/stats"), OK_ALL, stats_names,
       {"admin": {IDENTITY, EMBED, MLP}, "a": {IDENTITY, EMBED}, "b": {MLP}}),
    Op("v2 repository index", http_op("POST", "/v2/repository/index", {}), OK_ALL, index_names, A_SEES),
    Op("v2 load", http_op("POST", f"/v2/repository/models/{MLP}/load"), ADMIN_ONLY),
    Op("v2 unload unknown", http_op("POST", "/v2/repository/models/ghost/unload"),
       ADMIN_404),
    # V2 gRPC (tritonclient, key in its `headers` argument).
    Op("grpc live", grpc_op(lambda c, h: c.is_server_live(headers=h)), G_ALL, open=True, grpc=True),
    Op("grpc server metadata", grpc_op(lambda c, h: c.get_server_metadata(headers=h)), G_ALL, open=True,
       grpc=True),
    Op("grpc infer alpha", grpc_op(grpc_infer(IDENTITY)), G_A_ONLY, grpc=True),
    Op("grpc infer beta", grpc_op(grpc_infer(MLP)), G_B_ONLY, grpc=True),
    Op("grpc metadata alpha", grpc_op(lambda c, h: c.get_model_metadata(IDENTITY, headers=h)), G_A_ONLY,
       grpc=True),
    Op("grpc metadata beta", grpc_op(lambda c, h: c.get_model_metadata(MLP, headers=h)), G_B_ONLY, grpc=True),
    Op("grpc config alpha", grpc_op(lambda c, h: c.get_model_config(IDENTITY, headers=h)), G_A_ONLY,
       grpc=True),
    Op("grpc model ready alpha", grpc_op(lambda c, h: c.is_model_ready(IDENTITY, headers=h)), G_ALL,
       lambda w, ready: {"ready"} if ready else set(),
       {"admin": {"ready"}, "a": {"ready"}, "b": set()}, grpc=True),
    Op("grpc stats alpha", grpc_op(lambda c, h: c.get_inference_statistics(IDENTITY, headers=h)), G_A_ONLY,
       grpc=True),
    Op("grpc stats all", grpc_op(lambda c, h: c.get_inference_statistics(headers=h, as_json=True)), G_ALL,
       lambda w, p: {s["name"] for s in p.get("model_stats", [])},
       {"admin": {IDENTITY, EMBED, MLP}, "a": {IDENTITY, EMBED}, "b": {MLP}}, grpc=True),
    Op("grpc repository index", grpc_op(lambda c, h: c.get_model_repository_index(headers=h, as_json=True)),
       G_ALL, lambda w, p: {m["name"] for m in p.get("models", [])}, A_SEES, grpc=True),
    Op("grpc load", grpc_op(lambda c, h: c.load_model(MLP, headers=h)),
       {"admin": "OK", "a": "PERMISSION_DENIED", "b": "PERMISSION_DENIED"}, grpc=True),
    Op("grpc unload unknown", grpc_op(lambda c, h: c.unload_model("ghost", headers=h)),
       {"admin": "NOT_FOUND", "a": "PERMISSION_DENIED", "b": "PERMISSION_DENIED"}, grpc=True),
    # Admin API.
    Op("admin list tenants", http_op("GET", "/admin/v1/tenants"), ADMIN_ONLY),
    Op("admin get tenant", http_op("GET", lambda w: f"/admin/v1/tenants/{w.tenant_a}"), ADMIN_ONLY),
    Op("admin put tenant", http_op("PUT", lambda w: f"/admin/v1/tenants/made-{_uid()}", {}), ADMIN_ONLY),
    Op("admin delete tenant", http_op("DELETE", "/admin/v1/tenants/ghost"), ADMIN_404),
    Op("admin create key", http_op("POST", "/admin/v1/keys", lambda w: {"tenant": w.scratch_tenant}),
       ADMIN_ONLY),
    Op("admin list keys", http_op("GET", "/admin/v1/keys"), OK_ALL, tenants_of,
       {"a": {"tenant-a"}, "b": {"tenant-b"}}),
    Op("admin list keys of A", http_op("GET", lambda w: f"/admin/v1/keys?tenant={w.tenant_a}"), A_ONLY,
       tenants_of, {"admin": {"tenant-a"}, "a": {"tenant-a"}}),
    Op("admin list keys of B", http_op("GET", lambda w: f"/admin/v1/keys?tenant={w.tenant_b}"), B_ONLY,
       tenants_of, {"admin": {"tenant-b"}, "b": {"tenant-b"}}),
    Op("admin update key", http_op("PATCH", lambda w: f"/admin/v1/keys/{w.key_ids['a']}", {"name": "a"}),
       ADMIN_ONLY),
    Op("admin revoke key", http_op("DELETE", "/admin/v1/keys/000000000000"), ADMIN_404),
    Op("admin list budgets", http_op("GET", "/admin/v1/budgets"), OK_ALL),
    Op("admin budgets of A", http_op("GET", lambda w: f"/admin/v1/budgets?tenant={w.tenant_a}"), A_ONLY),
    Op("admin budgets of B", http_op("GET", lambda w: f"/admin/v1/budgets?tenant={w.tenant_b}"), B_ONLY),
    Op("admin set budget", http_op("PUT", "/admin/v1/budgets",
                                   lambda w: {"tenant": w.scratch_tenant, "max_tokens": 10**9}),
       ADMIN_ONLY),
    Op("admin delete budget", http_op("DELETE", lambda w: f"/admin/v1/budgets?tenant={w.scratch_tenant}"
                                      "&period=total"), ADMIN_404),
    Op("admin list prices", http_op("GET", "/admin/v1/prices"), ADMIN_ONLY),
    Op("admin set price", http_op("PUT", "/admin/v1/prices", {"model": "gamma-free"}), ADMIN_ONLY),
    Op("admin delete price", http_op("DELETE", "/admin/v1/prices/ghost"), ADMIN_404),
    Op("admin usage", http_op("GET", "/admin/v1/usage?by=tenant"), OK_ALL),
    Op("admin usage of A", http_op("GET", lambda w: f"/admin/v1/usage?tenant={w.tenant_a}"), A_ONLY),
    Op("admin usage of B", http_op("GET", lambda w: f"/admin/v1/usage?tenant={w.tenant_b}&by=key"), B_ONLY),
    Op("admin audit", http_op("GET", "/admin/v1/audit"), ADMIN_ONLY),
    Op("admin audit of A", http_op("GET", lambda w: f"/admin/v1/audit?tenant={w.tenant_a}"), ADMIN_ONLY),
]  # fmt: skip


def _expected(op: Op, who: str) -> int | str:
    if who in UNAUTHENTICATED:
        return op.expect["admin"] if op.open else ("UNAUTHENTICATED" if op.grpc else 401)
    return op.expect["a" if who == "a_xkey" else who]


def _normalise(world: World, names: set[str]) -> set[str]:
    """Tenant names in `visible` are written as their prefix (the real ones carry a random suffix)."""
    real = {world.tenant_a: "tenant-a", world.tenant_b: "tenant-b"}
    return {real.get(n, n) for n in names}


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_matrix(world: World, op: Op, who: str) -> None:
    status, payload = op.call(world, world.headers[who])
    assert status == _expected(op, who), (op.name, who, status)
    if status in (200, "OK") and op.sees is not None:
        role = "a" if who == "a_xkey" else who
        if role in op.visible:
            assert _normalise(world, op.sees(world, payload)) == op.visible[role], (op.name, who)


@pytest.mark.parametrize("who", UNAUTHENTICATED)
def test_unauthenticated_shapes(world: World, who: str) -> None:
    """401 in each protocol's own shape, with `WWW-Authenticate` on HTTP."""
    h = world.headers[who]
    r = world.http.post("/v1/chat/completions", json={"model": LLM, "messages": MESSAGES}, headers=h)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert r.headers["x-request-id"]
    r = world.http.post(f"/v2/models/{IDENTITY}/infer", json=v2_infer_body(IDENTITY), headers=h)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    r = world.http.get("/admin/v1/usage", headers=h)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(IDENTITY)(world.grpc, h)
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"


def test_auth_failures_are_audited(world: World) -> None:
    """Each refused key leaves an `auth.failure` audit entry with its reason (and never the key)."""
    admin = world.governed.admin
    for who in ("expired", "disabled", "forged"):
        world.http.get("/v1/models", headers=world.headers[who])

    def audited() -> None:
        entries = admin.audit(world.tenant_a, action="auth.failure")
        reasons = {(e["key_id"], e["outcome"]) for e in entries}
        assert {(world.key_ids["expired"], "expired"), (world.key_ids["disabled"], "disabled")} <= reasons

    eventually(audited)


def _same_404(
    world: World, fetch: Callable[[str], tuple[Any, dict[str, str]]], hidden: str, ghosts: list[str]
) -> None:
    """The hidden model's answer equals a missing model's, name for name (body and header names)."""
    body, headers = fetch(hidden)
    for ghost in ghosts:
        other, other_headers = fetch(ghost)
        assert str(other).replace(ghost, "MODEL") == str(body).replace(hidden, "MODEL"), (hidden, ghost)
        assert set(other_headers) == set(headers)


def _http_fetch(
    world: World, who: str, method: str, path: str, body: Callable[[str], Any] | None = None
) -> Any:
    def fetch(model: str) -> tuple[Any, dict[str, str]]:
        r = world.http.request(
            method, path.format(model=model), json=body(model) if body else None, headers=world.headers[who]
        )
        assert r.status_code in (404, 503), (path, model, r.status_code, r.text)
        ignore = {"x-request-id", "date", "content-length"}
        return (r.status_code, r.content), {k: v for k, v in r.headers.items() if k not in ignore}

    return fetch


def _grpc_fetch(
    world: World, who: str, fn: Callable[[grpcclient.InferenceServerClient, str, dict[str, str]], Any]
) -> Any:
    def fetch(model: str) -> tuple[Any, dict[str, str]]:
        try:
            return ("OK", fn(world.grpc, model, world.headers[who])), {}
        except InferenceServerException as exc:
            return (exc.status(), exc.message()), {}

    return fetch


HIDDEN_SURFACES: list[tuple[str, str, str, Callable[[str], Any] | None]] = [
    ("completion", "POST", "/v1/completions", lambda m: {"model": m, "prompt": PROMPT, "max_tokens": 1}),
    ("chat", "POST", "/v1/chat/completions", lambda m: {"model": m, "messages": MESSAGES, "stream": True}),
    ("embeddings", "POST", "/v1/embeddings", lambda m: {"model": m, "input": "the dog"}),
    ("v2 infer", "POST", "/v2/models/{model}/infer", v2_infer_body),
    ("v2 infer version", "POST", "/v2/models/{model}/versions/1/infer", v2_infer_body),
    ("v2 metadata", "GET", "/v2/models/{model}", None),
    ("v2 metadata version", "GET", "/v2/models/{model}/versions/1", None),
    ("v2 ready", "GET", "/v2/models/{model}/ready", None),
    ("v2 config", "GET", "/v2/models/{model}/config", None),
    ("v2 stats", "GET", "/v2/models/{model}/stats", None),
]


@pytest.mark.parametrize(
    ("surface", "method", "path", "body"), HIDDEN_SURFACES, ids=[s[0] for s in HIDDEN_SURFACES]
)
def test_hidden_model_is_a_missing_model_http(
    world: World, surface: str, method: str, path: str, body: Callable[[str], Any] | None
) -> None:
    # B hides the alpha models; A hides the beta one. Missing models: one B's patterns allow, one not.
    hidden_from_b = (
        EMBED if surface == "embeddings" else (LLM if surface in ("completion", "chat") else IDENTITY)
    )
    _same_404(
        world, _http_fetch(world, "b", method, path, body), hidden_from_b, ["beta-ghost", "gamma-ghost"]
    )
    if surface not in ("completion", "chat", "embeddings"):
        _same_404(world, _http_fetch(world, "a", method, path, body), MLP, ["alpha-ghost", "gamma-ghost"])


GRPC_SURFACES: list[tuple[str, Callable[[grpcclient.InferenceServerClient, str, dict[str, str]], Any]]] = [
    ("infer", lambda c, m, h: grpc_infer(m)(c, h)),
    ("metadata", lambda c, m, h: c.get_model_metadata(m, headers=h)),
    ("config", lambda c, m, h: c.get_model_config(m, headers=h)),
    ("ready", lambda c, m, h: c.is_model_ready(m, headers=h)),
    ("stats", lambda c, m, h: c.get_inference_statistics(m, headers=h)),
]


@pytest.mark.parametrize(("surface", "fn"), GRPC_SURFACES, ids=[s[0] for s in GRPC_SURFACES])
def test_hidden_model_is_a_missing_model_grpc(
    world: World, surface: str, fn: Callable[[grpcclient.InferenceServerClient, str, dict[str, str]], Any]
) -> None:
    before = metric(world.governed, "inferd_rejections_total", tenant=world.tenant_b, reason="access")
    _same_404(world, _grpc_fetch(world, "b", fn), IDENTITY, ["beta-ghost", "gamma-ghost"])
    _same_404(world, _grpc_fetch(world, "a", fn), MLP, ["alpha-ghost", "gamma-ghost"])
    # The operator sees access refusals per tenant (the hidden model and the unallowed missing one; a
    # readiness probe is an answer, not a refusal).
    after = metric(world.governed, "inferd_rejections_total", tenant=world.tenant_b, reason="access")
    assert (after or 0) - (before or 0) == (0 if surface == "ready" else 2)


def test_unload_is_admin_only(world: World) -> None:
    """Users cannot unload a model (REST or gRPC); the admin can, and load it back."""
    for who in ("a", "b"):
        r = world.http.post(f"/v2/repository/models/{MLP}/unload", headers=world.headers[who])
        assert r.status_code == 403
        with pytest.raises(InferenceServerException) as info:
            world.grpc.unload_model(MLP, headers=world.headers[who])
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    assert world.http.get(f"/v2/models/{MLP}/ready", headers=world.headers["b"]).status_code == 200
    assert (
        world.http.post(f"/v2/repository/models/{MLP}/unload", headers=world.headers["admin"]).status_code
        == 200
    )
    assert world.http.get(f"/v2/models/{MLP}/ready", headers=world.headers["b"]).status_code == 503
    world.grpc.load_model(MLP, headers=world.headers["admin"])
    assert world.http.get(f"/v2/models/{MLP}/ready", headers=world.headers["b"]).status_code == 200

    def audited() -> None:
        actions = {e["action"] for e in world.governed.admin.audit("admin", action="admin.model_*")}
        assert {"admin.model_load", "admin.model_unload"} <= actions

    eventually(audited)


def test_tenants_never_see_each_other(world: World) -> None:
    """Usage, keys and budgets of a tenant are invisible to the other; audit is the admin's alone."""
    h = world.headers
    for who, model, path in (("a", IDENTITY, "infer"), ("b", MLP, "infer")):
        r = world.http.post(f"/v2/models/{model}/{path}", json=v2_infer_body(model), headers=h[who])
        assert r.status_code == 200
    for who, own, other in (("a", world.tenant_a, world.tenant_b), ("b", world.tenant_b, world.tenant_a)):
        for by in ("model", "tenant", "key", "workflow", "day"):
            r = world.http.get("/admin/v1/usage", params={"by": by}, headers=h[who])
            assert r.status_code == 200
            rows = r.json()
            assert rows, by
            if by == "tenant":
                assert [row["tenant"] for row in rows] == [own]
            if by == "key":
                assert {row["key"] for row in rows} == {world.key_ids[who]}
            if by == "model":
                assert {row["model"] for row in rows} <= (A_SEES["a"] if who == "a" else A_SEES["b"])
            assert other not in r.text
            r = world.http.get("/admin/v1/usage", params={"by": by, "tenant": other}, headers=h[who])
            assert r.status_code == 404 and other in r.json()["error"]["message"]
        keys = world.http.get("/admin/v1/keys", headers=h[who]).json()
        assert {k["tenant"] for k in keys} == {own}
        assert world.key_ids["b" if who == "a" else "a"] not in str(keys)
        assert all("key" not in k and "key_hash" not in k for k in keys)
        assert world.http.get("/admin/v1/audit", params={"tenant": own}, headers=h[who]).status_code == 403
        # A 404 for another tenant reads exactly like one for a tenant that does not exist.
        real = world.http.get("/admin/v1/keys", params={"tenant": other}, headers=h[who])
        ghost = world.http.get("/admin/v1/keys", params={"tenant": "ghost-tenant"}, headers=h[who])
        assert real.json() == {
            "error": {
                **ghost.json()["error"],
                "message": ghost.json()["error"]["message"].replace("ghost-tenant", other),
            }
        }
    # The admin's audit view per tenant holds only that tenant's entries.
    for tenant in (world.tenant_a, world.tenant_b):
        entries = world.governed.admin.audit(tenant)
        assert entries and {e["tenant"] for e in entries} == {tenant}


def test_metrics_are_admin_only(world: World) -> None:
    # Per-tenant series name every tenant and its spend: no tenant key may read them.
    base = world.governed.base
    assert httpx.get(base + "/metrics").status_code == 401
    for caller in ("a", "b"):
        r = httpx.get(base + "/metrics", headers=world.headers[caller])
        assert r.status_code == 403 and "admin" in r.json()["error"]
    assert "inferd_tokens_total" in world.governed.admin.http.get("/metrics").text
