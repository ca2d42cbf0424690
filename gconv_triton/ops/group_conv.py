"""The group convolution as PyTorch operators (``torch.library``), so ``torch.compile`` and autocast see it.

Three ops, each running the fused Triton kernels or the plain-PyTorch reference path (chosen inside the op, at run
time, from the backend name the caller resolved), registered with ``torch.library.custom_op``:

* ``gconv_triton::gconv2d(x, weight, bias, ..., activation, ..., keep_input_grad_weight) -> (y, z, x_copy,
  w_input_grad)``: ``y = act(conv(x) + bias)``;
  ``z`` is the pre-activation for ``silu``/``gelu`` (what their exact backward needs) and an empty tensor otherwise
  (``relu``'s backward reads its mask from ``y``, ``none`` needs nothing), so the fused epilogue keeps no more than
  ``conv + F.act`` would.  ``x_copy``: the zero-padded channels-last copy of ``x`` the kernels made to read it
  (``kernels.input_copy_shape``; empty when they read ``x`` in place, and on the reference path), kept for the
  weight gradient instead of being made again there; not differentiable.  ``w_input_grad`` (with
  ``keep_input_grad_weight``, when ``x`` will need a gradient): the weight as the input gradient's kernel reads it,
  written by the same launch as the forward's (``kernels.input_grad_weight_shape``; else empty), kept for the
  backward instead of re-laying the weight there; not differentiable.
* ``gconv_triton::gconv2d_input_grad(dy, weight, input_size, ..., weight_permuted=None)``: the transposed
  convolution (conv's input gradient, and :class:`~gconv_triton.nn.GroupConvTranspose2d`'s forward); reads
  ``weight_permuted`` (the conv op's ``w_input_grad``) where given and still of the wanted layout.
  Differentiable: its input gradient is the forward conv, its weight gradient the weight-grad op with the roles of
  ``dy`` and ``x`` swapped.
* ``gconv_triton::gconv2d_weight_grad(dy, x, weight_size, ..., x_copy=None, with_bias=False) -> (dw, db)``:
  reads ``x_copy`` (the conv op's) where given; ``db``: with ``with_bias``, the bias gradient from the same
  launches (the kernels add it up with the weight gradient's split sums), else empty; not differentiable (the
  conv's backward asks for it only when it builds no graph).

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
             backend: str, keep_input_grad_weight: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    spec = spec_from_op_args(x, weight, bias, group, in_group, stride, padding, dilation, groups, weight_groups)
    keep_z = activation in ("silu", "gelu")
    x_copy = w_ig = None
    if kernels_for(x, backend):
        from .. import kernels

        check_index_range(spec)
        if keep_input_grad_weight:
            *out, w_ig = kernels.forward_with_input_grad_weight(x, weight, bias, spec, activation, keep_z)
        else:
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
    return (y, (z if z is not None else x.new_empty(0)), (x_copy if x_copy is not None else x.new_empty(0)),
            (w_ig if w_ig is not None else x.new_empty(0)))


@_conv_op.register_fake
def _(x, weight, bias, group, in_group, stride, padding, dilation, groups, weight_groups, activation, backend,
      keep_input_grad_weight=False):
    y = empty_group_map(op_out_shape(x, weight, group, stride, padding, dilation, groups, weight_groups), x)
    z = empty_group_map(y.shape, x) if activation in ("silu", "gelu") else x.new_empty(0)
    copy_shape = w_ig_shape = None
    if kernels_for(x, backend):
        from .. import kernels

        with untraced():   # the group's position tables, which make_spec checks, are cached: never as fake tensors
            spec = spec_from_op_args(x, weight, bias, group, in_group, stride, padding, dilation, groups, weight_groups)
        copy_shape = kernels.input_copy_shape(x, spec)
        if keep_input_grad_weight and y.numel() != 0:
            w_ig_shape = kernels.input_grad_weight_shape(spec, x.dtype, x)
    return (y, z, x.new_empty(copy_shape if copy_shape is not None else 0),
            x.new_empty(w_ig_shape if w_ig_shape is not None else 0))


@torch.library.custom_op("gconv_triton::gconv2d_input_grad", mutates_args=())
def _input_grad_op(dy: Tensor, weight: Tensor, input_size: List[int], input_order: List[int], group: str,
                   in_group: str, stride: List[int], padding: List[int], dilation: List[int], groups: int,
                   weight_groups: int, backend: str, weight_permuted: Optional[Tensor] = None) -> Tensor:
    like = dy.new_empty(()).expand(input_size)  # shape, dtype and device of x without memory
    spec = spec_from_op_args(like, weight, None, group, in_group, stride, padding, dilation, groups, weight_groups)
    if kernels_for(dy, backend):
        from .. import kernels

        return kernels.input_grad(dy, weight, spec, input_order, weight_permuted)
    dx = bank_conv_input_grad(dy, weight, spec, input_size)
    out = empty_in_order(input_size, input_order, dtype=dx.dtype, device=dx.device)  # the fake kernel's strides
    return dx if dx.stride() == out.stride() else out.copy_(dx)  # copy only when the layout differs


@_input_grad_op.register_fake
def _(dy, weight, input_size, input_order, group, in_group, stride, padding, dilation, groups, weight_groups,
      backend, weight_permuted=None):
    return empty_in_order(input_size, input_order, dtype=dy.dtype, device=dy.device)


@torch.library.custom_op("gconv_triton::gconv2d_weight_grad", mutates_args=())
def _weight_grad_op(dy: Tensor, x: Tensor, weight_size: List[int], group: str, in_group: str, stride: List[int],
                    padding: List[int], dilation: List[int], groups: int, weight_groups: int,
                    backend: str, x_copy: Optional[Tensor] = None, with_bias: bool = False) -> Tuple[Tensor, Tensor]:
    like = x.new_empty(()).expand(weight_size)
    spec = spec_from_op_args(x, like, None, group, in_group, stride, padding, dilation, groups, weight_groups)
    db = None
    if kernels_for(x, backend):
        from .. import kernels

        # x_copy: the forward's channels-last copy of x (the conv op's third output), read instead of x
        out = kernels.weight_grad(dy, x, spec, tuple(weight_size), x_copy, with_bias)
        dw, db = out if with_bias else (out, None)
    else:
        dw = bank_conv_weight_grad(dy, x, spec, weight_size)
    if with_bias and db is None:
        db = bias_grad(dy, groups, weight_groups)
    return dw, (db if db is not None else dy.new_empty(0))


@_weight_grad_op.register_fake
def _(dy, x, weight_size, group, in_group, stride, padding, dilation, groups, weight_groups, backend, x_copy=None,
      with_bias=False):
    rows = weight_size[0] if with_bias else 0   # weight_groups·C_out
    return x.new_empty(weight_size), dy.new_empty(rows)


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
    y, z, x_copy, w_ig = output
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(x_copy, w_ig)
    ctx.set_materialize_grads(False)   # no zero-filled gradient for an output nothing used (z, x_copy, w_ig)
    # relu: the mask comes from y (no extra memory); silu/gelu: from the pre-activation z the kernel wrote.  The
    # forward's channels-last copy of x, when it made one, is kept for the weight gradient (one padded input more
    # than x itself; x stays saved: its shape, layout and, for a double backward, its graph).
    # The input gradient's permuted weight, when the forward wrote it (one weight's size more), is kept for it.
    keep_copy = x_copy.numel() != 0 and ctx.needs_input_grad[1]
    keep_w_ig = w_ig.numel() != 0 and ctx.needs_input_grad[0]
    ctx.save_for_backward(x, weight, y if ctx.activation == "relu" else z, x_copy if keep_copy else None,
                          w_ig if keep_w_ig else None)


def _conv_backward(ctx, dy, dz_direct, _copy, _w_ig):
    x, weight, saved, x_copy, w_ig = ctx.saved_tensors
    # dz_direct: a gradient that reached the pre-activation output itself, which only a double backward through
    # silu/gelu's backward (which reads it) produces.
    dz = None if dy is None else activation_backward(dy, saved, ctx.activation)
    if dz_direct is not None and dz_direct.numel():
        dz = dz_direct if dz is None else dz + dz_direct
    if dz is None:
        return (None,) * 13
    dx = dw = db = None
    if ctx.needs_input_grad[0] and ctx.needs_input_grad[1] and kernels_for(dz, ctx.backend):
        from .. import kernels

        # a channels-first dz (the loss's) laid out once for both gradients, not copied by one and re-laid by the other
        dz = kernels.shared_dy(dz, spec_from_op_args(x, weight, None, *ctx.geometry))
    if ctx.needs_input_grad[0]:
        dx = _input_grad_op(dz, weight, list(x.shape), dim_order(x), *ctx.geometry, ctx.backend, w_ig)
    want_db = ctx.has_bias and ctx.needs_input_grad[2]
    # the bias gradient from the weight gradient's launches, unless a graph is built (a double backward): then the
    # differentiable sum
    fused_db = want_db and not torch.is_grad_enabled()
    if ctx.needs_input_grad[1]:
        dw, fused = _weight_grad_op(dz, x, list(weight.shape), *ctx.geometry, ctx.backend, x_copy, fused_db)
        db = fused if fused_db else None
    if want_db and db is None:
        groups, weight_groups = ctx.geometry[5:7]
        db = bias_grad(dz, groups, weight_groups)
    return (dx, dw, db) + (None,) * 10


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
        d_w = _weight_grad_op(dy, g, list(weight.shape), *ctx.geometry, ctx.backend)[0]
    return (d_dy, d_w) + (None,) * 11


_input_grad_op.register_autograd(_input_grad_backward, setup_context=_input_grad_setup)


def _weight_grad_setup(ctx, inputs, output):
    dy, x = inputs[:2]
    ctx.geometry = _geometry_args(inputs, 3)
    ctx.backend = inputs[10]
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(dy, x)


def _weight_grad_backward(ctx, g, _db):
    """``dw = W(dy, x)`` is linear in ``dy`` and in ``x``; with ``A_g`` the conv whose weight is ``g``,
    ``⟨W(dy, x), g⟩ = ⟨dy, A_g x⟩``, so ``d(dy) = A_g x`` (the forward conv) and ``dx = A_gᵀ dy`` (the input-grad
    op).  This is the double backward of the conv through its weight (``gradgradcheck``, MAML)."""
    dy, x = ctx.saved_tensors
    d_dy = d_x = None
    if ctx.needs_input_grad[0]:
        d_dy = _conv_op(x, g, None, *ctx.geometry, "none", ctx.backend)[0]
    if ctx.needs_input_grad[1]:
        d_x = _input_grad_op(dy, g, list(x.shape), dim_order(x), *ctx.geometry, ctx.backend)
    return (d_dy, d_x) + (None,) * 11   # x_copy is x's value: x's gradient covers it


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
    # the input gradient's permuted weight is written with the forward's when x will need a gradient
    keep_input_grad_weight = torch.is_grad_enabled() and x.requires_grad
    return _conv_op(x, weight, bias, *geometry, activation, backend, keep_input_grad_weight)[0]


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
