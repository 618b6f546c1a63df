"""A loaded model version: its runtime, its batcher, its worker threads and its statistics.

Faults: a batch that runs past `execution_timeout_s` (a hung runtime) or runs out of memory fails its
requests and takes the version out of service: queued requests fail with NotReady and the reason, and
`on_fault` tells the model manager, which reports the version unready and applies the model's `on_failure`
policy. Any other runtime error fails only its own batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from inferd.batching.assembly import gather_inputs, scatter_outputs, wanted_outputs
from inferd.batching.batcher import DynamicBatcher
from inferd.batching.queue import BatchPolicy
from inferd.errors import DeadlineExceeded, ExecutionFailed, ExecutionTimeout, NotReady
from inferd.metrics.registry import Metrics
from inferd.qos import Deadline, QoS
from inferd.repository.model_config import ModelConfig
from inferd.repository.statistics import VersionStats
from inferd.runtimes.base import ModelSignature, Runtime, SharesComputeThread
from inferd.tensors import Array, InferRequest, InferResponse, Tensor, empty_like_spec
from inferd.validation import batch_signature, validate

log = logging.getLogger("inferd.repository")

FaultHandler = Callable[["ModelVersion", str], None]
"""Told `(version, reason)` when a version takes itself out of service."""


@dataclass(eq=False)
class _Job:
    request: InferRequest
    submitted_ns: int
    deadline: Deadline | None = None
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
        self.default_timeout_s = (db.default_timeout_ms / 1000.0) if db and db.default_timeout_ms else None
        """Timeout of requests that carry none."""
        self.max_concurrent_requests = config.max_concurrent_requests
        self.on_failure = config.on_failure
        self.max_reloads = config.max_reloads
        self.on_fault: FaultHandler | None = None
        """Set by the model manager: told when this version takes itself out of service."""
        self.fault: str | None = None
        """Why the version is out of service (None while it serves)."""
        self._hung = False
        self._stopped = False
        levels = self.policy.priority_levels
        self._default_priority = (db.default_priority_level if db else 0) or (levels + 1) // 2
        self._executor = ThreadPoolExecutor(config.instances, thread_name_prefix=f"ort-{name}-{version}")
        self._batcher: DynamicBatcher[_Job, _Job] = DynamicBatcher(
            self.policy,
            self._run_batch,
            concurrency=config.instances,
            on_batch=self._on_batch,
            name=name,
            on_expired=self._expired,
        )
        metrics.track_queue_depth(name, version, lambda: self._batcher.queue_depth)
        metrics.model_ready.labels(name, version).set(1)

    @property
    def in_flight(self) -> int:
        return self._batcher.in_flight

    def deadline_of(self, timeout_us: int | None) -> Deadline | None:
        """The deadline of a request with this V2 `timeout` (µs; None or 0: the model's default)."""
        seconds = timeout_us / 1e6 if timeout_us else self.default_timeout_s
        return Deadline.after(seconds) if seconds else None

    def retry_after_s(self, ahead: int | None = None) -> float:
        """Estimated seconds until `ahead` requests (default: all in flight) have drained."""
        return self._batcher.seconds_to_drain(ahead)

    async def infer(self, request: InferRequest, qos: QoS | None = None) -> InferResponse:
        """Validate, queue, run in a batch and return this request's outputs. Without `qos` the request's
        own `timeout` (or the model default) is its deadline, in the interactive tier."""
        rows = validate(request, self.signature)
        start = time.perf_counter_ns()
        deadline = qos.deadline if qos is not None else self.deadline_of(request.timeout_us)
        priority = request.priority or self._default_priority
        try:
            if deadline is not None and deadline.expired():
                raise deadline.exceeded("before queueing", self.name)
            job = await self._batcher.submit(
                _Job(request, start, deadline),
                rows=rows,
                signature=batch_signature(request, self.signature),
                priority=priority,
                deadline=deadline.at if deadline is not None else None,
                tier=1 if qos is not None and qos.tier == "batch" else 0,
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
        """Refuse new requests, wait for queued and running ones, then release the runtime (a version out
        of service is discarded without waiting)."""
        if self.fault is None and not self._stopped:
            await self._batcher.close()
            self._executor.shutdown(wait=True)
            self.runtime.unload()
        else:
            await self.discard()
        self._metrics.forget_version(*self._labels)

    def flush(self) -> None:
        """Run what is queued without waiting for batches to fill (the server is draining)."""
        self._batcher.flush()

    def stop_now(self, message: str) -> None:
        """Fail every queued or running request with NotReady(`message`) and refuse new ones, without
        waiting for running batches (the server's grace period is over)."""
        self._stopped = True
        self._batcher.fail(NotReady(message), running=True)

    async def discard(self) -> None:
        """Release a version out of service: its worker threads are not waited for, and a runtime that
        hangs is left to its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._hung and isinstance(self.runtime, SharesComputeThread):
            self.runtime.abandon_hung_call()  # other models' torch work moves off the stuck thread
        if not self._hung and not self._stopped:
            await asyncio.to_thread(self.runtime.unload)

    def _take_out_of_service(self, reason: str) -> None:
        if self.fault is not None:
            return
        self.fault = reason
        log.error("model %s version %s is out of service: %s", self.name, self.version, reason)
        self._metrics.model_ready.labels(*self._labels).set(0)
        message = f"model {self.name!r} version {self.version} is out of service: {reason}"
        self._batcher.fail(NotReady(message))
        if self.on_fault is not None:
            self.on_fault(self, reason)

    def _expired(self, job: _Job, now: float) -> DeadlineExceeded:
        if job.deadline is None:  # pragma: no cover - only requests with a deadline expire
            return DeadlineExceeded(f"deadline exceeded while queued for model {self.name!r}")
        return job.deadline.exceeded("while queued", self.name, now)

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
        running = loop.run_in_executor(self._executor, self._execute_blocking, jobs, requests, names)
        limit = self.config.execution_timeout_s
        try:
            timings = await (asyncio.wait_for(running, limit) if limit else running)
        except TimeoutError:
            self._hung = True
            reason = f"a batch ran past execution_timeout_s ({limit:g} s)"
            self._take_out_of_service(reason)
            raise ExecutionTimeout(
                f"model {self.name!r} version {self.version}: {reason}; the version is out of service"
            ) from None
        except MemoryError as exc:
            reason = f"the runtime ran out of memory ({exc or 'MemoryError'})"
            self._take_out_of_service(reason)
            raise ExecutionFailed(
                f"model {self.name!r} version {self.version}: {reason}; the version is out of service"
            ) from None
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
