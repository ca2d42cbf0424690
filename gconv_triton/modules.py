"""``nn.Module`` wrappers: group-convolution layers, group pooling and spatial pooling on group feature maps."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._library import check_activation
from ._spec import _pair, _positive_int, concrete_shape, resolve_geometry
from .exactness import inexact_reasons, inexact_reasons_pool, warn_if_inexact
from .functional import gconv2d
from .groups import Group, get_group
from .steerable import SteerableGroup, basis_size, reset_coefficients, rotated_basis, steerable_conv2d

__all__ = ["GroupConv2d", "P4ConvZ2", "P4ConvP4", "P4MConvZ2", "P4MConvP4M", "GroupPool", "GroupMaxPool2d",
           "GroupAvgPool2d"]


def _kernel_pair(kernel_size) -> tuple[int, int]:
    pair = _pair(kernel_size, "kernel_size")  # TypeError for anything but an int or a pair of ints
    if min(pair) < 1:
        raise ValueError(f"kernel_size: expected a positive int or a pair of positive ints, got {kernel_size!r}")
    return pair


def check_channels(in_channels, out_channels, groups) -> tuple[int, int, int]:
    """``in_channels``, ``out_channels`` and ``groups`` as ``nn.Conv2d`` takes them: positive ints, both channel
    counts divisible by ``groups``."""
    in_channels = _positive_int(in_channels, "in_channels")
    out_channels = _positive_int(out_channels, "out_channels")
    groups = _positive_int(groups, "groups")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                         f"divisible by groups ({groups})")
    return in_channels, out_channels, groups


def check_group_pair(group, other, other_name: str) -> tuple[Group, Group]:
    """``group`` and the group on the layer's other side (``in_group`` of a convolution, ``out_group`` of a
    transposed one): the other is ``'z2'`` (a lifting or projecting layer) or ``group`` itself."""
    group = get_group(group, "group")
    other = group if other is None else get_group(other, other_name)
    if not other.is_trivial and other != group:
        side = "output" if other_name == "in_group" else "input"
        raise ValueError(f"{other_name}: expected 'z2' or the {side} group {group.name}, got {other.name}")
    return group, other


def conv_inexact_reasons(layer, size: tuple[int, int]) -> tuple[str, list[str]]:
    """For :func:`~gconv_triton.exactness.warn_if_inexact`: the group of a convolution layer (``group``,
    ``kernel_size``, ``stride``, ``padding``, ``dilation``) and why it is inexact on ``size`` inputs.  Every
    padding mode is as exact as zeros: each commutes with rotations and flips."""
    return layer.group.name, inexact_reasons(layer.group, size, layer.kernel_size, layer.stride, layer.padding,
                                             layer.dilation)


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pad(input: torch.Tensor, padding: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """``input`` padded by ``(top, bottom, left, right)`` with ``F.pad``'s ``mode``; a 5-D group map is padded
    as its flattened form.  Anything but a 4-D or 5-D tensor passes through, for ``gconv2d`` to reject."""
    if not isinstance(input, torch.Tensor) or input.dim() not in (4, 5):
        return input
    top, bottom, left, right = padding
    h, w = concrete_shape(input, quiet=True)[-2:]
    # F.pad's own limits, raised here with the layer's argument names: reflect needs pad < size, circular <=
    limit_h, limit_w = (h - 1, w - 1) if mode == "reflect" else (h, w) if mode == "circular" else (None, None)
    if limit_h is not None and (max(top, bottom) > limit_h or max(left, right) > limit_w):
        raise ValueError(f"padding: (top, bottom, left, right) = {padding} with padding_mode={mode!r} needs at most "
                         f"{limit_h} rows and {limit_w} columns of padding on a {h}x{w} input")
    x = input.flatten(1, 2) if input.dim() == 5 else input
    y = F.pad(x, (left, right, top, bottom), mode=mode)
    return y.unflatten(1, input.shape[1:3]) if input.dim() == 5 else y


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
        group: the output group: ``"p4"``, ``"p4m"``, ``"p2"``, ``"pm"``, ``"p2mm"``, ``"z2"``, a
            :class:`~gconv_triton.groups.Group`, or ``C_N`` / ``D_N`` on steerable filters: ``"c8"``, ``"d16"``,
            ... or :func:`~gconv_triton.steerable.dihedral_group` ``(N, axis)`` (``docs/steerable.md``).
        in_group: ``"z2"`` for a lifting layer on ordinary images, else the same group as ``group``.
        stride, padding, dilation, groups, bias, padding_mode, device, dtype: as in ``torch.nn.Conv2d``
            (``padding_mode`` ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``: every mode keeps
            rotations and flips of a square input exact).
        activation: None, ``"relu"``, ``"silu"`` or ``"gelu"``: fused after the bias (exact backward; see
            :func:`~gconv_triton.functional.gconv2d`).

    Shapes: input ``(B, C_in, S_in, H, W)`` or flattened ``(B, C_in·S_in, H, W)``; output
    ``(B, C_out, S_out, H_out, W_out)``.  Parameters: ``weight (C_out, C_in/groups, S_in, kh, kw)`` and
    ``bias (C_out,)``, nothing else: the filter bank is never stored (:meth:`export` builds it once).  With a
    steerable group ``weight`` is the coefficients ``(C_out, C_in/groups, S_in, B)`` on e2cnn's basis of ``B``
    functions (the kernel square), and the layer runs the reference path (bank by one small matmul, then
    ``F.conv2d``) on every device: the Triton kernels have no steerable filters yet.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, group: Union[str, Group] = "p4",
                 in_group: Union[str, Group] = "z2", stride=1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 activation: Optional[str] = None):
        super().__init__()
        self.activation = check_activation(activation)
        self.in_channels, self.out_channels, self.groups = check_channels(in_channels, out_channels, groups)
        self.group, self.in_group = check_group_pair(group, in_group, "in_group")
        self.kernel_size = _kernel_pair(kernel_size)
        self.group.check_kernel_size(self.kernel_size)  # a rotation group needs a square kernel: fail here, not later
        resolve_geometry(self.kernel_size, stride, padding, dilation)  # bad stride/padding/dilation fail here too
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode: expected one of {PADDING_MODES}, got {padding_mode!r}")
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.padding_mode = padding_mode
        factory = dict(device=device, dtype=dtype)
        taps = (basis_size(self.kernel_size),) if self.steerable else self.kernel_size  # coefficients or taps
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, self.in_group.order, *taps,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        if self.steerable:  # Ψ (S, B, k·k): a buffer moves with the layer and is a plain input to compiled graphs
            tables = rotated_basis(self.group, self.kernel_size[0]).flatten(2)
            self.register_buffer("basis", tables.to(device=device, dtype=dtype or torch.get_default_dtype()),
                                 persistent=False)
        self.reset_parameters()

    @property
    def steerable(self) -> bool:
        """Whether ``group`` is ``C_N`` / ``D_N`` on steerable filters (``weight`` holds basis coefficients)."""
        return isinstance(self.group, SteerableGroup)

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation with fan-in ``C_in/groups · S_in · kh · kw`` (steerable filters: the
        coefficients drawn so that the bank's taps get its variance, as
        :func:`~gconv_triton.steerable.init_coefficients`)."""
        if self.steerable:
            reset_coefficients(self.weight, self.bias, self.kernel_size[0])
        else:
            reset_conv_parameters(self.weight, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, padding = input, self.padding
        if self.padding_mode != "zeros":  # as torch.nn.Conv2d: pad explicitly, then convolve without padding
            _, _, pad = resolve_geometry(self.kernel_size, self.stride, self.padding, self.dilation)
            x, padding = _pad(input, pad, self.padding_mode), 0
        conv, steered = gconv2d, {}
        if self.steerable:
            conv, steered = steerable_conv2d, dict(kernel_size=self.kernel_size[0], tables=self.basis)
        y = conv(x, self.weight, self.bias, group=self.group, in_group=self.in_group, stride=self.stride,
                 padding=padding, dilation=self.dilation, groups=self.groups, activation=self.activation, **steered)
        warn_if_inexact(self, input)  # after gconv2d validated the input; once per input size
        return y

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("padding_mode", "zeros")  # a layer pickled before padding_mode existed

    _inexact_reasons = conv_inexact_reasons

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"group={self.group.name}, in_group={self.in_group.name}, stride={self.stride}")
        if self.steerable:
            s += f", basis={basis_size(self.kernel_size)}" + (f", axis={self.group.axis:g}" if self.group.axis else "")
        if self.padding not in (0, (0, 0)):
            s += f", padding={self.padding!r}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
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
                 *, dilation=1, groups: int = 1, padding_mode: str = "zeros", device=None, dtype=None,
                 activation: Optional[str] = None):
        GroupConv2d.__init__(self, in_channels, out_channels, kernel_size, group=group, in_group=in_group,
                             stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                             padding_mode=padding_mode, device=device, dtype=dtype, activation=activation)

    return type(name, (GroupConv2d,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


P4ConvZ2 = _specialise("P4ConvZ2", "p4", "z2",
                       "Lifting layer: images ``(B, C, H, W)`` -> p4 maps ``(B, C', 4, H', W')``.")
P4ConvP4 = _specialise("P4ConvP4", "p4", "p4", "p4 maps ``(B, C, 4, H, W)`` -> p4 maps ``(B, C', 4, H', W')``.")
P4MConvZ2 = _specialise("P4MConvZ2", "p4m", "z2",
                        "Lifting layer: images ``(B, C, H, W)`` -> p4m maps ``(B, C', 8, H', W')``.")
P4MConvP4M = _specialise("P4MConvP4M", "p4m", "p4m",
                         "p4m maps ``(B, C, 8, H, W)`` -> p4m maps ``(B, C', 8, H', W')``.")


def _optional_group(group) -> Optional[Group]:
    return None if group is None else get_group(group, "group")


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
        self.group = _optional_group(group)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("group", None)  # pickled before group existed

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = _as_group_map(input, self.group, type(self).__name__)
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", group={self.group.name}" if self.group is not None else "")


def _as_group_map(input: torch.Tensor, group: Optional[Group], layer: str) -> torch.Tensor:
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
        kernel = _kernel_pair(kernel_size)
        if isinstance(padding, str):  # F.max_pool2d / F.avg_pool2d take no 'same' / 'valid'
            raise TypeError(f"padding: expected an int or a pair of ints, got {padding!r}")
        _, _, (top, _, left, _) = resolve_geometry(kernel, self.stride, padding, 1)
        if top > kernel[0] // 2 or left > kernel[1] // 2:  # torch's pooling rule, checked here and not at forward
            raise ValueError(f"padding: expected at most half the kernel size (kernel_size {kernel}), got "
                             f"{padding!r}")
        self.ceil_mode = ceil_mode
        self.group = _optional_group(group)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("group", None)  # pickled before group existed

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or input.dim() not in (4, 5):
            raise ValueError(f"input: expected (B, C, H, W) or (B, C, S, H, W), got "
                             f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
        if input.dim() == 5:
            _as_group_map(input, self.group, type(self).__name__)  # checks S against the group
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
