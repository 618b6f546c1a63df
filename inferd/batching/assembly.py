"""Concatenating requests into one batch and scattering the outputs back to each request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferd.tensors import Array, InferRequest


def gather_inputs(requests: Sequence[InferRequest]) -> tuple[dict[str, Array], list[int]]:
    """Inputs of all requests stacked along the batch dimension, and each request's row count."""
    if len(requests) == 1:
        only = requests[0]
        return {t.name: t.data for t in only.inputs}, [int(only.inputs[0].data.shape[0])]
    rows = [int(r.inputs[0].data.shape[0]) for r in requests]
    names = [t.name for t in requests[0].inputs]
    stacked: dict[str, Array] = {}
    for name in names:
        parts = [_input(r, name) for r in requests]
        stacked[name] = np.concatenate(parts, axis=0)
    return stacked, rows


def scatter_outputs(outputs: dict[str, Array], rows: list[int]) -> list[dict[str, Array]]:
    """Split batch outputs into one mapping per request, each with exactly its rows."""
    if len(rows) == 1:
        return [outputs]
    result: list[dict[str, Array]] = [{} for _ in rows]
    for name, array in outputs.items():
        total = int(array.shape[0]) if array.ndim else 0
        if total != sum(rows):
            raise ValueError(f"output {name!r} has {total} rows for a batch of {sum(rows)}")
        start = 0
        for i, n in enumerate(rows):
            result[i][name] = array[start : start + n]
            start += n
    return result


def wanted_outputs(requests: Sequence[InferRequest], all_outputs: Sequence[str]) -> list[str]:
    """The union of outputs the requests asked for (all when any asked for none in particular)."""
    wanted: dict[str, None] = {}
    for r in requests:
        if r.outputs is None:
            return list(all_outputs)
        for o in r.outputs:
            wanted[o.name] = None
    return [n for n in all_outputs if n in wanted]


def _input(request: InferRequest, name: str) -> Array:
    tensor = request.input(name)
    if tensor is None:  # pragma: no cover - validation guarantees every input is present
        raise KeyError(name)
    return tensor.data
