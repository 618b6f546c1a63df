"""The typed values crossing the engine's boundaries each step.

scheduler ──SchedulerOutput──► runner ──RunnerOutput──► scheduler ──[RequestUpdate]──► engine loop

Runner contract: it keeps per-request state (block table, sampling state) keyed by request id. A request in
`new_requests` starts fresh (first schedule, or resumed after preemption: drop any state it had); one in
`cached_requests` appends `new_block_ids` to its table. Each scheduled request's `token_ids` are its inputs
at positions `num_computed_tokens ..`; their KV goes into the block table at those positions. When `sample`
is set, the step reaches the request's last token and the runner samples exactly one token for it from the
last position. Requests in `preempted_request_ids` or `finished_request_ids` are dropped (unknown ids are
ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from inferd.engine.request import FinishReason
from inferd.engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class NewRequestData:
    """A request the runner holds no state for: everything needed to start it."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    """Tokens generated before a preemption (empty on first schedule); they count for penalties."""
    sampling_params: SamplingParams
    block_ids: tuple[int, ...]
    """The whole block table."""
    num_computed_tokens: int
    """Leading positions whose KV is already in `block_ids` (prefix-cache hit or shared prompt)."""
    token_ids: tuple[int, ...]
    """Inputs of this step."""
    sample: bool
    """Sample one token after this step (False for a prefill chunk that does not reach the end)."""


@dataclass(frozen=True, slots=True)
class CachedRequestData:
    """A request the runner already knows, continuing."""

    request_id: str
    new_block_ids: tuple[int, ...]
    """Blocks appended to its table this step."""
    num_computed_tokens: int
    token_ids: tuple[int, ...]
    """Inputs of this step: the last sampled token when decoding, the next chunk when prefilling."""
    sample: bool


ScheduledRequest = NewRequestData | CachedRequestData
"""Either kind; both carry `request_id`, `num_computed_tokens`, `token_ids` and `sample`."""


@dataclass(frozen=True)
class SchedulerOutput:
    """What to compute in one step."""

    step: int
    new_requests: tuple[NewRequestData, ...]
    cached_requests: tuple[CachedRequestData, ...]
    num_scheduled_tokens: Mapping[str, int]
    """Tokens computed this step per request id (`len(token_ids)`)."""
    total_num_scheduled_tokens: int
    preempted_request_ids: frozenset[str] = frozenset()
    """Preempted this step: their blocks were freed, the runner drops their state."""
    finished_request_ids: frozenset[str] = frozenset()
    """Finished or aborted since the previous step."""

    @property
    def scheduled(self) -> tuple[ScheduledRequest, ...]:
        """New then continuing requests, in one sequence."""
        return (*self.new_requests, *self.cached_requests)

    @property
    def is_empty(self) -> bool:
        """Nothing to compute (the runner may skip the step)."""
        return self.total_num_scheduled_tokens == 0


@dataclass(frozen=True, slots=True)
class SampleLogprobs:
    """Log-probabilities at one sampled position."""

    logprob: float
    """Of the sampled token."""
    top_token_ids: tuple[int, ...] = ()
    """The `top_logprobs` most likely tokens, most likely first."""
    top_logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class RunnerOutput:
    """What one step produced."""

    sampled_token_ids: Mapping[str, int]
    """One token per request scheduled with `sample` set; other entries are ignored."""
    logprobs: Mapping[str, SampleLogprobs] = field(default_factory=dict)
    """For requests whose sampling params ask for logprobs."""
    failed: Mapping[str, str] = field(default_factory=dict)
    """Requests whose sampling raised (their parameters made it fail), with the error; they get no token
    and the scheduler finishes them, while the rest of the step stands."""


@dataclass(frozen=True, slots=True)
class RequestUpdate:
    """What one step did for one request, for the engine loop to stream out."""

    request_id: str
    new_token_ids: tuple[int, ...]
    logprobs: tuple[SampleLogprobs, ...] = ()
    finish_reason: FinishReason | None = None
    """Set on the request's last update."""
    stop_reason: int | str | None = None
    """The stop token id that finished it, if one did."""
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache or a sibling sample (usage.cached_tokens)."""
    error: str | None = None
    """Set when the request failed in this step (see `RunnerOutput.failed`); it is finished (abort)."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot for metrics."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    """Tokens looked up in the prefix cache (cumulative)."""
    prefix_cache_hits: int
    """Tokens found there (cumulative)."""
    num_preemptions: int
    """Preemptions so far (cumulative)."""
    num_waiting_tokens: int = 0
    """Tokens the waiting requests have to compute."""
    step: int = 0
    """Steps scheduled so far."""
