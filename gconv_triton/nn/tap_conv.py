"""``TapConv1d`` / ``TapConv2d``: convolution layers whose tap function is not a multiply (adder, morphological,
l2, your own), and ``ExportedTapConv``, their standard-operator form.

Parameters and initialisation here, numerics in :func:`gconv_triton.functional.tap_conv2d`.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .._args import (TAP_PADDING_MODES, as_2d_args, check_channels, check_group_pair, check_padding_mode, int_tuple,
                     kernel_pair)
from .._spec import resolve_geometry
from .._support import onnx_exporting
from ..exactness import warn_if_inexact
from ..functional import tap_conv1d, tap_conv2d
from ..groups import Group
from ..reference import check_standard_ops
from ..tap_functions import BUILTIN_TAPS, TapFunction, check_reduce, get_tap
from .conv import conv_inexact_reasons, reset_conv_parameters

__all__ = ["TapConv1d", "TapConv2d", "ExportedTapConv"]

#: half-width of the uniform noise on a morphological structuring element (see ``reset_parameters``)
MORPHOLOGY_INIT = 0.01


class _TapConvNd(nn.Module):
    _spatial_dims: int

    def __init__(self, in_channels: int, out_channels: int, kernel_size, tap: Union[str, TapFunction],
                 reduce: str = "sum", stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 group: Union[str, Group] = "z2", in_group: Union[str, Group] = "z2", padding_mode: str = "zeros",
                 device=None, dtype=None):
        super().__init__()
        self.tap = get_tap(tap)
        self.reduce = check_reduce(self.tap, reduce)
        self.padding_mode = check_padding_mode(padding_mode, TAP_PADDING_MODES)
        self.in_channels, self.out_channels, self.groups = check_channels(in_channels, out_channels, groups)
        self.group, self.in_group = check_group_pair(group, in_group, "in_group")
        if self._spatial_dims == 1:  # checked as the height-1 2-D convolution it runs as
            self.kernel_size = int_tuple(kernel_size, 1, "kernel_size", 1)
            resolve_geometry((1,) + self.kernel_size, *as_2d_args(stride, padding, dilation))
        else:
            self.kernel_size = kernel_pair(kernel_size)
            self.group.position_destinations(self.kernel_size)  # a rotation group needs a square kernel
            resolve_geometry(self.kernel_size, stride, padding, dilation)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        factory = dict(device=device, dtype=dtype)
        planar = self.group.is_trivial and self.in_group.is_trivial
        stab = () if planar else (self.in_group.order,)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *stab, *self.kernel_size,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Per tap (see ``docs/tap-convolutions.md``):

        * ``"mul"`` and user taps: ``nn.Conv2d``'s initialisation (Kaiming-uniform, bias ±1/√fan_in);
        * ``"adder"``, ``"addernet"``, ``"l2"``: weight ``N(0, 1)`` (the tap compares ``w`` with ``x`` directly,
          so the weight lives on the scale of normalised inputs, as AdderNet initialises), bias 0;
        * ``"add"``, ``"sub"``: a flat structuring element (0, so max-plus starts as max pooling and erosion as
          min pooling) plus uniform noise in ±``MORPHOLOGY_INIT`` so the output channels differ, bias 0.
        """
        name = self.tap.name if BUILTIN_TAPS.get(self.tap.name) is self.tap else None
        if name in ("adder", "addernet", "l2"):
            nn.init.normal_(self.weight)
        elif name in ("add", "sub"):
            nn.init.uniform_(self.weight, -MORPHOLOGY_INIT, MORPHOLOGY_INIT)
        else:
            reset_conv_parameters(self.weight, self.bias)
            return
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def check_standard_ops(self, what: str, name: str = "") -> None:
        """A ``ValueError`` naming this layer when its tap has no standard-operator form (see ``tap_conv2d``)."""
        layer = f"{type(self).__name__}({self.extra_repr()})"
        check_standard_ops(self.tap, what, f"{name} ({layer})" if name else layer)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, tap={self.tap.name!r}"
        if self.reduce != "sum":
            s += f", reduce={self.reduce!r}"
        s += f", stride={self.stride}"
        if self.padding not in (0, (0,), (0, 0)):
            s += f", padding={self.padding!r}"
        if self.dilation not in (1, (1,), (1, 1)):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if not (self.group.is_trivial and self.in_group.is_trivial):
            s += f", group={self.group.name}, in_group={self.in_group.name}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class TapConv2d(_TapConvNd):
    """A 2-D convolution with tap ``tap(x, w)`` and reduction ``reduce`` (see
    :func:`~gconv_triton.functional.tap_conv2d`).

    Arguments as ``nn.Conv2d`` plus ``tap``, ``reduce``, ``group``, ``in_group`` and ``padding_mode`` (also
    ``"ignore"``).  Parameters: ``weight (C_out, C_in/groups, kh, kw)`` for the plain group z2, else
    ``(C_out, C_in/groups, S_in, kh, kw)``; ``bias (C_out,)``.  Input ``(B, C_in, H, W)`` (z2) or a group feature
    map ``(B, C_in, S_in, H, W)``; output ``(B, C_out, H_out, W_out)`` or ``(B, C_out, S_out, H_out, W_out)``.
    ``forward(input, standard_ops=True)`` computes it with standard operators (the export form, unchunked).
    """

    _spatial_dims = 2

    def forward(self, input: torch.Tensor, standard_ops: bool = False) -> torch.Tensor:
        if standard_ops or onnx_exporting():
            self.check_standard_ops("standard_ops=True" if standard_ops else "ONNX export")
        y = tap_conv2d(input, self.weight, self.bias, tap=self.tap, reduce=self.reduce, stride=self.stride,
                       padding=self.padding, dilation=self.dilation, groups=self.groups, group=self.group,
                       in_group=self.in_group, padding_mode=self.padding_mode, standard_ops=standard_ops)
        warn_if_inexact(self, input)  # once per input size, as GroupConv2d: a stride that drops pixels unevenly
        return y

    _inexact_reasons = conv_inexact_reasons


class TapConv1d(_TapConvNd):
    """A 1-D convolution with tap ``tap(x, w)`` and reduction ``reduce`` (see
    :func:`~gconv_triton.functional.tap_conv1d`): input ``(B, C_in, L)``, output ``(B, C_out, L_out)``,
    ``weight (C_out, C_in/groups, k)``.  Arguments as ``nn.Conv1d`` plus ``tap``, ``reduce`` and
    ``padding_mode`` (also ``"ignore"``); the group is z2.
    """

    _spatial_dims = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, tap: Union[str, TapFunction],
                 reduce: str = "sum", stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, tap, reduce, stride, padding, dilation, groups,
                         bias, "z2", "z2", padding_mode, device, dtype)

    def forward(self, input: torch.Tensor, standard_ops: bool = False) -> torch.Tensor:
        if standard_ops or onnx_exporting():
            self.check_standard_ops("standard_ops=True" if standard_ops else "ONNX export")
        return tap_conv1d(input, self.weight, self.bias, tap=self.tap, reduce=self.reduce, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups,
                          padding_mode=self.padding_mode, standard_ops=standard_ops)


class ExportedTapConv(nn.Module):
    """A :class:`TapConv1d`/:class:`TapConv2d` computed with standard PyTorch operators only (the receptive
    fields unfolded, tapped by the tap's ``torch_fn``, reduced; ``standard_ops=True``): what
    :func:`~gconv_triton.export_model` puts in its place.  Same parameters, shapes and values; no custom op."""

    def __init__(self, layer: _TapConvNd):
        super().__init__()
        layer.check_standard_ops("export_model")
        self.layer = layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.layer(input, standard_ops=True)

