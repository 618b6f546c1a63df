"""The LLM engine behind an event loop: one thread steps the engine, requests stream their outputs back.

    event loop                         engine thread
    generate() ──_Add──► inbox ──────► add_request (between steps) ──► accepted / refused ─┐
    stream ◄── asyncio.Queue ◄── call_soon_threadsafe ◄── step() → detokenize, stop strings ◄┘
    aclose() / disconnect ──_Abort──► inbox ──────► abort_requests (blocks freed before the next step)

Detokenization and stop strings run on the engine thread, so a request that hits a stop string is finished
before the next step schedules it again. Given a `build` function instead of an engine, the thread builds
the engine itself, so every torch operation of the engine (loading included) runs on that one thread: with
OpenMP (torch's CPU threading) each thread that ever ran a parallel region keeps a pool of worker threads, and
once the process holds more pool threads than CPUs every parallel region pays a futex sleep and wake-up
instead of a spin (measured on 2 cores: 31 ms per decode step when the engine steps on the thread that loaded
it, 49 ms when it steps on another). Given a `compute` thread (the server gives every model the same
one), the build and each step run there instead, so the whole process keeps one OpenMP pool
(`compute_thread`); commands, detokenization and stop strings stay on the loop's own thread. A request
whose own step failed (its sampling raised: `RequestUpdate.error`) fails alone with `ExecutionFailed`; a
crash of the loop fails every open stream with `ExecutionFailed` and refuses later requests (`NotReady`),
sets `failure` and calls `on_failure`: never a silent hang.

Admission: `generate` refuses at once (QueueFull, without waiting for the engine thread) when the
scheduler's waiting queue plus the requests on their way to it are at the scheduler's bounds; the engine
thread checks again when it queues the request. A request carries a tenant (fair sharing), a priority tier
and a deadline for its first token (dropped with DeadlineExceeded once it passes without one). Torch-free:
the engine is any `EngineCore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from inferd.engine.compute_thread import ComputeThread
from inferd.engine.outputs import RequestUpdate, SchedulerStats
from inferd.engine.request import FinishReason
from inferd.engine.sampling_params import SamplingParams
from inferd.engine.scheduler import Scheduler
from inferd.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from inferd.errors import DeadlineExceeded, ExecutionFailed, InferdError, NotReady
from inferd.generation import GenerationChunk, TokenLogprob, Usage

log = logging.getLogger("inferd.engine")
_T = TypeVar("_T")


class EngineCore(Protocol):
    """What the loop needs of `LLMEngine` (a seam for tests)."""

    scheduler: Scheduler

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[str]: ...

    def abort_requests(self, request_ids: Sequence[str]) -> None: ...

    def has_unfinished_requests(self) -> bool: ...

    def step(self) -> list[RequestUpdate]: ...

    def stats(self) -> SchedulerStats: ...


class _Done:
    """End of a stream."""


class _Accepted:
    """The engine queued the request."""


_DONE = _Done()
_ACCEPTED = _Accepted()
_Item = GenerationChunk | BaseException | _Done | _Accepted


@dataclass(eq=False)
class _Sample:
    stream: RequestStream
    index: int
    detokenizer: IncrementalDetokenizer


@dataclass(eq=False)
class _Add:
    stream: RequestStream
    prompt_token_ids: Sequence[int]
    params: SamplingParams
    skip_special_tokens: bool
    priority: int
    cache_salt: str | None
    tenant: str
    deadline: float | None


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(eq=False)
class RequestStream:
    """The outputs of one request: iterate for chunks; `aclose` (or leaving the loop early) aborts it."""

    request_id: str
    """The engine's id of the request (unique within the engine)."""
    prompt_token_ids: tuple[int, ...]
    usage: Usage
    model: str
    version: str
    _engine: AsyncLLMEngine
    _loop: asyncio.AbstractEventLoop
    _queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    _finished: bool = False
    _remaining: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None

    def post(self, item: _Item) -> None:
        """From the engine thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def _next(self) -> _Item:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GenerationChunk]:
        try:
            while not self._finished:
                item = await self._queue.get()
                if isinstance(item, _Done):
                    self._finished = True
                elif isinstance(item, BaseException):
                    self._finished = True
                    raise item
                elif isinstance(item, GenerationChunk):
                    if self.first_token_time is None:
                        self.first_token_time = time.monotonic()
                    yield item
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._finished:
            self._finished = True
            self._engine.abort(self.request_id)


class AsyncLLMEngine:
    """Runs an `EngineCore` in a thread of its own and streams outputs to asyncio queues."""

    def __init__(
        self,
        engine: EngineCore | None,
        tokenizer: Tokenizer,
        *,
        build: Callable[[], EngineCore] | None = None,
        name: str = "llm",
        on_step: Callable[[SchedulerStats], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        compute: ComputeThread | None = None,
    ) -> None:
        """Start the loop over `engine`, or over the engine `build` returns when called on the loop's thread
        (then this blocks until it returned, and raises what it raised). With `compute`, `build` and every
        step run on that thread (the process's one torch thread, shared with other models), the rest of the
        loop (commands, detokenization, stop strings) on the loop's own thread."""
        if (engine is None) == (build is None):
            raise ValueError("give either an engine or a build function")
        self._engine = engine
        self._build = build
        self._compute = compute
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self.tokenizer = tokenizer
        self.on_step = on_step
        """Called on the engine thread after every step with the scheduler's statistics."""
        self.on_failure = on_failure
        """Called on the engine thread, with `failure`, when the loop crashed (before its streams fail)."""
        self._cv = threading.Condition()
        self._inbox: list[_Add | _Abort] = []
        self._samples: dict[str, _Sample] = {}
        self._streams: dict[str, RequestStream] = {}
        self._ids = itertools.count()
        self._closed = False
        self._error: BaseException | None = None
        self._stopped: BaseException | None = None
        """Set when the loop ended: what a command posted afterwards fails with."""
        self._pending = (0, 0)
        """Requests and prompt tokens posted but not yet taken by the engine thread."""
        self._step_started: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            self._thread.join()
            raise self._build_error

    @property
    def engine(self) -> EngineCore:
        """The engine the loop steps."""
        if self._engine is None:
            raise NotReady("the engine was not built")
        return self._engine

    @property
    def num_open_streams(self) -> int:
        return len(self._streams)

    @property
    def failure(self) -> str | None:
        """Why the engine loop crashed (every stream failed, new requests refused); None while it serves."""
        if self._error is None:
            return None
        return f"the engine failed: {type(self._error).__name__}: {self._error}"

    @property
    def step_seconds(self) -> float:
        """How long the step in progress has run (0 between steps): a watchdog's view of a hung step."""
        started = self._step_started
        return 0.0 if started is None else max(0.0, time.monotonic() - started)

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str = "",
        model: str = "",
        version: str = "",
        skip_special_tokens: bool = True,
        priority: int = 0,
        cache_salt: str | None = None,
        tenant: str = "",
        deadline: float | None = None,
    ) -> RequestStream:
        """Queue a request; returns its stream once the engine accepted it. `priority` is the service tier
        (`Priority`: 0 interactive, 1 batch; lower first), `tenant` the unit of fair sharing, `deadline` a
        `time.monotonic()` value by which the first token must come, else the request is dropped
        (DeadlineExceeded, on the stream). Raises the engine's refusal (InvalidInput: context length, KV
        cache too small; QueueFull with `retry_after_s`; DeadlineExceeded) or NotReady when the engine is
        stopped or failed."""
        self._check_alive()
        num_requests, num_tokens = params.n, params.n * len(prompt_token_ids)
        pending_requests, pending_tokens = self._pending
        self.engine.scheduler.check_admission(
            num_requests, num_tokens, pending_requests=pending_requests, pending_tokens=pending_tokens
        )
        internal_id = f"{request_id or 'req'}-{next(self._ids)}"
        stream = RequestStream(
            internal_id,
            tuple(prompt_token_ids),
            Usage(len(prompt_token_ids)),
            model,
            version,
            self,
            asyncio.get_running_loop(),
        )
        add = _Add(
            stream, prompt_token_ids, params, skip_special_tokens, priority, cache_salt, tenant, deadline
        )
        self._post(add)
        try:
            first = await stream._next()
        except BaseException:
            self.abort(internal_id)
            raise
        if isinstance(first, BaseException):
            stream._finished = True
            raise first
        return stream

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe); its blocks are freed before the engine's next step."""
        self._post(_Abort(request_id))

    def close(self) -> None:
        """Stop the loop; open streams fail with NotReady (blocking: joins the thread)."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(30)

    def _check_alive(self) -> None:
        if self._error is not None:
            raise NotReady(f"the engine stopped after an error: {type(self._error).__name__}: {self._error}")
        if self._closed:
            raise NotReady("the engine is shut down")

    def _post(self, command: _Add | _Abort) -> None:
        with self._cv:
            if self._stopped is not None:  # the loop is gone: nobody would answer
                if isinstance(command, _Add):
                    command.stream.post(self._stopped)
                return
            self._inbox.append(command)
            if isinstance(command, _Add):
                requests, tokens = self._pending
                self._pending = (
                    requests + command.params.n,
                    tokens + command.params.n * len(command.prompt_token_ids),
                )
            self._cv.notify()

    # ---- the engine thread

    def _run(self) -> None:
        if self._build is not None:
            try:
                self._engine = self._on_compute(self._build)
            except BaseException as exc:
                self._build_error = exc
                return
            finally:
                self._built.set()
        else:
            self._built.set()
        try:
            while True:
                with self._cv:
                    while not self._inbox and not self._closed and not self.engine.has_unfinished_requests():
                        self._cv.wait()
                    if self._closed:
                        break
                    inbox, self._inbox = self._inbox, []
                    self._pending = (0, 0)
                for command in inbox:
                    self._apply(command)
                if self.engine.has_unfinished_requests():
                    updates = self._on_compute(self._timed_step)
                    self._step_started = None
                    self._process(updates)
                    self._fail_expired()
                if self.on_step is not None:
                    self.on_step(self.engine.stats())
        except BaseException as exc:
            log.exception("the engine loop crashed")
            self._error = exc
            failure: BaseException = ExecutionFailed(f"the engine failed: {type(exc).__name__}: {exc}")
        else:
            failure = NotReady("the engine is shut down")
        self._step_started = None
        reason = self.failure
        with self._cv:
            pending, self._inbox = self._inbox, []
            self._stopped = failure if reason is None else NotReady(reason)
        if reason is not None and self.on_failure is not None:  # before any client hears of it
            try:
                self.on_failure(reason)
            except Exception:
                log.exception("on_failure raised")
        for command in pending:
            if isinstance(command, _Add):
                command.stream.post(failure)
        for stream in self._streams.values():
            stream.post(failure)
        self._streams.clear()
        self._samples.clear()

    def _timed_step(self) -> list[RequestUpdate]:
        # Timed from where it runs: a step queued behind another model's on the compute thread is not hung.
        self._step_started = time.monotonic()
        return self.engine.step()

    def _on_compute(self, fn: Callable[[], _T]) -> _T:
        return fn() if self._compute is None else self._compute.call(fn, owner=self)

    def abandon_step(self) -> None:
        """The step in progress hung: the compute thread's other work (other models) moves to a fresh
        thread, this engine's thread stays with its step."""
        if self._compute is not None:
            self._compute.abandon(self)

    def _apply(self, command: _Add | _Abort) -> None:
        if isinstance(command, _Abort):
            stream = self._streams.pop(command.request_id, None)
            if stream is not None:
                self.engine.abort_requests([command.request_id])
                for sample_id in [k for k, v in self._samples.items() if v.stream is stream]:
                    del self._samples[sample_id]
            return
        stream = command.stream
        try:
            with self.engine.scheduler.tagging(tenant=command.tenant, deadline=command.deadline):
                sample_ids = self.engine.add_request(
                    stream.request_id,
                    command.prompt_token_ids,
                    command.params,
                    priority=command.priority,
                    cache_salt=command.cache_salt,
                )
        except Exception as exc:
            stream.post(exc)
            return
        for index, sample_id in enumerate(sample_ids):
            detok = IncrementalDetokenizer(
                self.tokenizer, command.params.stop, skip_special_tokens=command.skip_special_tokens
            )
            self._samples[sample_id] = _Sample(stream, index, detok)
        stream._remaining = len(sample_ids)
        self._streams[stream.request_id] = stream
        stream.post(_ACCEPTED)

    def _process(self, updates: list[RequestUpdate]) -> None:
        posts: list[tuple[RequestStream, _Item]] = []
        try:
            self._collect(updates, posts)
        finally:
            _post_all(posts)

    def _collect(self, updates: list[RequestUpdate], posts: list[tuple[RequestStream, _Item]]) -> None:
        for update in updates:
            sample = self._samples.get(update.request_id)
            if sample is None:
                continue
            if update.error is not None:
                self._fail_stream(sample.stream, ExecutionFailed(update.error), posts)
                continue
            delta = sample.detokenizer.add(update.new_token_ids)
            finish, stop_reason = update.finish_reason, update.stop_reason
            text = delta.text
            if delta.stop is not None:
                if finish is None:
                    self.engine.scheduler.finish_requests([update.request_id], FinishReason.STOP, delta.stop)
                finish, stop_reason = FinishReason.STOP, delta.stop
            elif finish is not None:
                text += sample.detokenizer.flush().text
            stream = sample.stream
            stream.usage.completion_tokens += len(update.new_token_ids)
            stream.usage.cached_tokens = max(stream.usage.cached_tokens, update.num_cached_tokens)
            chunk = GenerationChunk(
                sample.index,
                text,
                update.new_token_ids,
                self._logprobs(update),
                None if finish is None else finish.value,
                stop_reason,
            )
            posts.append((stream, chunk))
            if finish is not None:
                del self._samples[update.request_id]
                stream._remaining -= 1
                if stream._remaining == 0:
                    self._streams.pop(stream.request_id, None)
                    posts.append((stream, _DONE))

    def _fail_expired(self) -> None:
        """Fail the streams of requests the scheduler dropped at their deadline."""
        error = DeadlineExceeded("the request's deadline passed before its first token (LLM engine)")
        posts: list[tuple[RequestStream, _Item]] = []
        for sample_id in self.engine.scheduler.take_expired():
            sample = self._samples.get(sample_id)
            if sample is not None:
                self._fail_stream(sample.stream, error, posts)
        _post_all(posts)

    def _fail_stream(
        self, stream: RequestStream, error: InferdError, posts: list[tuple[RequestStream, _Item]]
    ) -> None:
        """End a request with `error`: all its samples are aborted (a request fails as a whole)."""
        for sample_id in [k for k, v in self._samples.items() if v.stream is stream]:
            del self._samples[sample_id]
        if self._streams.pop(stream.request_id, None) is None:
            return  # another sample of the same request already failed it
        self.engine.abort_requests([stream.request_id])
        posts.append((stream, error))

    def _logprobs(self, update: RequestUpdate) -> tuple[TokenLogprob, ...]:
        if not update.logprobs:
            return ()
        text = self.tokenizer.token_text
        return tuple(
            TokenLogprob(
                text(token),
                token,
                lp.logprob,
                tuple((text(t), v) for t, v in zip(lp.top_token_ids, lp.top_logprobs, strict=True)),
            )
            for token, lp in zip(update.new_token_ids, update.logprobs, strict=True)
        )


def _post_all(posts: list[tuple[RequestStream, _Item]]) -> None:
    """Hand a step's outputs to their streams' event loops with one wake-up per loop, not one per output:
    every `call_soon_threadsafe` writes to the loop's wake-up pipe, a system call that also hands the GIL
    over (with 32 requests streaming, 32 per step). Order per stream is kept."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, _Item]]] = {}
    for stream, item in posts:
        by_loop.setdefault(stream._loop, []).append((stream, item))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[RequestStream, _Item]]) -> None:
    for stream, item in items:
        stream._queue.put_nowait(item)
