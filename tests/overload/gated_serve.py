"""`inferd serve` (the real command line, signals and all) with one extra runtime for shutdown tests.

    python -m tests.overload.gated_serve serve --model-repository R ...

A model folder holding a file `gated` is served by `FileGated`: each batch announces itself with a file
`started-<n>` in the model's `control/` folder and waits until the test creates `control/release`. Every
other model loads as usual.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from inferd.cli.main import main
from inferd.datatypes import BY_NAME
from inferd.repository.model_config import ModelConfig
from inferd.runtimes.base import ModelSignature
from inferd.runtimes.onnx import OnnxRuntime
from inferd.tensors import Array, TensorSpec

FP32 = BY_NAME["FP32"]


class FileGated:
    """x FP32 [-1, 2] → y = 2x, one row per batch, released by a file."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.batches = 0
        spec = (TensorSpec("x", FP32, (2,)),)
        self._sig = ModelSignature("test", spec, (TensorSpec("y", FP32, (2,)),), 1)

    @property
    def signature(self) -> ModelSignature:
        return self._sig

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        self.batches += 1
        (self.control / f"started-{self.batches}").touch()
        while not (self.control / "release").exists():
            time.sleep(0.005)
        return {"y": inputs["x"] * 2}

    def unload(self) -> None:
        pass


_onnx_load = OnnxRuntime.load


def _load(version_dir: Path, config: ModelConfig) -> OnnxRuntime | FileGated:
    model_dir = version_dir.parent
    if (model_dir / "gated").exists():
        (model_dir / "control").mkdir(exist_ok=True)
        return FileGated(model_dir / "control")
    return _onnx_load(version_dir, config)


if __name__ == "__main__":
    OnnxRuntime.load = _load  # type: ignore[method-assign,assignment]
    raise SystemExit(main(sys.argv[1:]))
