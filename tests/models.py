"""Builds the tiny real model repositories the tests serve."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto

from inferd import onnx_models

# V2 datatype -> ONNX element type, for one identity model per datatype.
IDENTITY_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}


def identity_name(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


def build_repository(root: Path) -> Path:
    """Good models of every datatype, a two-input model, an MLP, and two broken models."""
    for dt, elem in IDENTITY_TYPES.items():
        onnx_models.identity(root / identity_name(dt) / "1" / "model.onnx", elem, ["batch", 4])
        (root / identity_name(dt) / "config.yaml").write_text(
            "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_ms: 1\n"
        )
    onnx_models.add_sub(root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.yaml").write_text(
        "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_ms: 1\n"
    )
    onnx_models.mlp(root / "mlp" / "1" / "model.onnx", [16, 32, 4])  # no config.yaml: derived
    onnx_models.identity(root / "fixed" / "1" / "model.onnx", TensorProto.FLOAT, [2, 3])  # no batch dim
    # Two versions with a policy that serves both.
    onnx_models.mlp(root / "versioned" / "1" / "model.onnx", [4, 8, 2], seed=1)
    onnx_models.mlp(root / "versioned" / "2" / "model.onnx", [4, 8, 2], seed=2)
    (root / "versioned" / "config.yaml").write_text("version_policy:\n  all: true\n")
    # Broken: not an ONNX file; and a config with an unknown key.
    (root / "broken_graph" / "1").mkdir(parents=True)
    (root / "broken_graph" / "1" / "model.onnx").write_bytes(b"this is not onnx")
    onnx_models.identity(root / "broken_config" / "1" / "model.onnx", TensorProto.FLOAT, ["batch", 4])
    (root / "broken_config" / "config.yaml").write_text("max_batch_size: 4\nmax_bach_delay: 3\n")
    return root
