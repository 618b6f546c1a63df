"""Errors the LLM engine raises, placed in inferd's one error tree (`inferd/errors.py`).

    InvalidInput
    ├── ContextLengthExceeded   prompt + max_tokens is longer than the model's max_model_len
    └── KVCacheTooSmall         the request could never fit in the KV cache, even alone
    ModelLoadError
    └── InsufficientKVCache     the memory given to the KV cache holds no block at all

Both request refusals are `InvalidInput`, not `ResourceExhausted`: retrying the same request cannot succeed.
"""

from __future__ import annotations

from inferd.errors import InvalidInput, ModelLoadError


class ContextLengthExceeded(InvalidInput):
    """The prompt plus the requested output is longer than the model's context (`max_model_len`)."""


class KVCacheTooSmall(InvalidInput):
    """The request needs more KV-cache blocks than the whole cache holds; it can never be scheduled."""


class InsufficientKVCache(ModelLoadError):
    """The configured KV-cache memory is too small to hold a single block."""
