"""Request payloads for the V2 load generator: model metadata, random inputs, and pre-encoded bodies.

Everything here runs once before a run starts, so the hot loop only sends bytes: a JSON body, a binary-
extension body (JSON header, then the raw little-endian tensors), or a serialized gRPC `ModelInferRequest`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inferd.datatypes import BY_NAME, element_count, to_raw

BINARY_HEADER = "Inference-Header-Content-Length"
"""HTTP header giving the length of the JSON part of a binary-extension body."""

BYTES_ELEMENT_LEN = 8
"""Length of each random BYTES element."""


@dataclass(frozen=True)
class TensorMeta:
    """An input or output as the model's metadata describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    """-1 marks a variable dimension; a leading -1 is the batch dimension."""


@dataclass(frozen=True)
class ModelMeta:
    """The parts of V2 model metadata the load generator needs."""

    name: str
    versions: tuple[str, ...]
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


@dataclass(frozen=True)
class InputTensor:
    """One generated input; `data` has the concrete shape sent."""

    name: str
    datatype: str
    data: npt.NDArray[Any]

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.data.shape]


@dataclass(frozen=True)
class HttpBody:
    """A ready-to-send REST inference body and its headers."""

    data: bytes
    headers: dict[str, str]


def _tensor_meta(doc: Mapping[str, Any]) -> TensorMeta:
    return TensorMeta(str(doc["name"]), str(doc["datatype"]), tuple(int(d) for d in doc.get("shape", [])))


def parse_metadata_json(doc: Mapping[str, Any]) -> ModelMeta:
    """ModelMeta from the JSON of `GET /v2/models/{model}`."""
    try:
        return ModelMeta(
            name=str(doc["name"]),
            versions=tuple(str(v) for v in doc.get("versions") or ()),
            inputs=tuple(_tensor_meta(t) for t in doc.get("inputs") or ()),
            outputs=tuple(_tensor_meta(t) for t in doc.get("outputs") or ()),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed model metadata: {e!r}") from e


def metadata_from_grpc(resp: Any) -> ModelMeta:
    """ModelMeta from a gRPC `ModelMetadataResponse`."""

    def tensors(items: Any) -> tuple[TensorMeta, ...]:
        return tuple(TensorMeta(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return ModelMeta(
        name=resp.name,
        versions=tuple(resp.versions),
        inputs=tensors(resp.inputs),
        outputs=tensors(resp.outputs),
    )


def concrete_shape(shape: Sequence[int], batch_size: int) -> tuple[int, ...]:
    """The shape to send: a leading -1 becomes `batch_size`, any other -1 becomes 1."""
    out = [1 if d < 0 else d for d in shape]
    if shape and shape[0] < 0:
        out[0] = batch_size
    return tuple(out)


def rows_per_request(meta: ModelMeta, batch_size: int) -> int:
    """Rows each request carries: `batch_size` when the first input has a batch dimension, else 1."""
    if meta.inputs and meta.inputs[0].shape and meta.inputs[0].shape[0] < 0:
        return batch_size
    return 1


def random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> npt.NDArray[Any]:
    """Random data of a V2 datatype: normal floats, small non-negative integers, fair booleans, and short
    ASCII strings (as bytes) for BYTES."""
    try:
        dtype = BY_NAME[datatype]
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype!r}") from None
    n = element_count(shape)
    if datatype == "BYTES":
        codes = rng.integers(ord("a"), ord("z") + 1, size=(n, BYTES_ELEMENT_LEN), dtype=np.uint8)
        out = np.empty(n, dtype=np.object_)
        for i in range(n):
            out[i] = codes[i].tobytes()
        return out.reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    kind = dtype.numpy.kind
    if kind in ("i", "u"):
        return rng.integers(0, 16, size=shape).astype(dtype.numpy)
    return rng.standard_normal(shape).astype(np.float32).astype(dtype.numpy)


def make_inputs(meta: ModelMeta, batch_size: int, seed: int = 0) -> list[InputTensor]:
    """One random tensor per model input, shaped per its metadata."""
    if not meta.inputs:
        raise ValueError(f"model {meta.name!r} declares no inputs")
    rng = np.random.default_rng(seed)
    out = []
    for t in meta.inputs:
        out.append(
            InputTensor(
                t.name, t.datatype, random_array(t.datatype, concrete_shape(t.shape, batch_size), rng)
            )
        )
    return out


def json_data(array: npt.NDArray[Any]) -> list[Any]:
    """The flat row-major JSON `data` list of a tensor (BYTES as text, BF16/FP16 as floats)."""
    flat = array.ravel(order="C")
    if flat.dtype == np.object_:
        return [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in flat]
    if flat.dtype.kind not in "biuf":  # ml_dtypes.bfloat16 scalars are not JSON numbers
        flat = flat.astype(np.float32)
    result: list[Any] = flat.tolist()
    return result


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def json_body(inputs: Sequence[InputTensor]) -> HttpBody:
    """A plain JSON inference request; outputs come back as JSON."""
    doc = {
        "inputs": [
            {"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": json_data(t.data)}
            for t in inputs
        ]
    }
    return HttpBody(_dumps(doc), {"Content-Type": "application/json"})


def binary_body(inputs: Sequence[InputTensor], outputs: Sequence[str]) -> HttpBody:
    """A binary-extension request: the JSON header with `binary_data_size` per input, then the tensors'
    bytes in input order; every output (or, with no names known, all outputs) is requested binary."""
    raws = [to_raw(t.data) for t in inputs]
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": t.name,
                "shape": t.shape,
                "datatype": t.datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
            for t, raw in zip(inputs, raws, strict=True)
        ]
    }
    if outputs:
        doc["outputs"] = [{"name": o, "parameters": {"binary_data_output": True}} for o in outputs]
    else:
        doc["parameters"] = {"binary_data_output": True}
    header = _dumps(doc)
    return HttpBody(
        header + b"".join(raws),
        {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))},
    )


def grpc_request(model: str, version: str | None, inputs: Sequence[InputTensor]) -> Any:
    """A `ModelInferRequest` carrying the tensors in `raw_input_contents`; all outputs are returned."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=model, model_version=version or "")
    for t in inputs:
        tensor = req.inputs.add()
        tensor.name = t.name
        tensor.datatype = t.datatype
        tensor.shape.extend(t.shape)
        req.raw_input_contents.append(to_raw(t.data))
    return req
