"""A loaded LLM model version: tokenizer, chat template and the engine loop, ready to generate.

Deadlines: a request whose deadline passed is refused before it is queued, and one still waiting for its
first token when the deadline passes is aborted (the engine frees it) and fails naming that stage. A crash of
the engine loop fails the waiting requests (the engine's `ExecutionFailed`) and takes the version out of
service: `on_fault` tells the model manager, which reports it unready with the reason. So does a hang: with
`execution_timeout_s`, a watchdog fails the open requests of an engine whose step runs past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

from inferd.batching.drain_rate import DrainRate
from inferd.engine.async_engine import AsyncLLMEngine, RequestStream
from inferd.engine.chat_template import ChatTemplate
from inferd.engine.outputs import SchedulerStats
from inferd.engine.tokenizer import Tokenizer
from inferd.errors import ExecutionFailed, ExecutionTimeout, InvalidInput, NotReady
from inferd.generation import GenerateRequest, GenerationChunk, GenerationStream
from inferd.metrics.registry import Metrics
from inferd.qos import Deadline

log = logging.getLogger("inferd.repository")

ENGINE_PRIORITY = {"interactive": 0, "batch": 1}
"""The engine's priority of each tier (lower is served first and preempted last)."""


class LLMVersion:
    """One version of an LLM model, served through the OpenAI API."""

    def __init__(
        self,
        name: str,
        version: str,
        sha256: str,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate | None,
        max_model_len: int,
        metrics: Metrics,
        *,
        default_timeout_s: float | None = None,
        max_concurrent_requests: int = 0,
        execution_timeout_s: float = 0.0,
        on_failure: str = "reload",
        max_reloads: int = 3,
    ) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_model_len = max_model_len
        self.created = int(time.time())
        self._metrics = metrics
        self._labels = (name, version)
        self._engine: AsyncLLMEngine | None = None
        self._last = SchedulerStats(0, 0, 0.0, 0, 0, 0)
        self.default_timeout_s = default_timeout_s
        """Timeout (to the first token) of requests that carry none."""
        self.max_concurrent_requests = max_concurrent_requests
        self.on_failure = on_failure
        self.max_reloads = max_reloads
        self.on_fault: Callable[[LLMVersion, str], None] | None = None
        """Set by the model manager: told when this version takes itself out of service."""
        self.fault: str | None = None
        """Why the version is out of service (None while it serves)."""
        self.drain_rate = DrainRate()
        """Requests completed per second, for Retry-After."""
        self.execution_timeout_s = execution_timeout_s
        self._open: set[RequestStream] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._hung = False
        metrics.model_ready.labels(name, version).set(1)

    def attach(self, engine: AsyncLLMEngine) -> None:
        self._engine = engine

    @property
    def engine(self) -> AsyncLLMEngine:
        if self._engine is None:
            raise NotReady(f"model {self.name!r} has no engine")
        return self._engine

    def prompt_token_ids(self, request: GenerateRequest) -> list[int]:
        """Tokenize the request's prompt (text, ids, or messages through the chat template)."""
        if request.messages is not None:
            if self.chat_template is None:
                raise InvalidInput(f"model {self.name!r} has no chat template; use /v1/completions")
            text = self.chat_template.render(
                request.messages, add_generation_prompt=request.add_generation_prompt
            )
            # The template writes the special tokens itself (BOS included).
            return self.tokenizer.encode(text, add_special_tokens=False)
        if isinstance(request.prompt, str):
            return self.tokenizer.encode(request.prompt)
        if request.prompt is None:
            raise InvalidInput("the request has neither a prompt nor messages")
        return list(request.prompt)

    async def generate(self, request: GenerateRequest) -> GenerationStream:
        """Tokenize and queue the request; returns its stream once the engine accepted it."""
        if self.fault is not None:
            raise NotReady(f"model {self.name!r} version {self.version} is out of service: {self.fault}")
        deadline = request.deadline
        if deadline is not None and deadline.expired():
            raise deadline.exceeded("before queueing", self.name)
        ids = self.prompt_token_ids(request)
        start = time.monotonic()
        try:
            stream = await self.engine.generate(
                ids,
                request.sampling,
                request_id=request.request_id,
                model=self.name,
                version=self.version,
                skip_special_tokens=request.skip_special_tokens,
                priority=ENGINE_PRIORITY[request.priority],
                tenant=request.tenant,
                # Tenants never share prefix-cache blocks: a cache hit's speed would leak another
                # tenant's prompts.
                cache_salt=request.tenant or None,
                deadline=deadline.at if deadline is not None else None,
            )
        except NotReady:
            self.check_engine()
            raise
        self._metrics.request_queue_time.labels(*self._labels).observe(time.monotonic() - start)
        self._open.add(stream)
        return _MeteredStream(stream, self, deadline)

    def retry_after_s(self, ahead: int) -> float:
        """Estimated seconds until `ahead` requests have completed."""
        return self.drain_rate.seconds_to_drain(ahead)

    def failure(self) -> str | None:
        """Why the engine loop stopped, if it crashed."""
        return self._engine.failure if self._engine is not None else None

    def watch_engine(self) -> None:
        """Report a crash of the engine loop as soon as it happens (call on the event loop)."""
        loop = asyncio.get_running_loop()

        def crashed(reason: str) -> None:  # on the engine thread
            with contextlib.suppress(RuntimeError):  # the event loop is closed: the server is gone
                loop.call_soon_threadsafe(self.report_fault, reason)

        self.engine.on_failure = crashed
        if self.execution_timeout_s > 0:
            self._watchdog = loop.create_task(self._watch_steps(self.execution_timeout_s))

    async def _watch_steps(self, limit: float) -> None:
        """Take the version out of service when an engine step runs past `limit` seconds (a hung device or
        kernel): its open requests fail now instead of waiting for ever."""
        period = min(max(limit / 4, 0.01), 1.0)
        while self.fault is None:
            await asyncio.sleep(period)
            engine = self._engine
            if engine is None or engine.step_seconds <= limit:
                continue
            self._hung = True
            reason = f"an engine step ran past execution_timeout_s ({limit:g} s)"
            error = ExecutionTimeout(
                f"model {self.name!r} version {self.version}: {reason}; the version is out of service"
            )
            for stream in list(self._open):
                stream.post(error)
            self.report_fault(reason)

    def check_engine(self) -> None:
        """Report the version out of service if its engine loop crashed."""
        reason = self.failure()
        if reason is not None:
            self.report_fault(reason)

    def report_fault(self, reason: str) -> None:
        if self.fault is not None:
            return
        self.fault = reason
        log.error("model %s version %s is out of service: %s", self.name, self.version, reason)
        self._metrics.model_ready.labels(*self._labels).set(0)
        if self.on_fault is not None:
            self.on_fault(self, reason)

    async def discard(self) -> None:
        """Release a version out of service (a hung engine thread is not waited for)."""
        if self._hung and self._engine is not None:
            self._stop_watchdog()
            self._engine.abandon_step()  # the other models' torch work moves off the stuck thread
            threading.Thread(target=self._engine.close, name=f"close-{self.name}", daemon=True).start()
            self._metrics.forget_version(*self._labels)
            return
        await self.close()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def on_step(self, stats: SchedulerStats) -> None:
        """After each engine step (engine thread): gauges and cumulative counters."""
        m, labels, last = self._metrics, self._labels, self._last
        m.num_requests_running.labels(*labels).set(stats.num_running)
        m.num_requests_waiting.labels(*labels).set(stats.num_waiting)
        m.kv_cache_usage.labels(*labels).set(stats.kv_cache_usage)
        for counter, new, old in (
            (m.prefix_cache_queries, stats.prefix_cache_queries, last.prefix_cache_queries),
            (m.prefix_cache_hits, stats.prefix_cache_hits, last.prefix_cache_hits),
            (m.preemptions, stats.num_preemptions, last.num_preemptions),
        ):
            if new > old:
                counter.labels(*labels).inc(new - old)
        self._last = stats

    async def close(self) -> None:
        self._stop_watchdog()
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
        self._metrics.forget_version(*self._labels)


class _MeteredStream:
    """A request stream that records the latency metrics as it is consumed, enforces the deadline until the
    first token, and reports a crashed engine."""

    def __init__(self, inner: RequestStream, version: LLMVersion, deadline: Deadline | None) -> None:
        self._inner = inner
        self._version = version
        self._metrics = version._metrics
        self._labels = version._labels
        self._deadline = deadline
        self.request_id = inner.request_id
        self.model = inner.model
        self.version = inner.version
        self.prompt_token_ids = inner.prompt_token_ids
        self.usage = inner.usage

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._iterate()

    async def _first(self, chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk | None:
        """The first chunk, within the deadline (the request is aborted when it passes)."""
        deadline = self._deadline
        try:
            if deadline is None:
                return await anext(chunks)
            try:
                async with asyncio.timeout(max(deadline.remaining(), 0.0)):
                    return await anext(chunks)
            except TimeoutError:
                raise deadline.exceeded("waiting for the first token", self.model) from None
        except StopAsyncIteration:
            return None

    async def _iterate(self) -> AsyncIterator[GenerationChunk]:
        m, labels = self._metrics, self._labels
        arrival = self._inner.arrival_time
        chunks = self._inner.__aiter__()
        try:
            first = await self._first(chunks)
            if first is None:
                return
            now = time.monotonic()
            m.time_to_first_token.labels(*labels).observe(now - arrival)
            last = now
            m.generation_tokens.labels(*labels).inc(len(first.token_ids))
            yield first
            async for chunk in chunks:
                now = time.monotonic()
                m.inter_token_latency.labels(*labels).observe(now - last)
                last = now
                m.generation_tokens.labels(*labels).inc(len(chunk.token_ids))
                yield chunk
        except ExecutionFailed:
            self._version.check_engine()
            raise
        finally:
            self._version._open.discard(self._inner)
        elapsed = time.monotonic() - arrival
        m.e2e_request_latency.labels(*labels).observe(elapsed)
        m.prompt_tokens.labels(*labels).inc(len(self.prompt_token_ids))
        engine = self._version._engine
        self._version.drain_rate.record(elapsed / ((engine.num_open_streams if engine else 0) + 1), 1)

    async def aclose(self) -> None:
        self._version._open.discard(self._inner)
        await self._inner.aclose()
