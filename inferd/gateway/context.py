"""What the gateway knows about a call: protocol, request id, headers, and (later) the principal."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["http", "grpc", "openai"]

StatusOf = Callable[[BaseException | None], str]
"""Maps an outcome (None = success) to the transport's status code, for the requests metric."""


@dataclass(frozen=True)
class Principal:
    """Who is calling. Anonymous until authentication arrives."""

    tenant: str = "anonymous"
    key_id: str = ""
    roles: frozenset[str] = frozenset({"admin", "user"})


ANONYMOUS = Principal()


@dataclass
class CallContext:
    """One call through the gateway."""

    protocol: Protocol
    request_id: str
    status_of: StatusOf
    headers: Mapping[str, str] = field(default_factory=dict)
    principal: Principal = ANONYMOUS


def new_request_id(given: str | None = None) -> str:
    """The client's id when it sent a usable one, else a fresh one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex
