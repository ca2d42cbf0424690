"""Implicit-GEMM group convolution: the weight gradient (:func:`_weight_grad_kernel`).

The math and the design (the group copies as more reduction, the zero-halo copy of ``x`` shared with the forward,
the re-laid ``dy``, the in-register permutation of the accumulator's rows) are in ``docs/kernels.md``, "The three
GEMMs"; the split of the reduction over programs, and why the result is deterministic, in ``docs/determinism.md``.

Reading order: :func:`weight_grad` (lays out ``dy``, takes or makes the copy of ``x``, the window-corner table)
-> :func:`_weight_grad_kernel`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import (accumulator, bank_split_limit, cdiv, channels_last, dot_precision, geometry_table,
                      group_tables, interpreter_config, maybe_autotune, mma, needs_int64, round_up, split_ranges,
                      upcast, vector_padding, vector_width)
from .group_conv import halo_channels_last, halo_is_input, halo_size, reads_in_place, vector_channels
from .group_conv_layouts import finish_weight_grad, relayout_dy

INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16)

# The reduction block, fixed (not tuned) so that the reduction order, and so every bit of dw, never depends on
# tuning.  fp64 MMAs keep whole operand tiles in registers: a shorter block keeps them from spilling.
WGRAD_BLOCK_R = 64
WGRAD_BLOCK_R_FP64 = 16


def wgrad_block_r(dtype: torch.dtype) -> int:
    return WGRAD_BLOCK_R_FP64 if dtype == torch.float64 else WGRAD_BLOCK_R


def _configs():
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn), num_warps=warps, num_stages=stages)
            for bm, bn, warps, stages in [(128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                                          (64, 32, 4, 4), (128, 16, 4, 4), (64, 16, 4, 4), (64, 128, 4, 3),
                                          (64, 16, 8, 3), (64, 32, 8, 3)]]


HAS_GATHER = tl.constexpr(hasattr(tl, "gather"))   # tl.gather is missing from the oldest triton releases


@triton.jit
def _permute_rows(acc, src, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``out[m, :] = acc[src[m], :]``: an in-register gather where triton has one, else the product with a
    one-hot matrix in full fp32 (exact: one non-zero term per row)."""
    if HAS_GATHER:
        out = tl.gather(acc, tl.broadcast_to(src[:, None], (BLOCK_M, BLOCK_N)), 0)
    else:
        one_hot = (src[:, None] == tl.arange(0, BLOCK_M)[None, :]).to(acc.dtype)
        out = tl.dot(one_hot, acc, input_precision="ieee")
    return out


# Tuned over the output tile (BLOCK_M x BLOCK_N), warps and stages only: the reduction block stays fixed.
@maybe_autotune(_configs(), key=["R_TOTAL", "M_CH", "O_PAD", "S_IN", "S_OUT", "KH", "KW", "COPIES", "PRECISION"],
                tiles=dict(BLOCK_M="M_CH", BLOCK_N="O_PAD"),
                operands=[("BLOCK_R", "BLOCK_M"), ("BLOCK_R", "BLOCK_N")])
@triton.heuristics(dict(WIDE=lambda a: needs_int64(a["x_ptr"], a["dy_ptr"], a["pix_ptr"]),
                        ACC=lambda a: accumulator(a["x_ptr"].dtype), UPCAST=lambda a: upcast(a["x_ptr"].dtype)))
@triton.jit
def _weight_grad_kernel(
    x_ptr, dy_ptr, pix_ptr, dw_ptr, in_index_ptr, pos_dh_ptr, pos_dw_ptr,
    R_TOTAL, R_PER_SPLIT, R_ALLOC, weight_groups, COPIES, stride_x_h, stride_x_w, dil_h, dil_w,
    M_CH: tl.constexpr, X_CH: tl.constexpr, C_OUT_G: tl.constexpr, O_PAD: tl.constexpr,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, VEC_X: tl.constexpr,
    IN_PLACE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_R: tl.constexpr,
    WIDE: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``dw`` of base-filter window position ``t`` for a ``[BLOCK_M (i, u), BLOCK_N o]`` tile of weight slice
    ``wg``, summed over the pixels of split ``pid_s``, every group element ``g`` and the channel groups sharing the
    slice.

    ``x``: a zero-halo channels-last copy ``(B, HP, WP, groups·X_CH)`` (unit channel stride, ``X_CH >= M_CH =
    C_in_g·S_in`` channels per group, the padding already in place), so that no window position reads out of
    bounds.
    ``pix``: ``(R_ALLOC,)``, the x offset of output pixel ``r``'s window corner ``(b, oh·stride, ow·stride)``
    (0 past ``R_TOTAL``).  ``dy``: ``(R_ALLOC, groups, S_out, O_PAD)`` contiguous, zero past ``R_TOTAL``.  Then the x
    row of pixel ``r`` under position ``t`` moved by ``g`` is ``pix[r] + shift[g, t]`` (``shift`` one scalar per ``g``),
    every pixel block is whole, and the hot loop is a plain GEMM loop: a table load, two contiguous tile loads and
    an MMA, with no pixel decomposition and no bounds.
    ``IN_PLACE``: ``x`` is the input itself, channels-last ``(B, H, W, groups·X_CH)`` without the padding, and
    ``pix`` is ``(KH·KW, R_ALLOC)`` int64: for window position ``(th, tw)`` the x offset of pixel ``r``'s row, or of
    a zero page (:func:`_in_place_offsets`) where it lies in the padding.  The loop is the same loop.

    For element ``g`` the x tile is read in its own channel order ``(i, s)`` and multiplied into ``acc_g``; the rows
    are then moved to the weight's order ``(i, u)``, ``s = g·u``, by an in-register gather, once per ``g`` and not
    per pixel block.  The group copies are reduction: no filter-bank gradient, no scatter, no atomic.
    """
    KPOS: tl.constexpr = KH * KW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    t = tl.program_id(2) % KPOS
    wg = (tl.program_id(2) // KPOS) % weight_groups
    pid_s = tl.program_id(2) // (KPOS * weight_groups)

    ROWS: tl.constexpr = (BLOCK_M // S_IN) * S_IN  # dw rows (i, u) per tile: whole blocks of S_IN
    FULL_M: tl.constexpr = (ROWS == BLOCK_M) and (X_CH % BLOCK_M == 0)
    FULL_N: tl.constexpr = O_PAD % BLOCK_N == 0
    ml = tl.arange(0, BLOCK_M)
    m = pid_m * ROWS + ml
    m_ok = (ml < ROWS) & (m < M_CH)
    x_ok = (ml < ROWS) & (m < X_CH)   # the zero channels past M_CH load too: runs of VEC_X stay whole
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kr = tl.arange(0, BLOCK_R)
    r_start = pid_s * R_PER_SPLIT
    r_stop = tl.minimum(r_start + R_PER_SPLIT, R_ALLOC)   # both multiples of BLOCK_R: every block is whole
    dy_pixel = S_OUT * O_PAD * COPIES * weight_groups
    if WIDE:
        r_start = r_start.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for copy in range(COPIES):
        grp = wg + copy * weight_groups
        for g in range(S_OUT):
            th = tl.load(pos_dh_ptr + g * KPOS + t)
            tw = tl.load(pos_dw_ptr + g * KPOS + t)
            if WIDE:
                th, tw = th.to(tl.int64), tw.to(tl.int64)
            if IN_PLACE:   # this window position's table: the x offset of every pixel's row (the zero page's)
                x_ptrs = x_ptr + tl.multiple_of(grp * X_CH + m, VEC_X)[None, :]
                pix_ptrs = pix_ptr + (th * KW + tw) * R_ALLOC + r_start + kr
            else:
                shift = (th * dil_h) * stride_x_h + (tw * dil_w) * stride_x_w
                x_ptrs = x_ptr + tl.multiple_of(grp * X_CH + shift + m, VEC_X)[None, :]
                pix_ptrs = pix_ptr + r_start + kr
            dy_ptrs = dy_ptr + (grp * S_OUT + g) * O_PAD + (r_start + kr)[:, None] * dy_pixel + o[None, :]
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            for _ in range(r_start, r_stop, BLOCK_R):
                row = tl.multiple_of(tl.load(pix_ptrs), VEC_X)
                if FULL_M:
                    xa = tl.load(x_ptrs + row[:, None])
                else:
                    xa = tl.load(x_ptrs + row[:, None], mask=x_ok[None, :], other=0.0)
                if FULL_N:
                    dya = tl.load(dy_ptrs)
                else:  # a tile wider than the (padded) output channels
                    dya = tl.load(dy_ptrs, mask=(o < O_PAD)[None, :], other=0.0)
                acc_g = mma(acc_g, tl.trans(xa), dya, PRECISION, UPCAST)
                pix_ptrs += BLOCK_R
                dy_ptrs += BLOCK_R * dy_pixel
            # dw row (i, u) takes acc_g's row (i, g·u)
            src = tl.minimum((ml // S_IN) * S_IN + tl.load(in_index_ptr + g * S_IN + ml % S_IN), BLOCK_M - 1)
            acc += _permute_rows(acc_g, src, BLOCK_M, BLOCK_N)

    row = pid_s * weight_groups * C_OUT_G + wg * C_OUT_G + o          # row of the (split, C_out) stack
    dw_off = row.to(tl.int64)[None, :] * (M_CH * KPOS) + (m * KPOS + t)[:, None]
    tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty), mask=m_ok[:, None] & (o < C_OUT_G)[None, :])


# ----------------------------------------------------------------------------------------------- launcher
def _window_offsets(x_cl: torch.Tensor, spec, rows: int, wide: bool) -> torch.Tensor:
    """``(rows,)``: the offset in ``x_cl`` (:func:`halo_channels_last`) of output pixel ``r``'s window corner
    ``(b, oh·stride, ow·stride)``, ``r`` over ``(B, H_out, W_out)``; 0 past the last pixel.  A function of the
    geometry only: built once per shape, strides and device (:func:`~._common.geometry_table`)."""
    sb, sh, sw = x_cl.stride()[:3]
    key = ("window_offsets", spec.batch, spec.out_height, spec.out_width, *spec.stride, sb, sh, sw, rows, wide,
           x_cl.device)
    return geometry_table(key, lambda: _build_window_offsets(spec, sb, sh, sw, rows, wide, x_cl.device))


def _build_window_offsets(spec, sb: int, sh: int, sw: int, rows: int, wide: bool, dev: torch.device):
    dtype = torch.int64 if wide else torch.int32
    pix = (torch.arange(spec.batch, device=dev, dtype=torch.int64)[:, None, None] * sb
           + torch.arange(spec.out_height, device=dev, dtype=torch.int64)[None, :, None] * (spec.stride[0] * sh)
           + torch.arange(spec.out_width, device=dev, dtype=torch.int64)[None, None, :] * (spec.stride[1] * sw))
    out = torch.zeros(rows, device=dev, dtype=dtype)
    out[:pix.numel()] = pix.reshape(-1)
    return out


def _in_place_offsets(x_cl: torch.Tensor, spec, rows: int) -> tuple[torch.Tensor, int]:
    """``(table, delta)``: ``table (kh·kw, rows)`` int64, for window position ``(th, tw)`` the offset in ``x_cl``
    (the input read in place, channels-last, no halo) of output pixel ``r``'s input pixel, and ``delta``, the offset
    of a zero page (one pixel of zeros) from ``x_cl``, where that pixel lies in the padding or ``r`` past the last
    pixel: a table load and an address, no mask, per row in the loop.  The geometry part is built once
    (:func:`~._common.geometry_table`): returned as ``(table, padding, delta)``, ``padding (kh·kw, rows)`` bool
    where the zero page's offset goes; resolving it against this call's addresses is done by the launch that
    re-lays ``dy`` (:func:`~.group_conv_layouts.relayout_dy`), ``where(padding, delta, table)``."""
    sb, sh, sw = x_cl.stride()[:3]
    key = ("in_place_offsets", spec.batch, spec.height, spec.width, spec.out_height, spec.out_width, *spec.stride,
           *spec.dilation, spec.padding[0], spec.padding[2], *spec.kernel, sb, sh, sw, rows, x_cl.device)
    table, padding = geometry_table(key, lambda: _build_in_place_offsets(spec, sb, sh, sw, rows, x_cl.device))
    zeros = zero_page(x_cl.shape[-1], x_cl.dtype, x_cl.device)
    delta, rest = divmod(zeros.data_ptr() - x_cl.data_ptr(), x_cl.element_size())
    if rest:   # every tensor starts element-aligned, and the zero page 256-byte aligned
        raise RuntimeError(f"x: data pointer {x_cl.data_ptr():#x} is not aligned to its element size")
    return table, padding, delta


def zero_page(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """At least ``numel`` zeros of ``dtype``, 256-byte aligned, built once per size class and device."""
    nbytes = 256
    while nbytes < numel * dtype.itemsize:
        nbytes *= 2
    return geometry_table(("zero_page", nbytes, device),
                          lambda: torch.zeros(nbytes, dtype=torch.uint8, device=device)).view(dtype)


def _build_in_place_offsets(spec, sb: int, sh: int, sw: int, rows: int, dev: torch.device):
    """:func:`_in_place_offsets`'s table with 0 where the zero page's offset goes, and where that is (bool)."""
    (kh, kw), (st_h, st_w), (dl_h, dl_w) = spec.kernel, spec.stride, spec.dilation
    ih = (torch.arange(spec.out_height, device=dev)[None, :] * st_h - spec.padding[0]
          + torch.arange(kh, device=dev)[:, None] * dl_h)                                  # (kh, H_out)
    iw = (torch.arange(spec.out_width, device=dev)[None, :] * st_w - spec.padding[2]
          + torch.arange(kw, device=dev)[:, None] * dl_w)                                  # (kw, W_out)
    inside = (((ih >= 0) & (ih < spec.height))[:, None, None, :, None]
              & ((iw >= 0) & (iw < spec.width))[None, :, None, None, :])                  # (kh, kw, 1, H_out, W_out)
    off = (torch.arange(spec.batch, device=dev)[None, None, :, None, None] * sb
           + ih[:, None, None, :, None] * sh + iw[None, :, None, None, :] * sw)           # (kh, kw, B, H_out, W_out)
    table = torch.zeros((kh * kw, rows), device=dev, dtype=torch.int64)
    padding = torch.ones((kh * kw, rows), device=dev, dtype=torch.bool)
    table[:, :off[0, 0].numel()] = torch.where(inside, off, 0).reshape(kh * kw, -1)
    padding[:, :off[0, 0].numel()] = ~inside.expand_as(off).reshape(kh * kw, -1)
    return table, padding


def weight_grad(dy: torch.Tensor, x: torch.Tensor, spec, weight_shape, x_copy=None, with_bias: bool = False):
    """``dy`` and the 5-D input ``x`` -> ``dw`` of ``weight_shape`` (fp32 accumulation, then x's dtype); with
    ``with_bias``, ``(dw, db)``, ``db`` the bias gradient ``(weight_groups·C_out,)`` from the same launches.

    ``dy`` is re-laid ``(B·H_out·W_out, groups, S_out, C_out padded to 8)``, rounded up to whole pixel blocks with
    zeros, in one launch that also writes the bias gradient's partial sums
    (:func:`~.group_conv_layouts.relayout_dy`); ``x`` is read from a zero-halo channels-last copy: ``x_copy``, the
    one :func:`~.group_conv.forward` made, when given, else :func:`~.group_conv.halo_channels_last` (a copy unless
    unpadded and channels-last already), with a narrow lifting input padded to 8 channels.  The split's partial
    sums and the bias's are added up by one more launch (:func:`~.group_conv_layouts.finish_weight_grad`), none
    when there is neither."""
    in_index, _, pos_dh, pos_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    kh, kw = spec.kernel
    r_total = spec.batch * spec.out_height * spec.out_width
    m_ch = spec.in_channels * spec.s_in
    weight_numel = spec.weight_groups * spec.out_channels * m_ch * kh * kw
    tiles = cdiv(m_ch, 64) * cdiv(spec.out_channels, 64) * spec.weight_groups * kh * kw
    split = _common.weight_split(r_total, tiles, bank_split_limit(spec, weight_numel))
    block_r = wgrad_block_r(x.dtype)
    split, r_per_split = split_ranges(r_total, split, block_r)
    partial_dtype = torch.promote_types(x.dtype, torch.float32) if split > 1 else x.dtype
    partial = torch.empty((split, *weight_shape), dtype=partial_dtype, device=x.device)
    if r_total == 0:
        dw = partial.zero_().sum(0).to(x.dtype)
        return (dw, x.new_zeros((spec.weight_groups * spec.out_channels,))) if with_bias else dw
    c_out = spec.out_channels
    o_pad = vector_padding(c_out)
    r_alloc = round_up(r_total, block_r)
    # an unpadded input read in place is its own zero-halo copy: the window-corner table serves
    in_place = x_copy is None and reads_in_place(x, spec) and not halo_is_input(spec)
    in_place_rows = None
    if in_place:   # (kh·kw, R_ALLOC) int64: its own offsets may pass int32 (the kernel's WIDE counts them)
        x_ch, x_cl = m_ch, channels_last(x)
        in_place_rows = _in_place_offsets(x_cl, spec, r_alloc)
    elif x_copy is None:
        x_ch = vector_channels(m_ch, spec.groups)   # the padded channels give zero rows of dw, not stored
        x_cl = halo_channels_last(x, spec, x_ch)
    else:
        x_ch, x_cl = x_copy.shape[-1] // spec.groups, x_copy
        expected = (spec.batch, *halo_size(spec))
        if tuple(x_copy.shape[:3]) != expected or x_ch < m_ch or x_copy.stride(-1) != 1:
            raise ValueError(f"x_copy: expected forward's copy of x, shape ({', '.join(map(str, expected))}, "
                             f"groups·channels >= {spec.groups * m_ch}) with unit channel stride, got shape "
                             f"{tuple(x_copy.shape)} strides {x_copy.stride()}")
    # dy re-laid, the bias's partial sums and the in-place row table resolved: one launch
    dy_go, bias_part, rows = relayout_dy(dy, spec, r_alloc, o_pad, with_bias, in_place_rows)
    if in_place:
        pix, zero_delta = rows, in_place_rows[2]
    else:
        pix, zero_delta = _window_offsets(x_cl, spec, r_alloc, needs_int64(x_cl, dy_go)), 0

    def grid(meta):
        rows = meta["BLOCK_M"] // spec.s_in * spec.s_in
        return (cdiv(m_ch, rows), cdiv(o_pad, meta["BLOCK_N"]), kh * kw * spec.weight_groups * split)

    _weight_grad_kernel[grid](
        x_cl, dy_go, pix, partial, in_index, pos_dh, pos_dw,
        r_total, r_per_split, r_alloc, spec.weight_groups, spec.groups // spec.weight_groups,
        *x_cl.stride()[1:3], *spec.dilation,
        M_CH=m_ch, X_CH=x_ch, C_OUT_G=c_out, O_PAD=o_pad, S_IN=spec.s_in, S_OUT=spec.s_out, KH=kh, KW=kw,
        VEC_X=vector_width(x.element_size(), *x_cl.stride()[:3], x_ch, zero_delta), IN_PLACE=in_place,
        PRECISION=dot_precision(x.dtype),
        BLOCK_R=block_r, **interpreter_config(INTERPRETER_CONFIG))
    dw, db = finish_weight_grad(partial, x.dtype, bias_part, spec)
    return (dw, db) if with_bias else dw
