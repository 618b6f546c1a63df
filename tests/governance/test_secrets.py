"""Keys never rest anywhere but with their owner: not in the database files (raw bytes, WAL included) and
not in any log record of the server. Runs last in this folder, so it also covers every key the other tests
created and used (they all come from `Admin.create_key`)."""

from __future__ import annotations

import hashlib
import sqlite3

import httpx

from tests.governance.conftest import LLM, MESSAGES, Governed, bearer


def database_bytes(governed: Governed) -> bytes:
    """The database, its WAL and its shared-memory index, and the ledger journal, as stored on disk."""
    files = sorted(p for p in governed.state_dir.rglob("*") if p.is_file() and p.name != "admin.key")
    assert {"inferd.db", "lock"} <= {p.name for p in files}
    assert any(p.suffix == ".jsonl" for p in files)
    return b"".join(p.read_bytes() for p in files)


def test_keys_never_stored_or_logged(governed: Governed) -> None:
    admin = governed.admin
    tenant = admin.tenant("secrets")
    revoked_id, revoked = admin.create_key(tenant)
    kept_id, kept = admin.create_key(tenant, models=["alpha*"])
    body = {"model": LLM, "messages": MESSAGES, "max_tokens": 1}
    with httpx.Client(base_url=governed.base, timeout=30) as client:
        # Used well, used wrongly, and used after revocation or with its tenant disabled.
        assert client.post("/v1/chat/completions", json=body, headers=bearer(kept)).status_code == 200
        assert client.post("/v1/chat/completions", json=body, headers={"x-api-key": kept}).status_code == 200
        assert client.get("/v1/models", headers={"authorization": f"Basic {kept}"}).status_code == 401
        assert client.get("/v1/models", headers=bearer(kept + "x")).status_code == 401
        assert client.get("/admin/v1/tenants", headers=bearer(kept)).status_code == 403
        admin.call("DELETE", f"/keys/{revoked_id}")
        assert client.get("/v1/models", headers=bearer(revoked)).status_code == 401
        admin.call("PUT", f"/tenants/{tenant}", json={"disabled": True})
        assert client.get("/v1/models", headers=bearer(kept)).status_code == 401
        admin.call("PUT", f"/tenants/{tenant}", json={})
        assert client.get("/v1/models", headers=bearer(kept)).status_code == 200

    # Only the hash is stored.
    conn = sqlite3.connect(governed.state_dir / "inferd.db")
    try:
        (stored,) = conn.execute("SELECT key_hash FROM api_keys WHERE key_id = ?", (kept_id,)).fetchone()
    finally:
        conn.close()
    assert stored == hashlib.sha256(kept.encode()).hexdigest()

    secrets = [admin.key, *admin.created_keys]
    assert kept in secrets and len(secrets) >= 3
    data = database_bytes(governed)
    logs = governed.logs.text
    # The scans see real content: key ids are public and stored, and the server's log was captured.
    assert kept_id.encode() in data and revoked_id.encode() in data
    assert f"model {LLM} version 1 loaded" in logs
    for secret in secrets:
        _, key_id, tail = secret.split("_", 2)
        assert secret.encode() not in data, key_id
        assert tail.encode() not in data, key_id
        assert tail not in logs, key_id
    assert (governed.state_dir / "admin.key").stat().st_mode & 0o777 == 0o600
