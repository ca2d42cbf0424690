"""Functional group convolution: ``gconv2d`` (and its shared-kernel variant), dispatched to a backend."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ._backend import use_triton
from ._spec import ConvSpec, as_5d, make_spec
from .groups import Group
from .reference import gconv2d_reference

__all__ = ["gconv2d", "shared_kernel_conv2d"]

GroupLike = Union[Group, str]


def gconv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, group: GroupLike,
            in_group: GroupLike, stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """Group convolution (G-CNN layer) with the filter bank applied on the fly.

    Args:
        input: ``(B, C_in, S_in, H, W)``, or GrouPy-PyTorch's flattened ``(B, C_in·S_in, H, W)`` (channel index
            ``c·S_in + s``).  For a lifting layer (``in_group="z2"``) that is just ``(B, C_in, H, W)``.
        weight: the base weight ``(C_out, C_in / groups, S_in, kh, kw)``.
        bias: ``(C_out,)``, one per output G-channel, or None.
        group: output group (``"p4"``, ``"p4m"``, ... or a :class:`~gconv_triton.groups.Group`).
        in_group: ``"z2"`` for a lifting layer, else the same group as ``group``.
        stride, dilation: int or pair.  padding: int, pair, ``"valid"`` or ``"same"`` (PyTorch's semantics).
        groups: channel groups, as in ``torch.nn.functional.conv2d``.
    Returns:
        ``(B, C_out, S_out, H_out, W_out)``.

    Exactly equivariant with stride 1 and symmetric padding; with stride ``s`` only when
    ``(H + 2p - d(k-1) - 1) % s == 0`` and ``H == W`` (see the README).
    """
    spec = make_spec(input, weight, bias, group=group, in_group=in_group, stride=stride, padding=padding,
                     dilation=dilation, groups=groups)
    return _run(input, weight, bias, spec)


def shared_kernel_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         stride=1, padding=0, dilation=1) -> torch.Tensor:
    """One ``(1, 1, kh, kw)`` kernel (and one bias ``(1,)``) applied to every channel of ``input (B, C, H, W)``.

    Equal to a depthwise ``conv2d`` with the kernel repeated ``C`` times, but the weight is never repeated in
    memory and its gradient is the sum over the channels, reduced inside the kernel.
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise ValueError(f"input: expected a 4-D tensor (B, C, H, W), got "
                         f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[:2] != (1, 1):
        raise ValueError(f"weight: expected shape (1, 1, kh, kw), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (1,)):
        raise ValueError(f"bias: expected shape (1,), got "
                         f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    spec = make_spec(input, weight.unsqueeze(2), bias, group="z2", in_group="z2", stride=stride, padding=padding,
                     dilation=dilation, groups=input.shape[1], shared_weight=True)
    return _run(input, weight.unsqueeze(2), bias, spec).squeeze(2)


def _run(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], spec: ConvSpec) -> torch.Tensor:
    if use_triton(input):
        from ._autograd import GroupConvFunction

        return GroupConvFunction.apply(as_5d(input, spec), weight, bias, spec)
    return gconv2d_reference(input, weight, bias, spec)
