"""The plain-PyTorch path: build the filter bank explicitly, then ``F.conv2d``.

It is the oracle every test compares against (call it with float64 tensors) and the implementation that serves
CPU tensors.  It computes in the input's dtype and is differentiable by autograd.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._spec import ConvSpec, as_5d
from .groups import Group

__all__ = ["filter_bank", "gconv2d_reference"]


def filter_bank(weight: torch.Tensor, group: Group, in_group: Group) -> torch.Tensor:
    """``F[o, g, i, s] = act(g, w[o, i, t(g, s)])`` with ``t(g, s) = index(g⁻¹ s)``.

    Args:
        weight: base weight ``(C_out, C_in, S_in, kh, kw)``.
    Returns:
        the bank ``(C_out, S_out, C_in, S_in, kh, kw)``; flatten to ``(C_out·S_out, C_in·S_in, kh, kw)`` for
        ``F.conv2d``.
    """
    c_out, c_in, s_in, kh, kw = weight.shape
    t = group.stabilizer_index(in_group).to(weight.device)               # (S_out, S_in)
    selected = weight[:, :, t]                                           # (C_out, C_in, S_out, S_in, kh, kw)
    # act(g, f)[dest[g, t]] = f[t], i.e. read f at source = dest⁻¹.
    source = torch.argsort(group.tap_destinations((kh, kw)), dim=1).to(weight.device)  # (S_out, T)
    index = source[None, None, :, None, :].expand(c_out, c_in, -1, s_in, -1)
    bank = torch.gather(selected.flatten(-2), -1, index).unflatten(-1, (kh, kw))
    return bank.permute(0, 2, 1, 3, 4, 5)


def gconv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      spec: ConvSpec) -> torch.Tensor:
    """Group convolution by filter bank + ``F.conv2d``.  Shapes as in :class:`~gconv_triton._spec.ConvSpec`;
    returns ``(B, C_out, S_out, H_out, W_out)``."""
    x = as_5d(input, spec).flatten(1, 2)
    if spec.weight_groups != spec.groups:  # one weight slice shared by every channel group
        weight = weight.repeat(spec.groups, 1, 1, 1, 1)
        bias = None if bias is None else bias.repeat(spec.groups)
    bank = filter_bank(weight, spec.group, spec.in_group).flatten(0, 1).flatten(1, 2)
    top, bottom, left, right = spec.padding
    if top != bottom or left != right:
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    full_bias = None if bias is None else bias.repeat_interleave(spec.s_out)
    y = F.conv2d(x, bank, full_bias, stride=spec.stride, padding=(top, left), dilation=spec.dilation,
                 groups=spec.groups)
    return y.unflatten(1, (spec.groups * spec.out_channels, spec.s_out))
