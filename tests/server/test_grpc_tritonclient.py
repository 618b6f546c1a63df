"""The V2 gRPC transport through the official `tritonclient.grpc` client over real loopback."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer
from tests.models import IDENTITY_TYPES, identity_name

BATCHED_MODELS = [identity_name(dt) for dt in IDENTITY_TYPES] + ["add_sub", "mlp"]


@pytest.fixture
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        yield c
    finally:
        c.close()


def ort_run(path: Path, feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """The model file run by ONNX Runtime directly: the oracle for the server's results."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def sample(datatype: str, rows: int = 3) -> np.ndarray[Any, Any]:
    """A [rows, 4] array of `datatype` with distinct, type-specific values (extremes included)."""
    rng = np.random.default_rng(7)
    shape = (rows, 4)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if datatype == "BYTES":
        words = [b"", b"a", b"hello", b"\x00\x01 ctrl", "h\u00e9llo".encode(), b"x" * 300]
        return np.array([words[i % len(words)] for i in range(rows * 4)], dtype=np.object_).reshape(shape)
    if datatype == "BF16":
        return (rng.standard_normal(shape) * 100).astype(ml_dtypes.bfloat16)
    np_dtype = np.dtype(
        {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype, datatype.lower())
    )
    if np_dtype.kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(np_dtype)
    info = np.iinfo(np_dtype)
    arr = rng.integers(info.min, info.max, shape, dtype=np_dtype, endpoint=True)
    arr.flat[0], arr.flat[1] = info.min, info.max
    return arr


def infer_input(name: str, array: np.ndarray[Any, Any], datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def assert_status(exc: InferenceServerException, code: grpc.StatusCode) -> None:
    assert exc.status() == str(code), (exc.status(), exc.message())


# --- server and model queries -------------------------------------------------------------------------


def test_server_live_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "inferd"
    assert meta["version"]
    assert "binary_tensor_data" in meta["extensions"]
    assert "statistics" in meta["extensions"]


def test_model_metadata(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub", as_json=True)
    assert meta["name"] == "add_sub"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]}
    outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]}
    assert inputs == {"a": ("FP32", [-1, 4]), "b": ("INT64", [-1, 4])}
    assert outputs == {"sum": ("FP32", [-1, 4]), "diff": ("FP32", [-1, 4])}


def test_model_metadata_protobuf(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("versioned")
    assert list(meta.versions) == ["1", "2"]
    fixed = client.get_model_metadata("fixed")
    assert list(fixed.inputs[0].shape) == [2, 3]  # no batch dimension


@pytest.mark.parametrize(
    ("model", "max_batch", "inputs", "outputs"),
    [
        ("add_sub", 8, {"a": ("TYPE_FP32", [4]), "b": ("TYPE_INT64", [4])}, {"sum": ("TYPE_FP32", [4])}),
        ("mlp", 32, {"input": ("TYPE_FP32", [16])}, {"output": ("TYPE_FP32", [4])}),
        ("fixed", 0, {"input": ("TYPE_FP32", [2, 3])}, {"output": ("TYPE_FP32", [2, 3])}),
        ("identity_bytes", 8, {"input": ("TYPE_STRING", [4])}, {"output": ("TYPE_STRING", [4])}),
        ("identity_bf16", 8, {"input": ("TYPE_BF16", [4])}, {"output": ("TYPE_BF16", [4])}),
    ],
)
def test_model_config(
    client: grpcclient.InferenceServerClient,
    model: str,
    max_batch: int,
    inputs: dict[str, tuple[str, list[int]]],
    outputs: dict[str, tuple[str, list[int]]],
) -> None:
    config = client.get_model_config(model, as_json=True)["config"]
    assert config["name"] == model
    assert int(config.get("max_batch_size", 0)) == max_batch
    got_in = {t["name"]: (t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]}
    got_out = {t["name"]: (t["data_type"], [int(d) for d in t["dims"]]) for t in config["output"]}
    assert got_in == inputs
    for name, spec in outputs.items():
        assert got_out[name] == spec


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("versioned", "1")
    assert client.is_model_ready("versioned", "2")
    assert not client.is_model_ready("versioned", "3")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("broken_graph")
    assert not client.is_model_ready("broken_config")


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in index:
        by_name.setdefault(entry["name"], []).append(entry)
    for broken in ("broken_graph", "broken_config"):
        (entry,) = by_name[broken]
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"]
    assert "max_bach_delay" in by_name["broken_config"][0]["reason"]
    assert {e["version"] for e in by_name["versioned"]} == {"1", "2"}
    assert all(e["state"] == "READY" for e in by_name["add_sub"])
    assert {e["name"] for e in index if e["state"] == "READY"} >= set(BATCHED_MODELS)


# --- inference -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(IDENTITY_TYPES))
def test_identity_every_datatype(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    data = sample(datatype)
    result = client.infer(identity_name(datatype), [infer_input("input", data, datatype)])
    out = result.as_numpy("output")
    assert out.shape == data.shape
    assert result.get_output("output").datatype == datatype
    if datatype == "BYTES":
        assert out.tolist() == data.tolist()
    else:
        assert out.dtype == data.dtype
        # Bitwise: NaN-free here, but compare the raw bytes to catch any silent conversion.
        assert out.tobytes() == data.tobytes()
    response = result.get_response()
    assert response.model_name == identity_name(datatype)
    assert response.model_version == "1"


def test_identity_request_id_echoed(client: grpcclient.InferenceServerClient) -> None:
    data = sample("INT32", rows=1)
    result = client.infer("identity_int32", [infer_input("input", data, "INT32")], request_id="req-42")
    assert result.get_response().id == "req-42"


def add_sub_inputs(rows: int = 2) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    a = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 3
    b = (np.arange(rows * 4, dtype=np.int64).reshape(rows, 4) - 5) * 7
    return a, b


def test_add_sub_all_outputs(client: grpcclient.InferenceServerClient, model_repo: Path) -> None:
    a, b = add_sub_inputs()
    result = client.infer("add_sub", [infer_input("a", a, "FP32"), infer_input("b", b, "INT64")])
    expected = ort_run(model_repo / "add_sub" / "1" / "model.onnx", {"a": a, "b": b})
    assert {o.name for o in result.get_response().outputs} == {"sum", "diff"}
    np.testing.assert_array_equal(result.as_numpy("sum"), expected["sum"])
    np.testing.assert_array_equal(result.as_numpy("diff"), expected["diff"])


def test_add_sub_subset_of_outputs(client: grpcclient.InferenceServerClient, model_repo: Path) -> None:
    a, b = add_sub_inputs(rows=3)
    result = client.infer(
        "add_sub",
        [infer_input("b", b, "INT64"), infer_input("a", a, "FP32")],  # input order does not matter
        outputs=[grpcclient.InferRequestedOutput("diff")],
    )
    expected = ort_run(model_repo / "add_sub" / "1" / "model.onnx", {"a": a, "b": b})
    assert [o.name for o in result.get_response().outputs] == ["diff"]
    assert result.as_numpy("sum") is None
    np.testing.assert_array_equal(result.as_numpy("diff"), expected["diff"])


def test_mlp_matches_onnxruntime(client: grpcclient.InferenceServerClient, model_repo: Path) -> None:
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    result = client.infer("mlp", [infer_input("input", x, "FP32")])
    expected = ort_run(model_repo / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    out = result.as_numpy("output")
    assert out.shape == (5, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_fixed_shape_model(client: grpcclient.InferenceServerClient) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = client.infer("fixed", [infer_input("input", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("output"), x)


def test_specific_versions(client: grpcclient.InferenceServerClient, model_repo: Path) -> None:
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    outs = {}
    for version in ("1", "2"):
        result = client.infer("versioned", [infer_input("input", x, "FP32")], model_version=version)
        assert result.get_response().model_version == version
        expected = ort_run(model_repo / "versioned" / version / "model.onnx", {"input": x})["output"]
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-6, atol=1e-6)
        outs[version] = result.as_numpy("output")
    assert not np.allclose(outs["1"], outs["2"])
    latest = client.infer("versioned", [infer_input("input", x, "FP32")])
    assert latest.get_response().model_version == "2"
    np.testing.assert_array_equal(latest.as_numpy("output"), outs["2"])


def test_streaming_infer(client: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {}
    try:
        for i in range(6):
            data = np.full((1 + i % 3, 4), i, dtype=np.int32)
            sent[f"s{i}"] = data
            client.async_stream_infer(
                "identity_int32", [infer_input("input", data, "INT32")], request_id=f"s{i}"
            )
        # One bad request in the middle: the stream reports it and keeps serving.
        client.async_stream_infer(
            "no_such_model", [infer_input("input", sent["s0"], "INT32")], request_id="bad"
        )
        got: dict[str, np.ndarray[Any, Any]] = {}
        errors = []
        for _ in range(len(sent) + 1):
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result.as_numpy("output")
    finally:
        client.stop_stream()
    assert set(got) == set(sent)
    for key, data in sent.items():
        np.testing.assert_array_equal(got[key], data)
    assert len(errors) == 1
    assert "no_such_model" in str(errors[0])


def test_statistics_increase(client: grpcclient.InferenceServerClient) -> None:
    def counts() -> tuple[int, int, int]:
        stats = client.get_inference_statistics("identity_uint16", as_json=True)["model_stats"]
        (entry,) = stats
        assert entry["name"] == "identity_uint16"
        assert entry["version"] == "1"
        success = entry["inference_stats"]["success"]
        return (
            int(entry.get("inference_count", 0)),
            int(entry.get("execution_count", 0)),
            int(success.get("count", 0)),
        )

    before = counts()
    data = sample("UINT16", rows=2)
    for _ in range(3):
        client.infer("identity_uint16", [infer_input("input", data, "UINT16")])
    after = counts()
    assert after[0] >= before[0] + 6  # rows
    assert after[1] > before[1]  # batches
    assert after[2] == before[2] + 3  # successful requests
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"identity_uint16", "add_sub"} <= {e["name"] for e in everything}


# --- errors ------------------------------------------------------------------------------------------------


def test_unknown_model_not_found(client: grpcclient.InferenceServerClient) -> None:
    data = sample("FP32", rows=1)
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", [infer_input("input", data, "FP32")])
    assert_status(info.value, grpc.StatusCode.NOT_FOUND)
    assert "no_such_model" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert_status(info.value, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("no_such_model")
    assert_status(info.value, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("no_such_model")
    assert_status(info.value, grpc.StatusCode.NOT_FOUND)


def test_unknown_version_not_found(client: grpcclient.InferenceServerClient) -> None:
    x = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("versioned", [infer_input("input", x, "FP32")], model_version="7")
    assert_status(info.value, grpc.StatusCode.NOT_FOUND)
    assert "'7'" in info.value.message()


def test_broken_model_unavailable(client: grpcclient.InferenceServerClient) -> None:
    x = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("broken_config", [infer_input("input", x, "FP32")])
    assert_status(info.value, grpc.StatusCode.UNAVAILABLE)


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([("input", np.zeros((1, 4), np.float64), "FP64")], "datatype FP64"),
        ([("input", np.zeros((1, 5), np.float32), "FP32")], "shape"),
        ([("input", np.zeros((9, 4), np.float32), "FP32")], "max_batch_size"),
        ([("nope", np.zeros((1, 4), np.float32), "FP32")], "'nope'"),
    ],
)
def test_wrong_input_invalid_argument(
    client: grpcclient.InferenceServerClient, inputs: list[tuple[str, Any, str]], fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity_fp32", [infer_input(*spec) for spec in inputs])
    assert_status(info.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert fragment in info.value.message()


def test_bytes_must_be_utf8_for_onnx(client: grpcclient.InferenceServerClient) -> None:
    # ONNX Runtime string tensors hold text: non-UTF-8 BYTES are refused as the client's error.
    data = np.array([[b"\xff\xfe", b"a", b"b", b"c"]], dtype=np.object_)
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity_bytes", [infer_input("input", data, "BYTES")])
    assert_status(info.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert "UTF-8" in info.value.message()


def test_server_survives_errors(client: grpcclient.InferenceServerClient) -> None:
    data = sample("FP32", rows=1)
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            client.infer("identity_fp32", [infer_input("input", data.astype(np.float64), "FP64")])
    result = client.infer("identity_fp32", [infer_input("input", data, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("output"), data)


# --- typed contents through the raw stub ------------------------------------------------------------------


@pytest.fixture
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub, model_repo: Path) -> None:
    a, b = add_sub_inputs(rows=2)
    request = service_pb2.ModelInferRequest(model_name="add_sub", id="typed")
    ta = request.inputs.add(name="a", datatype="FP32", shape=[2, 4])
    ta.contents.fp32_contents.extend(a.reshape(-1).tolist())
    tb = request.inputs.add(name="b", datatype="INT64", shape=[2, 4])
    tb.contents.int64_contents.extend(b.reshape(-1).tolist())
    request.outputs.add(name="sum")
    response = stub.ModelInfer(request, timeout=60)
    assert response.id == "typed"
    assert [o.name for o in response.outputs] == ["sum"]
    assert list(response.outputs[0].shape) == [2, 4]
    assert response.outputs[0].datatype == "FP32"
    out = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 4)
    expected = ort_run(model_repo / "add_sub" / "1" / "model.onnx", {"a": a, "b": b})["sum"]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("datatype", "field", "values", "np_dtype"),
    [
        ("BOOL", "bool_contents", [True, False, True, True], np.bool_),
        ("INT8", "int_contents", [-128, 127, 0, -1], np.int8),
        ("UINT16", "uint_contents", [0, 65535, 1, 2], np.uint16),
        ("UINT64", "uint64_contents", [0, 2**64 - 1, 2**63, 5], np.uint64),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1, 0, -5], np.int64),
        ("FP64", "fp64_contents", [0.1, -1e300, 2.5, 0.0], np.float64),
    ],
)
def test_typed_contents_datatypes(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    datatype: str,
    field: str,
    values: list[Any],
    np_dtype: Any,
) -> None:
    request = service_pb2.ModelInferRequest(model_name=identity_name(datatype))
    tensor = request.inputs.add(name="input", datatype=datatype, shape=[1, 4])
    getattr(tensor.contents, field).extend(values)
    response = stub.ModelInfer(request, timeout=60)
    out = np.frombuffer(response.raw_output_contents[0], dtype=np_dtype)
    np.testing.assert_array_equal(out, np.array(values, dtype=np_dtype))


def test_typed_bytes_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_bytes")
    tensor = request.inputs.add(name="input", datatype="BYTES", shape=[1, 4])
    tensor.contents.bytes_contents.extend([b"a", b"", b"hello", "\u00e9".encode()])
    response = stub.ModelInfer(request, timeout=60)
    raw = response.raw_output_contents[0]
    items = []
    offset = 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert items == [b"a", b"", b"hello", "\u00e9".encode()]
