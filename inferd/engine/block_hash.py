"""Content hashes of full KV blocks, chained so a block's hash names its whole prefix.

hash(block i) = sha256(hash(block i-1) | extra | token ids of block i). The first block's `extra` carries the
isolation salt (tenant, LoRA adapter...): because of the chain, two requests share a cached block only when
their salts and every token up to the end of that block are equal. Only full blocks are hashed; a partial
block's content is still changing. sha256 is stable across processes and collision-resistant, so one tenant
cannot craft a prompt that maps to another tenant's cached KV.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import NewType

BlockHash = NewType("BlockHash", bytes)
"""The 32-byte digest naming a full block and, through the chain, its whole prefix."""

_ROOT = bytes(32)
"""Parent of the first block."""


def salt_bytes(cache_salt: str | None) -> bytes:
    """The `extra` of a request's first block; no salt and the empty salt both mean "shared cache"."""
    return cache_salt.encode("utf-8") if cache_salt else b""


def hash_block(parent: BlockHash | None, token_ids: Sequence[int], extra: bytes = b"") -> BlockHash:
    """The chained hash of one full block. Lengths are encoded, so no two inputs share an encoding."""
    tokens = array("q", token_ids).tobytes()
    h = hashlib.sha256(parent if parent is not None else _ROOT)
    h.update(len(extra).to_bytes(8, "little"))
    h.update(extra)
    h.update(len(tokens).to_bytes(8, "little"))
    h.update(tokens)
    return BlockHash(h.digest())


def extend_block_hashes(
    hashes: list[BlockHash], token_ids: Sequence[int], block_size: int, extra: bytes, num_blocks: int
) -> None:
    """Append to `hashes` (the chain of `token_ids`' first full blocks) until it covers `num_blocks` blocks,
    or every full block of `token_ids` if fewer."""
    end = min(num_blocks, len(token_ids) // block_size)
    for i in range(len(hashes), end):
        parent = hashes[i - 1] if i else None
        hashes.append(
            hash_block(parent, token_ids[i * block_size : (i + 1) * block_size], b"" if i else extra)
        )
