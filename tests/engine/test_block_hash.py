from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.engine.block_hash import BlockHash, extend_block_hashes, hash_block, salt_bytes


def chain(tokens: list[int], block_size: int = 4, salt: str | None = None) -> list[BlockHash]:
    hashes: list[BlockHash] = []
    extend_block_hashes(hashes, tokens, block_size, salt_bytes(salt), len(tokens))
    return hashes


def test_hash_is_stable_and_32_bytes() -> None:
    h = hash_block(None, [1, 2, 3, 4])
    assert h == hash_block(None, (1, 2, 3, 4))
    assert len(h) == 32


def test_only_full_blocks_are_hashed() -> None:
    assert len(chain([1, 2, 3])) == 0
    assert len(chain([1, 2, 3, 4, 5, 6, 7])) == 1
    assert len(chain(list(range(8)))) == 2


def test_hash_names_the_whole_prefix() -> None:
    a = chain([1, 2, 3, 4, 5, 6, 7, 8])
    b = chain([9, 2, 3, 4, 5, 6, 7, 8])
    assert a[0] != b[0]
    assert a[1] != b[1], "same tokens in block 1 but different parents"


def test_salt_isolates_every_block() -> None:
    tokens = list(range(12))
    plain, tenant_a, tenant_b = chain(tokens), chain(tokens, salt="a"), chain(tokens, salt="b")
    assert chain(tokens, salt="") == plain
    for i in range(3):
        assert len({plain[i], tenant_a[i], tenant_b[i]}) == 3


def test_extend_stops_at_requested_count() -> None:
    hashes: list[BlockHash] = []
    extend_block_hashes(hashes, list(range(16)), 4, b"", 2)
    assert hashes == chain(list(range(16)))[:2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=40), st.integers(1, 8), st.integers(0, 40))
def test_incremental_extension_equals_one_shot(tokens: list[int], block_size: int, cut: int) -> None:
    one_shot: list[BlockHash] = []
    extend_block_hashes(one_shot, tokens, block_size, b"s", len(tokens))
    incremental: list[BlockHash] = []
    extend_block_hashes(incremental, tokens[:cut], block_size, b"s", len(tokens))
    extend_block_hashes(incremental, tokens, block_size, b"s", len(tokens))
    assert incremental == one_shot
    assert len(one_shot) == len(tokens) // block_size


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 50), min_size=4, max_size=4), st.lists(st.integers(0, 50), min_size=4, max_size=4)
)
def test_distinct_blocks_hash_distinctly(a: list[int], b: list[int]) -> None:
    assert (hash_block(None, a) == hash_block(None, b)) == (a == b)
