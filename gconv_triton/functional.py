"""Functional group convolution: ``gconv2d`` (and its shared-kernel variant), dispatched to a backend."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ._library import _compiling, autocast_inputs, check_activation, conv
from ._spec import concrete_shape, make_spec
from .groups import Group

__all__ = ["gconv2d", "shared_kernel_conv2d", "shared_kernel_conv1d", "tap_conv2d", "tap_conv1d"]

GroupLike = Union[Group, str]


def gconv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, group: GroupLike,
            in_group: GroupLike, stride=1, padding=0, dilation=1, groups: int = 1,
            activation: Optional[str] = None) -> torch.Tensor:
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
        activation: None, ``"relu"``, ``"silu"`` or ``"gelu"`` (erf form), applied after the bias in the kernels'
            epilogue.  The backward is exact: relu's mask comes from the output; silu and gelu keep the
            pre-activation (the memory ``conv`` + ``F.silu`` would keep too).
    Returns:
        ``(B, C_out, S_out, H_out, W_out)``.  Under ``torch.autocast`` the inputs are cast to the autocast dtype
        first, as for ``torch.nn.Conv2d``.

    Exactly equivariant with stride 1 and symmetric padding; with stride ``s`` only when
    ``(H + 2p - d(k-1) - 1) % s == 0`` and ``H == W`` (see the README).
    """
    activation = check_activation(activation)
    input, weight, bias = autocast_inputs(input, weight, bias)  # as nn.Conv2d: cast first, then check the dtypes
    if not _compiling():  # every check, before anything launches (the op rebuilds the spec at run time)
        make_spec(input, weight, bias, group=group, in_group=in_group, stride=stride, padding=padding,
                  dilation=dilation, groups=groups)
    return conv(input, weight, bias, group=group, in_group=in_group, stride=stride, padding=padding,
                dilation=dilation, groups=groups, activation=activation)


def _check_shape(t, name: str, rank: int, leading: tuple, expected: str) -> None:
    """``t`` is a tensor of ``rank`` dims whose first dims are ``leading`` (the shared kernels' argument checks;
    dtypes, devices and sizes are checked with every other call's in ``make_spec``)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of {expected}, got {type(t).__name__}")
    if t.dim() != rank or concrete_shape(t, quiet=True)[:len(leading)] != leading:
        raise ValueError(f"{name}: expected {expected}, got shape {tuple(t.shape)}")


def shared_kernel_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         stride=1, padding=0, dilation=1) -> torch.Tensor:
    """One ``(1, 1, kh, kw)`` kernel (and one bias ``(1,)``) applied to every channel of ``input (B, C, H, W)``.

    Equal to a depthwise ``conv2d`` with the kernel repeated ``C`` times, but the weight is never repeated in
    memory and its gradient is the sum over the channels, reduced inside the kernel.
    """
    _check_shape(input, "input", 4, (), "a 4-D tensor (B, C, H, W)")
    _check_shape(weight, "weight", 4, (1, 1), "shape (1, 1, kh, kw)")
    if bias is not None:
        _check_shape(bias, "bias", 1, (1,), "shape (1,)")
    input, weight, bias = autocast_inputs(input, weight, bias)
    channels = concrete_shape(input, quiet=True)[1]  # an int for groups=, also under torch.jit.trace
    geometry = dict(group="z2", in_group="z2", stride=stride, padding=padding, dilation=dilation, groups=channels)
    if not _compiling():
        make_spec(input, weight.unsqueeze(2), bias, shared_weight=True, **geometry)
    return conv(input, weight.unsqueeze(2), bias, shared_weight=True, **geometry).squeeze(2)


# ------------------------------------------------------------------------------------ 1-D, as height-1 2-D
def _single(value, name: str, minimum: int) -> int:
    """An int ``>= minimum`` or a 1-tuple of one (what ``torch.nn.Conv1d`` stores) -> the int; errors show
    ``value`` as given (not the 2-D form it becomes)."""
    given = value
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int or a 1-tuple of ints, got {given!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {given!r}")
    return value


def _as_2d_args(stride, padding, dilation):
    """1-D ``stride, padding, dilation`` (checked here, so errors name what the caller passed) -> those of the
    same convolution on a height-1 image."""
    padding = padding if isinstance(padding, str) else (0, _single(padding, "padding", 0))
    return (1, _single(stride, "stride", 1)), padding, (1, _single(dilation, "dilation", 1))


def shared_kernel_conv1d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         stride=1, padding=0, dilation=1) -> torch.Tensor:
    """One ``(1, 1, k)`` kernel (and one bias ``(1,)``) applied to every channel of ``input (B, C, L)``; returns
    ``(B, C, L_out)``.  :func:`shared_kernel_conv2d` on a height-1 image: same kernels, same in-kernel gradient sum.
    """
    _check_shape(input, "input", 3, (), "a 3-D tensor (B, C, L)")
    _check_shape(weight, "weight", 3, (1, 1), "shape (1, 1, k)")
    stride, padding, dilation = _as_2d_args(stride, padding, dilation)
    return shared_kernel_conv2d(input.unsqueeze(2), weight.unsqueeze(2), bias, stride, padding,
                                dilation).squeeze(2)


from .tap import tap_conv1d, tap_conv2d  # noqa: E402  (tap.py imports this module's 1-D helpers)
