"""Plain convolutions on the group-convolution kernels: drop-in ``Conv1d`` / ``Conv2d`` and shared-kernel layers.

An ordinary convolution is the group convolution of the trivial group z2 (``S_in = S_out = 1``), and a 1-D
convolution is a 2-D one on a height-1 image, so these layers run on the same fused kernels as
:class:`~gconv_triton.modules.GroupConv2d`: the implicit GEMM, or the depthwise family when every channel group
has a single input channel.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._spec import concrete_shape
from .functional import _as_2d_args, gconv2d, shared_kernel_conv1d, shared_kernel_conv2d
from .groups import z2
from ._spec import _positive_int

__all__ = ["Conv1d", "Conv2d", "SharedKernelConv1d", "SharedKernelConv2d"]


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
        padding = self.padding
        if self.padding_mode != "zeros":  # as torch: pad explicitly, then convolve without padding
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        stride, dilation = self.stride, self.dilation
        if self._spatial_dims == 1:
            x, weight = x.unsqueeze(2), weight.unsqueeze(2)
            stride, padding, dilation = _as_2d_args(stride, padding, dilation)
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


def _ntuple(value, n: int, name: str, minimum: int) -> tuple[int, ...]:
    """An int or an ``n``-tuple of ints, each ``>= minimum`` -> the ``n``-tuple."""
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        raise TypeError(f"{name}: expected an int or a tuple of {n} ints, got {value!r}")
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise TypeError(f"{name}: expected an int or a tuple of {n} ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {value!r}")
    return out


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
        self.groups = _positive_int(groups, "groups")
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size", 1)
        self.stride = _ntuple(stride, n, "stride", 1)
        self.dilation = _ntuple(dilation, n, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding: expected an int, a tuple, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1,) * n:
                raise ValueError(f"padding: 'same' is not supported for strided convolutions, got "
                                 f"stride={self.stride}")
            self.padding = padding
        else:
            self.padding = _ntuple(padding, n, "padding", 0)
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
