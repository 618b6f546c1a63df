"""Tenants never share prefix-cache blocks: a cache hit's speed would tell one tenant another's prompt."""

from __future__ import annotations

import httpx

from tests.governance.conftest import LLM, Governed, bearer

PROMPT = list(range(10, 74))  # 64 token ids: four full KV blocks


def _cached(http: httpx.Client, key: str) -> int:
    r = http.post(
        "/v1/completions",
        json={"model": LLM, "prompt": PROMPT, "max_tokens": 1, "temperature": 0},
        headers=bearer(key),
    )
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_prefix_cache_is_shared_within_a_tenant_only(governed: Governed) -> None:
    admin = governed.admin
    first, second = admin.tenant("cache-a"), admin.tenant("cache-b")
    _, key_a = admin.create_key(first)
    _, key_a2 = admin.create_key(first)
    _, key_b = admin.create_key(second)
    with httpx.Client(base_url=governed.base, timeout=60) as http:
        assert _cached(http, key_a) == 0
        assert _cached(http, key_a2) >= 48  # the same tenant, another key: its blocks are reused
        assert _cached(http, key_b) == 0  # another tenant computes its own
        assert _cached(http, key_b) >= 48
