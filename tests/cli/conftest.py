"""A real server with auth on over loopback, its state dir, and the CLI run in-process."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto

from inferd import onnx_models
from inferd.cli.main import main
from inferd.config import ServerConfig
from tests.conftest import start_server

MODEL = "echo"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


Cli = Callable[..., Result]


@dataclass(frozen=True)
class Served:
    """A server with auth on: its HTTP address and its state dir (with the admin.key of its first start)."""

    url: str
    state_dir: Path

    def admin_key(self) -> str:
        return (self.state_dir / "admin.key").read_text().strip()


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No admin key from the environment and no `./.inferd` of the developer's checkout."""
    monkeypatch.delenv("INFERD_ADMIN_KEY", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("cli")
    onnx_models.identity(root / "repo" / MODEL / "1" / "model.onnx", TensorProto.FLOAT, ["batch", 4])
    state_dir = root / "state"
    config = ServerConfig(
        auth=True, model_repository=str(root / "repo"), http_port=0, grpc_port=-1, state_dir=str(state_dir)
    )
    for running in start_server(config):
        yield Served(f"http://{running.http_url}", state_dir)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """`inferd ARGS...` in this process: exit code, stdout, stderr."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
