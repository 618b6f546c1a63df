"""The synchronous LLM engine: the scheduler and the model runner, stepped by the caller.

    engine = LLMEngine.load("models/tiny-llama/1", EngineConfig())
    engine.add_request("r1", prompt_token_ids, SamplingParams(max_tokens=16))
    while engine.has_unfinished_requests():
        for update in engine.step(): ...

Not thread-safe: one loop (the async wrapper's thread, or a test) calls every method.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from inferd.engine.config import EngineConfig
from inferd.engine.model.config import ModelArchConfig, load_arch_config
from inferd.engine.outputs import RequestUpdate, SchedulerStats
from inferd.engine.policy import SchedulingPolicy
from inferd.engine.request import EngineRequest, FinishReason
from inferd.engine.runner import ModelRunner
from inferd.engine.sampling_params import SamplingParams
from inferd.engine.scheduler import Scheduler
from inferd.errors import InvalidInput

logger = logging.getLogger(__name__)


class LLMEngine:
    """Continuous batching over one model: requests in, token updates out, one step per `step()` call."""

    def __init__(
        self, runner: ModelRunner, config: EngineConfig, *, policy: SchedulingPolicy | None = None
    ) -> None:
        self.runner = runner
        self.config = config
        self.arch: ModelArchConfig = runner.arch
        self.scheduler = Scheduler.from_config(config, runner.num_blocks, policy=policy)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        config: EngineConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        seed: int | None = None,
        policy: SchedulingPolicy | None = None,
    ) -> LLMEngine:
        """An engine over the model folder `model_dir`; `max_model_len` is lowered to what the model
        serves."""
        config = config or EngineConfig()
        limit = load_arch_config(model_dir).max_model_len
        if config.scheduler.max_model_len > limit:
            logger.info("max_model_len lowered from %d to %d", config.scheduler.max_model_len, limit)
            config = dataclasses.replace(
                config, scheduler=dataclasses.replace(config.scheduler, max_model_len=limit)
            )
        runner = ModelRunner.load(model_dir, config, device=device, dtype=dtype, seed=seed)
        return cls(runner, config, policy=policy)

    # ---- requests

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[str]:
        """Queue a request; returns the ids its updates will carry (`n` sample ids when `n > 1`). Raises
        InvalidInput (ContextLengthExceeded, KVCacheTooSmall, a token outside the vocabulary, an id in
        use)."""
        vocab = self.arch.vocab_size
        if any(t >= vocab for t in prompt_token_ids):
            raise InvalidInput(f"token ids must be < the vocabulary size {vocab}")
        eos_ids = self.arch.eos_token_ids
        if len(eos_ids) > 1 and not sampling_params.ignore_eos:
            extra = tuple(t for t in eos_ids[1:] if t not in sampling_params.stop_token_ids)
            sampling_params = dataclasses.replace(
                sampling_params, stop_token_ids=sampling_params.stop_token_ids + extra
            )
        request = EngineRequest(
            request_id,
            tuple(prompt_token_ids),
            sampling_params,
            eos_token_id=eos_ids[0] if eos_ids else None,
            priority=priority,
            cache_salt=cache_salt,
        )
        return [sample.request_id for sample in self.scheduler.add_request(request)]

    def abort_requests(self, request_ids: Sequence[str]) -> None:
        """End requests now (unknown or finished ids are ignored); their blocks are freed."""
        self.scheduler.finish_requests(request_ids, FinishReason.ABORT)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    # ---- steps

    def step(self) -> list[RequestUpdate]:
        """Schedule, run and apply one step; returns an update for every request that got a token."""
        scheduler_output = self.scheduler.schedule()
        runner_output = self.runner.execute(scheduler_output)
        return self.scheduler.update_from_output(scheduler_output, runner_output)

    def generate(
        self, prompts_token_ids: Sequence[Sequence[int]], sampling_params: SamplingParams
    ) -> list[list[int]]:
        """Run prompts to completion; the generated tokens of each request, in order (for `n > 1`, each
        prompt's samples in sample order). A convenience for tests and benchmarks: it steps until every
        request is done, and drops the updates of requests added with `add_request`."""
        order: list[str] = []
        for i, prompt in enumerate(prompts_token_ids):
            order.extend(self.add_request(f"generate-{i}", prompt, sampling_params))
        outputs: dict[str, list[int]] = {rid: [] for rid in order}
        while self.has_unfinished_requests():
            for update in self.step():
                tokens = outputs.get(update.request_id)
                if tokens is not None:
                    tokens.extend(update.new_token_ids)
        return [outputs[rid] for rid in order]
