"""One request as the engine sees it: token ids, and `num_computed_tokens` catching up to their count.

Prefill, chunked prefill, prefix-cache hits, decode and recompute after preemption are one code path: each
step the scheduler lets a request compute some of its `num_tokens - num_computed_tokens` missing tokens, and
when it has computed all of them the runner samples one more.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field

from inferd.engine.block_hash import BlockHash
from inferd.engine.sampling_params import SamplingParams
from inferd.errors import InvalidInput


class FinishReason(enum.StrEnum):
    """Why a request ended, in the OpenAI API's words."""

    STOP = "stop"
    """EOS, a stop token or a stop string."""
    LENGTH = "length"
    """`max_tokens` generated or `max_model_len` reached."""
    ABORT = "abort"
    """Cancelled by the caller (client went away, error elsewhere)."""


class Priority(enum.IntEnum):
    """The two service tiers of the engine's `priority` (any int works: lower is served first)."""

    INTERACTIVE = 0
    """A person waits for the answer: admitted first, preempted last (the default)."""
    BATCH = 1
    """Throughput work: admitted when no interactive request waits, preempted first."""


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    """Queued; holds no KV blocks."""
    RUNNING = enum.auto()
    """Holds KV blocks and is scheduled each step while budget allows."""
    PREEMPTED = enum.auto()
    """Was running, lost its blocks, waits again and will recompute its tokens."""
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)

    @staticmethod
    def finished(reason: FinishReason) -> RequestStatus:
        return _FINISHED_STATUS[reason]


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH_CAPPED: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
}
_FINISHED_STATUS = {reason: status for status, reason in _FINISH_REASONS.items()}


@dataclass(eq=False)
class EngineRequest:
    """A request inside the engine. The scheduler owns its mutable state; others only read it."""

    request_id: str
    """Unique among unfinished requests of one engine."""
    prompt_token_ids: tuple[int, ...]
    """The tokenized prompt (non-empty)."""
    sampling_params: SamplingParams
    """How to sample; the scheduler reads only the token-based stop conditions."""
    eos_token_id: int | None = None
    """The model's end-of-sequence token; None when the model has none."""
    arrival_time: float = field(default_factory=time.monotonic)
    """When the request reached the engine (same clock as the scheduler's)."""
    priority: int = Priority.INTERACTIVE
    """Service tier: lower is admitted first and preempted last (see `Priority`)."""
    cache_salt: str | None = None
    """Isolates prefix caching: blocks are shared only between requests with equal salts."""
    tenant: str = ""
    """Who the request is served for: the unit of fair sharing between tenants."""
    deadline: float | None = None
    """When the client stops waiting for the first token (same clock as `arrival_time`): a request that has
    produced no token by then is dropped; one that has keeps running."""
    parent_id: str | None = None
    """For one of the `n` samples of a request: the id of that request."""
    sample_index: int = 0
    """For one of the `n` samples of a request: which one (0..n-1), the OpenAI `choices[].index`."""

    output_token_ids: list[int] = field(default_factory=list, init=False)
    """Tokens generated so far."""
    all_token_ids: list[int] = field(default_factory=list, init=False)
    """Prompt then output tokens."""
    num_computed_tokens: int = field(default=0, init=False)
    """Leading tokens whose KV is in the cache (or is being computed by the step just scheduled)."""
    num_cached_tokens: int = field(default=-1, init=False)
    """Prompt tokens whose KV came from the prefix cache (or a sibling sample) when first scheduled, the
    OpenAI `usage.prompt_tokens_details.cached_tokens`; -1 until then."""
    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    stop_reason: int | str | None = field(default=None, init=False)
    """The stop token id or stop string that finished the request, if one did."""
    block_hashes: list[BlockHash] = field(default_factory=list, init=False)
    """Chained hashes of this request's full blocks, filled lazily by the KV cache manager."""
    num_preemptions: int = field(default=0, init=False)
    admission_index: int = field(default=-1, init=False)
    """Order of admission, stamped by the scheduler; the final tie-break of scheduling order."""
    first_scheduled_time: float | None = field(default=None, init=False)
    """When the request was first scheduled (queue-time metric)."""
    num_charged_tokens: int = field(default=0, init=False)
    """Leading tokens already charged to the tenant's fair-share counter (recompute is not charged)."""

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise InvalidInput("the prompt must contain at least one token")
        if min(self.prompt_token_ids) < 0:
            raise InvalidInput("token ids must be >= 0")
        self.prompt_token_ids = tuple(self.prompt_token_ids)
        self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens."""
        return len(self.all_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def reset_for_recompute(self) -> None:
        """Forget computed KV (after preemption); output tokens stay and will be recomputed as input."""
        self.num_computed_tokens = 0
        self.status = RequestStatus.PREEMPTED
        self.num_preemptions += 1


def split_samples(request: EngineRequest) -> list[EngineRequest]:
    """The requests that run `request`: itself when `n == 1`, else `n` children with `n = 1`, ids
    `"{request_id}#{i}"`, and seeds `seed + i` (distinct yet reproducible)."""
    n = request.sampling_params.n
    if n == 1:
        return [request]
    children: list[EngineRequest] = []
    for i in range(n):
        seed = request.sampling_params.seed
        params = dataclasses.replace(request.sampling_params, n=1, seed=None if seed is None else seed + i)
        children.append(
            EngineRequest(
                f"{request.request_id}#{i}",
                request.prompt_token_ids,
                params,
                eos_token_id=request.eos_token_id,
                arrival_time=request.arrival_time,
                priority=request.priority,
                cache_salt=request.cache_salt,
                tenant=request.tenant,
                deadline=request.deadline,
                parent_id=request.request_id,
                sample_index=i,
            )
        )
    return children
