"""A served tiny Llama with room for long prompts, and a log of what the engine scheduled in each step.

Latency on a tiny CPU model is dominated by thread hand-offs, not by the model, so the acceptance tests prove
their claims by the composition of engine steps (who was scheduled when) and report wall-clock numbers
beside them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from inferd.config import ServerConfig
from inferd.engine import EngineRequest, Scheduler, SchedulerOutput
from tests.conftest import RunningServer, start_server
from tests.engine_torch.models import TinyModel, build_tiny_model
from tests.openai.conftest import SPECIALS, WORDS, build_tokenizer

torch.set_num_threads(1)

MODEL = "tiny-llama"
MAX_MODEL_LEN = 2304
VOCAB = len(SPECIALS) + len(WORDS)
SERVER_CONFIG = {
    "max_model_len": MAX_MODEL_LEN,
    "max_num_seqs": 32,
    "max_num_batched_tokens": 64,
    "max_prefill_share": 0.25,
    "max_waiting_requests": 8,
    "kv_cache_memory": 64_000_000,
}


def build_model(path: Path) -> TinyModel:
    tiny = build_tiny_model(
        path, "llama", vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096
    )
    build_tokenizer(path)
    return tiny


@dataclass
class Step:
    index: int
    start: float
    """When it was scheduled (time.monotonic)."""
    scheduled: dict[str, int]
    """Tokens per request id."""
    new: frozenset[str]
    """Requests that started (or resumed) in this step."""


@dataclass
class StepLog:
    """Wraps a scheduler's `add_request` and `schedule` (on the engine thread) to record every step."""

    steps: list[Step] = field(default_factory=list)
    added: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Request id → (steps scheduled before it was queued, when)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def attach(cls, scheduler: Scheduler) -> StepLog:
        log = cls()
        add: Callable[[EngineRequest], list[EngineRequest]] = scheduler.add_request
        schedule: Callable[[], SchedulerOutput] = scheduler.schedule

        def logged_add(request: EngineRequest) -> list[EngineRequest]:
            samples = add(request)
            with log.lock:
                for sample in samples:
                    log.added[sample.request_id] = (scheduler.step_index, time.monotonic())
            return samples

        def logged_schedule() -> SchedulerOutput:
            start = time.monotonic()
            out = schedule()
            step = Step(
                out.step,
                start,
                dict(out.num_scheduled_tokens),
                frozenset(r.request_id for r in out.new_requests),
            )
            with log.lock:
                log.steps.append(step)
            return out

        scheduler.add_request = logged_add  # type: ignore[method-assign]
        scheduler.schedule = logged_schedule  # type: ignore[method-assign]
        return log

    def first_step(self, rid: str) -> Step:
        with self.lock:
            return next(s for s in self.steps if rid in s.scheduled)

    def steps_waited(self, rid: str) -> int:
        """Steps scheduled after `rid` was queued and before the one that first scheduled it."""
        queued_after, _ = self.added[rid]
        return self.first_step(rid).index - queued_after - 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("overload-repo")
    version = repo / MODEL / "1"
    version.mkdir(parents=True)
    (repo / MODEL / "config.yaml").write_text(
        "runtime: llm\n" + "".join(f"{k}: {v}\n" for k, v in SERVER_CONFIG.items())
    )
    build_model(version)
    config = ServerConfig(
        auth=False,
        model_repository=str(repo),
        http_port=0,
        grpc_port=0,
        state_dir=str(tmp_path_factory.mktemp("overload-state")),
        max_request_bytes=1 << 20,
    )
    yield from start_server(config)


def scheduler_of(server: RunningServer) -> Scheduler:
    return server.server.manager.get_llm(MODEL).engine.engine.scheduler


@pytest.fixture
def step_log(served: RunningServer) -> Iterator[StepLog]:
    scheduler = scheduler_of(served)
    log = StepLog.attach(scheduler)
    yield log
    del scheduler.add_request, scheduler.schedule  # back to the class's methods
