"""The official tritonclient.http client against a real inferd over loopback."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer
from tests.models import IDENTITY_TYPES, identity_name

NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16,
    "BYTES": np.object_,
}


def sample(datatype: str, rows: int = 3) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        arr = np.array([f"s{i}-é".encode() for i in range(rows * 4)], dtype=np.object_)
        return arr.reshape(rows, 4)
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 4)).astype(np.bool_)
    dtype = np.dtype(NUMPY[datatype])
    if dtype.kind in "iu":
        return rng.integers(0, 100, (rows, 4)).astype(dtype)
    return rng.standard_normal((rows, 4)).astype(np.float32).astype(dtype)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, concurrency=4)


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "inferd"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("datatype", list(IDENTITY_TYPES))
@pytest.mark.parametrize("binary", [True, False])
def test_infer_every_datatype(client: httpclient.InferenceServerClient, datatype: str, binary: bool) -> None:
    if datatype == "BF16" and not binary:
        pytest.skip("tritonclient sends BF16 only as binary data")
    data = sample(datatype)
    inp = httpclient.InferInput("input", list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = client.infer(identity_name(datatype), [inp], outputs=[out])
    got = result.as_numpy("output")
    assert got.shape == data.shape
    if datatype == "BYTES":
        # tritonclient returns JSON BYTES as str and binary BYTES as bytes.
        want = data.tolist() if binary else [[b.decode() for b in row] for row in data.tolist()]
        assert got.tolist() == want
    else:
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


def _add_sub_inputs(binary: bool) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    b = np.arange(8, dtype=np.int64).reshape(2, 4) * 7 - 20
    ia = httpclient.InferInput("a", [2, 4], "FP32")
    ia.set_data_from_numpy(a, binary_data=binary)
    ib = httpclient.InferInput("b", [2, 4], "INT64")
    ib.set_data_from_numpy(b, binary_data=binary)
    return [ia, ib], a, b


@pytest.mark.parametrize("binary", [True, False])
def test_two_inputs_all_outputs_match_onnxruntime(
    client: httpclient.InferenceServerClient, model_repo: Path, binary: bool
) -> None:
    inputs, a, b = _add_sub_inputs(binary)
    result = client.infer("add_sub", inputs)
    session = ort.InferenceSession(str(model_repo / "add_sub" / "1" / "model.onnx"))
    want_sum, want_diff = session.run(["sum", "diff"], {"a": a, "b": b})
    np.testing.assert_array_equal(result.as_numpy("sum"), want_sum)
    np.testing.assert_array_equal(result.as_numpy("diff"), want_diff)


def test_output_subset(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = _add_sub_inputs(True)
    result = client.infer("add_sub", inputs, outputs=[httpclient.InferRequestedOutput("diff")])
    np.testing.assert_array_equal(result.as_numpy("diff"), a - b.astype(np.float32))
    assert result.as_numpy("sum") is None
    assert [o["name"] for o in result.get_response()["outputs"]] == ["diff"]


def test_derived_config_mlp_matches_onnxruntime(
    client: httpclient.InferenceServerClient, model_repo: Path
) -> None:
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 32  # derived from the graph's variable batch dimension
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [16]}]
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    inp = httpclient.InferInput("input", [5, 16], "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("mlp", [inp]).as_numpy("output")
    session = ort.InferenceSession(str(model_repo / "mlp" / "1" / "model.onnx"))
    np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-6)


def test_metadata_ready_and_versions(client: httpclient.InferenceServerClient, model_repo: Path) -> None:
    meta = client.get_model_metadata("add_sub")
    assert meta["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "b", "datatype": "INT64", "shape": [-1, 4]},
    ]
    assert len(meta["parameters"]["sha256"]) == 64
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("versioned", "1") and client.is_model_ready("versioned", "2")
    assert not client.is_model_ready("versioned", "3")
    assert not client.is_model_ready("broken_graph")
    assert client.get_model_metadata("versioned")["versions"] == ["1", "2"]
    x = np.ones((1, 4), dtype=np.float32)
    for version in ("1", "2"):
        inp = httpclient.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("versioned", [inp], model_version=version).as_numpy("output")
        session = ort.InferenceSession(str(model_repo / "versioned" / version / "model.onnx"))
        np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-6)


def test_model_without_batch_dimension(client: httpclient.InferenceServerClient) -> None:
    assert client.get_model_config("fixed")["max_batch_size"] == 0
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inp = httpclient.InferInput("input", [2, 3], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("fixed", [inp]).as_numpy("output"), x)


def test_broken_models_are_reported_beside_good_ones(client: httpclient.InferenceServerClient) -> None:
    index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index()}
    assert index[("broken_graph", "")]["state"] == "UNAVAILABLE"
    assert "ONNX Runtime could not load" in index[("broken_graph", "")]["reason"]
    assert index[("broken_config", "")]["state"] == "UNAVAILABLE"
    assert "max_bach_delay" in index[("broken_config", "")]["reason"]
    assert index[("add_sub", "1")]["state"] == "READY"
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("broken_graph")
    assert err.value.status() == "503"


def test_statistics_count_inferences(client: httpclient.InferenceServerClient) -> None:
    def count() -> int:
        return int(
            client.get_inference_statistics("add_sub")["model_stats"][0]["inference_stats"]["success"][
                "count"
            ]
        )

    before = count()
    inputs, _, _ = _add_sub_inputs(True)
    client.infer("add_sub", inputs)
    assert count() == before + 1


def test_unknown_model_is_404(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no_such_model")
    assert err.value.status() == "404"
    assert "no_such_model" in err.value.message()
