from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from inferd.engine.block_hash import BlockHash, hash_block
from inferd.engine.block_pool import BlockPool, FreeBlockQueue, KVBlock
from inferd.errors import InternalError


def h(i: int) -> BlockHash:
    return hash_block(None, [i])


def ids(blocks: list[KVBlock]) -> list[int]:
    return [b.block_id for b in blocks]


def test_new_blocks_come_from_the_head_with_one_reference() -> None:
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(3)
    assert ids(blocks) == [0, 1, 2]
    assert all(b.ref_cnt == 1 for b in blocks)
    assert pool.num_free_blocks == 1
    assert pool.usage == pytest.approx(0.75)


def test_asking_for_more_than_free_is_a_bug() -> None:
    pool = BlockPool(2)
    with pytest.raises(InternalError):
        pool.get_new_blocks(3)
    assert pool.num_free_blocks == 2


def test_double_free_is_a_bug() -> None:
    pool = BlockPool(2)
    [block] = pool.get_new_blocks(1)
    pool.free_blocks([block])
    with pytest.raises(InternalError):
        pool.free_blocks([block])


def test_shared_block_is_free_only_after_the_last_reference() -> None:
    pool = BlockPool(2)
    [block] = pool.get_new_blocks(1)
    pool.touch([block])
    assert block.ref_cnt == 2
    pool.free_blocks([block])
    assert not block.is_free and pool.num_free_blocks == 1
    pool.free_blocks([block])
    assert block.is_free and pool.num_free_blocks == 2


def test_cached_free_blocks_are_evicted_least_recently_freed_first() -> None:
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(4)
    for i, block in enumerate(blocks):
        assert pool.cache_block(block, h(i))
    pool.free_blocks([blocks[2]])
    pool.free_blocks([blocks[0]])
    pool.free_blocks([blocks[3]])
    assert ids(pool.free_queue()) == [2, 0, 3]
    [evicted] = pool.get_new_blocks(1)
    assert evicted.block_id == 2
    assert pool.get_cached_block(h(2)) is None and evicted.block_hash is None
    assert pool.get_cached_block(h(0)) is blocks[0]
    assert pool.num_evictions == 1


def test_uncached_free_blocks_are_reused_before_cached_ones() -> None:
    pool = BlockPool(3)
    a, b, c = pool.get_new_blocks(3)
    pool.cache_block(a, h(0))
    pool.free_blocks([a, b, c])
    assert ids(pool.free_queue()) == [c.block_id, b.block_id, a.block_id]
    assert ids(pool.get_new_blocks(2)) == [c.block_id, b.block_id]
    assert pool.get_cached_block(h(0)) is a


def test_touch_revives_a_free_cached_block() -> None:
    pool = BlockPool(3)
    blocks = pool.get_new_blocks(3)
    pool.cache_block(blocks[1], h(1))
    pool.free_blocks(blocks)
    hit = pool.get_cached_block(h(1))
    assert hit is blocks[1]
    pool.touch([hit])
    assert hit.ref_cnt == 1 and not hit.is_free
    assert pool.num_free_blocks == 2
    assert blocks[1] not in pool.get_new_blocks(2)


def test_a_prefix_is_cached_once() -> None:
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    assert pool.cache_block(a, h(7))
    assert not pool.cache_block(b, h(7))
    assert not pool.cache_block(a, h(8))
    assert pool.get_cached_block(h(7)) is a and b.block_hash is None


def test_caching_off_caches_nothing() -> None:
    pool = BlockPool(1, enable_caching=False)
    [block] = pool.get_new_blocks(1)
    assert not pool.cache_block(block, h(1))
    assert pool.get_cached_block(h(1)) is None


def test_reset_prefix_cache_drops_only_free_blocks() -> None:
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, h(0))
    pool.cache_block(b, h(1))
    pool.free_blocks([a])
    assert pool.reset_prefix_cache() == 1
    assert pool.get_cached_block(h(0)) is None and pool.get_cached_block(h(1)) is b


def test_free_queue_removal_from_the_middle() -> None:
    blocks = [KVBlock(i) for i in range(4)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[2])
    assert ids(list(queue)) == [0, 1, 3] and len(queue) == 3
    with pytest.raises(InternalError):
        queue.remove(blocks[2])
    with pytest.raises(InternalError):
        queue.append(blocks[0])
    queue.appendleft(blocks[2])
    assert ids(list(queue)) == [2, 0, 1, 3]
    assert [queue.popleft().block_id for _ in range(4)] == [2, 0, 1, 3]
    with pytest.raises(InternalError):
        queue.popleft()


class BlockPoolMachine(RuleBasedStateMachine):
    """Random allocate / share / free / cache / evict against a model of who holds which block."""

    @initialize(num_blocks=st.integers(1, 12))
    def setup(self, num_blocks: int) -> None:
        self.pool = BlockPool(num_blocks)
        self.held: list[KVBlock] = []  # one entry per reference held
        self.next_hash = 0

    @rule(count=st.integers(0, 12))
    def allocate(self, count: int) -> None:
        if count > self.pool.num_free_blocks:
            with pytest.raises(InternalError):
                self.pool.get_new_blocks(count)
            return
        blocks = self.pool.get_new_blocks(count)
        assert len({b.block_id for b in blocks}) == count
        assert all(b.ref_cnt == 1 and b.block_hash is None for b in blocks)
        self.held.extend(blocks)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def share(self, data: st.DataObject) -> None:
        block = data.draw(st.sampled_from(self.held))
        self.pool.touch([block])
        self.held.append(block)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.held) - 1))
        self.pool.free_blocks([self.held.pop(i)])

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def cache(self, data: st.DataObject) -> None:
        block = data.draw(st.sampled_from(self.held))
        self.next_hash += 1
        cached = self.pool.cache_block(block, h(self.next_hash))
        assert cached == (block.block_hash == h(self.next_hash))

    @rule(data=st.data())
    def hit(self, data: st.DataObject) -> None:
        if self.next_hash == 0:
            return
        block = self.pool.get_cached_block(h(data.draw(st.integers(1, self.next_hash))))
        if block is not None:
            self.pool.touch([block])
            self.held.append(block)

    @invariant()
    def reference_counts_match_holders(self) -> None:
        counts: dict[int, int] = {}
        for block in self.held:
            counts[block.block_id] = counts.get(block.block_id, 0) + 1
        for block in self.pool.blocks:
            assert block.ref_cnt >= 0
            assert block.ref_cnt == counts.get(block.block_id, 0)

    @invariant()
    def free_means_unreferenced(self) -> None:
        free = self.pool.free_queue()
        assert len({b.block_id for b in free}) == len(free) == self.pool.num_free_blocks
        assert all(b.ref_cnt == 0 and b.is_free for b in free)
        in_use = [b for b in self.pool.blocks if b.ref_cnt > 0]
        assert not any(b.is_free for b in in_use)
        assert len(free) + len(in_use) == self.pool.num_blocks

    @invariant()
    def cache_map_is_consistent(self) -> None:
        cached = [b for b in self.pool.blocks if b.block_hash is not None]
        assert len(cached) == self.pool.num_cached_blocks
        for block in cached:
            assert block.block_hash is not None
            assert self.pool.get_cached_block(block.block_hash) is block

    def teardown(self) -> None:
        # Every freed block is reusable: after freeing everything, the whole pool can be allocated.
        if not hasattr(self, "pool"):
            return
        self.pool.free_blocks(self.held)
        assert len(self.pool.get_new_blocks(self.pool.num_blocks)) == self.pool.num_blocks


BlockPoolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestBlockPool = BlockPoolMachine.TestCase
