"""``nn.Module`` wrappers: group-convolution layers, group pooling and spatial pooling on group feature maps."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._library import check_activation
from ._spec import resolve_geometry
from .exactness import warn_if_inexact
from .functional import gconv2d
from .groups import Group, get_group

__all__ = ["GroupConv2d", "P4ConvZ2", "P4ConvP4", "P4MConvZ2", "P4MConvP4M", "GroupPool", "GroupMaxPool2d",
           "GroupAvgPool2d"]


def _kernel_pair(kernel_size) -> tuple[int, int]:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, tuple, list)):
        raise TypeError(f"kernel_size: expected an int or a pair of ints, got {kernel_size!r}")
    pair = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(pair) != 2 or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in pair):
        raise ValueError(f"kernel_size: expected a positive int or a pair of positive ints, got {kernel_size!r}")
    return pair  # type: ignore[return-value]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def reset_conv_parameters(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """``nn.Conv2d``'s initialisation: Kaiming-uniform weight (a = √5) and a bias uniform in ±1/√fan_in, with
    fan_in = ``weight[0].numel()`` (all but the leading dimension)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight[0].numel()
        nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


class GroupConv2d(nn.Module):
    """Group convolution from ``in_group`` feature maps to ``group`` feature maps (Cohen & Welling, 2016).

    Args:
        in_channels, out_channels: numbers of G-channels (a p4 feature map with ``C`` G-channels has ``4·C``
            planar channels).
        kernel_size: int or pair (a pair must be square for groups with 90° rotations).
        group: the output group: ``"p4"``, ``"p4m"``, ``"p2"``, ``"pm"``, ``"p2mm"``, ``"z2"`` or a
            :class:`~gconv_triton.groups.Group`.
        in_group: ``"z2"`` for a lifting layer on ordinary images, else the same group as ``group``.
        stride, padding, dilation, groups, bias, device, dtype: as in ``torch.nn.Conv2d``.
        activation: None, ``"relu"``, ``"silu"`` or ``"gelu"``: fused after the bias (exact backward; see
            :func:`~gconv_triton.functional.gconv2d`).

    Shapes: input ``(B, C_in, S_in, H, W)`` or flattened ``(B, C_in·S_in, H, W)``; output
    ``(B, C_out, S_out, H_out, W_out)``.  Parameters: ``weight (C_out, C_in/groups, S_in, kh, kw)`` and
    ``bias (C_out,)``, nothing else: the filter bank is never stored (:meth:`export` builds it once).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, group: Union[str, Group] = "p4",
                 in_group: Union[str, Group] = "z2", stride=1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = True, device=None, dtype=None, activation: Optional[str] = None):
        super().__init__()
        self.activation = check_activation(activation)
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                             f"divisible by groups ({groups})")
        self.group = get_group(group, "group")
        self.in_group = get_group(in_group, "in_group")
        if not self.in_group.is_trivial and self.in_group != self.group:
            raise ValueError(f"in_group: expected 'z2' or the output group {self.group.name}, got "
                             f"{self.in_group.name}")
        self.kernel_size = _kernel_pair(kernel_size)
        self.group.tap_destinations(self.kernel_size)  # a rotation group needs a square kernel: fail here, not later
        resolve_geometry(self.kernel_size, stride, padding, dilation)  # bad stride/padding/dilation fail here too
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, self.in_group.order,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation with fan-in ``C_in/groups · S_in · kh · kw``."""
        reset_conv_parameters(self.weight, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = gconv2d(input, self.weight, self.bias, group=self.group, in_group=self.in_group, stride=self.stride,
                    padding=self.padding, dilation=self.dilation, groups=self.groups, activation=self.activation)
        warn_if_inexact(self, input)  # after gconv2d validated the input; once per input size
        return y

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"group={self.group.name}, in_group={self.in_group.name}, stride={self.stride}")
        if self.padding not in (0, (0, 0)):
            s += f", padding={self.padding!r}"
        if self.dilation not in (1, (1, 1)):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation != "none":
            s += f", activation={self.activation!r}"
        return s

    def export(self) -> nn.Module:
        """A plain ``torch.nn.Conv2d`` holding the materialized filter bank (and, with an activation,
        ``nn.Sequential(conv, nn.ReLU/SiLU/GELU())``) for inference stacks and ONNX: it maps the flattened input
        ``(B, C_in·S_in, H, W)`` (``x.flatten(1, 2)`` of a 5-D input) to ``(B, C_out·S_out, H', W')``; unflatten
        with ``y.unflatten(1, (C_out, S_out))``.  See :func:`gconv_triton.layers.export_conv`."""
        from .layers import export_conv

        return export_conv(self)


def _specialise(name: str, group: str, in_group: str, doc: str):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 *, dilation=1, groups: int = 1, device=None, dtype=None, activation: Optional[str] = None):
        GroupConv2d.__init__(self, in_channels, out_channels, kernel_size, group=group, in_group=in_group,
                             stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                             device=device, dtype=dtype, activation=activation)

    return type(name, (GroupConv2d,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


P4ConvZ2 = _specialise("P4ConvZ2", "p4", "z2", "Lifting layer: images ``(B, C, H, W)`` -> p4 maps ``(B, C', 4, H', W')``.")
P4ConvP4 = _specialise("P4ConvP4", "p4", "p4", "p4 maps ``(B, C, 4, H, W)`` -> p4 maps ``(B, C', 4, H', W')``.")
P4MConvZ2 = _specialise("P4MConvZ2", "p4m", "z2", "Lifting layer: images ``(B, C, H, W)`` -> p4m maps ``(B, C', 8, H', W')``.")
P4MConvP4M = _specialise("P4MConvP4M", "p4m", "p4m",
                         "p4m maps ``(B, C, 8, H, W)`` -> p4m maps ``(B, C', 8, H', W')``.")


class GroupPool(nn.Module):
    """Pool over the group axis: ``(B, C, S, H, W)`` -> ``(B, C, H, W)``, invariant to the stabilizer's
    permutation (what makes a G-CNN's final features rotation invariant)."""

    def __init__(self, mode: str = "max"):
        super().__init__()
        if mode not in ("max", "mean"):
            raise ValueError(f"mode: expected 'max' or 'mean', got {mode!r}")
        self.mode = mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 5:
            raise ValueError(f"input: expected a 5-D group feature map (B, C, S, H, W), got shape {tuple(input.shape)}")
        return input.amax(dim=2) if self.mode == "max" else input.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class _SpatialPool(nn.Module):
    """Spatial pooling that also takes 5-D group feature maps ``(B, C, S, H, W)`` (pooled per G-channel and
    group element, as GrouPy's ``plane_group_spatial_max_pooling``)."""

    _pool = None

    def __init__(self, kernel_size, stride: Optional[int] = None, padding=0, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() not in (4, 5):
            raise ValueError(f"input: expected (B, C, H, W) or (B, C, S, H, W), got shape {tuple(input.shape)}")
        x = input.flatten(1, 2) if input.dim() == 5 else input
        y = type(self)._pool(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return y.unflatten(1, input.shape[1:3]) if input.dim() == 5 else y

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GroupMaxPool2d(_SpatialPool):
    __doc__ = "Max pooling over H and W. " + _SpatialPool.__doc__
    _pool = staticmethod(F.max_pool2d)


class GroupAvgPool2d(_SpatialPool):
    __doc__ = "Average pooling over H and W. " + _SpatialPool.__doc__
    _pool = staticmethod(F.avg_pool2d)
