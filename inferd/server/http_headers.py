"""An HTTP request's headers as a plain dict, the form the gateway reads them in.

The gateway reads several headers per call (the API key, request id, workflow, priority, timeout,
idempotency key). Starlette's `Headers.get` scans the raw list and decodes it again on every call; one pass
over the ASGI scope's list gives O(1) gets. ASGI servers send names lower-cased; on a repeated name the
first value wins, as with `Headers.get`. gRPC metadata (HTTP/2 headers too) gets the same form.
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


def metadata_dict(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """gRPC invocation metadata as {name: value}: text values only (binary `-bin` ones are not headers the
    gateway reads); on a repeated name the first value wins."""
    headers: dict[str, str] = {}
    if metadata is None:
        return headers
    for name, value in metadata:
        if isinstance(value, str) and name not in headers:
            headers[name] = value
    return headers


def raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Response headers as ASGI's (name, value) byte pairs, latin-1 as starlette encodes them; `headers`'
    names must be lower case already."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
