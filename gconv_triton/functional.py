"""Every functional form: the group convolution and its transpose, the shared-kernel convolutions, the tap
convolutions and the steerable convolution and its transpose (those two defined in ``steerable.py``), each checking
its arguments before anything launches and then calling its op (``gconv_triton.ops``) or its plain-PyTorch path
(``gconv_triton.reference``)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from ._args import TAP_PADDING_MODES, as_2d_args, check_activation, check_padding_mode
from ._spec import concrete_shape, make_spec, resolve_geometry, transposed_geometry
from ._support import autocast_inputs, compiling
from .groups import Group, get_group
from .ops.group_conv import conv, conv_input_grad
from .ops.tap_conv import tap_conv
from .reference import add_bias, pad_input
from .steerable import steerable_conv2d, steerable_conv_transpose2d
from .tap_functions import check_reduce, get_tap

__all__ = ["gconv2d", "gconv_transpose2d", "shared_kernel_conv2d", "shared_kernel_conv1d", "tap_conv2d",
           "tap_conv1d", "steerable_conv2d", "steerable_conv_transpose2d"]

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
    if not compiling():  # every check, before anything launches (the op rebuilds the spec at run time)
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
    if not compiling():
        make_spec(input, weight.unsqueeze(2), bias, shared_weight=True, **geometry)
    return conv(input, weight.unsqueeze(2), bias, shared_weight=True, **geometry).squeeze(2)


# ------------------------------------------------------------------------------------ 1-D, as height-1 2-D
def shared_kernel_conv1d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         stride=1, padding=0, dilation=1) -> torch.Tensor:
    """One ``(1, 1, k)`` kernel (and one bias ``(1,)``) applied to every channel of ``input (B, C, L)``; returns
    ``(B, C, L_out)``.  :func:`shared_kernel_conv2d` on a height-1 image: same kernels, same in-kernel gradient sum.
    """
    _check_shape(input, "input", 3, (), "a 3-D tensor (B, C, L)")
    _check_shape(weight, "weight", 3, (1, 1), "shape (1, 1, k)")
    stride, padding, dilation = as_2d_args(stride, padding, dilation)
    return shared_kernel_conv2d(input.unsqueeze(2), weight.unsqueeze(2), bias, stride, padding,
                                dilation).squeeze(2)


# ---------------------------------------------------------------------------------------- transposed
def gconv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                      group: Union[Group, str], out_group: Union[Group, str, None] = None, stride=1, padding=0,
                      output_padding=0, groups: int = 1, dilation=1) -> torch.Tensor:
    """Transposed group convolution: the adjoint of the group convolution from ``out_group`` maps to ``group``
    maps with the same ``weight`` (as ``F.conv_transpose2d`` is the adjoint of ``F.conv2d``).

    Args:
        input: ``(B, C_in, S, H, W)`` (``S = |group|``) or flattened ``(B, C_in·S, H, W)``.
        weight: ``(C_in, C_out / groups, S_out, kh, kw)``, ``S_out = |out_group|``: the base weight of the matching
            convolution (``nn.ConvTranspose2d``'s ``(in, out / groups, kh, kw)`` layout, plus the group axis).
        bias: ``(C_out,)`` or None.
        out_group: the output's group: ``group`` (default, e.g. a U-Net decoder) or ``"z2"`` (projects to planes).
        stride, padding (int or pair), output_padding, groups, dilation: as ``F.conv_transpose2d``.
    Returns:
        ``(B, C_out, S_out, H_out, W_out)`` with ``H_out = (H−1)·stride − 2·padding + dilation·(kh−1) +
        output_padding + 1``.  Exactly equivariant when ``output_padding`` is 0 (at any stride; with stride 2,
        ``kernel_size=4, padding=1`` doubles the size exactly), see ``docs/exactness.md``.

    Runs the input-gradient kernel of the matching convolution; its gradients are the forward kernel (input) and
    the weight-gradient kernel with ``dy`` and ``x`` swapped (weight), so nothing is materialized here either.
    """
    group = get_group(group, "group")
    out_group = group if out_group is None else get_group(out_group, "out_group")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise ValueError(f"weight: expected a 5-D tensor (C_in, C_out/groups, S_out, kh, kw), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    x, size, geometry = transposed_geometry(input, weight, concrete_shape(weight, quiet=True)[-2:], bias, group=group,
                                            out_group=out_group, stride=stride, padding=padding,
                                            output_padding=output_padding, groups=groups, dilation=dilation)
    return add_bias(conv_input_grad(x, weight, size, **geometry), bias)


# ------------------------------------------------------------------------------------- tap convolutions
def tap_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, tap, reduce: str = "sum",
               stride=1, padding=0, dilation=1, groups: int = 1, group="z2", in_group="z2",
               padding_mode: str = "zeros", standard_ops: bool = False) -> Tensor:
    """A convolution whose tap is ``tap(x, w)`` and whose reduction over the receptive field is ``reduce``.

    ``y[b, o, p] = reduce over (i, t) of tap(x[b, i, p·stride + t·dilation − padding], w[o, i, t]) + bias[o]``.

    Args:
        input: ``(B, C_in, H, W)`` with a 4-D weight ``(C_out, C_in/groups, kh, kw)`` (``F.conv2d``'s shapes, z2
            only); with a group weight ``(C_out, C_in/groups, S_in, kh, kw)``, ``gconv2d``'s shapes: input
            ``(B, C_in, S_in, H, W)`` or ``(B, C_in·S_in, H, W)``, output ``(B, C_out, S_out, H_out, W_out)``.
        tap: ``"mul"`` (``x·w``), ``"adder"`` (``−|x − w|``), ``"addernet"`` (the adder tap with AdderNet's
            training gradients: ``x − w`` for the weight, ``HardTanh(w − x)`` for the input), ``"l2"``
            (``−(x − w)²``), ``"add"`` (``x + w``), ``"sub"`` (``x − w``), or a :class:`~gconv_triton.TapFunction`.
        reduce: ``"sum"``, ``"max"``, ``"min"`` or ``"prod"``.  ``max``/``min`` send the gradient to one
            arg-extreme window position, the first in ``(i, t)`` order on ties; ``prod``'s gradient is exact at
            zero factors.
        stride, padding, dilation, groups: as ``F.conv2d`` (padding also ``"same"``/``"valid"``).
        group, in_group: as :func:`~gconv_triton.functional.gconv2d` (window positions rotated on the gather).
        padding_mode: ``"zeros"`` (a padded pixel is 0 and goes through the tap, as unfold would give),
            ``"ignore"`` (window positions outside the image are left out of the reduction; a window with
            none inside gives 0 + bias and no gradient), or ``"reflect"``, ``"replicate"``, ``"circular"``
            (``F.pad`` first, as torch).
        standard_ops: compute with standard PyTorch operators
            (:func:`~gconv_triton.reference.tap_standard_ops`: unfold, ``torch_fn``, reduce; no chunking, no custom
            op), the form ONNX export writes and ``export_model`` keeps; a ``ValueError`` when ``tap``'s
            ``torch_fn`` is not made of such operators.

    Morphological dilation is ``tap="add", reduce="max"``, erosion ``tap="sub", reduce="min"``.
    """
    tap = get_tap(tap)
    reduce = check_reduce(tap, reduce)
    padding_mode = check_padding_mode(padding_mode, TAP_PADDING_MODES)
    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    planar = weight.dim() == 4
    if planar:
        if not (group.is_trivial and in_group.is_trivial):
            raise ValueError(f"weight: a 4-D weight (C_out, C_in/groups, kh, kw) is for group='z2' only; group "
                             f"{group.name} takes (C_out, C_in/groups, S_in, kh, kw), got shape "
                             f"{tuple(weight.shape)}")
        if isinstance(input, torch.Tensor) and input.dim() != 4:
            raise ValueError(f"input: expected a 4-D tensor (B, C_in, H, W) with a 4-D weight, got shape "
                             f"{tuple(input.shape)}")
        weight = weight.unsqueeze(2)
    if padding_mode in ("reflect", "replicate", "circular"):
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
        _, _, pad = resolve_geometry(tuple(weight.shape[-2:]), stride, padding, dilation)
        input, padding = pad_input(input, pad, padding_mode), 0
    input, weight, bias = autocast_inputs(input, weight, bias)  # as nn.Conv2d: cast first, then check the dtypes
    if not compiling():  # every check, before anything launches
        make_spec(input, weight, bias, group=group, in_group=in_group, stride=stride, padding=padding,
                  dilation=dilation, groups=groups)
    y = tap_conv(input, weight, bias, tap=tap, reduce=reduce, ignore=padding_mode == "ignore", group=group,
                 in_group=in_group, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 standard_ops=standard_ops)
    return y.flatten(1, 2) if planar else y


def tap_conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, tap, reduce: str = "sum",
               stride=1, padding=0, dilation=1, groups: int = 1, group="z2", in_group="z2",
               padding_mode: str = "zeros", standard_ops: bool = False) -> Tensor:
    """:func:`tap_conv2d` in 1-D: input ``(B, C_in, L)``, weight ``(C_out, C_in/groups, k)``, output
    ``(B, C_out, L_out)`` (a height-1 2-D tap convolution).  Only ``group="z2"``: rotations need two axes."""
    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    if not (group.is_trivial and in_group.is_trivial):
        raise ValueError(f"group: a 1-D tap convolution takes group='z2' and in_group='z2' only, got "
                         f"{group.name} and {in_group.name}")
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name}: expected a 3-D tensor, got shape {tuple(t.shape)}")
    stride, padding, dilation = as_2d_args(stride, padding, dilation)
    y = tap_conv2d(input.unsqueeze(2), weight.unsqueeze(2), bias, tap=tap, reduce=reduce, stride=stride,
                   padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode,
                   standard_ops=standard_ops)
    return y.squeeze(2)
