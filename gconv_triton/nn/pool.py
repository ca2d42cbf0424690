"""Pooling of group feature maps: over the group axis (``GroupPool``) and over the plane, per G-channel and group
element (``GroupMaxPool2d``, ``GroupAvgPool2d``, on PyTorch's pooling)."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._args import kernel_pair, optional_group
from .._spec import concrete_shape, resolve_geometry
from ..exactness import inexact_reasons_pool, warn_if_inexact
from ..groups import Group, get_group

__all__ = ["GroupPool", "GroupMaxPool2d", "GroupAvgPool2d", "as_group_map"]


class GroupPool(nn.Module):
    """Pool over the group axis: ``(B, C, S, H, W)`` -> ``(B, C, H, W)``, invariant to the stabilizer's
    permutation (what makes a G-CNN's final features rotation invariant).

    Args:
        mode: ``"max"`` or ``"mean"``.
        group: the input's group (a name or :class:`~gconv_triton.groups.Group`), needed only for GrouPy's
            flattened form ``(B, C·S, H, W)`` (channel index ``c·S + s``), where the channel axis alone cannot
            say what ``S`` is.  When given, a 5-D input's group axis must have ``S = |group|`` elements.
    """

    def __init__(self, mode: str = "max", group: Union[str, Group, None] = None):
        super().__init__()
        if mode not in ("max", "mean"):
            raise ValueError(f"mode: expected 'max' or 'mean', got {mode!r}")
        self.mode = mode
        self.group = optional_group(group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = as_group_map(input, self.group, type(self).__name__)
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", group={self.group.name}" if self.group is not None else "")


def as_group_map(input: torch.Tensor, group: Optional[Group], layer: str) -> torch.Tensor:
    """``input`` as ``(B, C, S, H, W)``: 5-D as it is (``S`` checked against ``group`` when given), a flattened
    ``(B, C·S, H, W)`` unflattened with ``S = |group|``."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
    if input.dim() == 5:
        if group is not None and concrete_shape(input, quiet=True)[2] != group.order:
            raise ValueError(f"input: expected a group axis of {group.order} elements ({group.name}) at dim 2, got "
                             f"shape {tuple(input.shape)}")
        return input
    if input.dim() == 4:
        if group is None:
            raise ValueError(f"input: a 4-D input {tuple(input.shape)} is a flattened group map (B, C*S, H, W) "
                             f"only if S is known; expected a 5-D map (B, C, S, H, W), or {layer}(group=...)")
        if concrete_shape(input, quiet=True)[1] % group.order:
            raise ValueError(f"input: expected a multiple of S = {group.order} ({group.name}) channels in the "
                             f"flattened map (B, C*S, H, W), got shape {tuple(input.shape)}")
        return input.unflatten(1, (-1, group.order))
    raise ValueError(f"input: expected a group feature map (B, C, S, H, W) or its flattened form (B, C*S, H, W), "
                     f"got shape {tuple(input.shape)}")


class _SpatialPool(nn.Module):
    """Spatial pooling that also takes 5-D group feature maps ``(B, C, S, H, W)`` (pooled per G-channel and
    group element, as GrouPy's ``plane_group_spatial_max_pooling``), flattened ``(B, C·S, H, W)`` maps and
    planes.

    Exactly equivariant when the windows sit symmetrically about the image centre:
    ``(H + 2p - (k-1) - 1) % s == 0`` (and the same for W; with the default ``stride = kernel_size`` and no
    padding, ``H`` divisible by ``k``), and ``H == W`` for 90° rotations.  Otherwise the layer issues one
    :class:`~gconv_triton.EquivarianceWarning` per input size.  ``group`` names the symmetry to check (and
    the size of a 5-D input's group axis); by default the conditions of p4 and p4m (90° rotations and flips),
    the strictest; pass ``"p2mm"``, ``"pm"`` or ``"p2"`` to allow non-square inputs.
    """

    _pool = None
    _mode = None

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, *,
                 group: Union[str, Group, None] = None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        kernel = kernel_pair(kernel_size)
        if isinstance(padding, str):  # F.max_pool2d / F.avg_pool2d take no 'same' / 'valid'
            raise TypeError(f"padding: expected an int or a pair of ints, got {padding!r}")
        _, _, (top, _, left, _) = resolve_geometry(kernel, self.stride, padding, 1)
        if top > kernel[0] // 2 or left > kernel[1] // 2:  # torch's pooling rule, checked here and not at forward
            raise ValueError(f"padding: expected at most half the kernel size (kernel_size {kernel}), got "
                             f"{padding!r}")
        self.ceil_mode = ceil_mode
        self.group = optional_group(group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or input.dim() not in (4, 5):
            raise ValueError(f"input: expected (B, C, H, W) or (B, C, S, H, W), got "
                             f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
        if input.dim() == 5:
            as_group_map(input, self.group, type(self).__name__)  # checks S against the group
        x = input.flatten(1, 2) if input.dim() == 5 else input
        y = type(self)._pool(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        warn_if_inexact(self, input)
        return y.unflatten(1, input.shape[1:3]) if input.dim() == 5 else y

    def _inexact_reasons(self, size: tuple[int, int]) -> tuple[str, list[str]]:
        group = self.group or get_group("p4m")
        name = group.name if self.group is not None else "p4 or p4m (assumed; pass group= for another group)"
        return name, inexact_reasons_pool(group, size, self.kernel_size, self.stride, self.padding,
                                          ceil_mode=self.ceil_mode, mode=self._mode)

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        if self.group is not None:
            s += f", group={self.group.name}"
        return s


class GroupMaxPool2d(_SpatialPool):
    __doc__ = "Max pooling over H and W. " + _SpatialPool.__doc__
    _pool = staticmethod(F.max_pool2d)
    _mode = "max"


class GroupAvgPool2d(_SpatialPool):
    __doc__ = "Average pooling over H and W (padding counted in the divisor, as torch's default). " + \
        _SpatialPool.__doc__
    _pool = staticmethod(F.avg_pool2d)
    _mode = "avg"
