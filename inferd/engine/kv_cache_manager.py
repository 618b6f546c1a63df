"""Per-request block tables on top of the block pool: prefix-hit lookup, slot allocation, caching, freeing.

"No room" is a return value (`allocate_slots` returns None), never an exception: the scheduler answers it by
preempting. Prefix-cache statistics count a lookup only when its result is used (the allocation that takes the
hit succeeds), so `hits / queries` is exact rather than inflated by requests retrying each step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from inferd.engine.block_hash import extend_block_hashes, salt_bytes
from inferd.engine.block_pool import BlockPool, KVBlock
from inferd.engine.request import EngineRequest
from inferd.errors import InternalError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """Computed blocks a request can start from instead of computing their tokens."""

    blocks: tuple[KVBlock, ...]
    """Full blocks covering the request's first `num_tokens` tokens."""
    num_tokens: int
    from_cache: bool
    """True: a prefix-cache lookup (counted in the stats when used). False: a sibling sample's prompt."""
    num_queried_tokens: int = 0
    """Tokens the lookup covered (the request's length), for the stats."""


NO_HIT = PrefixHit((), 0, from_cache=False)


@dataclass
class PrefixCacheStats:
    """Cumulative prefix-cache accounting in tokens (the `prefix_cache_queries/hits` metrics)."""

    queries: int = 0
    """Tokens of requests whose lookup was used."""
    hits: int = 0
    """Of those, tokens served from the cache."""

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class KVCacheManager:
    """Block tables of running requests, allocated from one `BlockPool`."""

    def __init__(self, num_blocks: int, block_size: int = 16, *, enable_prefix_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self.stats = PrefixCacheStats()
        self._tables: dict[str, list[KVBlock]] = {}
        self._num_cached_blocks: dict[str, int] = {}
        """Leading blocks of each table already registered in the prefix cache (or known to be)."""
        logger.info(
            "KV cache: %d blocks of %d tokens, capacity %d tokens; prefix caching %s",
            num_blocks,
            block_size,
            self.capacity_tokens,
            "on" if enable_prefix_caching else "off",
        )

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Share of blocks held by requests (the KV-cache usage metric)."""
        return self.pool.usage

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks holding the KV of `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def block_table(self, request_id: str) -> list[KVBlock]:
        """The request's blocks in position order (empty when it holds none). Do not mutate."""
        return self._tables.get(request_id, [])

    def block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self._tables.get(request_id, ())]

    def num_requests(self) -> int:
        """Requests holding blocks."""
        return len(self._tables)

    def find_prefix_hit(self, request: EngineRequest) -> PrefixHit:
        """The longest run of cached blocks matching the request's tokens, never covering its last token (the
        runner must compute at least one position to sample from). Nothing is reserved: pass the hit to
        `allocate_slots` in the same scheduling pass."""
        if not self.enable_prefix_caching or request.request_id in self._tables:
            return NO_HIT
        max_blocks = (request.num_tokens - 1) // self.block_size
        self._hash_blocks(request, max_blocks)
        blocks: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            blocks.append(block)
        return PrefixHit(tuple(blocks), len(blocks) * self.block_size, True, request.num_tokens)

    def share_prompt(self, request: EngineRequest, source: EngineRequest) -> PrefixHit:
        """The computed full blocks of `source` that hold `request`'s prompt (parallel samples of one prompt),
        never covering `request`'s last token."""
        if request.request_id in self._tables or source.prompt_token_ids != request.prompt_token_ids:
            return NO_HIT
        table = self._tables.get(source.request_id, [])
        limit = min(source.num_computed_tokens, request.num_prompt_tokens, request.num_tokens - 1)
        count = min(limit // self.block_size, len(table))
        if count == 0:
            return NO_HIT
        return PrefixHit(tuple(table[:count]), count * self.block_size, from_cache=False)

    def allocate_slots(
        self, request: EngineRequest, num_new_tokens: int, hit: PrefixHit = NO_HIT
    ) -> list[KVBlock] | None:
        """Make room for `num_new_tokens` more tokens after the request's computed ones (and after `hit`,
        which only a request holding no blocks may take). Returns the newly allocated blocks, or None and
        changes nothing when the pool cannot supply them."""
        rid = request.request_id
        table = self._tables.get(rid)
        if hit.blocks and table:
            raise InternalError(f"prefix hit for {rid}, which already holds blocks")
        num_new_blocks = self._num_new_blocks(request, num_new_tokens, hit)
        if self.blocks_needed(request, num_new_tokens, hit) > self.pool.num_free_blocks:
            return None
        self.pool.touch(hit.blocks)
        new_blocks = self.pool.get_new_blocks(num_new_blocks)
        if table is None:
            table = self._tables[rid] = []
            self._num_cached_blocks[rid] = len(hit.blocks) if hit.from_cache else 0
        table.extend(hit.blocks)
        table.extend(new_blocks)
        if hit.from_cache:
            self.stats.queries += hit.num_queried_tokens
            self.stats.hits += hit.num_tokens
        return new_blocks

    def blocks_needed(self, request: EngineRequest, num_new_tokens: int, hit: PrefixHit = NO_HIT) -> int:
        """Free blocks `allocate_slots` with these arguments takes from the pool (new blocks, and hit blocks
        that are free now)."""
        revived = sum(1 for block in hit.blocks if block.ref_cnt == 0)
        return self._num_new_blocks(request, num_new_tokens, hit) + revived

    def num_freed_by(self, request: EngineRequest) -> int:
        """Blocks that would return to the free pool if `request` freed its table (those it holds alone)."""
        return sum(1 for block in self._tables.get(request.request_id, ()) if block.ref_cnt == 1)

    def _num_new_blocks(self, request: EngineRequest, num_new_tokens: int, hit: PrefixHit) -> int:
        table = self._tables.get(request.request_id)
        held = len(table) if table else 0
        end = request.num_computed_tokens + hit.num_tokens + num_new_tokens
        return max(0, self.blocks_for(end) - held - len(hit.blocks))

    def cache_computed_blocks(self, request: EngineRequest) -> None:
        """Register the request's full blocks whose KV has been computed (call after the step ran)."""
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        table = self._tables.get(rid)
        if table is None:
            return
        start = self._num_cached_blocks[rid]
        end = min(request.num_computed_tokens // self.block_size, len(table))
        if end <= start:
            return
        self._hash_blocks(request, end)
        for i in range(start, end):
            self.pool.cache_block(table[i], request.block_hashes[i])
        self._num_cached_blocks[rid] = end

    def free(self, request: EngineRequest) -> None:
        """Release every block the request holds; its last blocks become the first evicted."""
        table = self._tables.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        if table:
            self.pool.free_blocks(reversed(table))

    def reset_prefix_cache(self) -> int:
        """Drop cached prefixes of free blocks; returns how many were dropped."""
        return self.pool.reset_prefix_cache()

    def _hash_blocks(self, request: EngineRequest, num_blocks: int) -> None:
        extend_block_hashes(
            request.block_hashes,
            request.all_token_ids,
            self.block_size,
            salt_bytes(request.cache_salt),
            num_blocks,
        )
