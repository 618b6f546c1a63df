"""A BERT-family encoder (post-LN transformer) and its loader from a Hugging Face model folder.

The encoder returns the last hidden states; pooling and normalisation belong to the embedding runtime. The
folder holds `config.json` and `model.safetensors` (read through safetensors' memory map). A folder with
only `pytorch_model.bin` is refused unless the caller passes `allow_pickle=True` (a pickle can run code).
Every parameter must be loaded exactly once and unknown tensors are errors, so a mismatched checkpoint fails
loudly; the task heads (`pooler`, `cls`) and the `position_ids` buffer are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from inferd.errors import ModelLoadError

_ACTIVATIONS = {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu"}
_SKIPPED = re.compile(r"^(pooler\.|cls\.|embeddings\.position_ids$)")


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT `config.json` the encoder uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def load_bert_config(model_dir: Path) -> BertConfig:
    """The encoder config of `model_dir/config.json`; ModelLoadError when it is no BERT we can run."""
    path = model_dir / "config.json"
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if raw.get("model_type") != "bert":
        raise ModelLoadError(f"{path}: model_type {raw.get('model_type')!r} is not supported (only 'bert')")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"{path}: only absolute position embeddings are supported")
    names = BertConfig.__dataclass_fields__
    try:
        config = BertConfig(**{k: raw[k] for k in names if k in raw})
    except TypeError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    if config.hidden_act not in _ACTIVATIONS:
        raise ModelLoadError(f"{path}: hidden_act {config.hidden_act!r} is not supported")
    if config.hidden_size % config.num_attention_heads:
        raise ModelLoadError(f"{path}: hidden_size is not a multiple of num_attention_heads")
    return config


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    return F.gelu(x, approximate="tanh")


class BertEmbeddings(nn.Module):
    """word + position + token type embeddings, then LayerNorm."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, token_type_ids [B, S] -> [B, S, H]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # [S]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings(token_type_ids)
        )
        out: torch.Tensor = self.LayerNorm(x)
        return out


class BertLayer(nn.Module):
    """Self-attention and a feed-forward block, each followed by residual + LayerNorm (post-LN)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        h = c.hidden_size
        self.num_heads = c.num_attention_heads
        self.head_dim = c.head_dim
        self.act = c.hidden_act
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.intermediate = nn.Linear(h, c.intermediate_size)
        self.output = nn.Linear(c.intermediate_size, h)
        self.out_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x [B, S, H]; keep [B, 1, 1, S] bool (True = attend to that key) -> [B, S, H]
        b, s, h = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            # [B, S, H] -> [B, heads, S, head_dim]
            return t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, heads, S, head_dim]
        ctx = ctx.transpose(1, 2).reshape(b, s, h)  # [B, S, H]
        x = self.attn_norm(x + self.attn_out(ctx))
        ff = self.output(_activation(self.act, self.intermediate(x)))  # [B, S, H]
        out: torch.Tensor = self.out_norm(x + ff)
        return out


class BertEncoder(nn.Module):
    """Embeddings and N layers; `forward` returns the last hidden states."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # input_ids, attention_mask [B, S] (mask 1 = real token) -> hidden [B, S, H]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, keep)
        out: torch.Tensor = x
        return out


def _our_name(checkpoint_name: str) -> str | None:
    """The parameter name of a Hugging Face BertModel tensor name; None for tensors we skip."""
    name = checkpoint_name.removeprefix("bert.")
    if _SKIPPED.match(name):
        return None
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    m = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", name)
    if m is None:
        return name
    layer, rest = m.groups()
    renamed = {
        "attention.self.query": "query",
        "attention.self.key": "key",
        "attention.self.value": "value",
        "attention.output.dense": "attn_out",
        "attention.output.LayerNorm": "attn_norm",
        "intermediate.dense": "intermediate",
        "output.dense": "output",
        "output.LayerNorm": "out_norm",
    }
    module, _, leaf = rest.rpartition(".")
    if module not in renamed:
        return name  # reported as unexpected by the loader
    return f"layers.{layer}.{renamed[module]}.{leaf}"


def _checkpoint_tensors(model_dir: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    safetensors = model_dir / "model.safetensors"
    if safetensors.is_file():
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(safetensors), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[name] = f.get_tensor(name)
        return tensors
    pickled = model_dir / "pytorch_model.bin"
    if pickled.is_file():
        if not allow_pickle:
            raise ModelLoadError(
                f"{model_dir} has only pytorch_model.bin (a pickle); convert it to model.safetensors, "
                "or opt in to loading pickles explicitly"
            )
        loaded: dict[str, torch.Tensor] = torch.load(pickled, map_location="cpu", weights_only=True)
        return loaded
    raise ModelLoadError(f"no model.safetensors in {model_dir}")


def load_bert(
    model_dir: str | Path, *, device: torch.device | str = "cpu", allow_pickle: bool = False
) -> BertEncoder:
    """The float32 encoder of `model_dir` on `device`, in eval mode without gradients."""
    model_dir = Path(model_dir)
    config = load_bert_config(model_dir)
    with torch.device("meta"):
        model = BertEncoder(config)
    model = model.to_empty(device=torch.device(device))
    params = dict(model.named_parameters())
    pending = set(params)
    for checkpoint_name, tensor in _checkpoint_tensors(model_dir, allow_pickle).items():
        name = _our_name(checkpoint_name)
        if name is None:
            continue
        param = params.get(name)
        if param is None:
            raise ModelLoadError(f"unexpected tensor {checkpoint_name!r} in {model_dir}")
        if name not in pending:
            raise ModelLoadError(f"tensor {checkpoint_name!r} given twice in {model_dir}")
        if tuple(param.shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"tensor {checkpoint_name!r} has shape {list(tensor.shape)}, expected {list(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(tensor.to(torch.float32))
        pending.discard(name)
    if pending:
        raise ModelLoadError(f"weights missing from {model_dir}: {sorted(pending)[:8]}")
    model.eval()
    model.requires_grad_(False)
    return model
