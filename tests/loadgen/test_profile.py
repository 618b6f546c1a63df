"""Step load profiles: per-step accounting of admitted, refused and failed requests, goodput, and a real run
against a server whose slow model must refuse past its capacity."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from inferd.cli.main import main
from inferd.config import ServerConfig
from inferd.datatypes import BY_NAME
from inferd.loadgen.profile import ProfileOptions, Sample, format_profile, step_report
from inferd.repository.model_config import ModelConfig
from inferd.runtimes.base import ModelSignature
from inferd.tensors import Array, TensorSpec
from tests.conftest import RunningServer, start_server

FP32 = BY_NAME["FP32"]


def test_step_report_separates_refusals_from_failures_and_counts_goodput() -> None:
    samples = [
        Sample(0.0, 0.010, None, ttft=0.002),
        Sample(0.0, 0.200, None, ttft=0.150),  # admitted, misses both SLOs
        Sample(0.0, 0.050, None, ttft=0.004),  # admitted, misses the latency SLO only
        Sample(0.0, 0.001, "http_429"),
        Sample(0.0, 0.003, "grpc_RESOURCE_EXHAUSTED"),
        Sample(0.0, 0.002, "http_503"),
        Sample(0.0, 0.500, "http_500"),
        Sample(0.0, 0.500, "unfinished"),
    ]
    opts = ProfileOptions(slo_latency_s=0.040, slo_ttft_s=0.100)
    report = step_report(2.0, 40.0, 2.0, samples, opts)
    assert (report.sent, report.admitted, report.refused) == (8, 3, 3)
    assert report.failed == {"http_500": 1, "unfinished": 1}
    assert report.goodput_rps == pytest.approx(0.5)  # one request met both SLOs in 2 s
    assert report.refusal_rate == pytest.approx(3 / 8)
    assert report.refusal_latency.max_ms == pytest.approx(3.0)
    assert report.admitted_ttft.count == 3
    # Without SLOs every admitted request is good.
    assert step_report(1.0, 20.0, 2.0, samples, ProfileOptions()).goodput_rps == pytest.approx(1.5)
    table = format_profile(20.0, [report])
    assert "capacity 20.0 req/s" in table and "http_500 1" in table


def test_no_samples_give_empty_summaries() -> None:
    report = step_report(5.0, 100.0, 1.0, [], ProfileOptions())
    assert report.sent == 0 and report.refusal_rate == 0.0 and math.isnan(report.admitted_latency.p50_ms)


class SlowRuntime:
    """Takes 20 ms per single-row batch: about 50 requests/s."""

    def __init__(self) -> None:
        self._sig = ModelSignature("test", (TensorSpec("x", FP32, (2,)),), (TensorSpec("y", FP32, (2,)),), 1)

    @property
    def signature(self) -> ModelSignature:
        return self._sig

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        time.sleep(0.02)
        return {"y": inputs["x"] * 2}

    def unload(self) -> None:
        pass


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[RunningServer]:
    repo = tmp_path / "repo"
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "config.yaml").write_text("max_batch_size: 1\ndynamic_batching:\n  max_queue_size: 4\n")

    def load(version_dir: Path, config: ModelConfig) -> SlowRuntime:
        return SlowRuntime()

    config = ServerConfig(
        auth=False, model_repository=str(repo), http_port=0, grpc_port=0, state_dir=str(tmp_path / "s")
    )
    yield from start_server(config, {"onnx": load})


def test_step_profile_against_a_server_past_its_capacity(
    slow: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Capacity given (50/s) so the run is short; at 6x the 4-deep queue must overflow into 429s.
    argv = ["bench", "v2", "--url", f"http://{slow.http_url}", "--model", "slow", "--profile", "step",
            "--capacity", "50", "--steps", "0.5,6", "--duration", "1.5", "--warmup", "0",
            "--slo-latency-ms", "1000", "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["capacity_rps"] == 50
    low, high = doc["steps"]
    assert (low["multiplier"], high["multiplier"]) == (0.5, 6.0)
    assert low["admitted"] > 0 and low["failed"] == {}
    assert high["refused"] > 0 and high["refusal_rate"] > 0.2
    assert high["admitted"] + high["refused"] + sum(high["failed"].values()) == high["sent"]
    assert high["refusal_latency_ms"]["count"] == high["refused"]


def test_profile_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "v2",
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--profile",
        "step",
        "--steps",
        "0,2",
    ]
    assert main(argv) == 2
    assert "--steps" in capsys.readouterr().err
