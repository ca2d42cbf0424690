"""Convolution layers: the group convolution (``GroupConv2d`` and GrouPy's names for it), its transpose, and the
plain ``Conv1d`` / ``Conv2d`` and shared-kernel layers, which run on the same kernels as the trivial group z2 (a
1-D convolution as a 2-D one on a height-1 image).

Parameters and initialisation here, numerics in :mod:`gconv_triton.functional`.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from .._args import (PADDING_MODES, as_2d_args, check_activation, check_channels, check_group_pair,
                     check_padding_mode, int_tuple, kernel_pair, output_padding_pair, positive_int)
from .._spec import concrete_shape, resolve_geometry
from ..exactness import inexact_reasons, inexact_reasons_transposed, warn_if_inexact
from ..functional import gconv2d, gconv_transpose2d, shared_kernel_conv1d, shared_kernel_conv2d
from ..groups import Group, get_group, z2
from ..reference import filter_bank, pad_input
from ..steerable import (SteerableGroup, basis_size, reset_coefficients, rotated_basis, steerable_bank,
                         steerable_conv2d, steerable_conv_transpose2d)

__all__ = ["GroupConv2d", "P4ConvZ2", "P4ConvP4", "P4MConvZ2", "P4MConvP4M", "GroupConvTranspose2d", "Conv1d",
           "Conv2d", "SharedKernelConv1d", "SharedKernelConv2d", "gcnn_width"]

#: the module of each fused activation, for :meth:`GroupConv2d.export`
ACTIVATION_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def conv_inexact_reasons(layer, size: tuple[int, int]) -> tuple[str, list[str]]:
    """For :func:`~gconv_triton.exactness.warn_if_inexact`: the group of a convolution layer (``group``,
    ``kernel_size``, ``stride``, ``padding``, ``dilation``) and why it is inexact on ``size`` inputs.  Every
    padding mode is as exact as zeros: each commutes with rotations and flips."""
    return layer.group.name, inexact_reasons(layer.group, size, layer.kernel_size, layer.stride, layer.padding,
                                             layer.dilation)


def reset_conv_parameters(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """``nn.Conv2d``'s initialisation: Kaiming-uniform weight (a = √5) and a bias uniform in ±1/√fan_in, with
    fan_in = ``weight[0].numel()`` (all but the leading dimension)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight[0].numel()
        nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


class _SteerableTables:
    """What a convolution layer on ``C_N`` / ``D_N`` (``group`` a :class:`~gconv_triton.steerable.SteerableGroup`)
    adds to its ``nn.Module``: the rotated tables ``Ψ (S, B, k·k)`` as the non-persistent buffer ``basis`` (it
    moves with the layer and is a plain input to compiled graphs; the state dict keeps ``weight`` and ``bias``
    only), rebuilt from float64 whenever the layer is cast or moved."""

    def _register_basis(self, device, dtype) -> None:
        if self.steerable:
            tables = rotated_basis(self.group, self.kernel_size[0]).flatten(2)
            self.register_buffer("basis", tables.to(device=device, dtype=dtype or torch.get_default_dtype()),
                                 persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """``nn.Module``'s (``.to``, ``.double()``, ``.cuda()``, ...), then the steerable tables rebuilt from float64
        in their new dtype and device: a cast of tables already rounded (fp32 -> float64) would leave the float64
        layer computing with fp32 tables.  Written in place, so that what ``fn`` made of the buffer (its device,
        dtype, shared or pinned memory) stays."""
        super()._apply(fn, recurse)
        if self.steerable and self.basis is not None:
            with torch.no_grad():
                self.basis.copy_(rotated_basis(self.group, self.kernel_size[0]).flatten(2))
        return self

    @property
    def steerable(self) -> bool:
        """Whether ``group`` is ``C_N`` / ``D_N`` on steerable filters (``weight`` holds basis coefficients)."""
        return isinstance(self.group, SteerableGroup)

    def _steerable_repr(self) -> str:
        """The basis size (and a non-zero reflection axis) for ``extra_repr``; empty for other groups."""
        if not self.steerable:
            return ""
        return f", basis={basis_size(self.kernel_size)}" + (f", axis={self.group.axis:g}" if self.group.axis else "")


# --------------------------------------------------------------------------------------- group convolution
class GroupConv2d(_SteerableTables, nn.Module):
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
    functions (the kernel square); the Triton kernels steer the filter inside the GEMM (no bank), and the
    reference path (bank by one small matmul, then ``F.conv2d``) serves CPU tensors on the ``'auto'`` backend.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, group: Union[str, Group] = "p4",
                 in_group: Union[str, Group] = "z2", stride=1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 activation: Optional[str] = None):
        super().__init__()
        self.activation = check_activation(activation)
        self.in_channels, self.out_channels, self.groups = check_channels(in_channels, out_channels, groups)
        self.group, self.in_group = check_group_pair(group, in_group, "in_group")
        self.kernel_size = kernel_pair(kernel_size)
        self.group.check_kernel_size(self.kernel_size)  # a rotation group needs a square kernel: fail here, not later
        resolve_geometry(self.kernel_size, stride, padding, dilation)  # bad stride/padding/dilation fail here too
        check_padding_mode(padding_mode, PADDING_MODES)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.padding_mode = padding_mode
        factory = dict(device=device, dtype=dtype)
        # basis coefficients, or one weight per window position
        window = (basis_size(self.kernel_size),) if self.steerable else self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, self.in_group.order, *window,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._register_basis(device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation with fan-in ``C_in/groups · S_in · kh · kw`` (steerable filters: the
        coefficients drawn so that the bank's per-position weights get its variance, as
        :func:`~gconv_triton.steerable.init_coefficients`)."""
        if self.steerable:
            reset_coefficients(self.weight, self.bias, self.kernel_size[0])
        else:
            reset_conv_parameters(self.weight, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, padding = input, self.padding
        if self.padding_mode != "zeros":  # as torch.nn.Conv2d: pad explicitly, then convolve without padding
            _, _, pad = resolve_geometry(self.kernel_size, self.stride, self.padding, self.dilation)
            x, padding = pad_input(input, pad, self.padding_mode), 0
        conv, steered = gconv2d, {}
        if self.steerable:
            conv, steered = steerable_conv2d, dict(kernel_size=self.kernel_size[0], tables=self.basis)
        y = conv(x, self.weight, self.bias, group=self.group, in_group=self.in_group, stride=self.stride,
                 padding=padding, dilation=self.dilation, groups=self.groups, activation=self.activation, **steered)
        warn_if_inexact(self, input)  # after gconv2d validated the input; once per input size
        return y

    _inexact_reasons = conv_inexact_reasons

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"group={self.group.name}, in_group={self.in_group.name}, stride={self.stride}")
        s += self._steerable_repr()
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
        with ``y.unflatten(1, (C_out, S_out))``.  See :func:`gconv_triton.export.export_conv`."""
        return _exported(self, nn.Conv2d, self.group.order, padding_mode=self.padding_mode)


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


# ---------------------------------------------------------------------------------------------------- widths
def gcnn_width(cnn_width: int, group: Union[Group, str], equal: str = "params") -> int:
    """The G-channel width that matches a CNN layer of ``cnn_width`` channels.

    A group-to-group layer of width ``C`` has ``C²·S·k²`` parameters and does ``C²·S²·k²`` multiply-adds per
    pixel (``S = |group|``), against ``N²·k²`` for both in a CNN layer of width ``N``.  So ``equal="params"``
    gives ``N / √S`` (Cohen & Welling's choice: p4m ResNet-44 widths 11, 23, 45 for 32, 64, 128) and
    ``equal="compute"`` gives ``N / S``; rounded to the nearest int, at least 1.
    """
    positive_int(cnn_width, "cnn_width")
    order = get_group(group, "group").order
    if equal == "params":
        width = cnn_width / math.sqrt(order)
    elif equal == "compute":
        width = cnn_width / order
    else:
        raise ValueError(f"equal: expected 'params' or 'compute', got {equal!r}")
    return max(1, round(width))


# ------------------------------------------------------------------------------------- transposed convolution
class GroupConvTranspose2d(_SteerableTables, nn.Module):
    """Transposed group convolution (U-Net decoders): see :func:`gconv_transpose2d` (and, for ``C_N`` / ``D_N``,
    :func:`~gconv_triton.steerable.steerable_conv_transpose2d`).

    Args:
        in_channels, out_channels: G-channels of the input (on ``group``) and output (on ``out_group``).
        kernel_size, stride, padding, output_padding, groups, bias, dilation, device, dtype: as
            ``torch.nn.ConvTranspose2d`` (padding an int or a pair).
        group: the input's group, as :class:`GroupConv2d`'s (``"p4"``, ``"p4m"``, ..., or ``"c8"``, ``"d16"``, ...
            on steerable filters); out_group: the output's (default ``group``; ``"z2"`` projects to planes).

    Parameters: ``weight (in_channels, out_channels / groups, S_out, kh, kw)``, ``bias (out_channels,)``; with a
    steerable group ``weight`` is the coefficients ``(in_channels, out_channels / groups, S_out, B)`` of the
    matching steerable convolution (the tables ``Ψ`` a non-persistent buffer ``basis``, as
    :class:`GroupConv2d`'s), run on the kernels as that convolution's input gradient (no bank).
    A nonzero ``output_padding`` makes the layer inexact (one :class:`~gconv_triton.EquivarianceWarning` per
    input size): for a U-Net decoder that doubles the size use ``kernel_size=4, stride=2, padding=1``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, group: Union[str, Group] = "p4",
                 out_group: Union[str, Group, None] = None, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = check_channels(in_channels, out_channels, groups)
        self.group, self.out_group = check_group_pair(group, out_group, "out_group")
        self.kernel_size = kernel_pair(kernel_size)
        self.group.check_kernel_size(self.kernel_size)
        if isinstance(padding, str):
            raise ValueError(f"padding: expected an int or a pair, got {padding!r}")
        self.stride, self.dilation, (top, _, left, _) = resolve_geometry(self.kernel_size, stride, padding, dilation)
        self.padding = (top, left)
        self.output_padding = output_padding_pair(output_padding, self.stride, self.dilation)
        factory = dict(device=device, dtype=dtype)
        window = (basis_size(self.kernel_size),) if self.steerable else self.kernel_size
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels // groups, self.out_group.order, *window,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._register_basis(device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.ConvTranspose2d``'s initialisation with fan-in ``C_out/groups · S_out · kh · kw`` (steerable
        filters: the coefficients drawn so that the bank's per-position weights get its variance, as
        :func:`~gconv_triton.steerable.reset_coefficients` does for the matching convolution)."""
        if self.steerable:
            reset_coefficients(self.weight, self.bias, self.kernel_size[0])
        else:
            reset_conv_parameters(self.weight, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        conv, steered = gconv_transpose2d, {}
        if self.steerable:
            conv, steered = steerable_conv_transpose2d, dict(kernel_size=self.kernel_size[0], tables=self.basis)
        y = conv(input, self.weight, self.bias, group=self.group, out_group=self.out_group, stride=self.stride,
                 padding=self.padding, output_padding=self.output_padding, groups=self.groups,
                 dilation=self.dilation, **steered)
        warn_if_inexact(self, input)  # once per input size: output_padding != 0 is off-centre
        return y

    def _inexact_reasons(self, size: tuple[int, int]) -> tuple[str, list[str]]:
        return self.group.name, inexact_reasons_transposed(self.group, size, self.kernel_size, self.stride,
                                                           self.padding, self.output_padding, self.dilation)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, group={self.group.name}, "
             f"out_group={self.out_group.name}, stride={self.stride}, padding={self.padding}")
        s += self._steerable_repr()
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def export(self) -> nn.ConvTranspose2d:
        """A plain ``torch.nn.ConvTranspose2d`` holding the materialized bank: ``(B, C_in·S, H, W)`` ->
        ``(B, C_out·S_out, H', W')`` (flatten/unflatten the group axis as for :meth:`GroupConv2d.export`)."""
        return _exported(self, nn.ConvTranspose2d, self.out_group.order, output_padding=self.output_padding)


@torch.no_grad()
def _exported(layer: Union[GroupConv2d, GroupConvTranspose2d], conv_type, order: int, **options) -> nn.Module:
    """``layer``'s filter bank in a plain ``conv_type`` (``nn.Conv2d`` or ``nn.ConvTranspose2d``) with the bias
    repeated over the ``order`` output group elements, followed by the layer's activation if it has one."""
    factory = dict(device=layer.weight.device, dtype=layer.weight.dtype)
    transposed = conv_type is nn.ConvTranspose2d
    other_group = layer.out_group if transposed else layer.in_group
    # the matching convolution's bank (C_out·S, C_in·S_in / groups, k, k), which nn.ConvTranspose2d reads as its
    # (in, out / groups, k, k); steerable filters: from the coefficients and the layer's tables
    if layer.steerable:
        bank = steerable_bank(layer.weight, layer.group, other_group, layer.kernel_size[0], layer.basis)
    else:
        bank = filter_bank(layer.weight, layer.group, other_group).flatten(0, 1).flatten(1, 2)
    in_channels, out_channels = bank.shape[0], bank.shape[1] * layer.groups
    if not transposed:
        in_channels, out_channels = out_channels, in_channels
    conv = conv_type(in_channels, out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                     dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None, **options, **factory)
    conv.weight.copy_(bank)
    if layer.bias is not None:
        conv.bias.copy_(layer.bias.repeat_interleave(order))
    activation = getattr(layer, "activation", "none")
    return conv if activation == "none" else nn.Sequential(conv, ACTIVATION_MODULES[activation]())


# ----------------------------------------------------------------------------------- plain convolutions
def _batched(input, dims: int, layer: nn.Module) -> tuple[torch.Tensor, bool]:
    """``input`` with a batch axis, and whether one was added (torch's convolutions take unbatched inputs too).

    ``dims`` is the batched rank: 3 for 1-D layers ``(B, C, L)``, 4 for 2-D layers ``(B, C, H, W)``.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (dims, dims - 1):
        axes = "(B, C, L)" if dims == 3 else "(B, C, H, W)"
        raise ValueError(f"input: {type(layer).__name__} expects a {dims}-D tensor {axes} or a {dims - 1}-D "
                         f"unbatched one, got shape {tuple(input.shape)}")
    return (input, False) if input.dim() == dims else (input.unsqueeze(0), True)


def _check_channels(x: torch.Tensor, expected: int, layer: nn.Module) -> None:
    if concrete_shape(x, quiet=True)[1] != expected:
        raise ValueError(f"input: {type(layer).__name__} expects {expected} channels at dim 1 (batched) or 0 "
                         f"(unbatched), got {x.shape[1]} in shape {tuple(x.shape)}")


class _FusedConvMixin:
    """Replaces ``torch.nn.ConvNd._conv_forward`` by the fused kernels; everything else (arguments, checks,
    parameters, initialisation, ``extra_repr``, state dicts) is torch's own."""

    _spatial_dims: int

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        x, unbatched = _batched(input, self._spatial_dims + 2, self)
        _check_channels(x, self.in_channels, self)
        stride, padding, dilation = self.stride, self.padding, self.dilation
        if self._spatial_dims == 1:
            x, weight = x.unsqueeze(2), weight.unsqueeze(2)
            stride, padding, dilation = as_2d_args(stride, padding, dilation)
        if self.padding_mode != "zeros":  # as torch: pad explicitly, then convolve without padding
            _, _, pad = resolve_geometry(tuple(weight.shape[-2:]), stride, padding, dilation)
            x, padding = pad_input(x, pad, self.padding_mode), 0
        # weight (C_out, C_in/groups, [1,] kh, kw) -> (C_out, C_in/groups, S_in = 1, kh, kw): a view, no copy
        y = gconv2d(x, weight.unsqueeze(2), bias, group=z2, in_group=z2, stride=stride, padding=padding,
                    dilation=dilation, groups=self.groups)
        y = y.flatten(1, 2) if self._spatial_dims == 2 else y.flatten(1, 3)  # drop S_out = 1 (and H = 1)
        return y.squeeze(0) if unbatched else y


class Conv1d(_FusedConvMixin, nn.Conv1d):
    """``torch.nn.Conv1d`` on the fused kernels (a height-1 2-D convolution of the trivial group).

    Same arguments, defaults, parameters (``weight (C_out, C_in/groups, k)``, ``bias (C_out,)``), initialisation
    and state dict as ``torch.nn.Conv1d``, of which it is a subclass.  Input ``(B, C_in, L)`` or ``(C_in, L)``;
    output ``(B, C_out, L_out)`` or ``(C_out, L_out)``.  ``padding_mode`` other than ``'zeros'`` pads with
    ``F.pad`` first, as torch does.
    """

    _spatial_dims = 1


class Conv2d(_FusedConvMixin, nn.Conv2d):
    """``torch.nn.Conv2d`` on the fused kernels (the group convolution of the trivial group z2).

    Same arguments, defaults, parameters (``weight (C_out, C_in/groups, kh, kw)``, ``bias (C_out,)``),
    initialisation and state dict as ``torch.nn.Conv2d``, of which it is a subclass.  Input ``(B, C_in, H, W)``
    or ``(C_in, H, W)``; output ``(B, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``.  ``padding_mode`` other
    than ``'zeros'`` pads with ``F.pad`` first, as torch does.
    """

    _spatial_dims = 2


class _SharedKernelConvNd(nn.Module):
    """One kernel and one bias shared by ``groups`` channels: a depthwise convolution whose ``groups`` filters
    are tied.  The weight is never repeated in memory; its gradient is the sum over the channels, reduced
    inside the kernel."""

    _spatial_dims: int
    _functional = None

    def __init__(self, kernel_size, groups: int, stride=1, padding=0, dilation=1, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        n = self._spatial_dims
        self.groups = positive_int(groups, "groups")
        self.kernel_size = int_tuple(kernel_size, n, "kernel_size", 1)
        self.stride = int_tuple(stride, n, "stride", 1)
        self.dilation = int_tuple(dilation, n, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding: expected an int, a tuple, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1,) * n:
                raise ValueError(f"padding: 'same' is not supported for strided convolutions, got "
                                 f"stride={self.stride}")
            self.padding = padding
        else:
            self.padding = int_tuple(padding, n, "padding", 0)
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty((1, 1, *self.kernel_size), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(1, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's convolution initialisation (fan-in ``kh·kw``, as a depthwise ``nn.Conv2d``'s)."""
        nn.modules.conv._ConvNd.reset_parameters(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, unbatched = _batched(input, self._spatial_dims + 2, self)
        _check_channels(x, self.groups, self)
        y = type(self)._functional(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        n = self._spatial_dims
        s = f"{self.groups}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * n:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * n:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s


class SharedKernelConv1d(_SharedKernelConvNd):
    """One ``(1, 1, k)`` kernel and one bias ``(1,)`` applied to each of ``groups`` channels:
    ``(B, groups, L)`` -> ``(B, groups, L_out)`` (or unbatched ``(groups, L)``).  Equal to ``nn.Conv1d(groups,
    groups, k, groups=groups)`` with every filter tied; see :func:`~gconv_triton.functional.shared_kernel_conv1d`.
    """

    _spatial_dims = 1
    _functional = staticmethod(shared_kernel_conv1d)


class SharedKernelConv2d(_SharedKernelConvNd):
    """One ``(1, 1, kh, kw)`` kernel and one bias ``(1,)`` applied to each of ``groups`` channels:
    ``(B, groups, H, W)`` -> ``(B, groups, H_out, W_out)`` (or unbatched).  Equal to ``nn.Conv2d(groups, groups,
    k, groups=groups)`` with every filter tied; see :func:`~gconv_triton.functional.shared_kernel_conv2d`.
    """

    _spatial_dims = 2
    _functional = staticmethod(shared_kernel_conv2d)
