"""A loaded LLM model version: tokenizer, chat template and the engine loop, ready to generate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from inferd.engine.async_engine import AsyncLLMEngine, RequestStream
from inferd.engine.chat_template import ChatTemplate
from inferd.engine.outputs import SchedulerStats
from inferd.engine.tokenizer import Tokenizer
from inferd.errors import InvalidInput, NotReady
from inferd.generation import GenerateRequest, GenerationChunk, GenerationStream
from inferd.metrics.registry import Metrics


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
        ids = self.prompt_token_ids(request)
        start = time.monotonic()
        stream = await self.engine.generate(
            ids,
            request.sampling,
            request_id=request.request_id,
            model=self.name,
            version=self.version,
            skip_special_tokens=request.skip_special_tokens,
        )
        self._metrics.request_queue_time.labels(*self._labels).observe(time.monotonic() - start)
        return _MeteredStream(stream, self._metrics, self._labels)

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
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
        self._metrics.forget_version(*self._labels)


class _MeteredStream:
    """A request stream that records the latency metrics as it is consumed."""

    def __init__(self, inner: RequestStream, metrics: Metrics, labels: tuple[str, str]) -> None:
        self._inner = inner
        self._metrics = metrics
        self._labels = labels
        self.request_id = inner.request_id
        self.model = inner.model
        self.version = inner.version
        self.prompt_token_ids = inner.prompt_token_ids
        self.usage = inner.usage

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GenerationChunk]:
        m, labels = self._metrics, self._labels
        arrival = self._inner.arrival_time
        last: float | None = None
        async for chunk in self._inner:
            now = time.monotonic()
            if last is None:
                m.time_to_first_token.labels(*labels).observe(now - arrival)
            else:
                m.inter_token_latency.labels(*labels).observe(now - last)
            last = now
            m.generation_tokens.labels(*labels).inc(len(chunk.token_ids))
            yield chunk
        m.e2e_request_latency.labels(*labels).observe(time.monotonic() - arrival)
        m.prompt_tokens.labels(*labels).inc(len(self.prompt_token_ids))

    async def aclose(self) -> None:
        await self._inner.aclose()
