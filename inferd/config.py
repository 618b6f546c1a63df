"""`inferd.yaml`: the server's configuration. Command-line flags override the file; every field documented."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inferd.configfile import load_yaml, parse

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass
class ServerConfig:
    """How one inferd server runs."""

    model_repository: str = "models"
    """Folder holding one sub-folder per model."""
    host: str = "127.0.0.1"
    """Address the HTTP and gRPC listeners bind to."""
    http_port: int = 8000
    """HTTP port (V2 REST, metrics); 0 picks a free port."""
    grpc_port: int = 8001
    """gRPC port (V2 gRPC); 0 picks a free port; -1 disables gRPC."""
    state_dir: str = ".inferd"
    """Where inferd keeps its state (SQLite database, generated keys)."""
    model_control: Literal["none", "explicit", "poll"] = "none"
    """`none`: load all at start; `explicit`: repository API loads and unloads; `poll`: also rescan."""
    load_models: list[str] = field(default_factory=list)
    """Models to load at start in `explicit` mode (default: all)."""
    poll_interval_s: float = 5.0
    """Seconds between repository scans in `poll` mode."""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """Largest request body accepted; larger ones get 413."""
    auth: bool = True
    """API keys, limits, budgets and the usage ledger; false (`--no-auth`) serves everyone as an anonymous
    admin, for local work only."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    shutdown_grace_s: float = 30.0
    """On SIGTERM or SIGINT: readiness goes false and new requests get 503 / UNAVAILABLE at once; requests in
    flight (queued batches, running generations) get this many seconds to finish before they are failed;
    then the ledger is flushed and the process exits 0."""

    def __post_init__(self) -> None:
        if self.max_request_bytes <= 0:
            raise ValueError("max_request_bytes must be positive")
        if self.shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must be >= 0")
        if self.poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")


def load_server_config(path: Path | None) -> ServerConfig:
    """The config from `path`, or the defaults."""
    if path is None:
        return ServerConfig()
    return parse(ServerConfig, load_yaml(path), path.name)
