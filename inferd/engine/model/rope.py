"""Rotary position embeddings (the "rotate half" layout of Llama, Mistral and Qwen).

The cos/sin tables are computed once for every position the model serves, in float32 exactly as transformers
computes them per step, so indexing them by position gives bit-identical values. The sin table carries the
sign of "rotate half" (its first half negated): `rotate_half(x) * sin` becomes `swap_halves(x) * signed_sin`,
the same products (rounding is symmetric in sign) with one copy instead of a negation, two slices and a
concat.
"""

from __future__ import annotations

import math

import torch

from inferd.engine.model.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies of each rotated pair, scaled per `scaling`."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        return _llama3(inv_freq, scaling)
    return inv_freq  # default; dynamic NTK equals it within max_position_embeddings


def _llama3(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    if scaling.original_max_position_embeddings is None:
        raise ValueError("llama3 RoPE scaling needs original_max_position_embeddings")
    old_len = scaling.original_max_position_embeddings
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding:
    """cos and signed sin tables for positions 0..max_positions-1, applied to q and k in place of
    transformers' RoPE."""

    def __init__(
        self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling, device: torch.device
    ) -> None:
        inv_freq = inverse_frequencies(head_dim, theta, scaling)
        positions = torch.arange(max_positions, dtype=torch.int64).float()
        freqs = positions[:, None] * inv_freq[None, :]  # [P, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, D]
        half = head_dim // 2
        sin = emb.sin()
        sin[:, :half] = -sin[:, :half]
        self.cos = emb.cos().to(device)  # [P, D] float32
        self.signed_sin = sin.to(device)  # [P, D] float32: -sin on the first half, sin on the second

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [T, 1, D] in `dtype` for `positions` [T], to broadcast over heads (once per
        step)."""
        return (
            self.cos.index_select(0, positions).to(dtype).unsqueeze(1),
            self.signed_sin.index_select(0, positions).to(dtype).unsqueeze(1),
        )


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] rotated by cos/signed sin [T, 1, D] (see `RotaryEmbedding.lookup`): transformers'
    `x * cos + rotate_half(x) * sin`, bit for bit."""
    t, heads, d = x.shape
    swapped = x.view(t, heads, 2, d // 2).flip(-2).view(t, heads, d)  # [x2, x1]
    return x * cos + swapped * signed_sin
