"""The group convolution as PyTorch operators (``torch.library``), so ``torch.compile`` and autocast see it.

Three ops, each running the fused Triton kernels or the plain-PyTorch reference path (chosen inside the op, at run
time, from the backend name the caller resolved), registered with ``torch.library.custom_op``:

* ``gconv_triton::gconv2d(x, weight, bias, ..., activation) -> (y, z, x_copy)``: ``y = act(conv(x) + bias)``;
  ``z`` is the pre-activation for ``silu``/``gelu`` (what their exact backward needs) and an empty tensor otherwise
  (``relu``'s backward reads its mask from ``y``, ``none`` needs nothing), so the fused epilogue keeps no more than
  ``conv + F.act`` would.  ``x_copy``: the zero-padded channels-last copy of ``x`` the kernels made to read it
  (``kernels.input_copy_shape``; empty when they read ``x`` in place, and on the reference path), kept for the
  weight gradient instead of being made again there; not differentiable.
* ``gconv_triton::gconv2d_input_grad(dy, weight, input_size, ...)``: the transposed convolution (conv's input
  gradient, and :class:`~gconv_triton.nn.GroupConvTranspose2d`'s forward).  Differentiable: its input gradient
  is the forward conv, its weight gradient the weight-grad op with the roles of ``dy`` and ``x`` swapped.
* ``gconv_triton::gconv2d_weight_grad(dy, x, weight_size, ..., x_copy=None)``: reads ``x_copy`` (the conv op's)
  where given.

Why ``custom_op`` rather than ``triton_op`` + ``wrap_triton``: ``triton_op`` registers its body as the fake kernel
and traces it under ``FakeTensorMode``; our launchers cache the group tables per device (an ``lru_cache`` that
would then hold fake tensors), poison outputs, and under ``TRITON_INTERPRET=1`` launch ``InterpretedFunction``\\ s,
which ``wrap_triton`` rejects.  An opaque ``custom_op`` compiles without a graph break on every device, at the
cost of Inductor not fusing into the kernels (their epilogue already fuses bias and activation).

Groups cross the op boundary by name: ``GROUPS.key(group)`` gives the string under which a :class:`Group`
registered itself when it was built (the built-ins under their names; ``gconv_triton._support``).  The backend
name is read once per call outside the graph: a compiled model keeps the backend that was current when it was
traced.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._backend import reference_path
from .._spec import check_index_range, op_geometry, op_out_shape, spec_from_op_args
from .._support import (GROUP_MAP_ORDER, autocast_inputs, backend_name, compiling, dim_order, empty_group_map,
                        empty_in_order, kernels_for, onnx_exporting, untraced)
from ..groups import get_group
from ..reference import (activate, bank_conv2d, bank_conv_input_grad, bank_conv_transpose2d, bank_conv_weight_grad,
                         gconv2d_reference)

__all__ = ["conv", "conv_input_grad", "bias_grad", "activation_backward"]


def _standard_ops(x: Tensor, backend: str) -> bool:
    """Whether the call runs as standard PyTorch ops differentiated by autograd (filter bank + ``F.conv2d``)
    rather than through the custom ops: eagerly on the reference path (the 'torch' backend, or 'auto' on a
    non-CUDA tensor, the rule of ``_backend.use_triton``), where one ``convolution_backward`` gives both
    gradients, and inside an ONNX export, which knows no gconv op.  Compiled models keep the custom ops.
    """
    if onnx_exporting():
        return True
    return not compiling() and reference_path(x, backend)


# ------------------------------------------------------------------------------------------------- the ops
@torch.library.custom_op("gconv_triton::gconv2d", mutates_args=())
def _conv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], group: str, in_group: str, stride: List[int],
             padding: List[int], dilation: List[int], groups: int, weight_groups: int, activation: str,
             backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    spec = spec_from_op_args(x, weight, bias, group, in_group, stride, padding, dilation, groups, weight_groups)
    keep_z = activation in ("silu", "gelu")
    x_copy = None
    if kernels_for(x, backend):
        from .. import kernels

        check_index_range(spec)
        out = kernels.forward(x, weight, bias, spec, activation, keep_z, return_input_copy=True)
        y, z, x_copy = out if keep_z else (out[0], None, out[1])
    else:
        z = gconv2d_reference(x, weight, bias, spec)
        y = activate(z, activation)
        z = z if keep_z else None
        like = empty_group_map(y.shape, x)
        if y.stride() != like.stride():  # same layout as the kernels (and the fake kernel) give
            y = like.copy_(y)
            z = None if z is None else empty_group_map(z.shape, x).copy_(z)
    return y, (z if z is not None else x.new_empty(0)), (x_copy if x_copy is not None else x.new_empty(0))


@_conv_op.register_fake
def _(x, weight, bias, group, in_group, stride, padding, dilation, groups, weight_groups, activation, backend):
    y = empty_group_map(op_out_shape(x, weight, group, stride, padding, dilation, groups, weight_groups), x)
    z = empty_group_map(y.shape, x) if activation in ("silu", "gelu") else x.new_empty(0)
    copy_shape = None
    if kernels_for(x, backend):
        from .. import kernels

        with untraced():   # the group's position tables, which make_spec checks, are cached: never as fake tensors
            spec = spec_from_op_args(x, weight, bias, group, in_group, stride, padding, dilation, groups, weight_groups)
        copy_shape = kernels.input_copy_shape(x, spec)
    return y, z, x.new_empty(copy_shape if copy_shape is not None else 0)


@torch.library.custom_op("gconv_triton::gconv2d_input_grad", mutates_args=())
def _input_grad_op(dy: Tensor, weight: Tensor, input_size: List[int], input_order: List[int], group: str,
                   in_group: str, stride: List[int], padding: List[int], dilation: List[int], groups: int,
                   weight_groups: int, backend: str) -> Tensor:
    like = dy.new_empty(()).expand(input_size)  # shape, dtype and device of x without memory
    spec = spec_from_op_args(like, weight, None, group, in_group, stride, padding, dilation, groups, weight_groups)
    if kernels_for(dy, backend):
        from .. import kernels

        return kernels.input_grad(dy, weight, spec, input_order)
    dx = bank_conv_input_grad(dy, weight, spec, input_size)
    out = empty_in_order(input_size, input_order, dtype=dx.dtype, device=dx.device)  # the fake kernel's strides
    return dx if dx.stride() == out.stride() else out.copy_(dx)  # copy only when the layout differs


@_input_grad_op.register_fake
def _(dy, weight, input_size, input_order, group, in_group, stride, padding, dilation, groups, weight_groups,
      backend):
    return empty_in_order(input_size, input_order, dtype=dy.dtype, device=dy.device)


@torch.library.custom_op("gconv_triton::gconv2d_weight_grad", mutates_args=())
def _weight_grad_op(dy: Tensor, x: Tensor, weight_size: List[int], group: str, in_group: str, stride: List[int],
                    padding: List[int], dilation: List[int], groups: int, weight_groups: int,
                    backend: str, x_copy: Optional[Tensor] = None) -> Tensor:
    like = x.new_empty(()).expand(weight_size)
    spec = spec_from_op_args(x, like, None, group, in_group, stride, padding, dilation, groups, weight_groups)
    if kernels_for(x, backend):
        from .. import kernels

        # x_copy: the forward's channels-last copy of x (the conv op's third output), read instead of x
        return kernels.weight_grad(dy, x, spec, tuple(weight_size), x_copy)
    return bank_conv_weight_grad(dy, x, spec, weight_size)


@_weight_grad_op.register_fake
def _(dy, x, weight_size, group, in_group, stride, padding, dilation, groups, weight_groups, backend, x_copy=None):
    return x.new_empty(weight_size)


# ---------------------------------------------------------------------------------------------- autograd
def bias_grad(dy: torch.Tensor, groups: int, weight_groups: int) -> torch.Tensor:
    """``dy (B, groups·C_out_g, S_out, H, W)`` -> the bias gradient per weight row, summed (in fp32 at least) over
    the batch, the group axis, the plane and the channel groups that share the row."""
    per_channel = dy.sum((0, 2, 3, 4), dtype=torch.promote_types(dy.dtype, torch.float32))
    if groups != weight_groups:   # else one row per channel already: no second launch
        per_channel = per_channel.view(groups // weight_groups, -1).sum(0)
    return per_channel.to(dy.dtype)


def activation_backward(dy: torch.Tensor, saved: torch.Tensor, activation: str) -> torch.Tensor:
    """The gradient through the fused activation, exactly as autograd's for ``F.relu/silu/gelu``: ``saved`` is the
    output ``y`` for relu (``y > 0`` iff the pre-activation is) and the pre-activation for silu and gelu."""
    if activation == "none":
        return dy
    if activation == "relu":
        return torch.ops.aten.threshold_backward(dy, saved, 0)
    if activation == "silu":
        if torch.is_grad_enabled():  # a double backward (create_graph=True): aten's silu_backward has no derivative
            sig = torch.sigmoid(saved)
            return dy * sig * (1 + saved * (1 - sig))  # aten's formula, in differentiable ops
        return torch.ops.aten.silu_backward(dy, saved)
    if activation == "gelu":
        return torch.ops.aten.gelu_backward(dy, saved)
    raise ValueError(f"activation: expected 'none', 'relu', 'silu' or 'gelu', got {activation!r}")


def _geometry_args(inputs, first: int):
    """The op arguments after the tensors: group, in_group, stride, padding, dilation, groups, weight_groups."""
    return tuple(inputs[first:first + 7])


def _conv_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.geometry = _geometry_args(inputs, 3)
    ctx.activation, ctx.backend = inputs[10], inputs[11]
    y, z, x_copy = output
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(x_copy)
    ctx.set_materialize_grads(False)   # no zero-filled gradient for an output nothing used (z, x_copy)
    # relu: the mask comes from y (no extra memory); silu/gelu: from the pre-activation z the kernel wrote.  The
    # forward's channels-last copy of x, when it made one, is kept for the weight gradient (one padded input more
    # than x itself; x stays saved: its shape, layout and, for a double backward, its graph).
    keep_copy = x_copy.numel() != 0 and ctx.needs_input_grad[1]
    ctx.save_for_backward(x, weight, y if ctx.activation == "relu" else z, x_copy if keep_copy else None)


def _conv_backward(ctx, dy, dz_direct, _):
    x, weight, saved, x_copy = ctx.saved_tensors
    # dz_direct: a gradient that reached the pre-activation output itself, which only a double backward through
    # silu/gelu's backward (which reads it) produces.
    dz = None if dy is None else activation_backward(dy, saved, ctx.activation)
    if dz_direct is not None and dz_direct.numel():
        dz = dz_direct if dz is None else dz + dz_direct
    if dz is None:
        return (None,) * 12
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _input_grad_op(dz, weight, list(x.shape), dim_order(x), *ctx.geometry, ctx.backend)
    if ctx.needs_input_grad[1]:
        dw = _weight_grad_op(dz, x, list(weight.shape), *ctx.geometry, ctx.backend, x_copy)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        groups, weight_groups = ctx.geometry[5:7]
        db = bias_grad(dz, groups, weight_groups)
    return (dx, dw, db) + (None,) * 9


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup)


def _input_grad_setup(ctx, inputs, output):
    dy, weight = inputs[:2]
    ctx.geometry = _geometry_args(inputs, 4)
    ctx.backend = inputs[11]
    ctx.save_for_backward(dy, weight)


def _input_grad_backward(ctx, g):
    """``dx = Aᵀ dy`` is linear in ``dy`` and in ``w``: ``d(dy) = A g`` (the forward conv) and
    ``dw = weight_grad(dy, x = g)`` (``⟨Aᵀ dy, g⟩ = ⟨dy, A g⟩``)."""
    dy, weight = ctx.saved_tensors
    d_dy = d_w = None
    if ctx.needs_input_grad[0]:
        d_dy = _conv_op(g, weight, None, *ctx.geometry, "none", ctx.backend)[0]
    if ctx.needs_input_grad[1]:
        d_w = _weight_grad_op(dy, g, list(weight.shape), *ctx.geometry, ctx.backend)
    return (d_dy, d_w) + (None,) * 10


_input_grad_op.register_autograd(_input_grad_backward, setup_context=_input_grad_setup)


def _weight_grad_setup(ctx, inputs, output):
    dy, x = inputs[:2]
    ctx.geometry = _geometry_args(inputs, 3)
    ctx.backend = inputs[10]
    ctx.save_for_backward(dy, x)


def _weight_grad_backward(ctx, g):
    """``dw = W(dy, x)`` is linear in ``dy`` and in ``x``; with ``A_g`` the conv whose weight is ``g``,
    ``⟨W(dy, x), g⟩ = ⟨dy, A_g x⟩``, so ``d(dy) = A_g x`` (the forward conv) and ``dx = A_gᵀ dy`` (the input-grad
    op).  This is the double backward of the conv through its weight (``gradgradcheck``, MAML)."""
    dy, x = ctx.saved_tensors
    d_dy = d_x = None
    if ctx.needs_input_grad[0]:
        d_dy = _conv_op(x, g, None, *ctx.geometry, "none", ctx.backend)[0]
    if ctx.needs_input_grad[1]:
        d_x = _input_grad_op(dy, g, list(x.shape), dim_order(x), *ctx.geometry, ctx.backend)
    return (d_dy, d_x) + (None,) * 10   # x_copy is x's value: x's gradient covers it


_weight_grad_op.register_autograd(_weight_grad_backward, setup_context=_weight_grad_setup)


# ------------------------------------------------------------------------------------------ entry points
def conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], *, group, in_group, stride, padding, dilation,
         groups: int, shared_weight: bool = False, activation: str = "none") -> Tensor:
    """``activation(gconv(input) + bias)``: through ``gconv_triton::gconv2d``, or as standard ops where
    :func:`_standard_ops` says so.  Arguments as
    :func:`~gconv_triton.functional.gconv2d`, which validates them and applies ``autocast_inputs`` first;
    returns ``(B, C_out, S_out, H_out, W_out)``."""
    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    x = input if input.dim() == 5 else input.unflatten(1, (-1, in_group.order))
    geometry = op_geometry(weight, group, in_group, stride, padding, dilation, groups, shared_weight)
    backend = backend_name()
    if _standard_ops(x, backend):
        z = bank_conv2d(x, weight, bias, group=group, in_group=in_group, stride=geometry[2], padding=geometry[3],
                        dilation=geometry[4], groups=groups, shared_weight=shared_weight)
        return activate(z, activation)
    return _conv_op(x, weight, bias, *geometry, activation, backend)[0]


def conv_input_grad(dy: Tensor, weight: Tensor, input_size: Sequence[int], *, group, in_group, stride, padding,
                    dilation, groups: int) -> Tensor:
    """The transposed group convolution ``Aᵀ dy`` of the conv ``A`` that maps ``input_size`` maps to ``dy``'s
    shape, differentiable in ``dy`` and ``weight``; through ``gconv_triton::gconv2d_input_grad``, or as standard
    ops where :func:`_standard_ops` says so."""
    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    dy, weight = autocast_inputs(dy, weight)
    geometry = op_geometry(weight, group, in_group, stride, padding, dilation, groups, False)
    backend = backend_name()
    if _standard_ops(dy, backend):
        return bank_conv_transpose2d(dy, weight, input_size, group=group, in_group=in_group, stride=geometry[2],
                                     padding=geometry[3], dilation=geometry[4], groups=groups)
    # the transposed layer's output: a group map in the layers' layout, as a forward's (the kernels write it so)
    return _input_grad_op(dy, weight, list(input_size), list(GROUP_MAP_ORDER), *geometry, backend)
