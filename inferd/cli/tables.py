"""Human-readable output of the governance CLI: aligned tables of records, and one record as `field: value`
lines. Machine output (`--json`) does not come through here."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TIME_FIELDS = frozenset({"created", "expires_at", "time", "resets_at"})
"""Fields holding unix times, shown as UTC date and time."""
MAX_CELL = 60


@dataclass(frozen=True)
class Column:
    header: str
    path: str
    """The field, `outer.inner` for a nested one."""

    def get(self, row: Mapping[str, Any]) -> Any:
        value: Any = row
        for part in self.path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value

    def present(self, row: Mapping[str, Any]) -> bool:
        outer = self.path.split(".", 1)[0]
        return outer in row


def cols(*spec: str) -> tuple[Column, ...]:
    """Columns from `path` or `header=path` items."""
    out = []
    for item in spec:
        header, _, path = item.rpartition("=")
        out.append(Column(header or path.rsplit(".", 1)[-1], path))
    return tuple(out)


def cell(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and field in TIME_FIELDS:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], empty: str) -> str:
    """Rows as an aligned table; columns no row has are left out."""
    if not rows:
        return empty
    shown = [c for c in columns if any(c.present(r) for r in rows)]
    grid = [[c.header.upper() for c in shown]]
    grid += [[cell(c.path.rsplit(".", 1)[-1], c.get(r)) for c in shown] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(shown))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in grid
    )


def record(row: Mapping[str, Any]) -> str:
    """One record as `field: value` lines; nested records are flattened into their fields."""
    flat: list[tuple[str, Any]] = []
    for key, value in row.items():
        if isinstance(value, Mapping):
            flat.extend(value.items())
        else:
            flat.append((key, value))
    width = max((len(k) for k, _ in flat), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {cell(k, v)}" for k, v in flat)
