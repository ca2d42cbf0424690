"""``check_equivariance``: measure how far a module is from commuting with a group's action."""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .groups import Group, get_group


def _act(group: Group, g: int, t: torch.Tensor) -> torch.Tensor:
    """``g·t`` for a group feature map ``(B, C, S, H, W)``, an image ``(B, C, H, W)``, or an invariant ``(B, N)``."""
    if t.dim() == 5 and t.shape[2] == group.order:
        return group.act_on_features(g, t)
    if t.dim() == 4:
        return group.act_on_image(g, t)
    if t.dim() <= 2:
        return t
    raise ValueError(f"cannot apply {group.name} to a tensor of shape {tuple(t.shape)}: expected (B, C, "
                     f"{group.order}, H, W), (B, C, H, W) or an invariant (B, N)")


@torch.no_grad()
def check_equivariance(module: Union[nn.Module, callable], x: torch.Tensor, group: Union[str, Group]) -> float:
    """The worst relative error ``max_g ‖f(g·x) − g·f(x)‖ / ‖g·f(x)‖`` over every element ``g`` of ``group``.

    ``x`` is an image batch ``(B, C, H, W)`` or a group feature map ``(B, C, S, H, W)``; the output may be a group
    feature map, an image-like map (after :class:`~gconv_triton.modules.GroupPool`: rotated, not permuted) or a
    ``(B, N)`` invariant (compared unchanged).  Exactly equivariant layers give round-off (about 1e-15 in float64).
    """
    group = get_group(group)
    y = module(x)
    worst = 0.0
    for g in range(group.order):
        expected = _act(group, g, y)
        got = module(_act(group, g, x))
        err = (got - expected).double().norm() / expected.double().norm().clamp_min(torch.finfo(torch.float64).tiny)
        worst = max(worst, float(err))
    return worst
