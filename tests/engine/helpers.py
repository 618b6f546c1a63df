"""Building schedulers and driving them with the fake runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inferd.engine import (
    EngineRequest,
    FairnessConfig,
    KVCacheManager,
    RequestUpdate,
    SamplingParams,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    SchedulingPolicy,
)

from .fakes import FakeRunner

BS = 4


def make_scheduler(
    num_blocks: int = 64,
    *,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 256,
    caching: bool = True,
    long_prefill_token_threshold: int = 0,
    max_prefill_share: float = 1.0,
    policy: SchedulingPolicy | None = None,
    max_waiting_requests: int | None = None,
    max_waiting_tokens: int | None = None,
    max_queue_wait_ms: float | None = None,
    preempt_for_waiting: bool = True,
    tenant_weights: dict[str, float] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Scheduler:
    config = SchedulerConfig(
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        long_prefill_token_threshold=long_prefill_token_threshold,
        max_prefill_share=max_prefill_share,
        max_waiting_requests=max_waiting_requests,
        max_waiting_tokens=max_waiting_tokens,
        max_queue_wait_ms=max_queue_wait_ms,
        preempt_for_waiting=preempt_for_waiting,
        fairness=FairnessConfig(tenant_weights=tenant_weights or {}),
    )
    kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=caching)
    return Scheduler(config, kv, policy=policy, clock=clock)


def make_request(
    rid: str,
    prompt: list[int] | int,
    max_tokens: int | None = 4,
    *,
    arrival: float = 0.0,
    **kwargs: object,
) -> EngineRequest:
    tokens = list(range(1, prompt + 1)) if isinstance(prompt, int) else prompt
    params_keys = {f for f in SamplingParams.__dataclass_fields__}
    params = SamplingParams(
        max_tokens=max_tokens,
        **{k: v for k, v in kwargs.items() if k in params_keys},  # type: ignore[arg-type]
    )
    rest = {k: v for k, v in kwargs.items() if k not in params_keys}
    return EngineRequest(rid, tuple(tokens), params, arrival_time=arrival, **rest)  # type: ignore[arg-type]


@dataclass
class Driver:
    scheduler: Scheduler
    runner: FakeRunner = field(default_factory=lambda: FakeRunner(BS))
    outputs: list[SchedulerOutput] = field(default_factory=list)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    finished: dict[str, RequestUpdate] = field(default_factory=dict)

    def step(self) -> SchedulerOutput:
        output = self.scheduler.schedule()
        self.outputs.append(output)
        result = self.runner.execute(output)
        for update in self.scheduler.update_from_output(output, result):
            assert update.request_id not in self.finished, "update after finish"
            self.tokens.setdefault(update.request_id, []).extend(update.new_token_ids)
            if update.finished:
                self.finished[update.request_id] = update
        return output

    def run(self, max_steps: int = 1000) -> None:
        for _ in range(max_steps):
            if not self.scheduler.has_unfinished_requests():
                return
            self.step()
        raise AssertionError("requests did not finish")
