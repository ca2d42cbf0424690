"""The ``torch.autograd.Function`` that runs a group convolution on the fused Triton kernels."""

from __future__ import annotations

import torch

from ._spec import ConvSpec


class GroupConvFunction(torch.autograd.Function):
    """``y = gconv(x, weight, bias)`` with every gradient from a kernel.

    ``x`` is 5-D ``(B, C_in, S_in, H, W)``; ``weight`` and ``bias`` as in :class:`ConvSpec`.  Only ``x``, the base
    weight and ``dy`` are saved: no filter bank, forward or backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias, spec: ConvSpec) -> torch.Tensor:
        from . import kernels

        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return kernels.forward(x, weight, bias, spec)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        from . import kernels

        x, weight = ctx.saved_tensors
        spec = ctx.spec
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = kernels.input_grad(dy, weight, spec, x)
        if ctx.needs_input_grad[1]:
            dw = kernels.weight_grad(dy, x, spec, weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # (B, groups·C_out_g, S_out, H, W) -> per weight row, summed over the channel groups sharing it
            per_channel = dy.sum((0, 2, 3, 4), dtype=torch.float32)
            db = per_channel.view(spec.groups // spec.weight_groups, -1).sum(0).to(dy.dtype)
        return dx, dw, db, None
