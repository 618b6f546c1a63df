"""Small building blocks of the decoder: RMSNorm and the SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferd.engine.model.linear import Linear


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, then scaled in the input dtype, as transformers computes it:
    `F.rms_norm` without a weight normalizes in float32 and rounds once to the input dtype, the bits of
    transformers' `(x32 * rsqrt(mean(x32^2) + eps)).to(dtype)`, in one call instead of six."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., size] -> [..., size]
        return self.weight * F.rms_norm(x, self.weight.shape, eps=self.eps)


class SwiGLUMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up fused into one projection."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, hidden] -> gate_up [T, 2 * inter] -> [T, hidden]
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        out: torch.Tensor = self.down_proj(F.silu(gate) * up)
        return out
