"""The ONNX Runtime adapter: CPU by default, CUDA when the installed ONNX Runtime has it."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inferd import datatypes
from inferd.errors import InvalidInput, ModelLoadError
from inferd.repository.model_config import ModelConfig, TensorConfig
from inferd.runtimes.base import ModelSignature
from inferd.tensors import Array, TensorSpec

MODEL_FILE = "model.onnx"
DERIVED_MAX_BATCH_SIZE = 32
"""max_batch_size given to models without one in config.yaml whose graph has a variable first dimension."""

_BF16_ONNX_TYPE = 16  # onnx.TensorProto.BFLOAT16
_OUT_OF_MEMORY = ("failed to allocate memory", "bad allocation", "bad_alloc", "out of memory")
"""How ONNX Runtime's errors say an allocation failed (CPU arena, std::bad_alloc, CUDA)."""


def providers_for(choice: str) -> list[str]:
    available = ort.get_available_providers()
    if choice == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelLoadError("execution_provider cuda requested but ONNX Runtime has no CUDA provider")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntime:
    """One ONNX model version in one InferenceSession (safe to run from several threads)."""

    def __init__(self, session: ort.InferenceSession, signature: ModelSignature) -> None:
        self._session = session
        self._signature = signature
        self._needs_ortvalues = any(
            s.datatype.name == "BF16" for s in (*signature.inputs, *signature.outputs)
        )
        self._string_inputs = {s.name for s in signature.inputs if s.datatype.name == "BYTES"}
        self._string_outputs = {s.name for s in signature.outputs if s.datatype.name == "BYTES"}

    @classmethod
    def load(cls, version_dir: Path, config: ModelConfig) -> OnnxRuntime:
        path = version_dir / MODEL_FILE
        if not path.is_file():
            raise ModelLoadError(f"{path} not found")
        options = ort.SessionOptions()
        if config.intra_op_threads:
            options.intra_op_num_threads = config.intra_op_threads
        if config.inter_op_threads:
            options.inter_op_num_threads = config.inter_op_threads
        options.log_severity_level = 3
        # Spinning worker threads would steal the cores the event loop needs to parse requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers_for(config.execution_provider)
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # ONNX Runtime raises its own exception types for bad graphs
            raise ModelLoadError(f"ONNX Runtime could not load {path.name}: {exc}") from None
        return cls(session, _signature(session, config))

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        feeds: dict[str, Any] = {}
        for name, array in inputs.items():
            if name in self._string_inputs:
                feeds[name] = _to_str_array(array, name)
            else:
                feeds[name] = array
        names = list(outputs)
        try:
            if self._needs_ortvalues:
                results = self._run_ortvalues(feeds, names)
            else:
                results = self._session.run(names, feeds)
        except Exception as exc:
            # Out of memory is a fault of the version (it is taken out of service), not of one request.
            if any(marker in str(exc).lower() for marker in _OUT_OF_MEMORY):
                raise MemoryError(str(exc)) from exc
            raise
        out: dict[str, Array] = {}
        for name, value in zip(names, results, strict=True):
            if name in self._string_outputs:
                value = np.vectorize(_to_bytes, otypes=[np.object_])(value) if value.size else value
            out[name] = value
        return out

    def _run_ortvalues(self, feeds: dict[str, Any], names: list[str]) -> list[Array]:
        values = {}
        for name, array in feeds.items():
            if array.dtype == datatypes.BY_NAME["BF16"].numpy:
                values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(array).view(np.uint16), _BF16_ONNX_TYPE
                )
            else:
                values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        results = self._session.run_with_ort_values(names, values)
        return [_ortvalue_to_numpy(v) for v in results]

    def unload(self) -> None:
        del self._session


def _ortvalue_to_numpy(value: Any) -> Array:
    if value.data_type() != "tensor(bfloat16)":
        return np.asarray(value.numpy())
    shape = tuple(value.shape())
    count = datatypes.element_count(shape)
    raw = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.array(raw, dtype=np.uint16).view(datatypes.BY_NAME["BF16"].numpy).reshape(shape)


def _to_str_array(array: Array, name: str) -> Array:
    try:
        return (
            np.vectorize(
                lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b), otypes=[np.object_]
            )(array)
            if array.size
            else array.astype(np.object_)
        )
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: ONNX string tensors take UTF-8 text") from None


def _to_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _graph_specs(args: list[Any], batched: bool, kind: str) -> tuple[TensorSpec, ...]:
    specs = []
    for arg in args:
        dt = datatypes.BY_ONNX.get(arg.type)
        if dt is None:
            raise ModelLoadError(f"{kind} {arg.name!r} has type {arg.type}, which inferd cannot serve")
        dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        if batched:
            if not dims or dims[0] != -1:
                raise ModelLoadError(
                    f"{kind} {arg.name!r} has shape {list(dims)}: max_batch_size > 0 needs a variable "
                    "first (batch) dimension; set max_batch_size: 0"
                )
            dims = dims[1:]
        specs.append(TensorSpec(arg.name, dt, dims))
    return tuple(specs)


def _first_dim_dynamic(args: list[Any]) -> bool:
    return all(a.shape and not (isinstance(a.shape[0], int) and a.shape[0] >= 0) for a in args)


def _signature(session: ort.InferenceSession, config: ModelConfig) -> ModelSignature:
    graph_inputs, graph_outputs = session.get_inputs(), session.get_outputs()
    max_batch = config.max_batch_size
    if max_batch is None:
        max_batch = DERIVED_MAX_BATCH_SIZE if _first_dim_dynamic([*graph_inputs, *graph_outputs]) else 0
    inputs = _graph_specs(graph_inputs, max_batch > 0, "input")
    outputs = _graph_specs(graph_outputs, max_batch > 0, "output")
    if config.inputs is not None:
        inputs = _check_declared(config.inputs, inputs, "input")
    if config.outputs is not None:
        outputs = _check_declared(config.outputs, outputs, "output")
    return ModelSignature("onnxruntime_onnx", inputs, outputs, max_batch, text_bytes=True)


def _check_declared(
    declared: list[TensorConfig], graph: tuple[TensorSpec, ...], kind: str
) -> tuple[TensorSpec, ...]:
    by_name = {s.name: s for s in graph}
    if {d.name for d in declared} != set(by_name):
        raise ModelLoadError(
            f"config.yaml {kind}s {sorted(d.name for d in declared)} do not match the graph's "
            f"{sorted(by_name)}"
        )
    result = []
    for d in declared:
        spec = by_name[d.name]
        dt = datatypes.BY_NAME.get(d.datatype)
        if dt is None:
            raise ModelLoadError(f"config.yaml {kind} {d.name!r}: unknown datatype {d.datatype!r}")
        if dt != spec.datatype:
            raise ModelLoadError(
                f"config.yaml {kind} {d.name!r} is {d.datatype} but the graph has {spec.datatype.name}"
            )
        if len(d.dims) != len(spec.dims) or any(
            g >= 0 and c != g for c, g in zip(d.dims, spec.dims, strict=True)
        ):
            raise ModelLoadError(
                f"config.yaml {kind} {d.name!r} dims {d.dims} do not match the graph's {list(spec.dims)}"
            )
        result.append(TensorSpec(d.name, dt, tuple(d.dims)))
    return tuple(result)
