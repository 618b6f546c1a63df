"""API keys: generation, hashing, and the constant-time check of a presented key.

A key reads `ik_<key id>_<secret>`: the key id (12 hex digits) is public and indexes the stored record; the
secret (32 random bytes, URL-safe base64) never leaves the response that created the key. The store keeps
only the SHA-256 of the whole key (a fast hash suffices for 256-bit random secrets). The request path looks
a presented key up by its SHA-256 (how long comparing two digests takes tells nothing about a key: finding
a key from its digest is infeasible); a key that is not found is compared with its record by key id with
`hmac.compare_digest`, also against a dummy hash when the key id is unknown, to say why it was refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

PREFIX: Final = "ik"
KEY_ID_HEX: Final = 12
_HEX: Final = frozenset("0123456789abcdef")
_DUMMY_HASH: Final = hashlib.sha256(b"inferd-dummy-key").hexdigest()


def generate_key() -> tuple[str, str]:
    """A new (key id, key) pair from the OS's secure random source."""
    key_id = secrets.token_hex(KEY_ID_HEX // 2)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KnownDigests:
    """The digests of keys recently found valid, by the presented key: hashing a key (the OpenSSL call,
    about 9k instructions) is the largest part of authenticating one, and a client presents the same key
    on every request. Only keys that matched a stored hash are remembered, so a flood of wrong keys neither
    fills it nor skips their hashing; at `capacity` it starts over. A lookup compares the presented key with
    a remembered one only when their (per-process, randomly keyed) string hashes collide, so its timing
    says nothing about a key it was not given."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._digests: dict[str, str] = {}

    def digest(self, key: str) -> str:
        """The key's SHA-256, remembered or computed."""
        found = self._digests.get(key)
        return found if found is not None else hash_key(key)

    def remember(self, key: str, digest: str) -> None:
        """Remember a key that matched a stored digest."""
        if len(self._digests) >= self.capacity:
            self._digests.clear()
        self._digests[key] = digest


def key_id_of(key: str) -> str | None:
    """The key id a presented key claims, or None when it is not shaped like an inferd key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != KEY_ID_HEX or not parts[2]:
        return None
    if not all(c in _HEX for c in parts[1]):  # client text that is no key id never reaches the audit log
        return None
    return parts[1]


def matches(key: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of a presented key with a stored hash (None: compare with a dummy)."""
    ok = hmac.compare_digest(hash_key(key), stored_hash or _DUMMY_HASH)
    return ok and stored_hash is not None


def presented_key(headers: dict[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>` or `x-api-key`, else None."""
    auth = headers.get("authorization")
    if auth:
        if auth.startswith("Bearer "):  # what clients send (the general case below, with less work)
            bearer = auth[7:].strip()
            if bearer:
                return bearer
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return auth.strip()  # a bare key, or an unsupported scheme: checked (and refused) as a key
    key = headers.get("x-api-key")
    return key.strip() if key else None
