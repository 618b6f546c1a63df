"""Tiny random-weight Hugging Face models of each supported architecture, saved as model folders, and the
`transformers` greedy oracle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
_CLASSES: dict[str, tuple[Any, Any]] = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
}
VOCAB = 256


@dataclass
class TinyModel:
    path: Path
    hf: Any
    """The transformers model (the oracle), in eval mode."""

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """transformers' greedy tokens, cut after the first EOS (it pads after it)."""
        with torch.inference_mode():
            out = self.hf.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.int64),
                do_sample=False,
                max_new_tokens=max_new_tokens,
            )
        tokens: list[int] = out[0, len(prompt) :].tolist()
        eos = self.hf.config.eos_token_id
        if eos is not None and eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
        return tokens


def build_tiny_model(
    path: Path,
    arch: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    **overrides: Any,
) -> TinyModel:
    """hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 256; every weight random (biases and norms too), large
    enough that the logits are far from ties."""
    config_cls, model_cls = _CLASSES[arch]
    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.2)
            else:
                param.normal_(0.0, 0.2)
    model = model.to(dtype).eval()
    save_kwargs: dict[str, Any] = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **save_kwargs)
    if dtype != torch.float32:  # as transformers loads it (keeps its RoPE buffers in float32)
        model = model_cls.from_pretrained(path, dtype=dtype).eval()
    return TinyModel(path, model)
