"""The pool of KV blocks: reference counts, the free queue in eviction order, and the prefix-cache map.

A block is either in use (`ref_cnt > 0`, held by one or more requests' block tables) or free
(`ref_cnt == 0`, in the free queue). A free block may still hold a cached prefix (`block_hash` set): a
prefix-cache hit revives it (`touch`) at no cost, and allocation evicts it only when it reaches the head of
the free queue. Blocks freed later go behind blocks freed earlier, so eviction is least-recently-used; blocks
that carry no cached prefix are put at the head, so they are reused before anything worth keeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from inferd.engine.block_hash import BlockHash
from inferd.errors import InternalError


class KVBlock:
    """Metadata of one block of KV memory; the memory itself lives in the runner, indexed by `block_id`."""

    __slots__ = ("_next", "_prev", "block_hash", "block_id", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None
        """Set while the block is registered in the prefix cache."""
        self._prev: KVBlock | None = None
        self._next: KVBlock | None = None

    @property
    def is_free(self) -> bool:
        """In the free queue."""
        return self._prev is not None

    def __repr__(self) -> str:
        cached = f", hash={self.block_hash.hex()[:8]}" if self.block_hash is not None else ""
        return f"KVBlock({self.block_id}, ref_cnt={self.ref_cnt}{cached})"


class FreeBlockQueue:
    """Free blocks in eviction order, a doubly linked list so a revived block leaves it in O(1)."""

    def __init__(self, blocks: Iterable[KVBlock] = ()) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head._next = self._tail
        self._tail._prev = self._head
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        node = self._head._next
        while node is not None and node is not self._tail:
            yield node
            node = node._next

    def popleft(self) -> KVBlock:
        block = self._head._next
        if block is None or block is self._tail:
            raise InternalError("no free KV block")
        self.remove(block)
        return block

    def append(self, block: KVBlock) -> None:
        """Put `block` last in eviction order."""
        prev = self._tail._prev
        assert prev is not None
        self._link(block, prev, self._tail)

    def appendleft(self, block: KVBlock) -> None:
        """Put `block` first in eviction order."""
        nxt = self._head._next
        assert nxt is not None
        self._link(block, self._head, nxt)

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block._prev, block._next
        if prev is None or nxt is None:
            raise InternalError(f"{block!r} is not in the free queue")
        prev._next = nxt
        nxt._prev = prev
        block._prev = block._next = None
        self._len -= 1

    def _link(self, block: KVBlock, prev: KVBlock, nxt: KVBlock) -> None:
        if block._prev is not None:
            raise InternalError(f"{block!r} is already in the free queue")
        block._prev, block._next = prev, nxt
        prev._next = block
        nxt._prev = block
        self._len += 1


class BlockPool:
    """All KV blocks of one model: allocation, reference counting, and the hash → block prefix cache."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        self.enable_caching = enable_caching
        self.blocks: tuple[KVBlock, ...] = tuple(KVBlock(i) for i in range(num_blocks))
        self._free = FreeBlockQueue(self.blocks)
        self._cached: dict[BlockHash, KVBlock] = {}
        self.num_evictions = 0
        """Cached blocks whose prefix was dropped to make room (cumulative)."""

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks allocatable now, including free blocks that still hold a cached prefix."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Share of blocks held by requests (0..1)."""
        return 1.0 - len(self._free) / len(self.blocks)

    def free_queue(self) -> list[KVBlock]:
        """The free blocks, next to be evicted first (for tests and debugging)."""
        return list(self._free)

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        return self._cached.get(block_hash)

    def get_new_blocks(self, count: int) -> list[KVBlock]:
        """Take `count` blocks from the head of the free queue (evicting their cached prefixes) with
        `ref_cnt` 1. The caller checks `num_free_blocks` first: asking for more is a bug."""
        if count > len(self._free):
            raise InternalError(f"asked for {count} KV blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(count)]
        for block in blocks:
            if block.block_hash is not None:
                self.num_evictions += 1
                self._uncache(block)
            block.ref_cnt = 1
        return blocks

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add a reference to each block (a prefix hit or a shared prompt), reviving free ones."""
        for block in blocks:
            if block.ref_cnt == 0:
                self._free.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, blocks: Iterable[KVBlock]) -> None:
        """Drop a reference to each block, in the order they should be evicted; a block whose count reaches
        zero joins the free queue (behind older free blocks if it holds a cached prefix, else in front)."""
        for block in blocks:
            if block.ref_cnt <= 0:
                raise InternalError(f"{block!r} freed more times than allocated")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    self._free.appendleft(block)
                else:
                    self._free.append(block)

    def cache_block(self, block: KVBlock, block_hash: BlockHash) -> bool:
        """Register a full, computed, in-use block under its hash. False when caching is off, the block is
        already cached, or another block already holds that prefix (the same prompt computed twice at once;
        the first copy stays the cached one and this block is freed like any other)."""
        if not self.enable_caching or block.block_hash is not None or block_hash in self._cached:
            return False
        if block.ref_cnt <= 0:
            raise InternalError(f"caching {block!r}, which is not in use")
        block.block_hash = block_hash
        self._cached[block_hash] = block
        return True

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix whose block is free (e.g. after loading new weights); returns how many.
        Blocks in use keep theirs: their requests still need them."""
        dropped = 0
        for block in self._free:
            if block.block_hash is not None:
                self._uncache(block)
                dropped += 1
        return dropped

    def _uncache(self, block: KVBlock) -> None:
        assert block.block_hash is not None
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = None
