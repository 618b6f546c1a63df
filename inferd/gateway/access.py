"""Which models a key may use: fnmatch patterns over model names (`*` = all, `llama-*`, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase


def allowed(patterns: Sequence[str], model: str) -> bool:
    return any(fnmatchcase(model, p) for p in patterns)
