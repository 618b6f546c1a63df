"""The V2 REST body: JSON tensors and the binary tensor extension, in both directions.

A binary request starts with a JSON header of `Inference-Header-Content-Length` bytes; inputs with a
`binary_data_size` parameter take their bytes, in order, from what follows. Outputs are returned binary when
asked (`binary_data` per output, or `binary_data_output` for all).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from inferd import datatypes
from inferd.errors import InvalidInput
from inferd.tensors import Array, InferRequest, InferResponse, OutputRequest, Tensor, uint_parameter

HEADER_LENGTH = "inference-header-content-length"


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers, got {value!r}")
    return datatypes.check_shape(tuple(value), name)


def _from_json_data(data: Any, dtype: datatypes.DataType, shape: tuple[int, ...], name: str) -> Array:
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"input {name!r}: data is a ragged nested list") from None
    count = datatypes.element_count(shape)
    if arr.size != count:
        raise InvalidInput(
            f"input {name!r}: {arr.size} data elements for shape {list(shape)}, which needs {count}"
        )
    kind = arr.dtype.kind
    if arr.size == 0:
        return np.zeros(shape, dtype=dtype.numpy) if dtype.name != "BYTES" else np.empty(shape, np.object_)
    if dtype.name == "BYTES":
        # numpy turns numbers mixed with strings into strings: look at the JSON values themselves.
        if kind != "U" or not all(isinstance(v, str) for v in np.array(data, dtype=np.object_).flat):
            raise InvalidInput(f"input {name!r}: BYTES data must be JSON strings")
        out = np.empty(count, dtype=np.object_)
        out[:] = [s.encode("utf-8") for s in arr.reshape(-1).tolist()]
        return out.reshape(shape)
    if kind == "f" and dtype.numpy.kind in "iu":
        return _json_integers(data, dtype, shape, name)
    ok_kinds = {"b": "b", "i": "iub", "u": "iub", "f": "iuf", "V": "iuf"}[dtype.numpy.kind]
    if kind not in ok_kinds:
        raise InvalidInput(f"input {name!r}: data is not valid {dtype.name} (found {arr.dtype.name} values)")
    with np.errstate(all="ignore"):
        cast = arr.astype(dtype.numpy)
    if kind in "iu" and dtype.numpy.kind in "iu" and not np.array_equal(cast, arr):
        raise InvalidInput(f"input {name!r}: values out of range for {dtype.name}")
    if dtype.numpy.kind in "fV" and not np.isfinite(cast).all():  # JSON has no inf or nan: an overflow
        raise InvalidInput(f"input {name!r}: values out of range for {dtype.name}")
    return cast.reshape(shape)


def _json_integers(data: Any, dtype: datatypes.DataType, shape: tuple[int, ...], name: str) -> Array:
    """Integer data numpy read as float (int64 and uint64 values mixed): check the JSON values themselves."""
    values = np.array(data, dtype=np.object_).reshape(-1).tolist()
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise InvalidInput(f"input {name!r}: data is not valid {dtype.name} (found non-integer values)")
    info = np.iinfo(dtype.numpy.name)
    if min(values) < info.min or max(values) > info.max:
        raise InvalidInput(f"input {name!r}: values out of range for {dtype.name}")
    return np.array(values, dtype=dtype.numpy).reshape(shape)


def decode_request(body: bytes, header_length: str | None, model: str, version: str | None) -> InferRequest:
    """Parse a V2 infer body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        try:
            hlen = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length!r} is not an integer"
            ) from None
        if not 0 < hlen <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {hlen} is outside the body's {len(body)} bytes"
            )
        header, binary = body[:hlen], memoryview(body)[hlen:]
    else:
        header, binary = body, memoryview(b"")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    doc = _obj(doc, "request body")
    params = _obj(doc.get("parameters") or {}, "parameters")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request has no 'inputs' list")
    offset = 0
    inputs: list[Tensor] = []
    for i, raw in enumerate(raw_inputs):
        raw = _obj(raw, f"inputs[{i}]")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"inputs[{i}] has no 'name' string")
        dtype = datatypes.lookup(raw.get("datatype"))
        shape = _shape(raw.get("shape"), name)
        iparams = _obj(raw.get("parameters") or {}, f"input {name!r} parameters")
        size = iparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} runs past the"
                    f" {len(binary)} bytes of binary data"
                )
            data = datatypes.from_raw(binary[offset : offset + size], dtype, shape, name)
            offset += size
        elif "data" in raw:
            data = _from_json_data(raw["data"], dtype, shape, name)
        else:
            raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
        inputs.append(Tensor(name, dtype, data))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=_outputs(doc.get("outputs"), params),
        id=_id(doc.get("id")),
        timeout_us=uint_parameter(params, "timeout"),
        priority=uint_parameter(params, "priority") or 0,
        parameters=params,
    )


def _id(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput("'id' must be a string")
    return value


def _outputs(value: Any, params: dict[str, Any]) -> list[OutputRequest] | None:
    default_binary = params.get("binary_data_output")
    if default_binary is not None and not isinstance(default_binary, bool):
        raise InvalidInput("parameter 'binary_data_output' must be true or false")
    if value is None or value == []:  # none named: all of them (as in gRPC, where an empty list is absence)
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    result = []
    for i, raw in enumerate(value):
        raw = _obj(raw, f"outputs[{i}]")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{i}] has no 'name' string")
        oparams = _obj(raw.get("parameters") or {}, f"output {name!r} parameters")
        if oparams.get("classification"):
            raise InvalidInput(f"output {name!r}: the classification extension is not supported")
        binary = oparams.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output {name!r}: binary_data must be true or false")
        result.append(OutputRequest(name, binary))
    return result


def _json_data(array: Array) -> Any:
    flat = array.reshape(-1)
    if flat.dtype.kind == "O":
        return [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in flat.tolist()]
    if flat.dtype == datatypes.BY_NAME["BF16"].numpy:
        flat = flat.astype(np.float32)
    return np.ascontiguousarray(flat)


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary outputs, the JSON header's length."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wanted = {o.name: o.binary for o in request.outputs} if request.outputs is not None else {}
    outputs = []
    blobs: list[bytes] = []
    for t in response.outputs:
        binary = wanted.get(t.name)
        binary = default_binary if binary is None else binary
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype.name, "shape": list(t.shape)}
        if binary:
            raw = datatypes.to_raw(t.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(t.data)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
