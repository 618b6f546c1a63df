"""Which models a key may use: fnmatch patterns over model names (`*` = all, `llama-*`, ...)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fnmatch import fnmatchcase


def allowed(patterns: Sequence[str], model: str) -> bool:
    if len(patterns) == 1 and patterns[0] == "*":
        return True
    return _allowed(tuple(patterns), model)


@functools.lru_cache(maxsize=4096)
def _allowed(patterns: tuple[str, ...], model: str) -> bool:
    return any(fnmatchcase(model, p) for p in patterns)
