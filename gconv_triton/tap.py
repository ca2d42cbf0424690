"""Tap convolutions: ``y[b, o, p] = reduce over (i, t) of tap(x[b, i, p·stride + t·dilation − padding], w[o, i, t])
+ bias[o]``, with any elementwise tap (adder, morphological max-plus/min-plus, erosion, l2, your own) and a
``sum``, ``max``, ``min`` or ``prod`` reduction; on a group (``group``/``in_group``) with the group convolution's
weight and rotated gather, so a p4 adder or morphological network is exactly equivariant.

Two ``torch.library`` ops, so ``torch.compile`` and autocast see them:

* ``gconv_triton::tap_conv2d(x, weight, bias, ...) -> (y, aux)``: ``aux`` is the int32 arg-extreme index per
  output element for ``max``/``min`` (what their backward needs), an empty tensor otherwise.
* ``gconv_triton::tap_conv2d_backward(dy, x, weight, aux, ...) -> (dx, dw)``: both gradients from one call
  (``prod`` recomputes its factor statistics once for both).

Each runs the Triton kernels (``kernels/tap_conv.py``) or the plain-PyTorch path below, chosen as for the group
convolution (``gconv_triton.backend``).  The PyTorch path bounds its memory: it unfolds one chunk of the batch
at a time and broadcasts the tap over a chunk of output channels, so no more than about ``_CHUNK_ELEMENTS``
values of the (batch, out-channel, receptive field, pixel) product exist at once.  It is also the float64
oracle.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._layout import dim_order, empty_in_order
from ._library import (_backend_name, _compiling, _conv_out_shape, _empty_like_layout, _kernels_for, _onnx_exporting,
                       _op_geometry, _spec, autocast_inputs, bias_grad)
from ._spec import ConvSpec, make_spec, resolve_geometry
from ._registry import TAP_FUNCTIONS
from .groups import get_group
from .tap_functions import TapFunction, check_reduce, get_tap, tap_key

__all__ = ["tap_conv2d", "tap_conv1d", "PADDING_MODES"]

PADDING_MODES = ("zeros", "ignore", "reflect", "replicate", "circular")

#: elements of one chunk of the PyTorch path's broadcast (batch x out-channels x receptive field x pixels)
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------- the PyTorch path
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _gather_index(spec: ConvSpec, g: int, device) -> Tensor:
    """Rows of the unfolded input ``(C_in_g·S_in·T)`` that reduction index ``k = (i·S_in + u)·T + t`` of group
    element ``g`` reads: channel slice ``g·u`` and tap position ``dest[g, t]`` (the rotation on the gather)."""
    kh, kw = spec.kernel
    t_count = kh * kw
    s = spec.group.input_index(spec.in_group)[g].to(device)                     # (S_in,)
    dest = spec.group.tap_destinations(spec.kernel)[g].to(device)                # (T,)
    i = torch.arange(spec.in_channels, device=device)
    return ((i[:, None, None] * spec.s_in + s[None, :, None]) * t_count + dest[None, None, :]).flatten()


def _chunks(spec: ConvSpec):
    """``(batch chunk, out-channel chunk)`` sizes that keep one broadcast under ``_CHUNK_ELEMENTS``."""
    k = spec.in_channels * spec.s_in * spec.kernel[0] * spec.kernel[1]
    pixels = spec.out_height * spec.out_width
    per_channel = max(1, k * pixels)
    oc = max(1, min(spec.out_channels, _CHUNK_ELEMENTS // per_channel))
    bc = max(1, min(max(spec.batch, 1), _CHUNK_ELEMENTS // (per_channel * oc)))
    return bc, oc


def _unfold(x5: Tensor, spec: ConvSpec):
    """``(cols (B, C·S_in·T, L), inside (T, L) bool)``: the receptive fields of ``x5`` (padded pixels are 0) and
    which taps fall inside the image."""
    top, bottom, left, right = spec.padding
    x4 = F.pad(x5.flatten(1, 2), (left, right, top, bottom))
    geometry = dict(kernel_size=spec.kernel, dilation=spec.dilation, stride=spec.stride)
    cols = F.unfold(x4, **geometry)
    ones = F.pad(x5.new_ones(1, 1, spec.height, spec.width), (left, right, top, bottom))
    inside = F.unfold(ones, **geometry)[0] > 0
    return cols, inside


def _reduce(f: Tensor, use: Tensor, reduce: str, dim: int = 2):
    """Reduce ``f (b, oc, K, L)`` over ``K`` (axis ``dim``), leaving out ``~use``: ``(value, aux)`` with ``aux`` the
    arg-extreme (first on ties; a NaN is the extreme and propagates, as in ``torch.amax``) for max/min, the zero
    count for prod (whose value is then the product of the non-zero factors), None for sum."""
    if reduce == "sum":
        return torch.where(use, f, 0).sum(dim), None
    if reduce in ("max", "min"):
        fill = float("-inf") if reduce == "max" else float("inf")
        value, index = getattr(torch, reduce)(torch.where(use, f, fill), dim=dim)  # first index on ties, or NaN
        return value, index
    f = torch.where(use, f, 1)
    zero = f == 0
    return torch.where(zero, 1, f).prod(dim), zero.sum(dim)


def _prod_factor(f: Tensor, pnz: Tensor, zeros: Tensor) -> Tensor:
    """``∂(Π_j f_j)/∂f_k`` exact at zeros, from the non-zero product ``pnz`` and zero count (both ``(b, oc, 1, L)``)."""
    safe = torch.where(f == 0, 1, f)
    return torch.where(zeros == 0, pnz / safe, torch.where((zeros == 1) & (f == 0), pnz, 0))


def _tap_torch(x5: Tensor, weight: Tensor, bias: Optional[Tensor], spec: ConvSpec, tap: TapFunction, reduce: str,
               ignore: bool, dy: Optional[Tensor] = None, aux: Optional[Tensor] = None,
               need_input: bool = False, need_weight: bool = False):
    """The forward (``dy`` None): ``(y, aux)``; the backward: ``(dx, dw)``.  Chunked over the batch and the
    output channels; every value computed in fp32 at least."""
    dtype = _compute_dtype(x5.dtype)
    kh, kw = spec.kernel
    ho, wo = spec.out_height, spec.out_width
    c_in_g, c_out_g, cs = spec.in_channels, spec.out_channels, spec.in_channels * spec.s_in
    k_total = cs * kh * kw
    w = weight.to(dtype).reshape(spec.groups, c_out_g, k_total)
    bc, oc = _chunks(spec)
    backward = dy is not None
    out_shape = (spec.batch, spec.groups * c_out_g, spec.s_out, ho * wo)
    if backward:
        dy = dy.to(dtype).reshape(out_shape)
        aux = None if aux is None else aux.reshape(out_shape)
        dx = None
        if need_input:
            dx = x5.new_empty((spec.batch, spec.groups * cs, spec.height, spec.width), dtype=dtype)
        dw = torch.zeros_like(w) if need_weight else None
        top, bottom, left, right = spec.padding
        padded = (spec.height + top + bottom, spec.width + left + right)
    else:
        y = x5.new_empty(out_shape, dtype=dtype)
        aux = x5.new_empty(out_shape, dtype=torch.int64) if reduce in ("max", "min") else None
    for b0 in range(0, spec.batch, bc):
        cols, inside = _unfold(x5[b0:b0 + bc].to(dtype), spec)
        cols = cols.view(cols.shape[0], spec.groups, -1, ho * wo)                 # (b, groups, C_g·S_in·T, L)
        dcols = torch.zeros_like(cols) if backward and need_input else None       # this chunk's only
        for g in range(spec.s_out):
            index = _gather_index(spec, g, x5.device)
            use = inside[spec.group.tap_destinations(spec.kernel)[g].to(x5.device)]  # (T, L) in base tap order
            use = use.repeat(cs, 1)[None, None] if ignore else torch.ones_like(use[:1, :1])[None, None]
            for grp in range(spec.groups):
                xg = cols[:, grp, index]                                         # (b, K, L)
                d_xg = torch.zeros_like(xg) if backward and need_input else None
                for o0 in range(0, c_out_g, oc):
                    rows = slice(grp * c_out_g + o0, grp * c_out_g + o0 + oc)
                    wg = w[grp, o0:o0 + oc]                                      # (oc, K)
                    if not backward:
                        f = tap.torch_fn(xg[:, None], wg[None, :, :, None])
                        value, extra = _reduce(f, use, reduce)
                        if reduce == "prod":
                            value = torch.where(extra > 0, 0, value)
                        if ignore:
                            value = torch.where(use.any(2), value, 0)
                        y[b0:b0 + bc, rows, g] = value
                        if aux is not None:
                            aux[b0:b0 + bc, rows, g] = extra
                        continue
                    xr = xg[:, None].detach().requires_grad_()
                    wr = wg[None, :, :, None].detach().requires_grad_()
                    explicit = tap.torch_dx is not None and tap.torch_dw is not None
                    # the tap's values: prod's factors, or what autograd differentiates
                    f = None if explicit and reduce != "prod" else tap.torch_value(xr, wr, differentiable=True)
                    coef = dy[b0:b0 + bc, rows, g][:, :, None]                   # (b, oc, 1, L)
                    if reduce == "prod":
                        pnz, zeros = _reduce(f.detach(), use, reduce)
                        coef = coef * _prod_factor(f.detach(), pnz[:, :, None], zeros[:, :, None])
                    elif reduce in ("max", "min"):
                        k = torch.arange(k_total, device=x5.device)[:, None]
                        coef = coef * (aux[b0:b0 + bc, rows, g][:, :, None] == k)
                    coef = torch.where(use, coef, 0)
                    shape = (xr.shape[0], wr.shape[1], k_total, xr.shape[-1])
                    gx, gw = tap.torch_grads(xr, wr, f, coef.expand(shape))
                    if d_xg is not None:
                        d_xg += gx.sum(1)
                    if dw is not None:
                        dw[grp, o0:o0 + oc] += gw[0, :, :, 0]
                if d_xg is not None:
                    dcols[:, grp].index_add_(1, index, d_xg)
        if dcols is not None:  # fold the chunk's receptive fields back onto its (padded) images, crop the padding
            folded = F.fold(dcols.flatten(1, 2), padded, spec.kernel, dilation=spec.dilation, stride=spec.stride)
            dx[b0:b0 + bc] = folded[..., top:top + spec.height, left:left + spec.width]
    if not backward:
        y = y.reshape(out_shape[:3] + (ho, wo))
        if bias is not None:
            y = y + bias.to(dtype)[None, :, None, None, None]
        return y.to(x5.dtype), (None if aux is None else aux.reshape(y.shape))
    if dx is not None:
        dx = dx.reshape(spec.batch, spec.groups * c_in_g, spec.s_in, spec.height, spec.width).to(x5.dtype)
    if dw is not None:
        dw = dw.reshape(weight.shape).to(weight.dtype)
    return dx, dw


def check_standard_ops(tap: TapFunction, what: str, layer: str = "") -> None:
    """Raise a ``ValueError`` naming ``layer`` (or the tap) when ``tap`` has no standard-operator form."""
    problem = tap.standard_ops_problem()
    if problem is not None:
        where = f"{layer}: " if layer else "tap: "
        raise ValueError(f"{where}{what} writes a tap convolution as standard PyTorch operators (the receptive "
                         f"fields unfolded, tapped by torch_fn, reduced), and the TapFunction {tap.name!r} has no "
                         f"such form: {problem}")


def tap_standard_ops(x5: Tensor, weight: Tensor, bias: Optional[Tensor], spec: ConvSpec, tap: TapFunction,
                     reduce: str, ignore: bool, aux: Optional[Tensor] = None) -> Tensor:
    """The tap convolution as standard PyTorch operators, differentiable by autograd and unchunked: the receptive
    fields unfolded, gathered per group element, tapped by ``tap.torch_fn`` and reduced.  What ONNX export and
    :func:`~gconv_triton.export_model` run, and what the second-order gradients differentiate; with ``aux`` (the
    forward's arg-extreme ``k``, max/min) the value at that ``k``, so the gradient goes where the op's went.

    ``x5 (B, groups·C_in_g, S_in, H, W)``, ``weight (groups·C_out_g, C_in_g, S_in, kh, kw)`` ->
    ``(B, groups·C_out_g, S_out, H_out, W_out)``; holds ``C_out·S_out·K·L`` tap values at once (``K`` the
    receptive field, ``L`` the output pixels)."""
    cols, inside = _unfold(x5, spec)
    cols = cols.unflatten(1, (spec.groups, -1))                                       # (B, groups, C_g·S_in·T, L)
    index = torch.stack([_gather_index(spec, g, x5.device) for g in range(spec.s_out)])      # (S_out, K)
    w = weight.reshape(spec.groups, spec.out_channels, 1, -1, 1)                      # (groups, C_out_g, 1, K, 1)
    # (B, groups, C_out_g, S_out, K, L); ONNX knows no autograd.Function: the plain torch_fn there
    f = (tap.torch_fn if _onnx_exporting() else tap.differentiable)(cols[:, :, None, index], w)
    if ignore:
        dest = spec.group.tap_destinations(spec.kernel).to(x5.device)                # (S_out, T)
        use = inside[dest].repeat(1, spec.in_channels * spec.s_in, 1)                # (S_out, K, L)
    else:
        use = torch.ones((), dtype=torch.bool, device=x5.device)
    if aux is not None and reduce in ("max", "min"):
        k = aux.reshape(*f.shape[:4], 1, f.shape[-1]).long().clamp_min(0)            # -1: a window with no tap
        value = f.gather(-2, k).squeeze(-2)
    elif reduce == "prod":  # torch.prod: its derivatives are exact at zero factors, as the op's
        f = torch.where(use, f, 1)
        value = f.prod(-2)
        value = torch.where(value.isnan() & (f == 0).any(-2), 0, value)  # the op: a zero factor wins over NaN
    else:
        value = _reduce(f, use, reduce, dim=-2)[0]
    if ignore:
        value = torch.where(use.any(-2), value, 0)
    y = value.reshape(x5.shape[0], -1, spec.s_out, spec.out_height, spec.out_width)
    return y if bias is None else y + bias.to(y.dtype)[None, :, None, None, None]


# ------------------------------------------------------------------------------------------------- the ops
def _fns(tap: str):
    return TAP_FUNCTIONS[tap].triton_functions()


@torch.library.custom_op("gconv_triton::tap_conv2d", mutates_args=())
def _tap_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], tap: str, reduce: str, ignore: bool, group: str,
            in_group: str, stride: List[int], padding: List[int], dilation: List[int], groups: int,
            backend: str) -> Tuple[Tensor, Tensor]:
    spec = _spec(x, weight, bias, group, in_group, stride, padding, dilation, groups, groups)
    if _kernels_for(x, backend):
        from ._spec import check_index_range
        from .kernels import tap_conv as tap_kernels

        check_index_range(spec)
        y, aux = tap_kernels.forward(x, weight, bias, spec, _fns(tap), reduce, ignore)
    else:
        y, aux = _tap_torch(x, weight, bias, spec, TAP_FUNCTIONS[tap], reduce, ignore)
        y = _empty_like_layout(y.shape, x).copy_(y)
        if aux is not None:
            aux = torch.empty_strided(y.shape, y.stride(), dtype=torch.int32, device=y.device).copy_(aux)
    return y, (aux if aux is not None else x.new_empty(0, dtype=torch.int32))


@_tap_op.register_fake
def _(x, weight, bias, tap, reduce, ignore, group, in_group, stride, padding, dilation, groups, backend):
    y = _empty_like_layout(_conv_out_shape(x, weight, group, stride, padding, dilation, groups, groups), x)
    if reduce in ("max", "min"):
        return y, torch.empty_strided(y.shape, y.stride(), dtype=torch.int32, device=y.device)
    return y, x.new_empty(0, dtype=torch.int32)


@torch.library.custom_op("gconv_triton::tap_conv2d_backward", mutates_args=())
def _tap_backward_op(dy: Tensor, x: Tensor, weight: Tensor, aux: Tensor, tap: str, reduce: str, ignore: bool,
                     group: str, in_group: str, stride: List[int], padding: List[int], dilation: List[int],
                     groups: int, need_input: bool, need_weight: bool, backend: str) -> Tuple[Tensor, Tensor]:
    spec = _spec(x, weight, None, group, in_group, stride, padding, dilation, groups, groups)
    aux = aux if reduce in ("max", "min") else None
    if _kernels_for(x, backend):
        from .kernels import tap_conv as tap_kernels

        dx, dw = tap_kernels.backward(dy, x, weight, aux, spec, _fns(tap), reduce, ignore, need_input,
                                      need_weight, dim_order(x))
    else:
        dx, dw = _tap_torch(x, weight, None, spec, TAP_FUNCTIONS[tap], reduce, ignore, dy=dy, aux=aux,
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
    spec = _spec(x, weight, None, group, in_group, stride, padding, dilation, groups, groups)
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


# ----------------------------------------------------------------------------------------------- functional
def _check_padding_mode(padding_mode) -> str:
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


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
            arg-extreme tap, the first in ``(i, t)`` order on ties; ``prod``'s gradient is exact at zero factors.
        stride, padding, dilation, groups: as ``F.conv2d`` (padding also ``"same"``/``"valid"``).
        group, in_group: as :func:`~gconv_triton.functional.gconv2d` (taps rotated on the gather).
        padding_mode: ``"zeros"`` (a padded pixel is 0 and goes through the tap, as unfold would give),
            ``"ignore"`` (out-of-bounds taps are left out of the reduction; a window with none inside gives 0 +
            bias and no gradient), or ``"reflect"``, ``"replicate"``, ``"circular"`` (``F.pad`` first, as torch).
        standard_ops: compute with standard PyTorch operators (:func:`tap_standard_ops`: unfold, ``torch_fn``,
            reduce; no chunking, no custom op), the form ONNX export writes and ``export_model`` keeps; a
            ``ValueError`` when ``tap``'s ``torch_fn`` is not made of such operators.

    Morphological dilation is ``tap="add", reduce="max"``, erosion ``tap="sub", reduce="min"``.
    """
    tap = get_tap(tap)
    reduce = check_reduce(tap, reduce)
    padding_mode = _check_padding_mode(padding_mode)
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
        _, _, (top, bottom, left, right) = resolve_geometry(tuple(weight.shape[-2:]), stride, padding, dilation)
        x4 = input if input.dim() == 4 else input.flatten(1, 2)
        x4 = F.pad(x4, (left, right, top, bottom), mode=padding_mode)
        input = x4 if input.dim() == 4 else x4.unflatten(1, input.shape[1:3])
        padding = 0
    input, weight, bias = autocast_inputs(input, weight, bias)  # as nn.Conv2d: cast first, then check the dtypes
    if not _compiling():  # every check, before anything launches
        make_spec(input, weight, bias, group=group, in_group=in_group, stride=stride, padding=padding,
                  dilation=dilation, groups=groups)
    x = input if input.dim() == 5 else input.unflatten(1, (-1, in_group.order))
    geometry = _op_geometry(weight, group, in_group, stride, padding, dilation, groups, False)[:-1]
    if standard_ops or _onnx_exporting():  # ONNX knows no tap op
        check_standard_ops(tap, "standard_ops=True" if standard_ops else "ONNX export")
        spec = _spec(x, weight, bias, *geometry, groups)
        y = tap_standard_ops(x, weight, bias, spec, tap, reduce, padding_mode == "ignore")
    else:
        y = _tap_op(x, weight, bias, tap_key(tap), reduce, padding_mode == "ignore", *geometry, _backend_name())[0]
    return y.flatten(1, 2) if planar else y


def tap_conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, tap, reduce: str = "sum",
               stride=1, padding=0, dilation=1, groups: int = 1, group="z2", in_group="z2",
               padding_mode: str = "zeros", standard_ops: bool = False) -> Tensor:
    """:func:`tap_conv2d` in 1-D: input ``(B, C_in, L)``, weight ``(C_out, C_in/groups, k)``, output
    ``(B, C_out, L_out)`` (a height-1 2-D tap convolution).  Only ``group="z2"``: rotations need two axes."""
    from .functional import _as_2d_args

    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    if not (group.is_trivial and in_group.is_trivial):
        raise ValueError(f"group: a 1-D tap convolution takes group='z2' and in_group='z2' only, got "
                         f"{group.name} and {in_group.name}")
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name}: expected a 3-D tensor, got shape {tuple(t.shape)}")
    stride, padding, dilation = _as_2d_args(stride, padding, dilation)
    y = tap_conv2d(input.unsqueeze(2), weight.unsqueeze(2), bias, tap=tap, reduce=reduce, stride=stride,
                   padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode,
                   standard_ops=standard_ops)
    return y.squeeze(2)


