"""The linear projection of every decoder matmul, with oneDNN's prepacked weights on CPU in bf16/fp16.

On CPU, `F.linear` in bf16 runs oneDNN's AMX/AVX-512 matmul on the plain [out, in] weight and reorders that
weight into the kernel's blocked layout on every call. Decode steps multiply few rows by every weight of the
model, so the reorder costs as much as the product: prepacking each weight once (the layout inductor's
`freezing` uses) makes a decode step's matmuls about 30% faster (2 cores, SmolLM2-135M shape: 19 -> 14 ms at
32 rows, 18 -> 11.5 ms at one row). The products are those of `F.linear` but for rare last-bit differences
at some row counts (both are oneDNN bf16 kernels with float32 accumulation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def can_prepack(weight: torch.Tensor) -> bool:
    """Whether `weight` can be prepacked here (CPU, bf16 or fp16, oneDNN present)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype in (torch.bfloat16, torch.float16)
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def prepack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """[out, in] weight -> oneDNN's opaque prepacked copy, laid out for about `batch_hint` rows."""
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
    return packed


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [T, in] @ packed weight [out, in] (+ bias) -> [T, out]."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out


class Linear(nn.Module):
    """y = x W^T + b, like `nn.Linear`; `prepack` swaps the weight for oneDNN's packed layout."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.packed: torch.Tensor | None = None
        """The prepacked weight; while set, `weight` is an empty placeholder (its memory is released)."""

    def prepack(self, batch_hint: int) -> bool:
        """Prepack the weight if `can_prepack` (after loading; then `weight` is emptied); returns whether
        it did."""
        if self.packed is not None or not can_prepack(self.weight):
            return self.packed is not None
        self.packed = prepack(self.weight, batch_hint)
        self.weight = nn.Parameter(self.weight.new_empty(0), requires_grad=False)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, in] -> [T, out]
        if self.packed is not None:
            return packed_linear(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)
