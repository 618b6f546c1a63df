"""The architecture of a decoder-only model, parsed from its Hugging Face `config.json`.

Plain Python (no torch): the repository can validate a model folder without loading the model. Both the
legacy layout (`rope_theta` + `rope_scaling`, `torch_dtype`) and the transformers 5 layout (`rope_parameters`,
`dtype`) are read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "dynamic")
_MODEL_TYPES = {"llama": 0, "mistral": 1, "qwen2": 2, "qwen3": 3}


@dataclass(frozen=True)
class RopeScaling:
    """How rotary position frequencies are stretched for long contexts."""

    rope_type: str = "default"
    """One of `SUPPORTED_ROPE_TYPES`."""
    factor: float = 1.0
    """Stretch factor (linear, llama3; dynamic has no effect within the context inferd serves)."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above `original_max_position_embeddings / low_freq_factor` are divided by
    `factor`."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below `original_max_position_embeddings / high_freq_factor` are kept."""
    original_max_position_embeddings: int | None = None
    """The pretraining context the scaling starts from (llama3; dynamic falls back to the model's)."""


@dataclass(frozen=True)
class ModelArchConfig:
    """What the model code needs to build and load a decoder-only transformer."""

    architecture: str
    """The Hugging Face class name, one of `SUPPORTED_ARCHITECTURES`."""
    hidden_size: int
    num_layers: int
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention when fewer than `num_heads`)."""
    head_dim: int
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    """The output projection reuses the input embedding matrix."""
    qkv_bias: bool = False
    """q/k/v projections carry biases (Qwen2; Llama's `attention_bias`)."""
    o_bias: bool = False
    """The output projection carries a bias (Llama's `attention_bias`)."""
    mlp_bias: bool = False
    qk_norm: bool = False
    """RMSNorm over each head of q and k before RoPE (Qwen3)."""
    sliding_window: int | None = None
    """Attention window when the model uses one; inferd serves such models only within the window."""
    dtype: str = "float32"
    """Weights' dtype name as in `torch` (`float32`, `bfloat16`, `float16`)."""
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    """End-of-sequence tokens; the first is the request's EOS, the rest act as stop tokens."""

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"architecture {self.architecture!r} is not supported (supported: {SUPPORTED_ARCHITECTURES})"
            )
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ModelLoadError("head_dim must be even for rotary embeddings")
        if self.rope_scaling.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelLoadError(
                f"RoPE type {self.rope_scaling.rope_type!r} is not supported "
                f"(supported: {SUPPORTED_ROPE_TYPES})"
            )

    @property
    def max_model_len(self) -> int:
        """Longest sequence inferd serves with this model: sliding-window models only within the window, and
        dynamic-NTK models only within `max_position_embeddings`, where their RoPE is the default one (as in
        transformers), so no sequence depends on the path its context grew by."""
        limit = self.max_position_embeddings
        return min(limit, self.sliding_window) if self.sliding_window else limit

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any]) -> ModelArchConfig:
        """Parse a `config.json` mapping; raises ModelLoadError on what inferd cannot run."""
        try:
            return cls._parse(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"invalid model config.json: {exc!r}") from exc

    @classmethod
    def _parse(cls, raw: Mapping[str, Any]) -> ModelArchConfig:
        architectures = raw.get("architectures") or []
        architecture = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        if architecture is None:
            model_type = raw.get("model_type")
            if model_type not in _MODEL_TYPES:
                raise ModelLoadError(
                    f"model architectures {architectures} / model_type {model_type!r} are not supported "
                    f"(supported: {SUPPORTED_ARCHITECTURES})"
                )
            architecture = SUPPORTED_ARCHITECTURES[_MODEL_TYPES[model_type]]
        if raw.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"hidden_act {raw['hidden_act']!r} is not supported (only silu)")
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        head_dim = raw.get("head_dim") or hidden // heads
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        attention_bias = bool(raw.get("attention_bias", False))
        use_window = raw.get("use_sliding_window", True) and raw.get("sliding_window")
        theta, scaling = _parse_rope(raw)
        eos = raw.get("eos_token_id")
        eos_ids = tuple(int(t) for t in (eos if isinstance(eos, list) else [] if eos is None else [eos]))
        dtype = str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ModelLoadError(f"weights dtype {dtype!r} is not supported")
        return cls(
            architecture=architecture,
            hidden_size=hidden,
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=int(raw["intermediate_size"]),
            vocab_size=int(raw["vocab_size"]),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=is_qwen2 or attention_bias,
            o_bias=attention_bias and not is_qwen2,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            sliding_window=int(use_window) if use_window else None,
            dtype=dtype,
            bos_token_id=None if raw.get("bos_token_id") is None else int(raw["bos_token_id"]),
            eos_token_ids=eos_ids,
        )


def _parse_rope(raw: Mapping[str, Any]) -> tuple[float, RopeScaling]:
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ValueError("rope_parameters must be an object")
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    original = params.get("original_max_position_embeddings")
    scaling = RopeScaling(
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=None if original is None else int(original),
    )
    return theta, scaling


def load_arch_config(model_dir: str | Path) -> ModelArchConfig:
    """Read `model_dir/config.json`; raises ModelLoadError when it is missing or unsupported."""
    path = Path(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return ModelArchConfig.from_hf_dict(raw)
