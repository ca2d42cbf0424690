"""Tap convolutions: ``y[b, o, p] = reduce over (i, t) of tap(x[b, i, p·stride + t·dilation − padding], w[o, i, t])
+ bias[o]``, with any elementwise tap (adder, morphological max-plus/min-plus, erosion, l2, your own) and a
``sum``, ``max``, ``min`` or ``prod`` reduction; on a group (``group``/``in_group``) with the group convolution's
weight and rotated gather, so a p4 adder or morphological network is exactly equivariant.

Two ``torch.library`` ops, so ``torch.compile`` and autocast see them:

* ``gconv_triton::tap_conv2d(x, weight, bias, ...) -> (y, aux)``: ``aux`` is the int32 arg-extreme index per
  output element for ``max``/``min`` (what their backward needs), an empty tensor otherwise.
* ``gconv_triton::tap_conv2d_backward(dy, x, weight, aux, ...) -> (dx, dw)``: both gradients from one call
  (``prod`` recomputes its factor statistics once for both).

Each runs the Triton kernels (``kernels/tap_conv.py``) or the plain-PyTorch path
(:func:`~gconv_triton.reference.tap_conv_chunked`), chosen as for the group convolution
(``gconv_triton.backend``); :func:`tap_conv` is the entry point, called by
:func:`~gconv_triton.functional.tap_conv2d` once it has checked the arguments.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._spec import check_index_range, op_geometry, op_out_shape, spec_from_op_args
from .._support import (TAP_FUNCTIONS, backend_name, dim_order, empty_in_order, empty_like_layout, kernels_for,
                        onnx_exporting)
from ..groups import Group
from ..reference import check_standard_ops, tap_conv_chunked, tap_standard_ops
from ..tap_functions import TapFunction
from .group_conv import bias_grad

__all__ = ["tap_conv"]


# ------------------------------------------------------------------------------------------------- the ops
def _fns(tap: str):
    return TAP_FUNCTIONS[tap].triton_functions()


@torch.library.custom_op("gconv_triton::tap_conv2d", mutates_args=())
def _tap_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], tap: str, reduce: str, ignore: bool, group: str,
            in_group: str, stride: List[int], padding: List[int], dilation: List[int], groups: int,
            backend: str) -> Tuple[Tensor, Tensor]:
    spec = spec_from_op_args(x, weight, bias, group, in_group, stride, padding, dilation, groups, groups)
    if kernels_for(x, backend):
        from ..kernels import tap_conv as tap_kernels

        check_index_range(spec)
        y, aux = tap_kernels.forward(x, weight, bias, spec, _fns(tap), reduce, ignore)
    else:
        y, aux = tap_conv_chunked(x, weight, bias, spec, TAP_FUNCTIONS[tap], reduce, ignore)
        y = empty_like_layout(y.shape, x).copy_(y)
        if aux is not None:
            aux = torch.empty_strided(y.shape, y.stride(), dtype=torch.int32, device=y.device).copy_(aux)
    return y, (aux if aux is not None else x.new_empty(0, dtype=torch.int32))


@_tap_op.register_fake
def _(x, weight, bias, tap, reduce, ignore, group, in_group, stride, padding, dilation, groups, backend):
    y = empty_like_layout(op_out_shape(x, weight, group, stride, padding, dilation, groups, groups), x)
    if reduce in ("max", "min"):
        return y, torch.empty_strided(y.shape, y.stride(), dtype=torch.int32, device=y.device)
    return y, x.new_empty(0, dtype=torch.int32)


@torch.library.custom_op("gconv_triton::tap_conv2d_backward", mutates_args=())
def _tap_backward_op(dy: Tensor, x: Tensor, weight: Tensor, aux: Tensor, tap: str, reduce: str, ignore: bool,
                     group: str, in_group: str, stride: List[int], padding: List[int], dilation: List[int],
                     groups: int, need_input: bool, need_weight: bool, backend: str) -> Tuple[Tensor, Tensor]:
    spec = spec_from_op_args(x, weight, None, group, in_group, stride, padding, dilation, groups, groups)
    aux = aux if reduce in ("max", "min") else None
    if kernels_for(x, backend):
        from ..kernels import tap_conv as tap_kernels

        dx, dw = tap_kernels.backward(dy, x, weight, aux, spec, _fns(tap), reduce, ignore, need_input,
                                      need_weight, dim_order(x))
    else:
        dx, dw = tap_conv_chunked(x, weight, None, spec, TAP_FUNCTIONS[tap], reduce, ignore, dy=dy, aux=aux,
                            need_input=need_input, need_weight=need_weight)
        if dx is not None:
            dx = empty_in_order(x.shape, dim_order(x), dtype=x.dtype, device=x.device).copy_(dx)
    return (dx if dx is not None else x.new_empty(0)), (dw if dw is not None else weight.new_empty(0))


@_tap_backward_op.register_fake
def _(dy, x, weight, aux, tap, reduce, ignore, group, in_group, stride, padding, dilation, groups, need_input,
      need_weight, backend):
    dx = empty_in_order(x.shape, dim_order(x), dtype=x.dtype, device=x.device) if need_input else x.new_empty(0)
    return dx, (weight.new_empty(weight.shape) if need_weight else weight.new_empty(0))


def _tap_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.args = tuple(inputs[3:12])   # tap, reduce, ignore, group, in_group, stride, padding, dilation, groups
    ctx.backend = inputs[12]
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, output[1])


def _tap_backward(ctx, dy, _daux):
    x, weight, aux = ctx.saved_tensors
    db = None
    need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx = dw = None
    if need_input or need_weight:
        dx, dw = _tap_backward_op(dy, x, weight, aux, *ctx.args, need_input, need_weight, ctx.backend)
        dx = dx if need_input else None
        dw = dw if need_weight else None
    if ctx.has_bias and ctx.needs_input_grad[2]:
        groups = ctx.args[8]
        db = bias_grad(dy, groups, groups)
    return (dx, dw, db) + (None,) * 10


_tap_op.register_autograd(_tap_backward, setup_context=_tap_setup)


def _tap_backward_setup(ctx, inputs, output):
    dy, x, weight, aux = inputs[:4]
    ctx.args = tuple(inputs[4:13])   # tap, reduce, ignore, group, in_group, stride, padding, dilation, groups
    ctx.save_for_backward(dy, x, weight, aux)


def _tap_double_backward(ctx, g_dx, g_dw):
    """The second-order gradients: ``(dx, dw)`` are the first derivatives (a vjp with ``dy``) of
    :func:`tap_standard_ops` (the same function as the op, max/min taken at the op's stored arg-extreme, the tap's
    own derivatives); their vjp with ``(g_dx, g_dw)`` gives the partial derivatives against ``(dy, x, weight)``.
    ``torch.func.vjp`` keeps them partial (``dy`` may itself depend on ``x``) and differentiable again (a third
    order).  Runs as standard operators, unchunked.  For a piecewise linear tap or reduction (adder, max-plus,
    max/min) the second derivatives are zero almost everywhere and ``dy`` gets ``r·(∂f/∂x·g_dx + ∂f/∂w·g_dw)``."""
    dy, x, weight, aux = ctx.saved_tensors
    tap, reduce, ignore, group, in_group, stride, padding, dilation, groups = ctx.args
    spec = spec_from_op_args(x, weight, None, group, in_group, stride, padding, dilation, groups, groups)
    aux = aux if reduce in ("max", "min") else None

    def first_order(dy, x, weight):
        vjp = torch.func.vjp(lambda x, w: tap_standard_ops(x, w, None, spec, TAP_FUNCTIONS[tap], reduce, ignore, aux),
                             x, weight)[1]
        return vjp(dy)

    (dx, dw), vjp = torch.func.vjp(first_order, dy, x, weight)
    g_dx = g_dx if g_dx is not None and g_dx.numel() else torch.zeros_like(dx)
    g_dw = g_dw if g_dw is not None and g_dw.numel() else torch.zeros_like(dw)
    return tuple(vjp((g_dx, g_dw))) + (None,) * 13


_tap_backward_op.register_autograd(_tap_double_backward, setup_context=_tap_backward_setup)


# ------------------------------------------------------------------------------------------ entry point
def tap_conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], *, tap: TapFunction, reduce: str, ignore: bool,
             group: Group, in_group: Group, stride, padding, dilation, groups: int, standard_ops: bool) -> Tensor:
    """``reduce over the window of tap(x, w) + bias``: through ``gconv_triton::tap_conv2d``, or as standard
    operators (:func:`~gconv_triton.reference.tap_standard_ops`) when ``standard_ops`` is set or inside an ONNX
    export.  Arguments as :func:`~gconv_triton.functional.tap_conv2d`, which checks them first (a 5-D weight;
    ``ignore``: ``padding_mode="ignore"``); returns ``(B, C_out, S_out, H_out, W_out)``."""
    x = input if input.dim() == 5 else input.unflatten(1, (-1, in_group.order))
    geometry = op_geometry(weight, group, in_group, stride, padding, dilation, groups, False)[:-1]
    if standard_ops or onnx_exporting():  # ONNX knows no tap op
        check_standard_ops(tap, "standard_ops=True" if standard_ops else "ONNX export")
        spec = spec_from_op_args(x, weight, bias, *geometry, groups)
        y = tap_standard_ops(x, weight, bias, spec, tap, reduce, ignore)
    else:
        y = _tap_op(x, weight, bias, TAP_FUNCTIONS.key(tap), reduce, ignore, *geometry, backend_name())[0]
    return y
