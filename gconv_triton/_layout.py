"""Memory layouts of 5-D group feature maps, shared by the kernels' launchers and the ops' fake kernels (which
must agree for torch.compile) without importing Triton."""

from __future__ import annotations

from typing import Sequence

import torch

# (B, C, S, H, W) and the channels-last-like (B, H, W, C, S)
_CANONICAL_ORDERS = ((0, 1, 2, 3, 4), (0, 3, 4, 1, 2))


def dim_order(t: torch.Tensor) -> list[int]:
    """``t``'s dims from outermost to innermost in memory.

    A size-1 dim's stride is arbitrary (``unflatten`` of a channels_last ``(B, C, H, W)`` gives the new S = 1 axis
    the batch's stride), so when the other dims agree with a canonical 5-D layout, that layout places them.
    """
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    if t.dim() == 5:
        sized = [d for d in order if t.shape[d] != 1]
        for canonical in _CANONICAL_ORDERS:
            if [d for d in canonical if t.shape[d] != 1] == sized:
                return list(canonical)
    return order


def empty_in_order(shape: Sequence[int], order: Sequence[int], *, dtype, device) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` stored with its dims in ``order`` (outermost first)."""
    out = torch.empty([shape[d] for d in order], dtype=dtype, device=device)
    return out.permute([list(order).index(d) for d in range(len(shape))])
