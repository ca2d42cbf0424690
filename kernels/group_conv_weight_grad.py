"""Implicit-GEMM group convolution: the weight gradient (:func:`_orbit_weight_grad_kernel`,
:func:`_weight_grad_kernel`).

The math and the design (the group copies as more reduction, the zero-halo copy of ``x`` shared with the forward,
``dy`` read in place by orbit programs in the filter bank's frame or re-laid, the in-register permutation of the
accumulator's rows) are in ``docs/kernels.md``, "The three GEMMs"; the split of the reduction over programs, and
why the result is deterministic, in ``docs/determinism.md``.

Reading order: :func:`weight_grad` (reads ``dy`` in place or lays it out, takes or makes the copy of ``x``, the
window-corner table) -> :func:`_orbit_weight_grad_kernel` (``dy`` in place: the orbits of
:func:`~._common.position_orbits`, :func:`_orbit_block`, :func:`_split_channels`, :func:`_permute_rows`,
:func:`_bias_partial_sums`) or :func:`_weight_grad_kernel` -> :func:`_relaid_dy_loop`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._support import GROUP_MAP_ORDER, as_group_map
from . import _common
from ._common import (accumulator, bank_split_limit, cdiv, channels_last, dot_precision, geometry_table,
                      group_tables, interpreter_config, maybe_autotune, mma, needs_int64, position_orbits, round_up,
                      split_ranges, upcast, vector_padding, vector_width)
from .group_conv import (halo_channels_last, halo_is_input, halo_size, reads_channels_first_dy,
                         reads_channels_first_x, reads_in_place, vector_channels)
from .group_conv_layouts import finish_weight_grad, relayout_dy

INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16)
ORBIT_INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_NS=32)

# The reduction block, fixed (not tuned) so that the reduction order, and so every bit of dw, never depends on
# tuning.  fp64 MMAs keep whole operand tiles in registers: a shorter block keeps them from spilling.
WGRAD_BLOCK_R = 64
WGRAD_BLOCK_R_FP64 = 16
# Triton specialises an integer argument divisible by 16: with H_out·W_out so, the compiler sees runs of 16 pixels
# of a channels-first dy lie in one image (vector loads) without a constexpr per map size.
DY_PIXEL_RUN = 16


def wgrad_block_r(dtype: torch.dtype) -> int:
    return WGRAD_BLOCK_R_FP64 if dtype == torch.float64 else WGRAD_BLOCK_R


def _configs():
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn), num_warps=warps, num_stages=stages)
            for bm, bn, warps, stages in [(128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                                          (64, 32, 4, 4), (128, 16, 4, 4), (64, 16, 4, 4), (64, 128, 4, 3),
                                          (64, 16, 8, 3), (64, 32, 8, 3)]]


def _tuned_weight_grad(configs, n_block: str, n_tiles: str):
    """Both weight-gradient kernels' decorators: tuned over the output tile (``BLOCK_M`` x ``n_block``, which
    tiles ``n_tiles``), warps and stages only (the reduction block stays fixed), and the constexprs derived from
    the arguments."""
    tune = maybe_autotune(configs, key=["R_TOTAL", "M_CH", "O_PAD", "S_IN", "S_OUT", "KH", "KW", "COPIES", "PRECISION"],
                          tiles=dict(BLOCK_M="M_CH", **{n_block: n_tiles}),
                          operands=[("BLOCK_R", "BLOCK_M"), ("BLOCK_R", n_block)])
    derive = triton.heuristics(dict(
        WIDE=lambda a: needs_int64(a["x_ptr"], a["dy_ptr"], a["pix_ptr"]),
        ACC=lambda a: accumulator(a["x_ptr"].dtype), UPCAST=lambda a: upcast(a["x_ptr"].dtype)))
    return lambda fn: tune(derive(fn))


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


@triton.jit
def _split_channels(tile, S_OUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """``tile [BLOCK_R, BLOCK_N·S_OUT]`` (columns ``(o, g)``, ``g`` fastest; ``S_OUT`` a power of two up to 8) ->
    the tuple of its ``S_OUT`` tiles ``[BLOCK_R, BLOCK_N]``, the ``g``-th holding columns ``(o, g)``: halves split off
    the last dim (register renaming where ``g`` lies in one thread)."""
    pieces = (tl.reshape(tile, (BLOCK_R, BLOCK_N, S_OUT)),)    # piece k of P holds g = k + P·j, j its last index
    for level in tl.static_range(3):
        if (S_OUT >> level) > 1:                                 # P = 2**level pieces of S_OUT >> level columns
            evens = ()
            odds = ()
            for k in tl.static_range(S_OUT // (S_OUT >> level)):
                piece = pieces[k]
                if (S_OUT >> level) > 2:
                    piece = tl.reshape(piece, (BLOCK_R, BLOCK_N, (S_OUT >> level) // 2, 2))
                even, odd = tl.split(piece)
                evens = evens + (even,)
                odds = odds + (odd,)
            pieces = evens + odds                                # g = k + P·(2j' + e): piece k + P·e, index j'
    if S_OUT == 1:
        pieces = (tile,)
    return pieces


@_tuned_weight_grad(_configs(), "BLOCK_N", "O_PAD")
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
    slice, from ``dy`` re-laid (:func:`~.group_conv_layouts.relayout_dy`); ``dy`` read in place is
    :func:`_orbit_weight_grad_kernel`'s.

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
    if WIDE:
        r_start = r_start.to(tl.int64)

    acc = _relaid_dy_loop(
        tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC), x_ptr, dy_ptr, pix_ptr, in_index_ptr, pos_dh_ptr, pos_dw_ptr,
        R_ALLOC, t, wg, weight_groups, COPIES, r_start, r_stop, stride_x_h, stride_x_w, dil_h, dil_w, m, ml, x_ok,
        o, kr, O_PAD, X_CH, S_IN, S_OUT, KW, KPOS, VEC_X, IN_PLACE, FULL_M, FULL_N, WIDE, PRECISION, UPCAST, ACC,
        BLOCK_M, BLOCK_N, BLOCK_R)

    row = pid_s * weight_groups * C_OUT_G + wg * C_OUT_G + o          # row of the (split, C_out) stack
    dw_off = row.to(tl.int64)[None, :] * (M_CH * KPOS) + (m * KPOS + t)[:, None]
    tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty), mask=m_ok[:, None] & (o < C_OUT_G)[None, :])


@triton.jit
def _relaid_dy_loop(
    acc, x_ptr, dy_ptr, pix_ptr, in_index_ptr, pos_dh_ptr, pos_dw_ptr, R_ALLOC, t, wg, weight_groups, COPIES,
    r_start, r_stop, stride_x_h, stride_x_w, dil_h, dil_w, m, ml, x_ok, o, kr, O_PAD: tl.constexpr,
    X_CH: tl.constexpr, S_IN: tl.constexpr, S_OUT: tl.constexpr, KW: tl.constexpr, KPOS: tl.constexpr,
    VEC_X: tl.constexpr, IN_PLACE: tl.constexpr, FULL_M: tl.constexpr, FULL_N: tl.constexpr, WIDE: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """:func:`_weight_grad_kernel`'s sum over a re-laid ``dy (R_ALLOC, groups, S_out, O_PAD)``: ``g`` outer, one
    accumulator, the pixel blocks inner."""
    dy_pixel = S_OUT * O_PAD * COPIES * weight_groups
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
    return acc


def _orbit_configs():
    # BLOCK_NS: the dy tile's (o, g) columns, BLOCK_NS / S_out output channels; the output accumulators (one per
    # position of the orbit) hold about as many registers as the bank-frame one; the widest tile also with 2 stages.
    # No 32-row tile: below wgmma's 64 rows its x operand is loaded synchronously (perf.static), never the fastest
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_NS=bns), num_warps=warps, num_stages=stages)
            for bm, bns, warps, stages in [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (64, 128, 4, 3),
                                           (64, 64, 4, 3), (128, 64, 4, 3), (64, 32, 4, 4), (128, 32, 4, 4),
                                           (64, 128, 8, 3), (64, 64, 8, 3)]]


@triton.jit
def _orbit_block(
    acc, r0, x_rows, pix_rows, dy_ptr, dy_cols, dy_base, dy_pixel, dy_column, zero_delta, R_TOTAL, x_ok, col_ok, kr,
    x_base, hw, inside_bit, VEC_X: tl.constexpr, VEC_DY: tl.constexpr, IN_PLACE: tl.constexpr,
    X_CHANNELS_FIRST: tl.constexpr, DY_CHANNELS_FIRST: tl.constexpr, DY_WHOLE_BLOCKS: tl.constexpr,
    FULL_M: tl.constexpr, FULL_NS: tl.constexpr, TAIL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One pixel block ``r0 + kr`` of :func:`_orbit_weight_grad_kernel`'s GEMM loop: the ``x`` tile of one window
    position (rows ``pix_rows + r``, at ``x_rows``) times the ``dy`` tile of every ``g`` (``[BLOCK_R, BLOCK_NS]``,
    columns at ``dy_cols``: contiguous per pixel, or per column for a channels-first ``dy``), into ``acc``.
    ``TAIL``: the block holding the last pixel (rows past ``R_TOTAL`` masked).
    ``X_CHANNELS_FIRST``: ``x`` read channels-first, the block's pixels at ``x_base + kr`` (their place in the
    image ``hw + kr``), each row loaded where ``inside_bit`` is set in its entry of the table at ``pix_rows``."""
    r = r0 + kr
    dy_rows = _dy_pixel_offsets(r0, kr, dy_base, dy_pixel, dy_column, DY_CHANNELS_FIRST, DY_WHOLE_BLOCKS, BLOCK_R)
    if not DY_CHANNELS_FIRST:
        dy_rows = tl.multiple_of(dy_rows, VEC_DY)
    dy_at = dy_ptr + dy_rows[:, None] + dy_cols[None, :]
    if TAIL:
        dya = tl.load(dy_at, mask=(r < R_TOTAL)[:, None] & col_ok[None, :], other=0.0)
    elif FULL_NS:
        dya = tl.load(dy_at)
    else:
        dya = tl.load(dy_at, mask=col_ok[None, :], other=0.0)
    if X_CHANNELS_FIRST:   # a base plus arange: contiguous along the pixels; the padding's rows read 0
        inside = ((tl.load(pix_rows + tl.multiple_of(hw, BLOCK_R) + kr) & inside_bit) != 0)[:, None]
        if FULL_M:
            xa = tl.load(x_rows + (x_base + kr)[:, None], mask=inside, other=0.0)
        else:
            xa = tl.load(x_rows + (x_base + kr)[:, None], mask=inside & x_ok[None, :], other=0.0)
    else:
        row = tl.load(pix_rows + r)
        if IN_PLACE:   # -1: the row lies in the padding (or past the last pixel): the zero page
            row = tl.where(row < 0, zero_delta, row)
        row = tl.multiple_of(row, VEC_X)
        if FULL_M:
            xa = tl.load(x_rows + row[:, None])
        else:
            xa = tl.load(x_rows + row[:, None], mask=x_ok[None, :], other=0.0)
    return mma(acc, tl.trans(xa), dya, PRECISION, UPCAST)


@triton.jit
def _dy_block_start(r, dy_pixel, dy_column):
    """The offset of pixel ``r`` (a scalar or a block of them) in a channels-first ``dy`` (``dy_column =
    H_out·W_out``, ``dy_pixel`` columns): its image's start plus its place in the image."""
    image = r // dy_column
    return (image * dy_pixel) * dy_column + (r - image * dy_column)


@triton.jit
def _dy_pixel_offsets(r0, kr, dy_base, dy_pixel, dy_column, DY_CHANNELS_FIRST: tl.constexpr,
                      DY_WHOLE_BLOCKS: tl.constexpr, BLOCK_R: tl.constexpr):
    """The offsets in ``dy`` of pixels ``r0 + kr`` (``r0`` a multiple of ``BLOCK_R``): ``r · dy_pixel`` for ``dy``
    stored ``(B, H_out, W_out, C, S)``; for a channels-first one (``dy_column = H_out·W_out``) with
    ``DY_WHOLE_BLOCKS`` (a block lies in one image) ``dy_base`` (:func:`_dy_block_start` of ``r0``) plus ``kr``,
    which the compiler sees contiguous and aligned (pixel-major vector loads); else each pixel's image and place in
    it (``dy_column`` a multiple of 16, which Triton specialises on, so runs of 16 pixels stay in one image and
    still load as vectors)."""
    if DY_CHANNELS_FIRST:
        if DY_WHOLE_BLOCKS:
            return tl.multiple_of(dy_base, BLOCK_R) + kr
        return _dy_block_start(r0 + kr, dy_pixel, dy_column)
    return (r0 + kr) * dy_pixel


@triton.jit
def _tree_sum_rows(tile, ROWS: tl.constexpr, COLS: tl.constexpr):
    """``tile [ROWS, COLS]`` (``ROWS`` a power of two) -> its column sums ``[COLS]``, added in pairs of rows, then
    pairs of those, ...: the same order whatever the layout (the tuned warps), so the same bits."""
    for level in tl.static_range(7):
        if (ROWS >> level) > 1:
            halves = tl.permute(tl.reshape(tile, ((ROWS >> level) // 2, 2, COLS)), (0, 2, 1))
            even, odd = tl.split(halves)
            tile = even + odd
    return tl.reshape(tile, (COLS,))


@triton.jit
def _bias_partial_sums(
    dy_ptr, bias_ptr, dy_cols, col_ok, o, kr, dy_pixel, dy_column, R_TOTAL, wg, weight_groups, COPIES, r_start,
    r_stop, pid_s, C_OUT_G: tl.constexpr, O_PAD: tl.constexpr, S_OUT: tl.constexpr, ACC: tl.constexpr,
    DY_CHANNELS_FIRST: tl.constexpr, DY_WHOLE_BLOCKS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``bias[pid_s, wg, o]``: the sums of ``dy``'s columns ``(o, every g)`` over pixels ``[r_start, r_stop)`` and
    the copies, in a fixed pairwise order (:func:`_tree_sum_rows`)."""
    sums = tl.zeros((BLOCK_R, BLOCK_N * S_OUT), dtype=ACC)
    for copy in range(COPIES):
        cols = ((wg + copy * weight_groups) * (C_OUT_G * S_OUT) + dy_cols) * dy_column
        for r0 in range(r_start, tl.minimum(r_stop, R_TOTAL), BLOCK_R):
            r = r0 + kr
            dy_base = 0
            if DY_WHOLE_BLOCKS:
                dy_base = _dy_block_start(r0, dy_pixel, dy_column)
            dy_rows = _dy_pixel_offsets(r0, kr, dy_base, dy_pixel, dy_column, DY_CHANNELS_FIRST, DY_WHOLE_BLOCKS,
                                        BLOCK_R)
            sums += tl.load(dy_ptr + dy_rows[:, None] + cols[None, :],
                            mask=(r < R_TOTAL)[:, None] & col_ok[None, :], other=0.0).to(ACC)
    per_column = _tree_sum_rows(sums, BLOCK_R, BLOCK_N * S_OUT)                            # (o, g)
    per_o = _tree_sum_rows(tl.trans(tl.reshape(per_column, (BLOCK_N, S_OUT))), S_OUT, BLOCK_N)
    tl.store(bias_ptr + (pid_s * weight_groups + wg) * O_PAD + o, per_o, mask=o < O_PAD)


@_tuned_weight_grad(_orbit_configs(), "BLOCK_NS", "O_PAD*S_OUT")
@triton.jit
def _orbit_weight_grad_kernel(
    x_ptr, dy_ptr, pix_ptr, dw_ptr, bias_ptr, in_index_ptr, orbit_ptr,
    R_TOTAL, R_PER_SPLIT, R_ALLOC, weight_groups, COPIES, stride_x_h, stride_x_w, dil_h, dil_w, zero_delta,
    dy_column, map_pixels, stride_x_b, stride_x_c, x_corner, M_CH: tl.constexpr, X_CH: tl.constexpr,
    C_OUT_G: tl.constexpr, O_PAD: tl.constexpr, S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr,
    KW: tl.constexpr, N_ORBITS: tl.constexpr, ORBIT_MAX: tl.constexpr, VEC_X: tl.constexpr, IN_PLACE: tl.constexpr,
    X_CHANNELS_FIRST: tl.constexpr, VEC_DY: tl.constexpr, DY_CHANNELS_FIRST: tl.constexpr,
    DY_WHOLE_BLOCKS: tl.constexpr, HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_R: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_NS: tl.constexpr,
):
    """``dw`` of every base-filter window position ``t`` of orbit ``q`` (:func:`~._common.position_orbits`) for a
    ``[BLOCK_M (i, u), BLOCK_N o]`` tile of weight slice ``wg`` (``BLOCK_N = BLOCK_NS / S_out``), summed over the
    pixels of split ``pid_s``, every group element ``g`` and the channel groups sharing the slice, with ``dy`` read
    in place: the layers' own ``(B, H_out, W_out, groups·C_OUT_G, S_OUT)``, dense (``dy_column`` 1), or with
    ``DY_CHANNELS_FIRST`` contiguous ``(B, groups·C_OUT_G, S_OUT, H_out, W_out)`` (``dy_column = H_out·W_out``, a
    multiple of 16; ``DY_WHOLE_BLOCKS``: of ``BLOCK_R``): column ``(grp, o, g)`` at ``dy_column`` times its index
    (:func:`_dy_pixel_offsets`).

    The bank frame: for each window position ``p`` of the orbit in turn, a plain GEMM loop (a table load, two
    contiguous tile loads, one MMA) sums ``acc_p[(i, s), (o, g)] = Σ_r x[r + shift(p), (i, s)] · dy[r, (o, g)]``,
    the ``x`` tile of ``p`` in its own channel order times the ``dy`` tile of every ``g`` at once
    (``[BLOCK_R, BLOCK_NS]``, as dy stores it).  Its column block ``g`` (:func:`_split_channels`), rows moved to the
    weight's order ``(i, u)``, ``s = g·u`` (:func:`_permute_rows`), is element ``g``'s share of ``dw`` at the
    position ``t`` that ``g`` moves onto ``p``, which lies in the same orbit: it is added into that position's
    output accumulator (``slot[p, g]``).  The orbit's ``dw`` is stored at the end: no filter-bank gradient, no
    scatter, no atomic, every ``t`` owned by one program.

    ``x`` and ``pix`` as :func:`_weight_grad_kernel`'s (``IN_PLACE``: the table holds -1 for the zero page, put in
    by a select in the loop, ``zero_delta``), or with ``X_CHANNELS_FIRST`` the input itself, contiguous ``(B,
    groups·X_CH, H, W)`` (``stride_x_b``, channel stride ``stride_x_c = H·W``, stride 1, ``W_out == W``, ``map_pixels
    = H_out·W_out`` a multiple of ``BLOCK_R``): pixel ``r`` of image ``b`` at place ``hw`` reads ``b·stride_x_b +
    hw`` plus a scalar per window position (its shift less the padding's, ``x_corner``), and ``pix (H_out·W_out,)``
    int32 holds bit ``p`` where window position ``p`` of the place lies inside ``x`` (0: the padding, masked).
    ``HAS_BIAS``: the programs of orbit 0 and the first channel block also write the bias gradient's partial sums,
    ``bias (split, weight_groups, O_PAD)``.
    """
    BLOCK_N: tl.constexpr = BLOCK_NS // S_OUT
    KPOS: tl.constexpr = KH * KW
    ROW: tl.constexpr = 1 + ORBIT_MAX + ORBIT_MAX * S_OUT   # an orbit's table row: length, members, slots
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    orbit = orbit_ptr + (tl.program_id(2) % N_ORBITS) * ROW
    wg = (tl.program_id(2) // N_ORBITS) % weight_groups
    pid_s = tl.program_id(2) // (N_ORBITS * weight_groups)

    ROWS: tl.constexpr = (BLOCK_M // S_IN) * S_IN  # dw rows (i, u) per tile: whole blocks of S_IN
    FULL_M: tl.constexpr = (ROWS == BLOCK_M) and (X_CH % BLOCK_M == 0)
    FULL_NS: tl.constexpr = (C_OUT_G * S_OUT) % BLOCK_NS == 0
    ml = tl.arange(0, BLOCK_M)
    m = pid_m * ROWS + ml
    m_ok = (ml < ROWS) & (m < M_CH)
    x_ok = (ml < ROWS) & (m < X_CH)   # the zero channels past M_CH load too: runs of VEC_X stay whole
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dy_cols = pid_n * BLOCK_NS + tl.arange(0, BLOCK_NS)     # (o, g) of the channel group
    col_ok = dy_cols < C_OUT_G * S_OUT
    kr = tl.arange(0, BLOCK_R)
    r_start = pid_s * R_PER_SPLIT
    r_stop = tl.minimum(r_start + R_PER_SPLIT, R_ALLOC)   # both multiples of BLOCK_R
    if WIDE:
        r_start = r_start.to(tl.int64)
    r_body = tl.minimum(r_stop, (R_TOTAL // BLOCK_R) * BLOCK_R)             # the whole blocks of real pixels
    tail = (R_TOTAL % BLOCK_R != 0) & (r_body >= r_start) & (r_body < r_stop)
    dy_pixel = S_OUT * C_OUT_G * COPIES * weight_groups
    # A channels-first dy (whole blocks) or x: the split's first block, then one step per block (no division), its
    # place in the image hw wrapping to 0 at an image's end, where each operand jumps to the next image's start
    dy_start = 0
    hw_start = 0
    x_start = 0
    if DY_WHOLE_BLOCKS:
        map_pixels = dy_column   # the same count: one value for both operands' steps
    if DY_WHOLE_BLOCKS or X_CHANNELS_FIRST:
        hw_start = r_start % map_pixels
    if DY_WHOLE_BLOCKS:
        dy_start = _dy_block_start(r_start, dy_pixel, dy_column)
        dy_gap = (dy_pixel - 1) * dy_column   # from one image's end to the next one's start
    if X_CHANNELS_FIRST:   # its own image stride
        x_start = (r_start // map_pixels) * stride_x_b + hw_start
        x_gap = stride_x_b - map_pixels

    outs = ()
    for k in tl.static_range(ORBIT_MAX):
        outs = outs + (tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC),)
    length = tl.load(orbit)
    for k in range(length):
        p = tl.load(orbit + 1 + k)
        if WIDE:
            p = p.to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_NS), dtype=ACC)
        for copy in range(COPIES):
            grp = wg + copy * weight_groups
            inside_bit = 0
            if IN_PLACE:   # this window position's table: the x offset of every pixel's row (the zero page's)
                x_rows = x_ptr + tl.multiple_of(grp * X_CH + m, VEC_X)[None, :]
                pix_rows = pix_ptr + p * R_ALLOC
            else:
                shift = ((p // KW) * dil_h) * stride_x_h + ((p % KW) * dil_w) * stride_x_w
                if X_CHANNELS_FIRST:   # channel m at m·stride_x_c; the window position a scalar shift
                    x_rows = x_ptr + ((grp * X_CH + m) * stride_x_c + (shift + x_corner))[None, :]
                    inside_bit = tl.full((), 1, tl.int32) << p.to(tl.int32)
                else:
                    x_rows = x_ptr + tl.multiple_of(grp * X_CH + shift + m, VEC_X)[None, :]
                pix_rows = pix_ptr
            cols = tl.multiple_of(grp * (C_OUT_G * S_OUT) + dy_cols, VEC_DY) * dy_column
            dy_base = dy_start
            hw = hw_start
            x_base = x_start
            for r0 in range(r_start, r_body, BLOCK_R):
                acc = _orbit_block(acc, r0, x_rows, pix_rows, dy_ptr, cols, dy_base, dy_pixel, dy_column, zero_delta,
                                   R_TOTAL, x_ok, col_ok, kr, x_base, hw, inside_bit, VEC_X, VEC_DY, IN_PLACE,
                                   X_CHANNELS_FIRST, DY_CHANNELS_FIRST, DY_WHOLE_BLOCKS, FULL_M, FULL_NS, False,
                                   PRECISION, UPCAST, BLOCK_R)
                if DY_WHOLE_BLOCKS or X_CHANNELS_FIRST:
                    hw += BLOCK_R
                    wrap = hw == map_pixels
                    if DY_WHOLE_BLOCKS:
                        dy_base += tl.where(wrap, dy_gap + BLOCK_R, BLOCK_R)
                    if X_CHANNELS_FIRST:
                        x_base += tl.where(wrap, x_gap + BLOCK_R, BLOCK_R)
                    hw = tl.where(wrap, 0, hw)
            if tail:   # never with whole blocks: dy_base, x_base unused
                acc = _orbit_block(acc, r_body, x_rows, pix_rows, dy_ptr, cols, dy_base, dy_pixel, dy_column,
                                   zero_delta, R_TOTAL, x_ok, col_ok, kr, x_base, hw, inside_bit, VEC_X, VEC_DY,
                                   IN_PLACE, X_CHANNELS_FIRST, DY_CHANNELS_FIRST, DY_WHOLE_BLOCKS, FULL_M, FULL_NS,
                                   True, PRECISION, UPCAST, BLOCK_R)
        per_g = _split_channels(acc, S_OUT, BLOCK_M, BLOCK_N)
        for g in tl.static_range(S_OUT):   # dw row (i, u) takes row (i, g·u), added at the position g moves to p
            # + min(p, 0) (= 0): an address that depends on the loop, so that the compiler does not hoist the S_out
            # index vectors out of it, where they would hold registers through the GEMM loop
            row_g = tl.load(in_index_ptr + g * S_IN + ml % S_IN + tl.minimum(p, 0))
            src = tl.minimum((ml // S_IN) * S_IN + row_g, BLOCK_M - 1)
            share = _permute_rows(per_g[g], src, BLOCK_M, BLOCK_N)
            slot = tl.load(orbit + 1 + ORBIT_MAX + k * S_OUT + g)
            added = ()
            for j in tl.static_range(ORBIT_MAX):
                added = added + (outs[j] + tl.where(slot == j, share, 0.0),)
            outs = added

    row = pid_s * weight_groups * C_OUT_G + wg * C_OUT_G + o          # row of the (split, C_out) stack
    dw_rows = dw_ptr + row.to(tl.int64)[None, :] * (M_CH * KPOS) + (m * KPOS)[:, None]
    for j in tl.static_range(ORBIT_MAX):
        t = tl.load(orbit + 1 + j)
        stored = (o < C_OUT_G) & (tl.full((BLOCK_N,), j, tl.int32) < length)     # slots past the orbit: none
        tl.store(dw_rows + t, outs[j].to(dw_ptr.dtype.element_ty), mask=m_ok[:, None] & stored[None, :])

    if HAS_BIAS:
        if (pid_m == 0) & (tl.program_id(2) % N_ORBITS == 0):
            _bias_partial_sums(dy_ptr, bias_ptr, dy_cols, col_ok, o, kr, dy_pixel, dy_column, R_TOTAL, wg,
                               weight_groups, COPIES, r_start, r_stop, pid_s, C_OUT_G, O_PAD, S_OUT, ACC,
                               DY_CHANNELS_FIRST, DY_WHOLE_BLOCKS, BLOCK_R, BLOCK_N)


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
    (the input read in place, channels-last, no halo) of output pixel ``r``'s input pixel, -1 where that pixel lies
    in the padding or ``r`` past the last pixel, and ``delta``, the offset of a zero page (one pixel of zeros) from
    ``x_cl``, which the -1 entries stand for.  The table is geometry only, built once
    (:func:`~._common.geometry_table`); the ``where(table < 0, delta, table)`` against this call's addresses is done
    by the launch that re-lays ``dy`` (:func:`~.group_conv_layouts.relayout_dy`), or in the loop where ``dy`` is
    read in place (no re-layout launch to put it in)."""
    sb, sh, sw = x_cl.stride()[:3]
    key = ("in_place_offsets", spec.batch, spec.height, spec.width, spec.out_height, spec.out_width, *spec.stride,
           *spec.dilation, spec.padding[0], spec.padding[2], *spec.kernel, sb, sh, sw, rows, x_cl.device)
    table = geometry_table(key, lambda: _build_in_place_offsets(spec, sb, sh, sw, rows, x_cl.device))
    zeros = zero_page(x_cl.shape[-1], x_cl.dtype, x_cl.device)
    delta, rest = divmod(zeros.data_ptr() - x_cl.data_ptr(), x_cl.element_size())
    if rest:   # every tensor starts element-aligned, and the zero page 256-byte aligned
        raise RuntimeError(f"x: data pointer {x_cl.data_ptr():#x} is not aligned to its element size")
    return table, delta


def zero_page(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """At least ``numel`` zeros of ``dtype``, 256-byte aligned, built once per size class and device."""
    nbytes = 256
    while nbytes < numel * dtype.itemsize:
        nbytes *= 2
    return geometry_table(("zero_page", nbytes, device),
                          lambda: torch.zeros(nbytes, dtype=torch.uint8, device=device)).view(dtype)


def _build_in_place_offsets(spec, sb: int, sh: int, sw: int, rows: int, dev: torch.device):
    """:func:`_in_place_offsets`'s table."""
    (kh, kw), (st_h, st_w), (dl_h, dl_w) = spec.kernel, spec.stride, spec.dilation
    ih = (torch.arange(spec.out_height, device=dev)[None, :] * st_h - spec.padding[0]
          + torch.arange(kh, device=dev)[:, None] * dl_h)                                  # (kh, H_out)
    iw = (torch.arange(spec.out_width, device=dev)[None, :] * st_w - spec.padding[2]
          + torch.arange(kw, device=dev)[:, None] * dl_w)                                  # (kw, W_out)
    inside = (((ih >= 0) & (ih < spec.height))[:, None, None, :, None]
              & ((iw >= 0) & (iw < spec.width))[None, :, None, None, :])                  # (kh, kw, 1, H_out, W_out)
    off = (torch.arange(spec.batch, device=dev)[None, None, :, None, None] * sb
           + ih[:, None, None, :, None] * sh + iw[None, :, None, None, :] * sw)           # (kh, kw, B, H_out, W_out)
    table = torch.full((kh * kw, rows), -1, device=dev, dtype=torch.int64)
    table[:, :off[0, 0].numel()] = torch.where(inside, off, -1).reshape(kh * kw, -1)
    return table


def _inside_bits_table(spec, device: torch.device) -> torch.Tensor:
    """``(H_out·W_out,)`` int32: bit ``th·KW + tw`` set where window position ``(th, tw)`` of output pixel ``(oh,
    ow)`` lies inside the input (stride 1), the table of the channels-first ``x`` read in place
    (:func:`_orbit_weight_grad_kernel`'s ``X_CHANNELS_FIRST``).  Geometry only, built once
    (:func:`~._common.geometry_table`)."""
    key = ("inside_bits", spec.height, spec.width, spec.out_height, spec.out_width, *spec.dilation,
           spec.padding[0], spec.padding[2], *spec.kernel, device)
    return geometry_table(key, lambda: _build_inside_bits(spec, device))


def _build_inside_bits(spec, dev: torch.device) -> torch.Tensor:
    (kh, kw), (dl_h, dl_w) = spec.kernel, spec.dilation
    ih = torch.arange(spec.out_height)[None, :] - spec.padding[0] + torch.arange(kh)[:, None] * dl_h   # (kh, H_out)
    iw = torch.arange(spec.out_width)[None, :] - spec.padding[2] + torch.arange(kw)[:, None] * dl_w    # (kw, W_out)
    inside = (((ih >= 0) & (ih < spec.height))[:, None, :, None]
              & ((iw >= 0) & (iw < spec.width))[None, :, None, :])                   # (kh, kw, H_out, W_out)
    bits = (inside.reshape(kh * kw, -1).long() << torch.arange(kh * kw)[:, None]).sum(0)
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(device=dev, dtype=torch.int32)   # bit 31: the sign


def in_place_dy_layout(dy: torch.Tensor) -> str | None:
    """How the weight gradient reads ``dy (B, groups·C_out, S_out, H_out, W_out)`` in place
    (:func:`_orbit_weight_grad_kernel`), if it does: ``"channels_last"``, stored densely ``(B, H_out, W_out,
    groups·C_out, S_out)``; ``"channels_first"``, contiguous with ``H_out·W_out`` a multiple of ``DY_PIXEL_RUN``
    (16), so that the compiler sees runs of 16 pixels in one image and loads the dy tile as pixel-major vectors
    (:func:`_dy_pixel_offsets`); else ``None`` (re-laid).  Either way ``S_out`` a power of two up to 8 (the
    bank-frame accumulator split into one tile per group element in registers), and an MMA dtype (not fp32 without
    tf32: no MMA, the accumulators spill).

    Other maps (odd ones: 33 x 33, 9 x 9) are re-laid: read in place, their loads would be scalar, synchronous for
    16-bit dtypes, with a division per element, a hot loop well past the re-laid one's
    (``perf/results/static-wgrad-channels-first-2026-12-05.md``)."""
    if not _orbit_serves(dy):
        return None
    if dy.permute(GROUP_MAP_ORDER).is_contiguous():
        return "channels_last"
    if dy.is_contiguous() and (dy.shape[3] * dy.shape[4]) % DY_PIXEL_RUN == 0:
        return "channels_first"
    return None


def reads_dy_in_place(dy: torch.Tensor) -> bool:
    """Whether the weight gradient reads ``dy`` in place (:func:`in_place_dy_layout`)."""
    return in_place_dy_layout(dy) is not None


def _orbit_serves(dy: torch.Tensor) -> bool:
    """:func:`in_place_dy_layout` but for the layout: ``S_out`` a power of two up to 8, an MMA dtype."""
    full_fp32 = dy.dtype == torch.float32 and dot_precision(dy.dtype) == "ieee"
    return dy.shape[2] in (1, 2, 4, 8) and not full_fp32


def shared_dy(dy: torch.Tensor, spec) -> torch.Tensor:
    """``dy (B, groups·C_out, S_out, H_out, W_out)`` as a layer's two gradients read it: as it is where both read it
    in place (the package's layout; or channels-first, the loss's, where :func:`in_place_dy_layout` and the input
    gradient's :func:`~.group_conv.reads_channels_first_dy` both say so), else stored ``(B, H_out, W_out,
    groups·C_out, S_out)`` where the weight gradient reads that in place.  A channels-first ``dy`` that either
    gradient would copy then costs one copy, which both read in place, instead of the input gradient's
    channels-last copy and the weight gradient's re-layout."""
    if not _orbit_serves(dy):
        return dy
    layout = in_place_dy_layout(dy)
    if layout == "channels_last" or (layout == "channels_first" and reads_channels_first_dy(dy, spec)):
        return dy
    return as_group_map(dy)


def weight_grad(dy: torch.Tensor, x: torch.Tensor, spec, weight_shape, x_copy=None, with_bias: bool = False):
    """``dy`` and the 5-D input ``x`` -> ``dw`` of ``weight_shape`` (fp32 accumulation, then x's dtype); with
    ``with_bias``, ``(dw, db)``, ``db`` the bias gradient ``(weight_groups·C_out,)`` from the same launches.

    ``dy`` stored ``(B, H_out, W_out, groups·C_out, S_out)`` (the layout every layer of the package hands on), or
    channels-first with maps of a multiple of 16 pixels, is read in place (:func:`in_place_dy_layout`), the bias
    gradient's partial sums written by the same launch; else it is re-laid ``(B·H_out·W_out, groups, S_out, C_out
    padded to 8)``, rounded up to whole pixel blocks with zeros, in one launch that also writes the bias gradient's
    partial sums (:func:`~.group_conv_layouts.relayout_dy`).
    ``x`` is read from a zero-halo channels-last copy: ``x_copy``, the
    one :func:`~.group_conv.forward` made, when given, else :func:`~.group_conv.halo_channels_last` (a copy unless
    unpadded and channels-last already), with a narrow lifting input padded to 8 channels; or, where the forward
    read a channels-first ``x`` in place (:func:`~.group_conv.reads_channels_first_x`) and ``dy`` is read in place,
    from ``x`` itself, the padding masked per row (:func:`_inside_bits_table`).  The split's
    partial sums and the bias's are added up by one more launch (:func:`~.group_conv_layouts.finish_weight_grad`),
    none when there is neither."""
    in_index, _, pos_dh, pos_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    kh, kw = spec.kernel
    r_total = spec.batch * spec.out_height * spec.out_width
    m_ch = spec.in_channels * spec.s_in
    weight_numel = spec.weight_groups * spec.out_channels * m_ch * kh * kw
    dy_layout = in_place_dy_layout(dy)
    dy_in_place = dy_layout is not None
    if dy_in_place:   # one program per orbit of window positions, its dy tile all S_out columns of its channels
        orbits, orbit_max = position_orbits(spec.group, spec.kernel, x.device)
        tiles = cdiv(m_ch, 64) * cdiv(vector_padding(spec.out_channels) * spec.s_out, 128) * len(orbits)
    else:
        tiles = cdiv(m_ch, 64) * cdiv(spec.out_channels, 64) * kh * kw
    tiles *= spec.weight_groups
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
    channels_first = dy_layout == "channels_first"
    map_pixels = spec.out_height * spec.out_width
    dy_column = map_pixels if channels_first else 1   # a column's stride
    whole_blocks = channels_first and dy_column % block_r == 0
    # the orbit loop reads a channels-first x in place where the forward did (maps of whole pixel blocks): a block
    # is a scalar plus a range, as a channels-first dy's
    x_channels_first = (x_copy is None and dy_in_place and kh * kw <= 32 and not reads_in_place(x, spec)
                        and reads_channels_first_x(x, spec))
    x_strides, x_channel, x_corner = None, 0, 0
    in_place_rows = None
    if x_channels_first:   # (B, groups·M_CH, H, W): rows W apart, channels H·W apart, the padding's corner
        x_ch, x_cl = m_ch, x
        x_strides, x_channel = (spec.width, 1), spec.height * spec.width
        x_corner = -(spec.padding[0] * spec.width + spec.padding[2])
    elif in_place:   # (kh·kw, R_ALLOC) int64: its own offsets may pass int32 (the kernel's WIDE counts them)
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
    if dy_in_place:   # the bias's partial sums: one row per split, written by the weight gradient's launch
        dy_go, rows = dy, (in_place_rows[0] if in_place else None)
        bias_part = (dy.new_empty((split, spec.weight_groups, 1, o_pad),
                                  dtype=torch.promote_types(dy.dtype, torch.float32)) if with_bias else None)
    else:   # dy re-laid, the bias's partial sums and the in-place row table resolved: one launch
        dy_go, bias_part, rows = relayout_dy(dy, spec, r_alloc, o_pad, with_bias, in_place_rows)
    if in_place:
        pix, zero_delta = rows, in_place_rows[1]
    elif x_channels_first:
        pix, zero_delta = _inside_bits_table(spec, x.device), 0
    else:
        pix, zero_delta = _window_offsets(x_cl, spec, r_alloc, needs_int64(x_cl, dy_go)), 0

    common = (r_total, r_per_split, r_alloc, spec.weight_groups, spec.groups // spec.weight_groups,
              *(x_strides or x_cl.stride()[1:3]), *spec.dilation)
    vec_x = 1 if x_channels_first else vector_width(x.element_size(), *x_cl.stride()[:3], x_ch, zero_delta)
    shapes = dict(M_CH=m_ch, X_CH=x_ch, C_OUT_G=c_out, O_PAD=o_pad, S_IN=spec.s_in, S_OUT=spec.s_out, KH=kh, KW=kw,
                  VEC_X=vec_x, IN_PLACE=in_place, PRECISION=dot_precision(x.dtype), BLOCK_R=block_r)
    if dy_in_place:
        def orbit_grid(meta):
            rows = meta["BLOCK_M"] // spec.s_in * spec.s_in
            return (cdiv(m_ch, rows), cdiv(o_pad * spec.s_out, meta["BLOCK_NS"]),
                    len(orbits) * spec.weight_groups * split)

        _orbit_weight_grad_kernel[orbit_grid](
            x_cl, dy, pix, partial, bias_part if with_bias else partial, in_index, orbits, *common, zero_delta,
            dy_column, map_pixels, x_cl.stride(0), x_channel, x_corner, **shapes, N_ORBITS=len(orbits),
            ORBIT_MAX=orbit_max, X_CHANNELS_FIRST=x_channels_first,
            VEC_DY=vector_width(dy.element_size(), c_out * spec.s_out), DY_CHANNELS_FIRST=channels_first,
            DY_WHOLE_BLOCKS=whole_blocks, HAS_BIAS=with_bias,
            **interpreter_config(ORBIT_INTERPRETER_CONFIG))
    else:
        def grid(meta):
            rows = meta["BLOCK_M"] // spec.s_in * spec.s_in
            return (cdiv(m_ch, rows), cdiv(o_pad, meta["BLOCK_N"]), kh * kw * spec.weight_groups * split)

        _weight_grad_kernel[grid](x_cl, dy_go, pix, partial, in_index, pos_dh, pos_dw, *common, **shapes,
                                  **interpreter_config(INTERPRETER_CONFIG))
    dw, db = finish_weight_grad(partial, x.dtype, bias_part, spec)
    return (dw, db) if with_bias else dw
