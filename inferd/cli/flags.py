"""Flags of the governance CLI: value parsers (a bad value is argparse's usage error, exit 2) and `Flag`, a
flag that fills one field of an admin request body."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from inferd.store.records import ROLES

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
N = TypeVar("N", int, float)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _type_error(expected: str, text: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")


def _number(text: str, convert: Callable[[str], N], ok: Callable[[N], bool], expected: str) -> N:
    try:
        value = convert(text)
    except ValueError:
        raise _type_error(expected, text) from None
    if not ok(value):
        raise _type_error(expected, text)
    return value


def positive(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1")


def count(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a whole number >= 0")


def amount(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < math.inf, "an amount >= 0")


def limit(text: str) -> int | None:
    """A limit: a whole number >= 1, or `none` for no limit."""
    if text.lower() in ("none", "unlimited"):
        return None
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1, or none for no limit")


def duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `3600s`, `2w` or plain seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise _type_error("a duration like 30d, 12h, 90m or 3600s", text)
    return float(m.group(1)) * _SECONDS[m.group(2)]


def patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def roles(text: str) -> list[str]:
    names = patterns(text)
    if not names or any(r not in ROLES for r in names):
        raise _type_error(f"comma-separated roles from {', '.join(ROLES)}", text)
    return names


@dataclass(frozen=True)
class Flag:
    """A flag that fills one field of an admin request body (absent flag: absent field)."""

    option: str
    key: str
    """The body field (and the flag's `dest`)."""
    help: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def add(self, parser: argparse.ArgumentParser) -> None:
        kwargs = {"default": argparse.SUPPRESS, **self.kwargs}
        if kwargs.get("action", "extend") == "extend" and "choices" not in kwargs:
            kwargs["metavar"] = self.option.lstrip("-").upper().replace("-", "_")
        parser.add_argument(self.option, dest=self.key, help=self.help, **kwargs)


def body(args: argparse.Namespace, flags: Sequence[Flag]) -> dict[str, Any]:
    return {f.key: getattr(args, f.key) for f in flags if hasattr(args, f.key)}
