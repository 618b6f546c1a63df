"""The decoder-only transformer of Llama, Mistral, Qwen2 and Qwen3: one class, with flags for their
differences (q/k/v biases, q/k norms, tied embeddings).

Parameter names follow transformers' minus the `model.` prefix, except the fused `qkv_proj` and
`gate_up_proj` (see `loader.py`). Inputs are flattened: T tokens of all requests of a step in one sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferd.engine.model.attention import AttentionMetadata, paged_attention, write_kv
from inferd.engine.model.config import ModelArchConfig
from inferd.engine.model.layers import RMSNorm, SwiGLUMLP
from inferd.engine.model.linear import Linear, can_prepack, packed_linear, prepack
from inferd.engine.model.rope import apply_rotary

KVCache = tuple[torch.Tensor, torch.Tensor]
"""Keys and values of one layer, each [num_blocks, block_size, kv_heads, head_dim]."""


class Attention(nn.Module):
    def __init__(self, config: ModelArchConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.scale = config.head_dim**-0.5
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, config.qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, config.o_bias)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        # x [T, hidden] -> qkv [T, q_size + 2 * kv_size]
        qkv = self.qkv_proj(x)
        num_tokens, heads = qkv.shape[0], self.num_heads
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = qkv[:, : self.q_size], qkv[:, self.q_size : self.q_size + self.kv_size]
            q = apply_rotary(self.q_norm(q.view(num_tokens, heads, self.head_dim)), cos, sin)  # [T, H, D]
            k = apply_rotary(self.k_norm(k.view(num_tokens, -1, self.head_dim)), cos, sin)  # [T, KVH, D]
        else:  # q and k are adjacent: rotate them at once
            qk = qkv[:, : self.q_size + self.kv_size].view(num_tokens, -1, self.head_dim)
            qk = apply_rotary(qk, cos, sin)  # [T, H + KVH, D]
            q, k = qk[:, :heads], qk[:, heads:]
        write_kv(kv_cache[0], kv_cache[1], k, v, meta.slot_mapping)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale)  # [T, H * D]
        result: torch.Tensor = self.o_proj(out)  # [T, hidden]
        return result


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelArchConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size, config.mlp_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        # x [T, hidden] -> [T, hidden]
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta)
        out: torch.Tensor = h + self.mlp(self.post_attention_layernorm(h))
        return out


class DecoderModel(nn.Module):
    """Token ids in, logits of selected positions out; K/V of every token written to the paged cache."""

    def __init__(self, config: ModelArchConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head: Linear | None = None
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, False)
        self.packed_tied_head: torch.Tensor | None = None
        """The tied LM head (the embedding matrix) prepacked, a copy: the lookup needs the plain one."""

    def prepack(self, batch_hint: int) -> int:
        """Prepack every projection and the LM head where possible (see `linear.py`), for steps of about
        `batch_hint` rows; returns how many matrices were packed."""
        packed = sum(m.prepack(batch_hint) for m in self.modules() if isinstance(m, Linear))
        weight = self.embed_tokens.weight
        if self.lm_head is None and self.packed_tied_head is None and can_prepack(weight):
            self.packed_tied_head = prepack(weight, batch_hint)
            packed += 1
        return packed

    def forward(
        self,
        input_ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """input_ids [T], cos/sin [T, 1, D] (see `RotaryEmbedding.lookup`), logits_indices [S] ->
        float32 logits [S, vocab] of the tokens at those indices."""
        h = self.embed_tokens(input_ids)  # [T, hidden]
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h = layer(h, cos, sin, kv_cache, meta)
        h = self.norm(h.index_select(0, logits_indices))  # [S, hidden] (the norm is per token)
        logits: torch.Tensor
        if self.lm_head is not None:
            logits = self.lm_head(h)
        elif self.packed_tied_head is not None:
            logits = packed_linear(h, self.packed_tied_head, None)
        else:
            logits = F.linear(h, self.embed_tokens.weight)
        return logits.float()  # [S, vocab]
