"""Batch normalization of group feature maps, with statistics shared over the group axis (which keeps it
equivariant)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .._args import optional_group, positive_int
from .._spec import concrete_shape
from ..groups import Group
from .pool import as_group_map

__all__ = ["GroupBatchNorm"]


class GroupBatchNorm(nn.Module):
    """Batch normalization of group feature maps ``(B, C, S, H, W)``: one mean and variance per G-channel ``c``,
    over the batch, the group axis and the plane, and one affine ``(weight, bias)`` per G-channel.

    Sharing the statistics over the group axis is what keeps it equivariant (a rotation permutes the group axis
    and the plane, which leaves those statistics unchanged); a per-planar-channel ``BatchNorm2d`` on the
    flattened ``(B, C·S, H, W)`` map would not be.  Also takes plane feature maps ``(B, C, H, W)`` (per-channel
    statistics over B, H, W) and, given ``group``, GrouPy's flattened group maps ``(B, C·S, H, W)`` (normalized as
    the 5-D map, returned flat).

    The statistics are computed by a child ``norm``, an ``nn.BatchNorm3d`` that always receives the 5-D map
    (planes as ``(B, C, 1, H, W)``); ``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``, ``eps``, ``momentum``, ``affine`` and ``track_running_stats`` are the child's, and
    running statistics, ``momentum`` and ``eval()`` behave as in ``torch.nn.BatchNorm3d``.  So
    ``nn.SyncBatchNorm.convert_sync_batchnorm``, which replaces every ``_BatchNorm`` by a plain ``SyncBatchNorm``,
    converts the child for multi-GPU training and leaves this layer, with its reading of the input, in place.
    State-dict keys are ``norm.weight``, ``norm.running_mean``, ...

    Args:
        num_features: ``C``, the number of G-channels.
        eps, momentum, affine, track_running_stats, device, dtype: as in ``torch.nn.BatchNorm3d``.
        group: the maps' group, for flattened input (a 4-D input with ``C·S`` channels); 5-D input must then
            have ``S = |group|``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *,
                 group: Union[str, Group, None] = None):
        super().__init__()
        self.group = optional_group(group)
        self.norm = nn.BatchNorm3d(positive_int(num_features, "num_features"), eps, momentum, affine,
                                   track_running_stats, device=device, dtype=dtype)

    def reset_running_stats(self) -> None:
        self.norm.reset_running_stats()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (4, 5):
            raise ValueError(f"input: expected a group feature map (B, C, S, H, W) or a plane map (B, C, H, W), "
                             f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}")
        c, group = self.num_features, self.group
        channels = concrete_shape(input, quiet=True)[1]
        if input.dim() == 5:
            as_group_map(input, group, type(self).__name__)  # S against the group, when given
        elif group is not None and group.order > 1 and channels == c * group.order:
            return self._normalize(as_group_map(input, group, type(self).__name__)).flatten(1, 2)
        if channels != c:
            flat = ""
            if input.dim() == 4 and group is not None:
                flat = f" or {c * group.order} (C*S, flattened {group.name} map)"
            elif input.dim() == 4 and channels % c == 0:
                flat = (f"; a flattened group map (B, C*S, H, W) with S = {channels // c} needs "
                        f"GroupBatchNorm({c}, group=...)")
            raise ValueError(f"input: expected {c} channels (num_features) at dim 1{flat}, got shape "
                             f"{tuple(input.shape)}")
        return self._normalize(input) if input.dim() == 5 else self._normalize(input.unsqueeze(2)).squeeze(2)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, S, H, W)`` through the child ``norm``, the output in ``x``'s layout.  A map stored
        ``(B, H, W, C, S)`` (the package's layers' outputs) goes in as the contiguous ``(B·H·W, C, S, 1, 1)`` view
        of its memory, which has the same statistics per ``C`` and which ``BatchNorm3d`` keeps in place (it would
        copy the 5-D map to its contiguous layout, forward and backward)."""
        b, c, s, h, w = x.shape
        pixels_outer = x.permute(0, 3, 4, 1, 2)
        if not pixels_outer.is_contiguous():
            return self.norm(x)
        return self.norm(pixels_outer.view(b * h * w, c, s, 1, 1)).view(b, h, w, c, s).permute(0, 3, 4, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.num_features}" + (f", group={self.group.name}" if self.group is not None else "")


def _norm_attribute(name: str, settable: bool) -> property:
    """``GroupBatchNorm.<name>``: the child ``norm``'s attribute (also after it became a ``SyncBatchNorm``)."""
    def get(self):
        return getattr(self.norm, name)

    def set(self, value):
        setattr(self.norm, name, value)

    return property(get, set if settable else None, doc=f"``norm.{name}``")


for _name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
    setattr(GroupBatchNorm, _name, _norm_attribute(_name, settable=True))
for _name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
    setattr(GroupBatchNorm, _name, _norm_attribute(_name, settable=False))
del _name
