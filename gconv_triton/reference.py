"""Every plain-PyTorch path: the group convolution by an explicit filter bank and ``F.conv2d`` (forward,
transposed, and the gradients the ops compute on this path), and the tap convolution by unfolded receptive
fields (chunked, and as standard operators for export).

It is the oracle every test compares against (call it with float64 tensors) and the implementation that serves
CPU tensors.  The bank path computes in the input's dtype and is differentiable by autograd; the chunked tap path
computes in fp32 at least.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._spec import ConvSpec, as_5d, concrete_shape
from ._support import onnx_exporting, untraced
from .groups import Group, get_group
from .tap_functions import TapFunction

__all__ = ["filter_bank", "flat_bank", "bank_conv2d", "conv2d_with_bank", "bank_conv_transpose2d",
           "conv_transpose2d_with_bank", "gconv2d_reference", "bank_conv_input_grad", "bank_conv_weight_grad",
           "activate", "add_bias", "pad_input", "tap_conv_chunked", "tap_standard_ops", "check_standard_ops"]

#: the fused activations as functions (``"none"``: None)
ACTIVATION_FUNCTIONS = {"none": None, "relu": F.relu, "silu": F.silu, "gelu": F.gelu}

#: elements of one chunk of the chunked tap path's broadcast (batch x out-channels x receptive field x pixels)
CHUNK_ELEMENTS = 1 << 22


def activate(z: Tensor, activation: str) -> Tensor:
    """``z`` through the activation named ``activation`` (one of ``_args.ACTIVATIONS``)."""
    fn = ACTIVATION_FUNCTIONS[activation]
    return z if fn is None else fn(z)


def add_bias(y: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``y (B, C, S, H, W)`` plus ``bias (C,)`` (or None) shared over the group axis and the plane, in ``y``'s
    dtype (the transposed convolutions' bias, added after the op)."""
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1, 1)


# -------------------------------------------------------------------------------------------------- padding
def split_padding(padding: tuple[int, int, int, int]):
    """``(explicit F.pad argument or None, conv padding)`` for ``(top, bottom, left, right)``: ``F.conv2d`` takes
    only a symmetric padding, so an asymmetric one (``'same'`` with an even kernel) is applied by ``F.pad``."""
    top, bottom, left, right = padding
    if (top, left) == (bottom, right):
        return None, (top, left)
    return (left, right, top, bottom), (0, 0)


def pad_input(input: Tensor, padding: tuple[int, int, int, int], mode: str) -> Tensor:
    """``input`` padded by ``(top, bottom, left, right)`` with ``F.pad``'s ``mode`` (a layer's ``padding_mode``
    other than zeros: pad first, then convolve without padding, as ``torch.nn.Conv2d``); a 5-D group map is padded
    as its flattened form.  Anything but a 4-D or 5-D tensor passes through, for the convolution to reject."""
    if not isinstance(input, torch.Tensor) or input.dim() not in (4, 5):
        return input
    top, bottom, left, right = padding
    h, w = concrete_shape(input, quiet=True)[-2:]
    # F.pad's own limits, raised here with the layer's argument names: reflect needs pad < size, circular <=
    limit_h, limit_w = (h - 1, w - 1) if mode == "reflect" else (h, w) if mode == "circular" else (None, None)
    if limit_h is not None and (max(top, bottom) > limit_h or max(left, right) > limit_w):
        raise ValueError(f"padding: (top, bottom, left, right) = {padding} with padding_mode={mode!r} needs at most "
                         f"{limit_h} rows and {limit_w} columns of padding on a {h}x{w} input")
    x = input.flatten(1, 2) if input.dim() == 5 else input
    y = F.pad(x, (left, right, top, bottom), mode=mode)
    return y.unflatten(1, input.shape[1:3]) if input.dim() == 5 else y


# ----------------------------------------------------------------------------------- the group convolution


def filter_bank(weight: torch.Tensor, group: Union[Group, str], in_group: Union[Group, str]) -> torch.Tensor:
    """``F[o, g, i, s] = act(g, w[o, i, t(g, s)])`` with ``t(g, s) = index(g⁻¹ s)``.

    Args:
        weight: base weight ``(C_out, C_in, S_in, kh, kw)``.
        group, in_group: :class:`~gconv_triton.groups.Group` objects or names (``"p4"``, ``"z2"``).
    Returns:
        the bank ``(C_out, S_out, C_in, S_in, kh, kw)``; flatten to ``(C_out·S_out, C_in·S_in, kh, kw)`` for
        ``F.conv2d``.  One ``index_select`` of the flattened weight (its backward one ``index_add_``).
    """
    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    # A traced graph holds the index as a constant for this weight shape, as a traced module's parameters keep it.
    index = bank_index(group, in_group, concrete_shape(weight, quiet=True), weight.device)
    return weight.reshape(-1).index_select(0, index.flatten()).view(index.shape)


# (id(group), id(in_group), weight shape, device) -> (group, in_group, index): keyed by identity, not by
# Group.__hash__, which reads the Cayley table (data-dependent under export tracing); the groups are kept alive
# with the entry, so their ids stay theirs.
_BANK_INDEX: dict = {}


def bank_index(group: Group, in_group: Group, weight_shape: tuple, device: torch.device) -> torch.Tensor:
    """Where each entry of the bank ``(C_out, S_out, C_in, S_in, kh, kw)`` reads the flattened base weight of
    ``weight_shape``: the gather of :func:`filter_bank` applied to ``arange``, built once per shape and device
    (under :func:`untraced`, so that whatever traces the first call, the cache holds a real tensor and a traced
    graph holds it as one constant)."""
    key = (id(group), id(in_group), weight_shape, device)
    entry = _BANK_INDEX.get(key)
    if entry is None:
        with untraced():
            entry = _BANK_INDEX[key] = (group, in_group, _bank_index(group, in_group, weight_shape).to(device))
    return entry[2]


def _bank_index(group: Group, in_group: Group, weight_shape: tuple) -> torch.Tensor:
    c_out, c_in, s_in, kh, kw = weight_shape
    t = group.stabilizer_index(in_group)                                 # (S_out, S_in)
    selected = torch.arange(c_out * c_in * s_in * kh * kw).view(weight_shape)[:, :, t]
    # act(g, f)[dest[g, t]] = f[t], i.e. read f at source = dest⁻¹.
    source = torch.argsort(group.position_destinations((kh, kw)), dim=1)     # (S_out, T)
    index = source[None, None, :, None, :].expand(c_out, c_in, -1, s_in, -1)
    bank = torch.gather(selected.flatten(-2), -1, index).unflatten(-1, (kh, kw))
    return bank.permute(0, 2, 1, 3, 4, 5).contiguous()


def flat_bank(weight: torch.Tensor, group: Group, in_group: Group, repeats: int = 1) -> torch.Tensor:
    """The bank flattened for ``F.conv2d``: ``(repeats·C_out·S_out, C_in·S_in, kh, kw)``; ``repeats`` copies of
    ``weight`` along the output channels serve a weight shared by every channel group."""
    if repeats != 1:
        weight = weight.repeat(repeats, 1, 1, 1, 1)
    return filter_bank(weight, group, in_group).flatten(0, 1).flatten(1, 2)


def bank_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, group: Group,
                in_group: Group, stride, padding, dilation, groups: int, shared_weight: bool = False) -> torch.Tensor:
    """Group convolution of a 5-D ``input (B, C_in, S_in, H, W)`` by filter bank + ``F.conv2d``; ``padding`` is
    ``(top, bottom, left, right)``, the rest as :func:`~gconv_triton.functional.gconv2d`.  Returns
    ``(B, C_out, S_out, H_out, W_out)``.  Differentiable by autograd (one ``convolution_backward`` for both
    gradients, the bank's gather scatter-added back onto the weight)."""
    repeats = groups if shared_weight else 1  # one weight slice shared by every channel group
    bank = flat_bank(weight, group, in_group, repeats)
    bias = None if bias is None else bias.repeat(repeats)
    return conv2d_with_bank(input, bank, bias, group.order, stride=stride, padding=padding, dilation=dilation,
                            groups=groups)


def conv2d_with_bank(input: torch.Tensor, bank: torch.Tensor, bias: Optional[torch.Tensor], order: int, *, stride,
                     padding, dilation, groups: int) -> torch.Tensor:
    """``F.conv2d`` of a 5-D ``input (B, C_in, S_in, H, W)`` with a flat bank ``(C_out·S_out, C_in·S_in / groups,
    kh, kw)`` and ``bias (C_out,)`` (shared over the ``order = S_out`` group elements); ``padding`` is ``(top,
    bottom, left, right)``.  Returns ``(B, C_out, S_out, H_out, W_out)``."""
    if bias is not None:
        bias = bias.repeat_interleave(order)
    explicit, pad = split_padding(padding)
    x = input.flatten(1, 2) if explicit is None else F.pad(input.flatten(1, 2), explicit)
    y = F.conv2d(x, bank, bias, stride=stride, padding=pad, dilation=dilation, groups=groups)
    return y.unflatten(1, (-1, order))


def bank_conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, output_size, *, group: Group, in_group: Group,
                          stride, padding, dilation, groups: int) -> torch.Tensor:
    """The adjoint of :func:`bank_conv2d` (``padding`` symmetric, ``(top, bottom, left, right)``): maps
    ``input (B, C_out, S_out, H', W')`` to ``output_size (B, C_in, S_in, H, W)`` by filter bank +
    ``F.conv_transpose2d`` (:func:`conv_transpose2d_with_bank`)."""
    return conv_transpose2d_with_bank(input, flat_bank(weight, group, in_group), output_size, stride=stride,
                                      padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d_with_bank(input: torch.Tensor, bank: torch.Tensor, output_size, *, stride, padding, dilation,
                               groups: int) -> torch.Tensor:
    """``F.conv_transpose2d`` of a 5-D ``input (B, C_out, S_out, H', W')`` with a flat bank ``(C_out·S_out,
    C_in·S_in / groups, kh, kw)`` (the matching convolution's, as for :func:`conv2d_with_bank`) to ``output_size
    (B, C_in, S_in, H, W)``; ``padding`` symmetric, ``(top, bottom, left, right)``.  The ``output_padding`` it
    passes restores what the convolution's floor division dropped."""
    top, bottom, left, right = padding
    if (top, left) != (bottom, right):
        raise ValueError(f"padding: expected a symmetric padding for the transposed convolution, got {padding}")
    kh, kw = bank.shape[-2:]
    natural = [(n - 1) * s - 2 * p + d * (k - 1) + 1
               for n, s, p, d, k in zip(input.shape[-2:], stride, (top, left), dilation, (kh, kw))]
    output_padding = (output_size[-2] - natural[0], output_size[-1] - natural[1])
    y = F.conv_transpose2d(input.flatten(1, 2), bank, None, stride, (top, left), output_padding, groups, dilation)
    return y.unflatten(1, tuple(output_size[1:3]))


def gconv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      spec: ConvSpec) -> torch.Tensor:
    """Group convolution by filter bank + ``F.conv2d``.  Shapes as in :class:`~gconv_triton._spec.ConvSpec`;
    returns ``(B, C_out, S_out, H_out, W_out)``."""
    return bank_conv2d(as_5d(input, spec), weight, bias, group=spec.group, in_group=spec.in_group,
                       stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups,
                       shared_weight=spec.weight_groups != spec.groups)


def _spec_bank(weight: Tensor, spec: ConvSpec) -> Tensor:
    """The flattened filter bank ``(groups·C_out_g·S_out, C_in_g·S_in, kh, kw)`` (reference path only)."""
    return flat_bank(weight, spec.group, spec.in_group, spec.groups // spec.weight_groups)


def bank_adjoint(dbank: Tensor, spec: ConvSpec, weight_shape) -> Tensor:
    """The gradient of the base weight from the gradient of :func:`_spec_bank`: the adjoint of ``filter_bank``'s
    gather (window-position permutation back, then sum the slices ``t(g, s) = u`` into slice ``u``, and the channel
    groups that share one weight)."""
    kh, kw = spec.kernel
    c_out = dbank.shape[0] // spec.s_out
    d = dbank.reshape(c_out, spec.s_out, spec.in_channels, spec.s_in, kh * kw).permute(0, 2, 1, 3, 4)
    dest = spec.group.position_destinations((kh, kw)).to(d.device)                   # (S_out, T): source⁻¹
    d = torch.gather(d, -1, dest[None, None, :, None, :].expand_as(d))        # undo the window-position permutation
    t = spec.group.stabilizer_index(spec.in_group).to(d.device).flatten()     # (S_out·S_in,) -> u
    dw = d.new_zeros(c_out, spec.in_channels, spec.s_in, kh * kw).index_add_(2, t, d.flatten(2, 3))
    if spec.weight_groups != spec.groups:
        dw = dw.view(spec.groups, -1, *dw.shape[1:]).sum(0)
    return dw.reshape(weight_shape)


def bank_conv_input_grad(dy: Tensor, weight: Tensor, spec: ConvSpec, input_size) -> Tensor:
    """The input gradient ``Aᵀ dy`` of the group convolution ``spec`` (``dy (B, C_out, S_out, H', W')``) by filter
    bank + ``torch.nn.grad.conv2d_input``: ``(B, C_in, S_in, H, W)`` = ``input_size``, contiguous."""
    explicit, pad = split_padding(spec.padding)
    b, c, s, h, w = input_size
    if explicit is not None:
        h, w = h + spec.padding[0] + spec.padding[1], w + spec.padding[2] + spec.padding[3]
    dx = torch.nn.grad.conv2d_input((b, c * s, h, w), _spec_bank(weight, spec), dy.flatten(1, 2), spec.stride, pad,
                                    spec.dilation, spec.groups)
    if explicit is not None:
        dx = dx[..., spec.padding[0]:spec.padding[0] + spec.height, spec.padding[2]:spec.padding[2] + spec.width]
    return dx.view(input_size)


def bank_conv_weight_grad(dy: Tensor, x: Tensor, spec: ConvSpec, weight_size) -> Tensor:
    """The weight gradient of the group convolution ``spec`` for input ``x (B, C_in, S_in, H, W)`` and output
    gradient ``dy``: ``torch.nn.grad.conv2d_weight`` on the bank, carried back onto the base weight by
    :func:`bank_adjoint`; ``weight_size``, contiguous."""
    explicit, pad = split_padding(spec.padding)
    x4 = x.flatten(1, 2) if explicit is None else F.pad(x.flatten(1, 2), explicit)
    c_out = spec.groups * spec.out_channels * spec.s_out
    dbank = torch.nn.grad.conv2d_weight(x4, (c_out, spec.in_channels * spec.s_in, *spec.kernel), dy.flatten(1, 2),
                                        spec.stride, pad, spec.dilation, spec.groups)
    return bank_adjoint(dbank, spec, weight_size).contiguous()


# ------------------------------------------------------------------------------------ steerable filters
def _steerable_source(c_in: int, s_in: int, s_out: int, index: Tensor) -> Tensor:
    """Where bank column ``(g, i, s)`` reads the rotated coefficients ``(i, index[g, s], g)``: ``(S_out·C_in·S_in,)``
    positions in the ``(i, s', g)`` axis of :func:`steerable_bank_from_tables`' product."""
    device = index.device
    return (torch.arange(c_in, device=device)[None, :, None] * (s_in * s_out) + index[:, None, :] * s_out
            + torch.arange(s_out, device=device)[:, None, None]).flatten()


def steerable_bank_from_tables(coefficients: Tensor, tables: Tensor, index: Tensor) -> Tensor:
    """The steerable filter bank ``(C_out·S_out, C_in·S_in, k, k)``: ``F[o, g, i, s] = Σ_b c[o, i, index[g, s], b]
    · Ψ[g, b]`` from ``coefficients (C_out, C_in, S_in, B)``, ``tables Ψ (S_out, B, k·k)`` (in the coefficients'
    dtype) and ``index (S_out, S_in)`` (``group.stabilizer_index(in_group)`` on their device).  Every coefficient
    vector against every table in one GEMM, then one ``index_select`` into the bank's order: the fewest ops forward
    and backward (an ``index_add_``), differentiable by autograd."""
    s_out, size, positions = concrete_shape(tables, quiet=True)   # ints, also under torch.jit.trace
    c_out, c_in, s_in = concrete_shape(coefficients, quiet=True)[:3]
    k = round(positions ** 0.5)
    rotated = torch.mm(coefficients.reshape(-1, size), tables.transpose(0, 1).reshape(size, s_out * positions))
    rotated = rotated.view(c_out, c_in * s_in * s_out, positions)                       # (o, (i, s', g), k²)
    bank = rotated.index_select(1, _steerable_source(c_in, s_in, s_out, index))        # (o, (g, i, s), k²)
    return bank.view(c_out * s_out, c_in * s_in, k, k)


def steerable_bank_adjoint(dbank: Tensor, tables: Tensor, index: Tensor, coefficient_shape) -> Tensor:
    """The coefficients' gradient ``(C_out, C_in, S_in, B)`` from the gradient of
    :func:`steerable_bank_from_tables`' bank: the gather back by an ``index_add_``, then one GEMM with the
    tables."""
    c_out, c_in, s_in, size = coefficient_shape
    s_out, _, positions = tables.shape
    d = dbank.reshape(c_out, s_out * c_in * s_in, positions)
    rotated = d.new_zeros(c_out, c_in * s_in * s_out, positions).index_add_(
        1, _steerable_source(c_in, s_in, s_out, index), d)                              # (o, (i, s', g), k²)
    dc = torch.mm(rotated.reshape(-1, s_out * positions), tables.transpose(0, 1).reshape(size, s_out * positions).T)
    return dc.view(coefficient_shape)


# ------------------------------------------------------------------------------------- the tap convolution
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _gather_index(spec: ConvSpec, g: int, device) -> Tensor:
    """Rows of the unfolded input ``(C_in_g·S_in·T)`` that reduction index ``k = (i·S_in + u)·T + t`` of group
    element ``g`` reads: channel slice ``g·u`` and window position ``dest[g, t]`` (the rotation on the gather)."""
    kh, kw = spec.kernel
    t_count = kh * kw
    s = spec.group.input_index(spec.in_group)[g].to(device)                     # (S_in,)
    dest = spec.group.position_destinations(spec.kernel)[g].to(device)                # (T,)
    i = torch.arange(spec.in_channels, device=device)
    return ((i[:, None, None] * spec.s_in + s[None, :, None]) * t_count + dest[None, None, :]).flatten()


def _chunks(spec: ConvSpec):
    """``(batch chunk, out-channel chunk)`` sizes that keep one broadcast under ``CHUNK_ELEMENTS``."""
    k = spec.in_channels * spec.s_in * spec.kernel[0] * spec.kernel[1]
    pixels = spec.out_height * spec.out_width
    per_channel = max(1, k * pixels)
    oc = max(1, min(spec.out_channels, CHUNK_ELEMENTS // per_channel))
    bc = max(1, min(max(spec.batch, 1), CHUNK_ELEMENTS // (per_channel * oc)))
    return bc, oc


def _unfold(x5: Tensor, spec: ConvSpec):
    """``(cols (B, C·S_in·T, L), inside (T, L) bool)``: the receptive fields of ``x5`` (padded pixels are 0) and
    which window positions fall inside the image."""
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


def tap_conv_chunked(x5: Tensor, weight: Tensor, bias: Optional[Tensor], spec: ConvSpec, tap: TapFunction,
                     reduce: str, ignore: bool, dy: Optional[Tensor] = None, aux: Optional[Tensor] = None,
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
            # (T, L), in the base filter's order of window positions
            use = inside[spec.group.position_destinations(spec.kernel)[g].to(x5.device)]
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
    f = (tap.torch_fn if onnx_exporting() else tap.differentiable)(cols[:, :, None, index], w)
    if ignore:
        dest = spec.group.position_destinations(spec.kernel).to(x5.device)                # (S_out, T)
        use = inside[dest].repeat(1, spec.in_channels * spec.s_in, 1)                # (S_out, K, L)
    else:
        use = torch.ones((), dtype=torch.bool, device=x5.device)
    if aux is not None and reduce in ("max", "min"):
        k = aux.reshape(*f.shape[:4], 1, f.shape[-1]).long().clamp_min(0)  # -1: no window position inside
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
