"""Input generation from V2 metadata and the encodings of pre-built request bodies."""

from __future__ import annotations

import json
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt
import pytest

from inferd.datatypes import BY_NAME, from_raw
from inferd.loadgen.v2_inputs import (
    BINARY_HEADER,
    InputTensor,
    ModelMeta,
    TensorMeta,
    binary_body,
    concrete_shape,
    grpc_request,
    json_body,
    make_inputs,
    parse_metadata_json,
    random_array,
    rows_per_request,
)

ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
ALL_TYPES += ["FP16", "FP32", "FP64", "BF16", "BYTES"]


def _meta(*inputs: TensorMeta, outputs: tuple[TensorMeta, ...] = ()) -> ModelMeta:
    return ModelMeta("m", ("1",), tuple(inputs), outputs)


def _decode_binary(
    body: bytes, headers: dict[str, str]
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Split a binary-extension body into its JSON header and tensors, as a server would."""
    header_len = int(headers[BINARY_HEADER])
    header = json.loads(body[:header_len])
    offset = header_len
    tensors = {}
    for t in header["inputs"]:
        size = t["parameters"]["binary_data_size"]
        raw = body[offset : offset + size]
        offset += size
        tensors[t["name"]] = from_raw(raw, BY_NAME[t["datatype"]], tuple(t["shape"]), t["name"])
    assert offset == len(body), "trailing bytes after the last tensor"
    return header, tensors


def test_parse_metadata_json() -> None:
    meta = parse_metadata_json(
        {
            "name": "mlp",
            "versions": ["1", "2"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
        }
    )
    assert meta == ModelMeta(
        "mlp",
        ("1", "2"),
        (TensorMeta("input", "FP32", (-1, 256)),),
        (TensorMeta("output", "FP32", (-1, 10)),),
    )


def test_parse_metadata_json_rejects_malformed() -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_metadata_json({"name": "m", "inputs": [{"name": "x"}]})


@pytest.mark.parametrize(
    ("shape", "batch", "expected"),
    [
        ((-1, 256), 8, (8, 256)),
        ((-1, -1, 3), 4, (4, 1, 3)),
        ((2, -1), 4, (2, 1)),
        ((5,), 4, (5,)),
        ((), 4, ()),
    ],
)
def test_concrete_shape(shape: tuple[int, ...], batch: int, expected: tuple[int, ...]) -> None:
    assert concrete_shape(shape, batch) == expected


def test_rows_per_request_follows_the_batch_dimension() -> None:
    assert rows_per_request(_meta(TensorMeta("x", "FP32", (-1, 4))), 16) == 16
    assert rows_per_request(_meta(TensorMeta("x", "FP32", (3, 4))), 16) == 1


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_random_array_has_the_datatype_and_shape(datatype: str) -> None:
    arr = random_array(datatype, (3, 5), np.random.default_rng(0))
    assert arr.shape == (3, 5)
    if datatype == "BYTES":
        assert arr.dtype == np.object_
        assert all(isinstance(x, bytes) and len(x) > 0 for x in arr.ravel())
    else:
        assert arr.dtype == BY_NAME[datatype].numpy
    if datatype == "BF16":
        assert arr.dtype == ml_dtypes.bfloat16


def test_random_array_rejects_unknown_datatype() -> None:
    with pytest.raises(ValueError, match="unsupported datatype"):
        random_array("COMPLEX64", (1,), np.random.default_rng(0))


def test_make_inputs_is_deterministic_per_seed() -> None:
    meta = _meta(TensorMeta("a", "FP32", (-1, 4)), TensorMeta("b", "INT64", (-1, 4)))
    first, again = make_inputs(meta, 2, seed=3), make_inputs(meta, 2, seed=3)
    assert [t.shape for t in first] == [[2, 4], [2, 4]]
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x.data, y.data)


def test_make_inputs_needs_inputs() -> None:
    with pytest.raises(ValueError, match="no inputs"):
        make_inputs(_meta(), 1)


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_binary_body_round_trips(datatype: str) -> None:
    meta = _meta(
        TensorMeta("x", datatype, (-1, 3, -1)),
        TensorMeta("y", "FP32", (-1, 2)),
        outputs=(TensorMeta("out", "FP32", (-1, 1)),),
    )
    inputs = make_inputs(meta, 4)
    body = binary_body(inputs, ["out"])
    assert body.headers["Content-Type"] == "application/octet-stream"
    header, tensors = _decode_binary(body.data, body.headers)
    assert [t["name"] for t in header["inputs"]] == ["x", "y"]
    assert header["inputs"][0]["shape"] == [4, 3, 1]
    assert header["inputs"][0]["datatype"] == datatype
    assert "data" not in header["inputs"][0]
    assert header["outputs"] == [{"name": "out", "parameters": {"binary_data_output": True}}]
    for t in inputs:
        assert tensors[t.name].shape == t.data.shape
        np.testing.assert_array_equal(tensors[t.name], t.data)


def test_binary_body_bytes_elements_are_length_prefixed() -> None:
    arr = np.array([b"ab", b"", b"xyz"], dtype=np.object_)
    body = binary_body([InputTensor("s", "BYTES", arr)], [])
    header_len = int(body.headers[BINARY_HEADER])
    assert body.data[header_len:] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00xyz"
    header = json.loads(body.data[:header_len])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 4 * 3 + 5}
    assert header["parameters"] == {"binary_data_output": True}


def test_binary_body_is_little_endian() -> None:
    body = binary_body([InputTensor("i", "INT32", np.array([1, 256], dtype=np.int32))], [])
    assert body.data[int(body.headers[BINARY_HEADER]) :] == b"\x01\x00\x00\x00\x00\x01\x00\x00"


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_json_body_round_trips(datatype: str) -> None:
    inputs = make_inputs(_meta(TensorMeta("x", datatype, (-1, 2))), 3)
    body = json_body(inputs)
    assert body.headers == {"Content-Type": "application/json"}
    doc = json.loads(body.data)
    (t,) = doc["inputs"]
    assert (t["name"], t["shape"], t["datatype"]) == ("x", [3, 2], datatype)
    expected = inputs[0].data.ravel()
    assert len(t["data"]) == expected.size
    if datatype == "BYTES":
        assert [s.encode() for s in t["data"]] == list(expected)
    else:
        decoded = np.array(t["data"]).astype(BY_NAME[datatype].numpy)
        np.testing.assert_array_equal(decoded, expected)


def test_grpc_request_carries_raw_contents() -> None:
    from tritonclient.grpc import service_pb2

    meta = _meta(TensorMeta("a", "FP32", (-1, 4)), TensorMeta("s", "BYTES", (-1,)))
    inputs = make_inputs(meta, 2)
    wire = grpc_request("m", "1", inputs).SerializeToString()
    req = service_pb2.ModelInferRequest.FromString(wire)
    assert (req.model_name, req.model_version) == ("m", "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in req.inputs] == [
        ("a", "FP32", [2, 4]),
        ("s", "BYTES", [2]),
    ]
    assert len(req.outputs) == 0
    a = from_raw(req.raw_input_contents[0], BY_NAME["FP32"], (2, 4), "a")
    s = from_raw(req.raw_input_contents[1], BY_NAME["BYTES"], (2,), "s")
    np.testing.assert_array_equal(a, inputs[0].data)
    np.testing.assert_array_equal(s, inputs[1].data)
