"""Builds the demo model repository served by `make serve` (generated locally, no downloads).

python -m inferd.demo PATH      # creates PATH when absent
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx import TensorProto

from inferd import onnx_models

_MLP_CONFIG = """\
# A light MLP 256 -> 512 -> 512 -> 10 with random weights (demo only).
runtime: onnx
max_batch_size: 32
dynamic_batching:
  max_queue_delay_ms: 2
  max_queue_size: 1024
"""

_HEAVY_CONFIG = """\
# A compute-heavy MLP (about 50 MFLOP per sample) with random weights (demo only).
runtime: onnx
max_batch_size: 32
dynamic_batching:
  max_queue_delay_ms: 5
  max_queue_size: 1024
"""

_ADD_SUB_CONFIG = """\
# Two inputs of different dtypes: sum = a + b, diff = a - b.
max_batch_size: 8
"""


_LLM_CONFIG = """\
# RANDOM WEIGHTS: a small Llama built locally so the OpenAI API can be tried; its text is meaningless.
runtime: llm
max_model_len: 1024
max_num_seqs: 16
"""


def build_demo_repository(root: Path) -> Path:
    """Write the demo models under `root` (overwriting their files) and return `root`."""
    onnx_models.mlp(root / "mlp" / "1" / "model.onnx", [256, 512, 512, 10])
    (root / "mlp" / "config.yaml").write_text(_MLP_CONFIG)
    onnx_models.heavy_mlp(root / "heavy" / "1" / "model.onnx")
    (root / "heavy" / "config.yaml").write_text(_HEAVY_CONFIG)
    onnx_models.add_sub(root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.yaml").write_text(_ADD_SUB_CONFIG)
    onnx_models.identity(root / "strings" / "1" / "model.onnx", TensorProto.STRING, ["batch", "len"])
    # LLM and embedding models load torch: imported here so the ONNX demo needs none of it.
    from inferd.demo_llm import build_random_llama
    from inferd.embedding_models import add_minilm_to_repository

    build_random_llama(root / "random-llama" / "1")
    (root / "random-llama" / "config.yaml").write_text(_LLM_CONFIG)
    add_minilm_to_repository(root)
    return root


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m inferd.demo PATH", file=sys.stderr)
        return 2
    root = Path(args[0])
    if root.exists() and any(root.iterdir()):
        print(f"inferd: demo repository {root} already present")
        return 0
    build_demo_repository(root)
    print(f"inferd: built demo repository {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
