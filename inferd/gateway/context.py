"""What the gateway knows about a call: protocol, request id, headers, the principal, and what it learned
while admitting and settling the call (rate-limit state, cost) for the response headers."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from inferd.errors import Unauthenticated
from inferd.gateway.ratelimit import Take

Protocol = Literal["http", "grpc", "openai"]

StatusOf = Callable[[BaseException | None], str]
"""Maps an outcome (None = success) to the transport's status code, for the requests metric."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's tenant, id, roles and model patterns (anonymous with `--no-auth`)."""

    tenant: str = "anonymous"
    key_id: str = ""
    roles: frozenset[str] = frozenset({"admin", "user"})
    models: tuple[str, ...] = ("*",)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


ANONYMOUS: Final = Principal()


class CallContext:
    """One call through the gateway. (A plain class with its own `__init__`, built once per request:
    compiled, a small fraction of a dataclass's interpreted one.)"""

    def __init__(
        self,
        protocol: Protocol,
        request_id: str,
        status_of: StatusOf,
        headers: dict[str, str] | None = None,
        principal: Principal = ANONYMOUS,
    ) -> None:
        self.protocol: Final = protocol
        self.request_id: Final = request_id
        self.status_of: Final = status_of
        self.headers: Final[dict[str, str]] = {} if headers is None else headers
        """The request's headers, names lower-cased (a dict: the compiled request path reads it directly)."""
        self.principal = principal
        self.auth_error: Unauthenticated | None = None
        """Why authentication failed; raised by the first gateway operation of the call."""
        self.limit_buckets: Sequence[Take] = ()
        """The rate buckets the call was admitted against (their state goes into `x-ratelimit-*`
        headers)."""
        self.admitted_at = 0.0
        self.allowed_model: str | None = None
        """The model this call was last found allowed to use (checked once per call)."""
        self.cost_micros: int | None = None
        """The settled cost, once known (the `x-inferd-cost` header)."""

    @property
    def workflow_header(self) -> str:
        return self.headers.get("x-inferd-workflow", "")


class RequestIds:
    """Request ids: the client's when it sent a usable one, else 16 random hex digits drawn once per server
    plus a counter (unique across restarts without a system call per request, as uuid4 would cost)."""

    def __init__(self) -> None:
        # The prefix above the counter's 64 bits, under a leading 1 that keeps its leading zeros in `hex`.
        self._base = (1 << 128) | (secrets.randbits(64) << 64)
        self._next = itertools.count(1)

    def __call__(self, given: str | None = None) -> str:
        if given and len(given) <= 128 and given.isprintable():
            return given
        # `hex` and a slice: a `016x` format spec costs ~4,500 instructions here, this ~400.
        return hex(self._base + next(self._next))[3:]
