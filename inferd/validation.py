"""Checks an InferRequest against a model's signature before anything is queued."""

from __future__ import annotations

from collections.abc import Hashable

from inferd.errors import InvalidInput
from inferd.runtimes.base import ModelSignature
from inferd.tensors import Array, InferRequest


def validate(request: InferRequest, sig: ModelSignature) -> int:
    """Raise InvalidInput naming the first problem; return the request's batch rows."""
    expected = {s.name: s for s in sig.inputs}
    seen: set[str] = set()
    for tensor in request.inputs:
        if tensor.name in seen:
            raise InvalidInput(f"input {tensor.name!r} given more than once")
        seen.add(tensor.name)
        if tensor.name not in expected:
            raise InvalidInput(
                f"unknown input {tensor.name!r} for model {request.model!r}; "
                f"expected inputs: {', '.join(sorted(expected))}"
            )
    missing = [name for name in expected if name not in seen]
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r} for model {request.model!r}")

    rows = 1
    batched = sig.max_batch_size > 0
    for i, tensor in enumerate(request.inputs):
        spec = expected[tensor.name]
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input {tensor.name!r} has datatype {tensor.datatype.name}, "
                f"model expects {spec.datatype.name}"
            )
        shape = tensor.shape
        dims = shape[1:] if batched else shape
        if batched:
            if not shape:
                raise InvalidInput(f"input {tensor.name!r} needs a batch dimension; got a scalar")
            if shape[0] < 1:
                raise InvalidInput(f"input {tensor.name!r} has batch size {shape[0]}; it must be >= 1")
            if shape[0] > sig.max_batch_size:
                raise InvalidInput(
                    f"input {tensor.name!r} has batch size {shape[0]}, above the model's "
                    f"max_batch_size {sig.max_batch_size}"
                )
            if i == 0:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidInput(
                    f"input {tensor.name!r} has batch size {shape[0]} but other inputs have {rows}"
                )
        if sig.text_bytes and spec.datatype.name == "BYTES":
            _check_utf8(tensor.data, tensor.name)
        expect_dims = list(spec.dims)
        if len(dims) != len(expect_dims) or any(
            e >= 0 and d != e for d, e in zip(dims, expect_dims, strict=False)
        ):
            full = ([-1] if batched else []) + expect_dims
            raise InvalidInput(f"input {tensor.name!r} has shape {list(shape)}, model expects {full}")

    if request.outputs is not None:
        known = {s.name for s in sig.outputs}
        for out in request.outputs:
            if out.name not in known:
                raise InvalidInput(
                    f"unknown output {out.name!r} requested; model outputs: {', '.join(sorted(known))}"
                )
    return rows


def batch_signature(request: InferRequest, sig: ModelSignature) -> Hashable:
    """Requests with equal signatures can be concatenated along the batch dimension."""
    if sig.max_batch_size == 0:
        return None
    return tuple((t.name, t.data.shape[1:]) for t in sorted(request.inputs, key=lambda t: t.name))


def _check_utf8(array: Array, name: str) -> None:
    for i, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"input {name!r}: element {i} is not UTF-8 text, which this model's string inputs take"
                ) from None
