"""An HTTP request's headers as a plain dict, the form the gateway reads them in.

The gateway reads several headers per call (the API key, request id, workflow, priority, timeout,
idempotency key). Starlette's `Headers.get` scans the raw list and decodes it again on every call; one pass
over the ASGI scope's list gives O(1) gets. ASGI servers send names lower-cased; on a repeated name the
first value wins, as with `Headers.get`.
"""

from __future__ import annotations

from collections.abc import Iterable


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """`scope["headers"]` as {name: value}, decoded as latin-1 (HTTP's byte-preserving reading)."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers
