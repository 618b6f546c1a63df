"""How the governance CLI reaches the admin operations: over the admin HTTP API, or in-process on a state dir.

Every operation is one `AdminCall` that carries both of its forms: the HTTP request of `/admin/v1/...` and
the matching `AdminService` call. The CLI's commands build the calls from their flags and hand them to an
`AdminClient`; the two clients only execute them, so both modes share every mapping from flags to requests.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from inferd.errors import InferdError, NotFound
from inferd.gateway.admin import AdminService
from inferd.gateway.context import Principal
from inferd.gateway.governance import ADMIN_KEY_FILE
from inferd.store.sqlite import DB_NAME, SqliteStore

ADMIN_PREFIX = "/admin/v1"
ADMIN_KEY_ENV = "INFERD_ADMIN_KEY"
DEFAULT_STATE_DIR = ".inferd"
CLI_PRINCIPAL = Principal(tenant="admin", key_id="cli", roles=frozenset({"admin"}))
"""The actor of direct-mode writes, as the audit log records it."""


class AdminError(Exception):
    """The server or the service refused the operation (exit code 1)."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.not_found = not_found


class UsageError(Exception):
    """The command line cannot be carried out as given (exit code 2)."""


DirectCall = Callable[[AdminService, Principal], Any]


@dataclass(frozen=True)
class AdminCall:
    """One admin operation in both of its forms: `method path?params` with a JSON `body` over HTTP (the
    routes of `inferd/server/admin_api.py`, below `/admin/v1`, segments quoted), `direct` in-process."""

    method: str
    path: str
    direct: DirectCall
    params: Mapping[str, str] | None = None
    body: Mapping[str, Any] | None = None


class AdminClient(Protocol):
    def run(self, call: AdminCall) -> Any:
        """The operation's result (None for deletions); AdminError when it is refused."""
        ...


def segment(value: str) -> str:
    """`value` as one quoted path segment."""
    return quote(value, safe="")


def query(**values: str | int | None) -> dict[str, str]:
    """Query parameters, leaving out absent ones."""
    return {k: str(v) for k, v in values.items() if v is not None}


# -- the two clients -----------------------------------------------------------------------------------


class HttpAdmin:
    """Remote mode: the admin HTTP API of a running server."""

    def __init__(self, url: str, key: str | None, timeout_s: float) -> None:
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        if key is not None and not (key.isascii() and key.isprintable()):
            # checked here so that no HTTP library error ever quotes the key
            raise UsageError("the admin key holds characters an HTTP header cannot carry")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url + ADMIN_PREFIX, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def run(self, call: AdminCall) -> Any:
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=dict(call.body) if call.body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code == 204:
            return None
        if response.is_success:
            return response.json()
        raise AdminError(
            f"{_error_message(response)} (HTTP {response.status_code})", not_found=response.status_code == 404
        )


def _error_message(response: httpx.Response) -> str:
    """The message of an error: `{"error": {"message": ...}}` (OpenAI shape), `{"error": "..."}`, or text."""
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return response.reason_phrase


class DirectAdmin:
    """Direct mode: the store of a state dir, through `AdminService` in this process. A server running on
    the same state dir picks the change up through the store's `config_version` (within about a second)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        try:
            self.store = SqliteStore(state_dir)
        except (OSError, sqlite3.Error) as exc:
            raise AdminError(f"cannot open the state in {state_dir}: {exc}") from None
        self.service = AdminService(self.store)

    def close(self) -> None:
        self.store.close()

    def run(self, call: AdminCall) -> Any:
        try:
            return call.direct(self.service, CLI_PRINCIPAL)
        except InferdError as exc:
            raise AdminError(exc.message, not_found=isinstance(exc, NotFound)) from None
        except sqlite3.Error as exc:
            raise AdminError(f"the state in {self.state_dir}: {exc}") from None


@dataclass(frozen=True)
class Target:
    """Where the CLI sends its operations, from the common flags."""

    url: str | None
    """A running server (remote mode); None = direct mode on `state_dir`."""
    state_dir: str | None
    """The state folder given with `--state-dir`, if any."""
    admin_key: str | None
    timeout_s: float


def admin_key(target: Target) -> str | None:
    """`--admin-key`, else `$INFERD_ADMIN_KEY`, else the state dir's `admin.key` when there is one."""
    if target.admin_key:
        return target.admin_key
    if os.environ.get(ADMIN_KEY_ENV):
        return os.environ[ADMIN_KEY_ENV]
    path = Path(target.state_dir or DEFAULT_STATE_DIR) / ADMIN_KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read the admin key in {path}: {exc.strerror}") from None


@contextmanager
def connect(target: Target) -> Iterator[AdminClient]:
    """The client of `target`: remote with `--url`, else direct on `--state-dir` (or an existing
    `.inferd`)."""
    client: HttpAdmin | DirectAdmin
    if target.url:
        client = HttpAdmin(target.url, admin_key(target), target.timeout_s)
    elif target.state_dir:
        client = DirectAdmin(Path(target.state_dir))
    elif (Path(DEFAULT_STATE_DIR) / DB_NAME).is_file():
        client = DirectAdmin(Path(DEFAULT_STATE_DIR))
    else:
        raise UsageError(
            f"no state in ./{DEFAULT_STATE_DIR}: give --url http://host:port (a running server) "
            "or --state-dir DIR (a server's state folder)"
        )
    try:
        yield client
    finally:
        client.close()
