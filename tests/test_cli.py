"""`inferd serve` as a user runs it: a subprocess on free ports, then SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from inferd.demo import build_demo_repository


def test_serve_demo_repository_on_free_ports(tmp_path: Path) -> None:
    repo = build_demo_repository(tmp_path / "demo")
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(repo),
         "--http-port", "0", "--grpc-port", "0", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # Auth is on by default: the first start creates the admin key, prints it once and keeps it in the
        # state dir, readable by its owner only.
        assert proc.stdout.readline().startswith("inferd: created the admin API key")
        printed_key = proc.stdout.readline().strip()
        key_file = tmp_path / "state" / "admin.key"
        assert key_file.read_text().strip() == printed_key
        assert key_file.stat().st_mode & 0o777 == 0o600
        line = proc.stdout.readline()
        assert line.startswith("inferd: listening http="), line
        ports = dict(part.split("=") for part in line.split()[2:])
        base = f"http://127.0.0.1:{ports['http']}"
        assert int(ports["grpc"]) > 0
        assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
        doc = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}
        assert httpx.post(f"{base}/v2/models/mlp/infer", json=doc).status_code == 401
        auth = {"Authorization": f"Bearer {printed_key}"}
        out = httpx.post(f"{base}/v2/models/mlp/infer", json=doc, headers=auth)
        assert out.status_code == 200 and out.json()["outputs"][0]["shape"] == [1, 10]
        assert out.headers["x-request-id"]
        assert httpx.get(f"{base}/metrics").status_code == 401  # tenant names and spend: admin only
        assert "inferd_requests_total" in httpx.get(f"{base}/metrics", headers=auth).text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert printed_key not in err  # keys never reach the log
    for model in ("mlp", "heavy", "add_sub", "strings"):
        assert f"model {model} version 1 loaded (sha256 " in err


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "is not a folder" in result.stderr


def test_listening_socket_is_tcp_so_responses_are_not_delayed() -> None:
    # asyncio disables Nagle only on sockets whose proto is TCP; without it every response waits ~40 ms.
    import socket

    from inferd.server.app import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_tensor_server_does_not_import_torch() -> None:
    # torch's ~200k objects make every full garbage collection stall all requests; it loads only with an
    # LLM or embedding model.
    code = "import sys, inferd.server.app, inferd.cli.main; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
