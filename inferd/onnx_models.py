"""Small ONNX graphs built locally (no downloads): the demo repository, tests and benchmarks use them."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp(path: Path, sizes: list[int], seed: int = 0, batch: str | int = "batch") -> Path:
    """A ReLU MLP `sizes[0] -> ... -> sizes[-1]`, FP32 input `input` and output `output`."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        gemm_out = "output" if last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [gemm_out if last else f"pre{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"pre{i}"], [gemm_out]))
        prev = gemm_out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, sizes[-1]])],
        initializer=inits,
    )
    return _save(graph, path)


def heavy_mlp(path: Path, seed: int = 0) -> Path:
    """A compute-heavy MLP: 1024 -> 4096 -> 4096 -> 1024 -> 10, about 50 MFLOP per sample."""
    return mlp(path, [1024, 4096, 4096, 1024, 10], seed=seed)


def identity(path: Path, elem_type: int, dims: list[int | str], name: str = "identity") -> Path:
    """`output = Identity(input)` for any element type (BYTES models use TensorProto.STRING)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        name,
        [helper.make_tensor_value_info("input", elem_type, dims)],
        [helper.make_tensor_value_info("output", elem_type, dims)],
    )
    return _save(graph, path)


def add_sub(path: Path, width: int = 4) -> Path:
    """Two inputs of different dtypes: `sum = a + float(b)`, `diff = a - float(b)` (a FP32, b INT64)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "bf"], ["sum"]),
            helper.make_node("Sub", ["a", "bf"], ["diff"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("diff", TensorProto.FLOAT, ["batch", width]),
        ],
    )
    return _save(graph, path)
