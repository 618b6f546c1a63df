"""The interface every tensor runtime implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from inferd.tensors import Array, TensorSpec


@dataclass(frozen=True)
class ModelSignature:
    """What a loaded model takes and returns."""

    platform: str
    """Triton-style platform name (`onnxruntime_onnx`)."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    """0 = no batching dimension; otherwise the first dimension of every input and output is the batch."""
    text_bytes: bool = False
    """BYTES inputs must be UTF-8 text (ONNX string tensors); checked per request before queueing."""
    tokens_per_row: int = 0
    """Most tokens one input row can count (an embedding model's truncation length); 0 = not token-based.
    Budgets reserve this much per text."""

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)


class Runtime(Protocol):
    """A loaded model version. `execute` blocks: callers run it in a worker thread."""

    @property
    def signature(self) -> ModelSignature: ...

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """Run one batch; `outputs` names the outputs to compute."""
        ...

    def unload(self) -> None:
        """Release the model's resources."""
        ...


@runtime_checkable
class SharesComputeThread(Protocol):
    """A runtime whose batches run on the process's shared compute thread (torch models)."""

    def abandon_hung_call(self) -> None:
        """Its batch in progress hung: the other models' work on the compute thread moves to a fresh
        thread."""
        ...
