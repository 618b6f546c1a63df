"""Tensor datatypes of the Open Inference Protocol and their numpy, ONNX and Triton-config names.

numpy has no bfloat16: BF16 tensors are `ml_dtypes.bfloat16` arrays (what `tritonclient` sends and expects).
BYTES tensors are numpy object arrays of `bytes`; on the wire each element is a 4-byte little-endian length
followed by its bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from inferd.errors import InvalidInput


@dataclass(frozen=True)
class DataType:
    """One V2 datatype and its names elsewhere."""

    name: str
    """The V2 name (`FP32`)."""
    numpy: np.dtype[np.generic]
    """The numpy dtype of arrays holding it (object for BYTES)."""
    onnx: str
    """ONNX Runtime's type string (`tensor(float)`)."""
    itemsize: int
    """Bytes per element in the binary encoding; 0 for BYTES (variable)."""

    @property
    def config_name(self) -> str:
        """Triton model-config name (`TYPE_FP32`; BYTES is `TYPE_STRING`)."""
        return "TYPE_STRING" if self.name == "BYTES" else f"TYPE_{self.name}"


def _dt(name: str, np_dtype: npt.DTypeLike, onnx: str) -> DataType:
    dtype = np.dtype(np_dtype)
    return DataType(name, dtype, onnx, 0 if name == "BYTES" else dtype.itemsize)


_ALL = (
    _dt("BOOL", np.bool_, "tensor(bool)"),
    _dt("UINT8", np.uint8, "tensor(uint8)"),
    _dt("UINT16", np.uint16, "tensor(uint16)"),
    _dt("UINT32", np.uint32, "tensor(uint32)"),
    _dt("UINT64", np.uint64, "tensor(uint64)"),
    _dt("INT8", np.int8, "tensor(int8)"),
    _dt("INT16", np.int16, "tensor(int16)"),
    _dt("INT32", np.int32, "tensor(int32)"),
    _dt("INT64", np.int64, "tensor(int64)"),
    _dt("FP16", np.float16, "tensor(float16)"),
    _dt("FP32", np.float32, "tensor(float)"),
    _dt("FP64", np.float64, "tensor(double)"),
    _dt("BF16", ml_dtypes.bfloat16, "tensor(bfloat16)"),
    _dt("BYTES", np.object_, "tensor(string)"),
)

BY_NAME: dict[str, DataType] = {d.name: d for d in _ALL}
BY_ONNX: dict[str, DataType] = {d.onnx: d for d in _ALL}
BY_CONFIG_NAME: dict[str, DataType] = {d.config_name: d for d in _ALL}
_BY_NUMPY: dict[np.dtype[np.generic], DataType] = {d.numpy: d for d in _ALL}


def lookup(name: object) -> DataType:
    """The datatype called `name` in V2 requests (any JSON value may arrive), or InvalidInput naming it."""
    found = BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidInput(f"unsupported datatype {name!r}; expected one of {', '.join(BY_NAME)}")
    return found


def of_array(array: npt.NDArray[np.generic]) -> DataType:
    """The V2 datatype of a numpy array (str and bytes arrays are BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return BY_NAME["BYTES"]
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise InvalidInput(f"numpy dtype {array.dtype} has no V2 datatype") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


MAX_DIMS = 32
"""Most dimensions a request tensor may have (numpy's own limit is 64)."""
_MAX_EXTENT = int(np.iinfo(np.intp).max) // 16


def check_shape(shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """`shape` if numpy can hold a tensor of it; InvalidInput otherwise.

    Element counts are checked against the data elsewhere, but a shape with a zero dimension has no data, and
    numpy still refuses one whose other dimensions multiply past its index range: that must be the client's
    error, not a crash.
    """
    if len(shape) > MAX_DIMS:
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported"
        )
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    extent = 1
    for d in shape:
        extent *= max(d, 1)
    if extent > _MAX_EXTENT:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} is too large")
    return shape


def serialize_bytes(array: npt.NDArray[np.generic]) -> bytes:
    """BYTES elements in row-major order, each as a 4-byte little-endian length then the bytes."""
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for item in array.ravel(order="C"):
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(buf: bytes | memoryview, count: int, name: str) -> npt.NDArray[np.object_]:
    """Parse `count` length-prefixed BYTES elements; InvalidInput if the buffer is short or long."""
    view = memoryview(buf)
    if count * 4 > len(view):
        raise InvalidInput(
            f"input {name!r}: {len(view)} bytes of BYTES data cannot hold the {count} elements"
            " its shape needs"
        )
    out = np.empty(count, dtype=np.object_)
    offset = 0
    total = len(view)
    for i in range(count):
        if offset + 4 > total:
            raise InvalidInput(
                f"input {name!r}: BYTES data holds fewer than the {count} elements its shape needs"
            )
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > total:
            raise InvalidInput(f"input {name!r}: BYTES element {i} claims {length} bytes past the end")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != total:
        raise InvalidInput(
            f"input {name!r}: BYTES data has {total - offset} bytes beyond its {count} elements"
        )
    return out


def from_raw(buf: bytes | memoryview, dtype: DataType, shape: tuple[int, ...], name: str) -> npt.NDArray[Any]:
    """A tensor from its binary encoding, checking the byte count against the shape."""
    count = element_count(shape)
    if dtype.name == "BYTES":
        return deserialize_bytes(buf, count, name).reshape(shape)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInput(
            f"input {name!r}: {len(buf)} bytes of {dtype.name} data,"
            f" expected {expected} for shape {list(shape)}"
        )
    return np.frombuffer(buf, dtype=dtype.numpy).reshape(shape)


def to_raw(array: npt.NDArray[Any]) -> bytes:
    """The binary encoding of a tensor."""
    if array.dtype.kind in ("O", "S", "U"):
        return serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()
