"""The steerable (C_N / D_N) group convolution as PyTorch operators (``torch.library``): the Triton kernels that
steer the filter inside the GEMM (``kernels/steerable_conv.py``), with their fake kernels and autograd.

Three ops, each running the kernels or the plain-PyTorch reference (chosen inside the op, from the backend name the
caller resolved, as ``ops/group_conv.py``'s are), registered with ``torch.library.custom_op``:

* ``gconv_triton::steerable_conv2d(x, coefficients, bias, tables, ...) -> y``: ``x (B, C_in, S_in, H, W)``,
  ``coefficients (C_out, C_in, S_in, B)``, ``tables Ψ (S_out, B, k·k)``; ``y (B, C_out, S_out, H', W')``, stored
  ``(B, H', W', C_out, S_out)`` where the lifting kernel writes it (``launchers.lifting_layout``; the fake kernel
  gives the same strides), else contiguous.
* ``gconv_triton::steerable_conv2d_input_grad(dy, coefficients, tables, input_size, ...) -> dx``.
* ``gconv_triton::steerable_conv2d_weight_grad(dy, x, tables, coefficient_size, ...) -> dc``: summed over the
  group copies inside the kernel; nothing of the bank's size (``C_out·S_out·C_in·S_in·k²``) is allocated.

Every backward is linear in ``dy`` and in the coefficients (or ``x``), so the same three ops serve the double
backward.  The ops take one channel group, symmetric zeros padding and no activation: :func:`steerable_conv`
handles the rest around them (channel groups one op each, an asymmetric ``'same'`` padding by ``F.pad`` first; the
caller applies the activation), and runs the reference as standard PyTorch ops (bank + ``F.conv2d``, autograd)
where the kernels do not serve the call: the ``'torch'`` backend, ``'auto'`` on a non-CUDA tensor, an ONNX export.
:func:`steerable_conv_transpose` (``GroupConvTranspose2d`` on ``C_N`` / ``D_N``) is the input-gradient op as a
forward, its gradients the other two ops, by the same rules (reference: bank + ``F.conv_transpose2d``).
"""

from __future__ import annotations

import functools
from typing import List, Optional

import torch
from torch import Tensor

from .._backend import reference_path
from .._spec import conv_out_size, resolve_geometry
from .._support import GROUPS, backend_name, empty_group_map, kernels_for, onnx_exporting, untraced
from ..groups import Group
from ..reference import (conv2d_with_bank, conv_transpose2d_with_bank, pad_input, split_padding,
                         steerable_bank_adjoint, steerable_bank_from_tables)
from .group_conv import bias_grad

__all__ = ["steerable_conv", "steerable_conv_transpose"]


@functools.lru_cache(maxsize=None)
def _stabilizer_index(group: str, in_group: str, device: torch.device) -> Tensor:
    """``index (S_out, S_in)`` int32 on ``device``, built once per device (the launchers take it as it is)."""
    with untraced():   # real tensors in the cache, whatever traces the caller
        index = GROUPS[group].stabilizer_index(GROUPS[in_group])
        return index.to(device=device, dtype=torch.int32).contiguous()


def _out_shape(x: Tensor, coefficients: Tensor, group: str, kernel_size: int, stride, padding, dilation) -> list:
    return [x.shape[0], coefficients.shape[0], GROUPS[group].order,
            *(conv_out_size(x.shape[3 + a], kernel_size, stride[a], 2 * padding[a], dilation[a]) for a in range(2))]


# ---------------------------------------------------------------- the reference, inside the ops (no autograd)
def _reference_bank(coefficients: Tensor, tables: Tensor, group: Group, in_group: Group) -> Tensor:
    """The bank ``(C_out·S_out, C_in·S_in, k, k)`` the reference convolves with (the tables in the coefficients'
    dtype, as the kernels steer in the input's)."""
    index = group.stabilizer_index(in_group).to(coefficients.device)
    return steerable_bank_from_tables(coefficients, tables.to(coefficients.dtype), index)


def _pad4(padding) -> tuple:
    return (padding[0], padding[0], padding[1], padding[1])


# ------------------------------------------------------------------------------------------------- the ops
@torch.library.custom_op("gconv_triton::steerable_conv2d", mutates_args=())
def _conv_op(x: Tensor, coefficients: Tensor, bias: Optional[Tensor], tables: Tensor, group: str, in_group: str,
             kernel_size: int, stride: List[int], padding: List[int], dilation: List[int], backend: str) -> Tensor:
    if kernels_for(x, backend):
        from ..kernels import steerable_conv as launchers

        return launchers.forward(x, coefficients, bias, tables, _stabilizer_index(group, in_group, x.device),
                                 stride, padding, dilation)
    bank = _reference_bank(coefficients, tables, GROUPS[group], GROUPS[in_group])
    y = conv2d_with_bank(x, bank, bias, GROUPS[group].order, stride=stride, padding=_pad4(padding),
                         dilation=dilation, groups=1)
    return y.contiguous()


@_conv_op.register_fake
def _(x, coefficients, bias, tables, group, in_group, kernel_size, stride, padding, dilation, backend):
    shape = _out_shape(x, coefficients, group, kernel_size, stride, padding, dilation)
    if kernels_for(x, backend):
        from ..kernels import steerable_conv as launchers

        c_out, c_in, s_in, _ = coefficients.shape
        if launchers.lifting_layout(s_in, c_in, kernel_size, 1):   # the kernel's channels-last output
            return empty_group_map(shape, x)
    return x.new_empty(shape)


@torch.library.custom_op("gconv_triton::steerable_conv2d_input_grad", mutates_args=())
def _input_grad_op(dy: Tensor, coefficients: Tensor, tables: Tensor, input_size: List[int], group: str,
                   in_group: str, kernel_size: int, stride: List[int], padding: List[int], dilation: List[int],
                   backend: str) -> Tensor:
    if kernels_for(dy, backend):
        from ..kernels import steerable_conv as launchers

        return launchers.input_grad(dy, coefficients, tables, _stabilizer_index(group, in_group, dy.device),
                                    input_size, stride, padding, dilation)
    b, c, s, h, w = input_size
    bank = _reference_bank(coefficients, tables, GROUPS[group], GROUPS[in_group])
    dx = torch.nn.grad.conv2d_input((b, c * s, h, w), bank, dy.flatten(1, 2), stride, padding, dilation)
    return dx.reshape(input_size).contiguous()


@_input_grad_op.register_fake
def _(dy, coefficients, tables, input_size, group, in_group, kernel_size, stride, padding, dilation, backend):
    return dy.new_empty(input_size)


@torch.library.custom_op("gconv_triton::steerable_conv2d_weight_grad", mutates_args=())
def _weight_grad_op(dy: Tensor, x: Tensor, tables: Tensor, coefficient_size: List[int], group: str, in_group: str,
                    kernel_size: int, stride: List[int], padding: List[int], dilation: List[int],
                    backend: str) -> Tensor:
    if kernels_for(x, backend):
        from ..kernels import steerable_conv as launchers

        return launchers.weight_grad(dy, x, tables, _stabilizer_index(group, in_group, x.device), coefficient_size,
                                     stride, padding, dilation)
    c_out, c_in, s_in, _ = coefficient_size
    bank_size = (c_out * GROUPS[group].order, c_in * s_in, kernel_size, kernel_size)
    dbank = torch.nn.grad.conv2d_weight(x.flatten(1, 2), bank_size, dy.flatten(1, 2), stride, padding, dilation)
    index = GROUPS[group].stabilizer_index(GROUPS[in_group]).to(x.device)
    return steerable_bank_adjoint(dbank, tables.to(dbank.dtype), index, tuple(coefficient_size)).contiguous()


@_weight_grad_op.register_fake
def _(dy, x, tables, coefficient_size, group, in_group, kernel_size, stride, padding, dilation, backend):
    return x.new_empty(coefficient_size)


# ---------------------------------------------------------------------------------------------- autograd
# The arguments after the tensors, as each op takes them: group, in_group, kernel_size, stride, padding, dilation.
_GEOMETRY = slice(-7, -1)


def _conv_setup(ctx, inputs, output):
    x, coefficients, bias, tables = inputs[:4]
    ctx.geometry, ctx.backend = tuple(inputs[_GEOMETRY]), inputs[-1]
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, coefficients, tables)


def _conv_backward(ctx, dy):
    x, coefficients, tables = ctx.saved_tensors
    dx = dc = db = None
    if ctx.needs_input_grad[0]:
        dx = _input_grad_op(dy, coefficients, tables, list(x.shape), *ctx.geometry, ctx.backend)
    if ctx.needs_input_grad[1]:
        dc = _weight_grad_op(dy, x, tables, list(coefficients.shape), *ctx.geometry, ctx.backend)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        db = bias_grad(dy, 1, 1)
    return (dx, dc, db) + (None,) * 8


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup)


def _backward_op_setup(ctx, inputs, output, *, input_grad: bool):
    """Either backward op: its three tensors (``dy``, then the coefficients or ``x``, then the tables) are saved."""
    ctx.geometry, ctx.backend, ctx.input_grad = tuple(inputs[_GEOMETRY]), inputs[-1], input_grad
    ctx.save_for_backward(*inputs[:3])


def _backward_op_backward(ctx, g):
    """Both backward ops are bilinear, adjoint to the forward ``A(c) x``: ``dx = A(c)ᵀ dy`` and ``dc = W(dy, x)``
    with ``⟨A(c)ᵀ dy, g⟩ = ⟨dy, A(c) g⟩`` and ``⟨W(dy, x), g⟩ = ⟨dy, A(g) x⟩``.  So the gradient to ``dy`` is the
    forward on ``g`` and the other saved operand (``A(c) g`` or ``A(g) x``), and the gradient to that operand is
    the other backward op with ``g`` in its place (``dc = W(dy, g)``, ``dx = A(g)ᵀ dy``): the double backward."""
    dy, other, tables = ctx.saved_tensors
    d_dy = d_other = None
    if ctx.needs_input_grad[0]:
        x, coefficients = (g, other) if ctx.input_grad else (other, g)
        d_dy = _conv_op(x, coefficients, None, tables, *ctx.geometry, ctx.backend)
    if ctx.needs_input_grad[1]:
        adjoint = _weight_grad_op if ctx.input_grad else _input_grad_op
        d_other = adjoint(dy, g, tables, list(other.shape), *ctx.geometry, ctx.backend)
    return (d_dy, d_other) + (None,) * 9


_input_grad_op.register_autograd(_backward_op_backward,
                                 setup_context=functools.partial(_backward_op_setup, input_grad=True))
_weight_grad_op.register_autograd(_backward_op_backward,
                                  setup_context=functools.partial(_backward_op_setup, input_grad=False))


# ------------------------------------------------------------------------------------------- entry point
def steerable_conv(x: Tensor, coefficients: Tensor, bias: Optional[Tensor], tables: Tensor, *, group: Group,
                   in_group: Group, kernel_size: int, stride, padding, dilation, groups: int) -> Tensor:
    """The steerable convolution of ``x (B, C_in, S_in, H, W)`` with ``coefficients (C_out, C_in/groups, S_in,
    B)``, ``bias (C_out,)`` or None and ``tables (S_out, B, k·k)``, checked by the caller
    (:func:`~gconv_triton.steerable.steerable_conv2d`); returns ``(B, C_out, S_out, H', W')``, no activation.

    Through the ops where the kernels serve ``x`` (CUDA tensors on ``'auto'``, the ``'triton'`` backend), one op
    per channel group, an asymmetric padding applied by ``F.pad`` first; elsewhere (and in an ONNX export) the
    reference as standard ops: the bank by one matmul, then ``F.conv2d``, differentiated by autograd."""
    stride, dilation, pad = resolve_geometry((kernel_size, kernel_size), stride, padding, dilation)
    backend = backend_name()
    if onnx_exporting() or reference_path(x, backend):
        bank = _reference_bank(coefficients, tables, group, in_group)
        return conv2d_with_bank(x, bank, bias, group.order, stride=stride, padding=pad, dilation=dilation,
                                groups=groups)
    explicit, symmetric = split_padding(pad)
    if explicit is not None:   # 'same' with an even dilated window: the kernels pad symmetrically
        x = pad_input(x, pad, "constant")
    geometry = (GROUPS.key(group), GROUPS.key(in_group), kernel_size, list(stride), list(symmetric), list(dilation),
                backend)
    if groups == 1:
        return _conv_op(x, coefficients, bias, tables, *geometry)
    biases = [None] * groups if bias is None else bias.chunk(groups)
    return torch.cat([_conv_op(xg, cg, bg, tables, *geometry)
                      for xg, cg, bg in zip(x.chunk(groups, 1), coefficients.chunk(groups), biases)], 1)


def steerable_conv_transpose(dy: Tensor, coefficients: Tensor, tables: Tensor, output_size, *, group: Group,
                             out_group: Group, kernel_size: int, stride, padding, dilation, groups: int) -> Tensor:
    """The transposed steerable convolution: the adjoint of the steerable convolution from ``out_group`` maps of
    ``output_size (B, C_out, S_out, H, W)`` to ``group`` maps whose coefficients are ``coefficients (C_in,
    C_out/groups, S_out, B)``, applied to ``dy (B, C_in, S, H', W')``; ``stride``, ``padding`` (symmetric,
    ``(top, left)``) and ``dilation`` pairs, checked by the caller
    (:func:`~gconv_triton.steerable.steerable_conv_transpose2d`).  Returns ``output_size``, no bias.

    Where the kernels serve ``dy``, the convolution's input-gradient op, one per channel group: its autograd
    gives ``dy``'s gradient by the forward op and the coefficients' by the coefficient-gradient op (nothing of the
    bank's size either way).  Elsewhere (and in an ONNX export) the reference as standard ops: the bank by one
    matmul, then ``F.conv_transpose2d``, differentiated by autograd."""
    backend = backend_name()
    if onnx_exporting() or reference_path(dy, backend):
        bank = _reference_bank(coefficients, tables, group, out_group)
        return conv_transpose2d_with_bank(dy, bank, output_size, stride=stride, padding=_pad4(padding),
                                          dilation=dilation, groups=groups)
    geometry = (GROUPS.key(group), GROUPS.key(out_group), kernel_size, list(stride), list(padding), list(dilation),
                backend)
    size = [output_size[0], output_size[1] // groups, *output_size[2:]]   # one channel group's
    if groups == 1:
        return _input_grad_op(dy, coefficients, tables, size, *geometry)
    return torch.cat([_input_grad_op(dg, cg, tables, size, *geometry)
                      for dg, cg in zip(dy.chunk(groups, 1), coefficients.chunk(groups))], 1)
