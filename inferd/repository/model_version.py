"""A loaded model version: its runtime, its batcher, its worker threads and its statistics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from inferd.batching.assembly import gather_inputs, scatter_outputs, wanted_outputs
from inferd.batching.batcher import DynamicBatcher
from inferd.batching.queue import BatchPolicy
from inferd.errors import ExecutionFailed
from inferd.metrics.registry import Metrics
from inferd.repository.model_config import ModelConfig
from inferd.repository.statistics import VersionStats
from inferd.runtimes.base import ModelSignature, Runtime
from inferd.tensors import Array, InferRequest, InferResponse, Tensor, empty_like_spec
from inferd.validation import batch_signature, validate


@dataclass(eq=False)
class _Job:
    request: InferRequest
    submitted_ns: int
    outputs: dict[str, Array] = field(default_factory=dict)


class ModelVersion:
    """One version of one model, ready to serve."""

    def __init__(
        self,
        name: str,
        version: str,
        sha256: str,
        config: ModelConfig,
        runtime: Runtime,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.config = config
        self.runtime = runtime
        self.signature: ModelSignature = runtime.signature
        self.stats = VersionStats()
        self.created = int(time.time())
        self._metrics = metrics
        self._labels = (name, version)
        db = config.dynamic_batching
        self.policy = BatchPolicy(
            max_batch_size=self.signature.max_batch_size,
            batching=db is not None,
            max_queue_delay_s=(db.max_queue_delay_ms / 1000.0) if db else 0.0,
            preferred_batch_sizes=tuple(db.preferred_batch_sizes) if db else (),
            max_queue_size=db.max_queue_size if db else 0,
            priority_levels=db.priority_levels if db else 1,
        )
        self._default_timeout_s = (db.default_timeout_ms / 1000.0) if db and db.default_timeout_ms else None
        levels = self.policy.priority_levels
        self._default_priority = (db.default_priority_level if db else 0) or (levels + 1) // 2
        self._executor = ThreadPoolExecutor(config.instances, thread_name_prefix=f"ort-{name}-{version}")
        self._batcher: DynamicBatcher[_Job, _Job] = DynamicBatcher(
            self.policy, self._run_batch, concurrency=config.instances, on_batch=self._on_batch
        )
        metrics.track_queue_depth(name, version, lambda: self._batcher.queue_depth)
        metrics.model_ready.labels(name, version).set(1)

    @property
    def in_flight(self) -> int:
        return self._batcher.in_flight

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, queue, run in a batch and return this request's outputs."""
        rows = validate(request, self.signature)
        start = time.perf_counter_ns()
        timeout_s = request.timeout_us / 1e6 if request.timeout_us else self._default_timeout_s
        deadline = time.monotonic() + timeout_s if timeout_s else None
        priority = request.priority or self._default_priority
        try:
            job = await self._batcher.submit(
                _Job(request, start),
                rows=rows,
                signature=batch_signature(request, self.signature),
                priority=priority,
                deadline=deadline,
            )
        except Exception:
            self.stats.fail.add(time.perf_counter_ns() - start)
            raise
        self.stats.success.add(time.perf_counter_ns() - start)
        names = [o.name for o in request.outputs] if request.outputs is not None else list(job.outputs)
        by_spec = {s.name: s.datatype for s in self.signature.outputs}
        return InferResponse(
            model=self.name,
            version=self.version,
            id=request.id,
            outputs=[Tensor(n, by_spec[n], job.outputs[n]) for n in names],
        )

    async def close(self) -> None:
        """Refuse new requests, wait for queued and running ones, then release the runtime."""
        await self._batcher.close()
        self._executor.shutdown(wait=True)
        self.runtime.unload()
        self._metrics.forget_version(*self._labels)

    def _on_batch(self, requests: int, rows: int) -> None:
        self._metrics.batch_size.labels(*self._labels).observe(rows)

    async def _run_batch(self, jobs: Sequence[_Job]) -> Sequence[_Job]:
        started = time.perf_counter_ns()
        queue_hist = self._metrics.queue_duration.labels(*self._labels)
        for job in jobs:
            waited = started - job.submitted_ns
            self.stats.queue.add(waited)
            queue_hist.observe(waited / 1e9)
        requests = [j.request for j in jobs]
        names = wanted_outputs(requests, [s.name for s in self.signature.outputs])
        loop = asyncio.get_running_loop()
        timings = await loop.run_in_executor(self._executor, self._execute_blocking, jobs, requests, names)
        input_ns, infer_ns, output_ns, rows = timings
        self.stats.record_batch(rows, input_ns, infer_ns, output_ns)
        per_request = len(jobs)
        self.stats.compute_input.add(input_ns * per_request, per_request)
        self.stats.compute_infer.add(infer_ns * per_request, per_request)
        self.stats.compute_output.add(output_ns * per_request, per_request)
        self._metrics.compute_duration.labels(*self._labels).observe((input_ns + infer_ns + output_ns) / 1e9)
        return jobs

    def _execute_blocking(
        self, jobs: Sequence[_Job], requests: list[InferRequest], names: list[str]
    ) -> tuple[int, int, int, int]:
        t0 = time.perf_counter_ns()
        if self.signature.max_batch_size == 0:
            feeds, rows = {t.name: t.data for t in requests[0].inputs}, [1]
        else:
            feeds, rows = gather_inputs(requests)
        t1 = time.perf_counter_ns()
        outputs = self.runtime.execute(feeds, names)
        t2 = time.perf_counter_ns()
        if self.signature.max_batch_size == 0:
            jobs[0].outputs = outputs
        else:
            try:
                parts = scatter_outputs(outputs, rows)
            except ValueError as exc:
                raise ExecutionFailed(str(exc)) from None
            for job, part in zip(jobs, parts, strict=True):
                job.outputs = part
        t3 = time.perf_counter_ns()
        return t1 - t0, t2 - t1, t3 - t2, sum(rows)


def warmup(runtime: Runtime, config: ModelConfig) -> None:
    """Run the configured warm-up batches (blocking; at load, before the version is served)."""
    if config.warmup is None:
        return
    sig = runtime.signature
    sizes = config.warmup.batch_sizes if sig.max_batch_size else [0]
    rng = np.random.default_rng(0)
    for size in sizes:
        feeds: dict[str, Array] = {}
        for spec in sig.inputs:
            arr = empty_like_spec(spec, max(size, 1))
            if size == 0:
                arr = arr[0]
            if config.warmup.data == "random" and arr.dtype.kind == "f":
                arr = rng.standard_normal(arr.shape).astype(arr.dtype)
            feeds[spec.name] = arr
        runtime.execute(feeds, [s.name for s in sig.outputs])
