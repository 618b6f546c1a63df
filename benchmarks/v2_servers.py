"""Servers under test for `v2_serving.py`: an inferd subprocess and an MLServer subprocess (in its own venv).

Each builds its model folder under `benchmarks/.work/`, starts the server on free ports, waits until the
models are ready, and stops it (SIGTERM to the process it started, then its process group if needed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
MLSERVER_VENV = WORK / "mlserver-venv"
MLSERVER_PACKAGES = ["mlserver", "onnxruntime", "numpy", "uvloop<0.22"]
"""uvloop 0.22 breaks MLServer 1.7's inference workers (SeldonIO/MLServer#2286)."""
READY_LINE = re.compile(r"inferd: listening http=(\S+) grpc=(\S+)")
START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServedModel:
    """One model folder to create: `name` serves `onnx` with or without dynamic batching."""

    name: str
    onnx: Path
    batching: bool
    max_queue_delay_ms: float = 1.0


@dataclass
class Running:
    """A started server: where to send REST and gRPC requests, and how to stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    http_url: str
    grpc_target: str
    log_path: Path
    log_file: IO[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        # Worker processes the server spawned (MLServer's inference pool) live in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log_file.close()


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the whole machine (busy), the server's process group, and this process."""

    wall: float
    machine: float
    server: float
    client: float


def cpu_snapshot(server: Running) -> CpuSnapshot:
    return CpuSnapshot(
        time.perf_counter(), machine_busy_s(), _group_cpu_s(server.proc.pid), time.process_time()
    )


def cpu_cores(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Average cores used between two snapshots by the server, the client, and everything else (other
    work on a shared machine skews the numbers: this shows by how much). NaN where /proc is missing."""
    wall = after.wall - before.wall
    server = (after.server - before.server) / wall
    client = (after.client - before.client) / wall
    machine = (after.machine - before.machine) / wall
    return {"server": server, "client": client, "other": max(machine - server - client, 0.0)}


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s() -> float:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / _TICK


def _group_cpu_s(pgid: int) -> float:
    """User plus system CPU of the live processes in process group `pgid` (the server and its workers)."""
    if not os.path.isdir("/proc"):
        return math.nan
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _TICK


_BATCH_METRIC = re.compile(
    r"^(inferd_(?:batch_size|compute_duration_seconds|queue_duration_seconds)_(?:sum|count))"
    r"\{([^}]*)\}\s+(\S+)$",
    re.MULTILINE,
)


def batch_counters(http_url: str, model: str) -> dict[str, float]:
    """inferd's batch histograms (`inferd_batch_size`, `inferd_compute_duration_seconds`,
    `inferd_queue_duration_seconds`: sums and counts) for `model`; empty when /metrics is unavailable."""
    try:
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=5) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for name, labels, value in _BATCH_METRIC.findall(text):
        if f'model="{model}"' in labels.split(","):
            out[name] = out.get(name, 0.0) + float(value)
    return out


def batch_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """Mean rows per batch, compute ms per batch and queue ms per request between two scrapes."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("inferd_batch_size_count")
    requests = delta("inferd_queue_duration_seconds_count")
    if batches <= 0:
        return None
    return {
        "batches": batches,
        "rows_per_batch": delta("inferd_batch_size_sum") / batches,
        "compute_ms_per_batch": delta("inferd_compute_duration_seconds_sum") / batches * 1e3,
        "queue_ms_per_request": delta("inferd_queue_duration_seconds_sum") / requests * 1e3
        if requests
        else math.nan,
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (the heavy model is ~100 MB) or copy when links are impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _popen(name: str, cmd: list[str], cwd: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the Running handle
    print(f"[{name}] {' '.join(cmd)}  (log: {log_path.relative_to(ROOT)})", file=sys.stderr)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


# -- inferd -----------------------------------------------------------------------------------------------


def write_inferd_repository(repo: Path, models: list[ServedModel], threads: int) -> None:
    """`<repo>/<model>/config.yaml` and `<repo>/<model>/1/model.onnx` for every model."""
    if repo.exists():
        shutil.rmtree(repo)
    for m in models:
        link_or_copy(m.onnx, repo / m.name / "1" / "model.onnx")
        lines = ["runtime: onnx", "max_batch_size: 32"]
        if m.batching:
            lines += [
                "dynamic_batching:",
                f"  max_queue_delay_ms: {m.max_queue_delay_ms}",
                "  preferred_batch_sizes: [32]",
                "  max_queue_size: 1024",
            ]
        lines += ["instances: 1", f"intra_op_threads: {threads}", "inter_op_threads: 1"]
        (repo / m.name / "config.yaml").write_text("\n".join(lines) + "\n")


def start_inferd(
    repo: Path, state_dir: Path, log_path: Path, auth: bool = False, prefix: Sequence[str] = ()
) -> Running:
    """`inferd serve` on free ports (`--no-auth` unless `auth`); returns once it printed its listening line
    and reports ready. `prefix`: a command that runs the server (valgrind, say)."""
    exe = Path(sys.executable).parent / "inferd"
    cmd = [*prefix, str(exe), "serve", "--model-repository", str(repo)]
    cmd += ["--http-port", "0", "--grpc-port", "0"]
    cmd += ["--state-dir", str(state_dir), "--log-level", "warning"] + ([] if auth else ["--no-auth"])
    proc, log = _popen("inferd", cmd, ROOT, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        log.flush()
        match = READY_LINE.search(log_path.read_text(errors="replace"))
        if match:
            http, grpc = (_host_port(v) for v in match.groups())
            running = Running("inferd", proc, f"http://{http}", grpc, log_path, log)
            if _wait_http(f"{running.http_url}/v2/health/ready", deadline, proc):
                return running
            break
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:]
    Running("inferd", proc, "", "", log_path, log).stop()
    raise RuntimeError(f"inferd did not become ready (exit code {proc.returncode}); log tail:\n{tail}")


def _host_port(value: str) -> str:
    """`8000`, `0.0.0.0:8000` or `http://host:8000` -> a connectable `host:port`."""
    value = value.split("://", 1)[-1].rstrip("/")
    if value.isdigit():
        return f"127.0.0.1:{value}"
    host, _, port = value.rpartition(":")
    return f"{'127.0.0.1' if host in ('0.0.0.0', '', '[::]', '::') else host}:{port}"


def _wait_http(url: str, deadline: float, proc: subprocess.Popen[bytes]) -> bool:
    while time.monotonic() < deadline and proc.poll() is None:
        if _http_ok(url):
            return True
        time.sleep(0.2)
    return False


# -- MLServer ---------------------------------------------------------------------------------------------

MLSERVER_RUNTIME = '''"""Written by inferd's benchmark: ONNX Runtime on CPU; MLServer batches."""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = (params.extra if params is not None else None) or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 0))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(extra["onnx_path"], options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, np.asarray(r)) for n, r in zip(self._outputs, results)],
        )
'''


def ensure_mlserver_venv() -> Path:
    """The MLServer venv's `mlserver` executable; creates or updates the venv when its package list changed
    (never torch)."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    stamp = MLSERVER_VENV / ".inferd-bench-packages"
    packages = " ".join(MLSERVER_PACKAGES)
    if exe.exists() and stamp.exists() and stamp.read_text() == packages:
        return exe
    print(f"[mlserver] preparing {MLSERVER_VENV.relative_to(ROOT)}: pip install {packages}", file=sys.stderr)
    if not (MLSERVER_VENV / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *MLSERVER_PACKAGES], check=True)
    stamp.write_text(packages)
    return exe


def mlserver_version() -> str:
    python = MLSERVER_VENV / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import mlserver; print(mlserver.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def write_mlserver_models(root: Path, models: list[tuple[str, Path, int, int]], threads: int) -> None:
    """`models` is (name, onnx path, input width, output width); every model batches adaptively."""
    if root.exists():
        shutil.rmtree(root)
    for name, onnx, width_in, width_out in models:
        folder = root / name
        link_or_copy(onnx, folder / "model.onnx")
        (folder / "ort_runtime.py").write_text(MLSERVER_RUNTIME)
        settings = {
            "name": name,
            "implementation": "ort_runtime.OnnxModel",
            "max_batch_size": 32,
            "max_batch_time": 0.002,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, width_in]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, width_out]}],
            "parameters": {
                "extra": {"onnx_path": str((folder / "model.onnx").resolve()), "intra_op_threads": threads}
            },
        }
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))


def start_mlserver(root: Path, model_names: list[str], log_path: Path) -> Running:
    """`mlserver start root` on free ports (debug logging off, one inference worker: its defaults
    otherwise); returns once every model reports ready."""
    exe = ensure_mlserver_venv()
    http, grpc, metrics = free_port(), free_port(), free_port()
    server_settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "debug": False,
        "parallel_workers": 1,
        "metrics_dir": str(WORK / "mlserver-metrics"),
    }
    (root / "settings.json").write_text(json.dumps(server_settings, indent=2))
    proc, log = _popen("mlserver", [str(exe), "start", str(root)], root, log_path)
    running = Running("mlserver", proc, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}", log_path, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    for name in model_names:
        if not _wait_http(f"{running.http_url}/v2/models/{name}/ready", deadline, proc):
            tail = running.log_tail()
            running.stop()
            raise RuntimeError(
                f"MLServer did not load {name!r} (exit code {proc.returncode}); log tail:\n{tail}"
            )
    return running
