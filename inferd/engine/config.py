"""Configuration of the LLM engine: one dataclass per component, every field documented.

Parsing files and environment happens at the edge (`inferd/configfile.py`); these only validate values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from inferd.engine.errors import InsufficientKVCache


@dataclass(frozen=True)
class FairnessConfig:
    """Token-based fair sharing between tenants (virtual token counters, see `inferd/engine/fairness.py`)."""

    prefill_token_cost: float = 1.0
    """Service charged to a tenant for one computed prompt token."""
    decode_token_cost: float = 2.0
    """Service charged to a tenant for one generated token (a decode step costs more per token)."""
    tenant_weights: Mapping[str, float] = field(default_factory=dict, hash=False)
    """Relative share of named tenants under contention: a tenant of weight 2 gets twice the service of one
    of weight 1 (`default_weight` for the others)."""
    default_weight: float = 1.0
    """Weight of tenants not in `tenant_weights`."""

    def __post_init__(self) -> None:
        if self.prefill_token_cost < 0 or self.decode_token_cost < 0:
            raise ValueError("token costs must be >= 0")
        weights = [self.default_weight, *self.tenant_weights.values()]
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError("tenant weights must be finite and > 0")


@dataclass(frozen=True)
class SchedulerConfig:
    """How the continuous-batching scheduler fills each step."""

    max_model_len: int = 2048
    """Longest sequence (prompt + output) in tokens; at most the model's context length."""
    max_num_seqs: int = 128
    """Most requests running at once (each holds KV blocks and a row of every decode step)."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step, prefill and decode tokens together; long prompts are prefilled in chunks."""
    long_prefill_token_threshold: int = 0
    """Most prompt tokens one request may prefill in one step (0 = no per-request cap)."""
    max_prefill_share: float = 1.0
    """Share of `max_num_batched_tokens` that prefill tokens (requests with more than one token to compute)
    may take in one step while other requests decode or wait, so long prompts cannot crowd out decodes and
    short prompts (1 = no cap). A prompt alone takes the whole budget."""
    max_waiting_requests: int | None = None
    """Most requests waiting (queued, or preempted) before new ones are refused with QueueFull (None: no
    bound). Each of the `n` samples of a request counts."""
    max_waiting_tokens: int | None = None
    """Most tokens the waiting requests may have to compute before new requests are refused with QueueFull
    (None: no bound). A request that finds the queue empty is always queued."""
    max_queue_wait_ms: float | None = None
    """Longest time a new request is expected to wait before it is scheduled: the requests and tokens ahead
    of it over the rate the waiting queue drains (measured while it is not empty). Beyond it new requests are
    refused with QueueFull (None: no bound). Admitted latency is then at most about this wait plus the
    service time at a full batch; until the queue first drained only the count bounds apply."""
    preempt_for_waiting: bool = True
    """A waiting request that finds no free slot or blocks may preempt a running request of a less important
    tier, or of a same-tier tenant that runs more requests (by weight) than the waiting one's tenant and has
    received at least as much service: interactive work and starved tenants start within a step."""
    start_alone: bool = True
    """A waiting request whose tenant runs nothing, and which fair order puts before every running request
    (a tenant that was not served while another floods), starts in a step of its own, up to the prefill
    share of the budget: the running requests skip that step (never two in a row), so its time to first
    token is a light step instead of one carrying the other tenants' full batch."""
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    """How service is shared between tenants."""

    def __post_init__(self) -> None:
        if self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (every running request decodes)")
        if self.long_prefill_token_threshold < 0:
            raise ValueError("long_prefill_token_threshold must be >= 0")
        if not 0.0 < self.max_prefill_share <= 1.0:
            raise ValueError("max_prefill_share must be in (0, 1]")
        if self.max_waiting_requests is not None and self.max_waiting_requests < 0:
            raise ValueError("max_waiting_requests must be >= 0")
        if self.max_waiting_tokens is not None and self.max_waiting_tokens < 0:
            raise ValueError("max_waiting_tokens must be >= 0")
        wait = self.max_queue_wait_ms
        if wait is not None and not (math.isfinite(wait) and wait > 0):
            raise ValueError("max_queue_wait_ms must be a finite number > 0 (null: no bound)")

    @property
    def prefill_token_budget(self) -> int:
        """Most prefill tokens in one step (at least 1, so prefill always progresses)."""
        return max(1, int(self.max_prefill_share * self.max_num_batched_tokens))


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: its block size, its size, and prefix caching.

    The size is, by precedence: `num_blocks`; else `memory_bytes`; else `memory_fraction` of the device
    memory free after the model's weights are loaded (the runner measures it).
    """

    block_size: int = 16
    """Tokens per KV block."""
    num_blocks: int | None = None
    """Blocks in the cache, overriding the memory settings (tests, reproducible benchmarks)."""
    memory_bytes: int | None = None
    """Bytes of device memory for the KV cache."""
    memory_fraction: float = 0.9
    """Share of the free device memory given to the KV cache when neither size above is set."""
    enable_prefix_caching: bool = True
    """Reuse the KV of full blocks whose token prefix (and cache salt) equals an earlier request's."""

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        if self.memory_bytes is not None and self.memory_bytes < 1:
            raise ValueError("memory_bytes must be >= 1")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ValueError("memory_fraction must be in (0, 1]")

    def resolve_num_blocks(self, bytes_per_block: int, free_memory_bytes: int | None = None) -> int:
        """Blocks the cache gets, given one block's size in bytes (see `kv_bytes_per_block`) and the free
        device memory (needed only when the size is a fraction). Raises InsufficientKVCache below one."""
        if self.num_blocks is not None:
            return self.num_blocks
        if bytes_per_block < 1:
            raise ValueError("bytes_per_block must be >= 1")
        if self.memory_bytes is not None:
            budget, source = self.memory_bytes, f"memory_bytes={self.memory_bytes}"
        elif free_memory_bytes is None:
            raise ValueError("free_memory_bytes is needed when the KV cache size is a memory fraction")
        else:
            budget = int(self.memory_fraction * free_memory_bytes)
            source = f"memory_fraction={self.memory_fraction} of {free_memory_bytes} free bytes"
        blocks = budget // bytes_per_block
        if blocks < 1:
            raise InsufficientKVCache(
                f"KV cache: {source} holds no block of {bytes_per_block} bytes ({self.block_size} tokens)"
            )
        return blocks


def kv_bytes_per_block(
    *, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int, block_size: int = 16
) -> int:
    """Bytes one KV block takes on the device: keys and values of every layer for `block_size` tokens."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes * block_size


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine core needs besides the model itself."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Step budget and request limits."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """KV cache layout and size."""
