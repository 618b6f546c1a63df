from __future__ import annotations

import logging

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from inferd.engine import EngineRequest, KVCacheManager, SamplingParams
from inferd.errors import InternalError

BS = 4


def req(rid: str, tokens: list[int], salt: str | None = None) -> EngineRequest:
    return EngineRequest(rid, tuple(tokens), SamplingParams(max_tokens=8), cache_salt=salt)


def run_prefill(kv: KVCacheManager, request: EngineRequest) -> int:
    """Start `request` from its prefix hit and compute its whole prompt; returns the hit in tokens."""
    hit = kv.find_prefix_hit(request)
    assert kv.allocate_slots(request, request.num_tokens - hit.num_tokens, hit) is not None
    request.num_computed_tokens = request.num_tokens
    kv.cache_computed_blocks(request)
    return hit.num_tokens


def test_capacity_is_logged_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inferd.engine.kv_cache_manager"):
        kv = KVCacheManager(10, 16)
    assert kv.capacity_tokens == 160
    assert "capacity 160 tokens" in caplog.text


def test_allocate_rounds_up_to_blocks_and_extends() -> None:
    kv = KVCacheManager(8, BS)
    r = req("a", list(range(6)))
    assert len(kv.allocate_slots(r, 6) or []) == 2
    r.num_computed_tokens = 6
    assert kv.allocate_slots(r, 2) == []  # still fits in block 2
    r.num_computed_tokens = 8
    assert len(kv.allocate_slots(r, 1) or []) == 1
    assert len(kv.block_ids("a")) == 3


def test_no_room_is_a_return_value_and_changes_nothing() -> None:
    kv = KVCacheManager(3, BS)
    a = req("a", list(range(8)))
    assert kv.allocate_slots(a, 8) is not None
    b = req("b", list(range(100, 108)))
    assert kv.allocate_slots(b, 8) is None
    assert kv.num_free_blocks == 1 and kv.block_ids("b") == []
    kv.free(a)
    assert kv.allocate_slots(b, 8) is not None


def test_prefix_hit_reuses_full_blocks_and_counts_exactly() -> None:
    kv = KVCacheManager(16, BS)
    assert run_prefill(kv, req("a", list(range(10)))) == 0
    b = req("b", [*range(8), 77, 78, 79])
    assert run_prefill(kv, b) == 8
    assert kv.block_ids("b")[:2] == kv.block_ids("a")[:2]
    assert kv.stats.queries == 10 + 11 and kv.stats.hits == 8


def test_hit_never_covers_the_last_token() -> None:
    kv = KVCacheManager(16, BS)
    run_prefill(kv, req("a", list(range(8))))
    same = req("b", list(range(8)))
    hit = kv.find_prefix_hit(same)
    assert hit.num_tokens == 4, "the last token must be computed to sample from it"
    longer = req("c", list(range(9)))
    assert kv.find_prefix_hit(longer).num_tokens == 8


def test_lookup_without_allocation_is_not_counted() -> None:
    kv = KVCacheManager(3, BS)
    run_prefill(kv, req("a", list(range(8))))
    b = req("b", [*range(8), 1, 2, 3, 4, 5])
    hit = kv.find_prefix_hit(b)
    assert hit.num_tokens == 8
    assert kv.allocate_slots(b, 5, hit) is None  # needs 2 new blocks, 1 free
    assert kv.stats.queries == 8 and kv.stats.hits == 0
    assert all(block.ref_cnt == 1 for block in kv.block_table("a"))


def test_salt_isolates_prefixes() -> None:
    kv = KVCacheManager(16, BS)
    run_prefill(kv, req("a", list(range(9)), salt="tenant-a"))
    assert kv.find_prefix_hit(req("b", list(range(9)), salt="tenant-b")).num_tokens == 0
    assert kv.find_prefix_hit(req("c", list(range(9)))).num_tokens == 0
    assert kv.find_prefix_hit(req("d", list(range(9)), salt="tenant-a")).num_tokens == 8


def test_freed_cached_blocks_serve_hits_until_evicted_lru() -> None:
    kv = KVCacheManager(4, BS)
    a = req("a", list(range(9)))  # 3 blocks, 2 full
    run_prefill(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 4
    # Uncached blocks (the never-used one, the partial one) are reused first, then the tail block: a new
    # 3-block request evicts block 1 of "a" (freed before block 0) and keeps block 0 cached.
    assert [b.block_id for b in kv.pool.free_queue()] == [2, 3, 1, 0]
    b = req("b", list(range(50, 62)))
    assert kv.allocate_slots(b, 12) is not None
    assert kv.find_prefix_hit(req("c", list(range(9)))).num_tokens == 4


def test_revived_free_blocks_count_against_free_space() -> None:
    kv = KVCacheManager(3, BS)
    a = req("a", list(range(9)))
    run_prefill(kv, a)
    kv.free(a)
    c = req("c", [*range(8), *range(20, 25)])  # hits 2 free blocks, needs 3 + ... = 4 blocks total
    hit = kv.find_prefix_hit(c)
    assert hit.num_tokens == 8
    assert kv.allocate_slots(c, 5, hit) is None
    assert kv.num_free_blocks == 3


def test_free_releases_tail_first_and_shared_blocks_survive() -> None:
    kv = KVCacheManager(8, BS)
    a = req("a", list(range(13)))
    run_prefill(kv, a)
    b = req("b", [*range(12), 99])
    run_prefill(kv, b)
    shared = kv.block_table("a")[:3]
    assert all(block.ref_cnt == 2 for block in shared)
    kv.free(a)
    assert all(block.ref_cnt == 1 for block in shared)
    kv.free(b)
    assert kv.num_free_blocks == 8 and kv.usage == 0.0


def test_share_prompt_for_parallel_samples() -> None:
    kv = KVCacheManager(8, BS, enable_prefix_caching=False)
    prompt = list(range(10))
    leader, sibling = req("p#0", prompt), req("p#1", prompt)
    assert kv.allocate_slots(leader, 10) is not None
    leader.num_computed_tokens = 10
    assert kv.find_prefix_hit(sibling).num_tokens == 0  # caching off
    share = kv.share_prompt(sibling, leader)
    assert share.num_tokens == 8 and not share.from_cache
    assert kv.allocate_slots(sibling, 2, share) is not None
    assert kv.block_ids("p#1")[:2] == kv.block_ids("p#0")[:2]
    assert kv.block_ids("p#1")[2] != kv.block_ids("p#0")[2]
    assert kv.stats.queries == 0
    assert kv.share_prompt(req("x", [1, 2, 3, 4, 5]), leader).num_tokens == 0  # different prompt


def test_hit_for_a_request_holding_blocks_is_a_bug() -> None:
    kv = KVCacheManager(8, BS)
    run_prefill(kv, req("a", list(range(9))))
    b = req("b", list(range(9)))
    hit = kv.find_prefix_hit(b)
    assert kv.allocate_slots(b, 1, hit) is not None
    with pytest.raises(InternalError):
        kv.allocate_slots(b, 1, hit)


DOCS = [list(range(100, 112)), list(range(200, 212))]


class KVManagerMachine(RuleBasedStateMachine):
    """Random start / compute / decode / share / free with a model of the KV memory: every computed position
    of every request must hold that request's token, whichever request wrote it."""

    @initialize(num_blocks=st.integers(2, 14), caching=st.booleans())
    def setup(self, num_blocks: int, caching: bool) -> None:
        self.kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=caching)
        self.memory: dict[tuple[int, int], int] = {}
        self.running: dict[str, EngineRequest] = {}
        self.count = 0
        self.queries = 0
        self.hits = 0

    def compute(self, request: EngineRequest, n: int) -> None:
        table = self.kv.block_ids(request.request_id)
        for pos in range(request.num_computed_tokens, request.num_computed_tokens + n):
            self.memory[(table[pos // BS], pos % BS)] = request.all_token_ids[pos]
        request.num_computed_tokens += n
        self.kv.cache_computed_blocks(request)

    @rule(
        doc=st.sampled_from([None, 0, 1]),
        doc_len=st.integers(0, 12),
        tail=st.lists(st.integers(0, 3), max_size=6),
        salt=st.sampled_from([None, "t"]),
        chunk=st.integers(1, 20),
    )
    def start(self, doc: int | None, doc_len: int, tail: list[int], salt: str | None, chunk: int) -> None:
        tokens = (DOCS[doc][:doc_len] if doc is not None else []) + tail
        if not tokens:
            return
        self.count += 1
        request = req(f"r{self.count}", tokens, salt)
        hit = self.kv.find_prefix_hit(request)
        assert hit.num_tokens == len(hit.blocks) * BS < request.num_tokens
        free_before = self.kv.num_free_blocks
        n = min(chunk, request.num_tokens - hit.num_tokens)
        if self.kv.allocate_slots(request, n, hit) is None:
            assert self.kv.num_free_blocks == free_before and not self.kv.block_ids(request.request_id)
            return
        if hit.from_cache:
            self.queries += request.num_tokens
            self.hits += hit.num_tokens
        request.num_computed_tokens = hit.num_tokens
        self.running[request.request_id] = request
        self.compute(request, n)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), chunk=st.integers(1, 8), token=st.integers(0, 3))
    def advance(self, data: st.DataObject, chunk: int, token: int) -> None:
        request = self.running[data.draw(st.sampled_from(sorted(self.running)))]
        if request.num_computed_tokens == request.num_tokens:
            request.append_output_token(token)  # decode: the sampled token is the next input
        n = min(chunk, request.num_tokens - request.num_computed_tokens)
        free_before = self.kv.num_free_blocks
        held = self.kv.block_ids(request.request_id)
        if self.kv.allocate_slots(request, n) is None:
            assert self.kv.num_free_blocks == free_before and self.kv.block_ids(request.request_id) == held
            return
        self.compute(request, n)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def share(self, data: st.DataObject) -> None:
        source = self.running[data.draw(st.sampled_from(sorted(self.running)))]
        self.count += 1
        sibling = EngineRequest(f"r{self.count}", source.prompt_token_ids, source.sampling_params)
        share = self.kv.share_prompt(sibling, source)
        n = sibling.num_tokens - share.num_tokens
        if self.kv.allocate_slots(sibling, n, share) is None:
            return
        sibling.num_computed_tokens = share.num_tokens
        self.running[sibling.request_id] = sibling
        self.compute(sibling, n)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        request = self.running.pop(data.draw(st.sampled_from(sorted(self.running))))
        self.kv.free(request)
        assert not self.kv.block_ids(request.request_id)

    @invariant()
    def computed_kv_is_each_requests_own(self) -> None:
        for request in self.running.values():
            table = self.kv.block_ids(request.request_id)
            assert len(table) == len(set(table)) == self.kv.blocks_for(request.num_computed_tokens)
            for pos in range(request.num_computed_tokens):
                assert self.memory[(table[pos // BS], pos % BS)] == request.all_token_ids[pos]

    @invariant()
    def references_match_tables(self) -> None:
        refs: dict[int, int] = {}
        for request in self.running.values():
            for block_id in self.kv.block_ids(request.request_id):
                refs[block_id] = refs.get(block_id, 0) + 1
        pool = self.kv.pool
        for block in pool.blocks:
            assert block.ref_cnt == refs.get(block.block_id, 0) >= 0
            assert block.is_free == (block.ref_cnt == 0)
        assert pool.num_free_blocks + len(refs) == pool.num_blocks
        assert self.kv.num_requests() == len(self.running)

    @invariant()
    def hit_accounting_is_exact(self) -> None:
        assert (self.kv.stats.queries, self.kv.stats.hits) == (self.queries, self.hits)

    def teardown(self) -> None:
        if not hasattr(self, "kv"):
            return
        for request in self.running.values():
            self.kv.free(request)
        assert self.kv.num_free_blocks == self.kv.num_blocks
        assert len(self.kv.pool.get_new_blocks(self.kv.num_blocks)) == self.kv.num_blocks


KVManagerMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
TestKVManager = KVManagerMachine.TestCase
