"""Build a `DecoderModel` and load its weights from a Hugging Face model folder.

The folder holds `config.json` and `model.safetensors`, or shards listed in `model.safetensors.index.json`.
Tensors are read through safetensors' memory map and copied once into the model's parameters, converted to
the serving dtype; q/k/v and gate/up projections are written into their fused parameters. Every parameter
must be loaded exactly once, and unexpected tensors are errors, so a mismatched checkpoint fails loudly.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from inferd.engine.model.config import ModelArchConfig, load_arch_config
from inferd.engine.model.transformer import DecoderModel
from inferd.errors import ModelLoadError

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FUSED = re.compile(r"^(layers\.\d+\.)(self_attn\.(q|k|v)_proj|mlp\.(gate|up)_proj)\.(weight|bias)$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a config dtype name."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"dtype {name!r} is not supported (supported: {sorted(_DTYPES)})") from None


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files of a model folder (one file, or the shards of its index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"invalid {index}: {exc!r}") from exc
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
    return files


def load_model(
    model_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    config: ModelArchConfig | None = None,
) -> DecoderModel:
    """The model of `model_dir` on `device`, in `dtype` (default: the config's), ready for inference."""
    model_dir = Path(model_dir)
    config = config or load_arch_config(model_dir)
    dtype = dtype or torch_dtype(config.dtype)
    device = torch.device(device)
    with torch.device("meta"):
        model = DecoderModel(config)
    model = model.to_empty(device=device).to(dtype)
    params = dict(model.named_parameters())
    pending = _checkpoint_names(params)
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                _load_tensor(model, params, pending, name, f.get_tensor(name))
    if pending:
        raise ModelLoadError(f"weights missing from {model_dir}: {sorted(pending)[:8]}")
    model.eval()
    model.requires_grad_(False)
    logger.info(
        "loaded %s from %s: %.1fM parameters, %s on %s",
        config.architecture,
        model_dir,
        sum(p.numel() for p in params.values()) / 1e6,
        dtype,
        device,
    )
    return model


def _load_tensor(
    model: DecoderModel,
    params: dict[str, torch.nn.Parameter],
    pending: set[str],
    hf_name: str,
    tensor: torch.Tensor,
) -> None:
    name = hf_name.removeprefix("model.")
    if _IGNORED.search(name):
        return
    if name == "lm_head.weight" and model.lm_head is None:
        return  # tied: some checkpoints store the shared matrix twice
    target, offset = name, 0
    fused = _FUSED.match(name)
    if fused is not None:
        prefix, part, kind = fused.group(1), fused.group(3) or fused.group(4), fused.group(5)
        config = model.config
        q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        if part in ("q", "k", "v"):
            target = f"{prefix}self_attn.qkv_proj.{kind}"
            offset = {"q": 0, "k": q_size, "v": q_size + kv_size}[part]
        else:
            target = f"{prefix}mlp.gate_up_proj.{kind}"
            offset = 0 if part == "gate" else config.intermediate_size
    param = params.get(target)
    if param is None:
        raise ModelLoadError(f"unexpected weight {hf_name!r} in the checkpoint")
    piece = param.data if fused is None else param.data[offset : offset + tensor.shape[0]]
    if piece.shape != tensor.shape:
        raise ModelLoadError(
            f"weight {hf_name!r} has shape {tuple(tensor.shape)}, expected {tuple(piece.shape)}"
        )
    piece.copy_(tensor)
    pending.discard(name)


def _checkpoint_names(params: dict[str, torch.nn.Parameter]) -> set[str]:
    """Checkpoint names (without `model.`) that must all be loaded: fused parameters by their parts."""
    names: set[str] = set()
    for name in params:
        if ".qkv_proj." in name:
            names.update(name.replace("qkv_proj", f"{p}_proj") for p in "qkv")
        elif ".gate_up_proj." in name:
            names.update(name.replace("gate_up_proj", f"{p}_proj") for p in ("gate", "up"))
        else:
            names.add(name)
    return names
