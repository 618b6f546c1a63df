"""The protocol-neutral generation request and its streamed outputs (the LLM counterpart of `tensors.py`).

Transports build a `GenerateRequest`; the dataplane returns a `GenerationStream`: an async iterator of
`GenerationChunk`s (text deltas per choice), closed early to abort the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferd.engine.sampling_params import SamplingParams
from inferd.qos import Deadline, Tier


@dataclass(frozen=True)
class GenerateRequest:
    """One prompt (text, token ids, or chat messages) and how to sample from it."""

    model: str
    sampling: SamplingParams
    prompt: str | Sequence[int] | None = None
    """Completion prompt: text, or token ids used as is."""
    messages: Sequence[Mapping[str, Any]] | None = None
    """Chat messages, rendered through the model's chat template."""
    add_generation_prompt: bool = True
    """Chat only: end the rendered prompt with the assistant's turn header."""
    version: str | None = None
    request_id: str = ""
    skip_special_tokens: bool = True
    priority: Tier = "interactive"
    """The tier (`x-inferd-priority` or the key's default): interactive requests are scheduled first and
    preempted last."""
    deadline: Deadline | None = None
    """When the client stops waiting (`x-inferd-timeout-ms` or the model's `default_timeout_ms`); `at` is on
    the `time.monotonic()` clock. A request without its first token by then is aborted."""
    tenant: str = ""
    """Who pays for the request (the key's tenant): the LLM scheduler shares capacity fairly between
    tenants."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log-probability and its most likely alternatives."""

    token: str
    token_id: int
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """New output of one choice."""

    index: int
    """Which of the `n` choices."""
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    """`stop`, `length` or `abort` on the choice's last chunk."""
    stop_reason: int | str | None = None
    """The stop token id or stop string that ended the choice."""


@dataclass
class Usage:
    """Token counts of one request, complete once the stream is exhausted."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class GenerationStream(Protocol):
    """The outputs of one accepted request."""

    request_id: str
    model: str
    version: str
    prompt_token_ids: tuple[int, ...]
    usage: Usage

    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...

    async def aclose(self) -> None:
        """Stop early: the request is aborted and its KV blocks freed."""


@dataclass
class ChoiceResult:
    """A whole choice, gathered from its chunks (non-streaming responses)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None


async def collect(stream: GenerationStream, n: int) -> list[ChoiceResult]:
    """Drain `stream` into its `n` choices."""
    choices = [ChoiceResult(i) for i in range(n)]
    async for chunk in stream:
        choice = choices[chunk.index]
        choice.text += chunk.text
        choice.token_ids.extend(chunk.token_ids)
        choice.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
            choice.stop_reason = chunk.stop_reason
    return choices
