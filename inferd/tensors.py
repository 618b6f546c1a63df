"""Protocol-neutral tensor requests and responses: what transports decode into and encode from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inferd.datatypes import DataType
from inferd.errors import InvalidInput

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the model declares it."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    """Shape without the batch dimension; -1 marks a variable dimension."""


@dataclass
class Tensor:
    """A named tensor with data. The array's shape is the tensor's shape (batch dimension included)."""

    name: str
    datatype: DataType
    data: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True)
class OutputRequest:
    """An output the client asked for, with the transport's encoding wish."""

    name: str
    binary: bool | None = None
    """Binary encoding wanted (REST binary extension); None means the transport's default."""


@dataclass
class InferRequest:
    """One inference call on a tensor model."""

    model: str
    version: str | None
    inputs: list[Tensor]
    outputs: list[OutputRequest] | None = None
    """Outputs to return; None returns every output."""
    id: str = ""
    """The client's request id (echoed back)."""
    timeout_us: int | None = None
    """Client timeout in microseconds (V2 `timeout` parameter); None uses the model default."""
    priority: int = 0
    """1 is the highest priority level; 0 means the model's default."""
    parameters: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> Tensor | None:
        for t in self.inputs:
            if t.name == name:
                return t
        return None


@dataclass
class InferResponse:
    """The result of one inference call."""

    model: str
    version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


def empty_like_spec(spec: TensorSpec, rows: int) -> Array:
    """A zero tensor for `spec` with `rows` batch rows (variable dims become 1); used for warm-up."""
    dims = tuple(1 if d < 0 else d for d in spec.dims)
    if spec.datatype.name == "BYTES":
        arr = np.empty((rows, *dims), dtype=np.object_)
        arr.fill(b"")
        return arr
    return np.zeros((rows, *dims), dtype=spec.datatype.numpy)


def uint_parameter(params: dict[str, Any], key: str) -> int | None:
    """A V2 request parameter that must be a non-negative integer (`timeout`, `priority`), or None."""
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameter {key!r} must be a non-negative integer")
    return value
