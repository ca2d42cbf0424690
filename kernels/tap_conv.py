"""Tap convolutions: the group-convolution gather with an elementwise tap ``f(x, w)`` in place of the product and
a ``sum``, ``max``, ``min`` or ``prod`` reduction in place of the sum.

Notation as in ``group_conv.py``: output element ``g``, weight slice ``u``, base-filter window position ``t``,
reduction index
``k = (i·S_in + u)·KPOS + t`` (the base weight's memory order), input pixel ``q = p·stride + dest[g, t]·dilation −
padding``:

    y[b, o, g, p]  = reduce_k f(x[b, i, g·u, q], w[o, i, u, t])                     (+ bias[o])
    dx[b, i, s, q] = Σ_{g, o, t} dy[b, o, g, p] · r[b, o, g, p, k] · ∂f/∂x           (u = g⁻¹·s)
    dw[o, i, u, t] = Σ_{g, b, p} dy[b, o, g, p] · r[b, o, g, p, k] · ∂f/∂w

where ``r`` is the reduction's derivative: 1 for ``sum``; for ``max``/``min`` 1 at the stored arg-extreme
``k`` (the first in ``k`` order on ties) and 0 elsewhere; for ``prod`` the product of the other factors, exact
also where a factor is zero (``P`` = product of the non-zero factors, ``Z`` = how many are zero:
``r = P / f`` when ``Z = 0``, ``P`` at the zero factor when ``Z = 1``, else 0).

The tap is elementwise, so there is no ``tl.dot``: each K block is a ``[BLOCK_M, BLOCK_K, BLOCK_N]`` broadcast
of the tap, reduced over its middle axis in registers.  No receptive-field buffer exists; ``max``/``min`` keep
one int32 index per output element, ``prod``'s backward recomputes ``(P, Z)`` with the forward kernel
(``STATS``) into two output-sized buffers that live only during the backward.  The weight gradient is a
reduction over pixels in a fixed order (and a fixed split summed in a fixed order): deterministic.

``padding_mode="ignore"`` (``IGNORE``) leaves out-of-bounds window positions out of the reduction; a window with
no in-bounds position gives 0 (+ bias) and no gradient.  Otherwise a padded pixel is 0 and goes through the tap.

The tap and its two partial derivatives are ``@triton.jit`` functions of ``(x, w)`` passed as constexpr
arguments (``TAP``, ``TAP_DX``, ``TAP_DW``): a :class:`~gconv_triton.TapFunction`'s, the built-in ones' included
(``gconv_triton/tap_functions.py``).  They get fp32 values (fp64 for fp64 tensors) and return the same.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._support import dim_order
from . import _common
from ._common import (INTERPRET, cdiv, empty_output, geometry_args, group_tables, needs_int64, next_power_of_2,
                      pixel_block, split_pixel, static_args)


# ---------------------------------------------------------------------------------------------- helpers
@triton.jit
def _prod_factor(f, pnz, nzero):
    """``∂(Π f_j)/∂f_k`` from ``P`` (product of the non-zero factors) and ``Z`` (their zero count), exact at zeros."""
    return tl.where(nzero == 0, pnz / tl.where(f == 0, 1.0, f),
                    tl.where((nzero == 1) & (f == 0), pnz, 0.0))


@triton.jit
def _window_inside(ih0, iw0, H, W, dil_h, dil_w, KH: tl.constexpr, KW: tl.constexpr):
    """Whether output pixels whose window starts at ``(ih0, iw0)`` have at least one in-bounds window position
    (every group element permutes the same kh x kw grid of positions, so this does not depend on the element)."""
    any_h = ih0 < -2147483647
    for r in tl.static_range(KH):
        any_h = any_h | ((ih0 + r * dil_h >= 0) & (ih0 + r * dil_h < H))
    any_w = iw0 < -2147483647
    for c in tl.static_range(KW):
        any_w = any_w | ((iw0 + c * dil_w >= 0) & (iw0 + c * dil_w < W))
    return any_h & any_w


# ------------------------------------------------------------------------------------------------- forward
@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, aux_ptr, in_index_ptr, pos_dh_ptr, pos_dw_ptr,
    M_TOTAL, H, W, HO, WO, C_IN_G, C_OUT_G,
    stride_x_n, stride_x_c, stride_x_g, stride_x_h, stride_x_w,
    stride_y_n, stride_y_c, stride_y_g, stride_y_h, stride_y_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    TAP: tl.constexpr, REDUCE: tl.constexpr, IGNORE: tl.constexpr, STATS: tl.constexpr,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (pixel tile, out-channel tile) of output element ``g`` in channel group ``grp``.  ``aux`` (same
    strides as ``y``, int32) gets the arg-extreme ``k`` for max/min; with ``STATS`` (prod only) ``y`` gets the
    product of the non-zero factors (no bias) and ``aux`` their zero count."""
    KPOS: tl.constexpr = KH * KW
    pid_n = tl.program_id(1)
    g = tl.program_id(2) % S_OUT
    grp = tl.program_id(2) // S_OUT
    m_ok, b, oh, ow = pixel_block(tl.program_id(0), BLOCK_M, M_TOTAL, HO, WO)
    x_row = b.to(IDX) * stride_x_n + (grp * C_IN_G).to(IDX) * stride_x_c
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w

    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < C_OUT_G
    K = C_IN_G * S_IN * KPOS
    w_col = (grp * C_OUT_G + n).to(IDX) * K

    if REDUCE == "max":
        acc = tl.full((BLOCK_M, BLOCK_N), float("-inf"), ACC)
    elif REDUCE == "min":
        acc = tl.full((BLOCK_M, BLOCK_N), float("inf"), ACC)
    elif REDUCE == "prod":
        acc = tl.full((BLOCK_M, BLOCK_N), 1.0, ACC)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    if REDUCE == "prod":
        aux = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)  # zero count
    else:
        aux = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)  # arg-extreme k (-1: none)

    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        i = k // (S_IN * KPOS)
        u = (k // KPOS) % S_IN
        t = k % KPOS
        s = tl.load(in_index_ptr + g * S_IN + u, mask=k_ok, other=0)
        dh = tl.load(pos_dh_ptr + g * KPOS + t, mask=k_ok, other=0)
        dw = tl.load(pos_dw_ptr + g * KPOS + t, mask=k_ok, other=0)
        ih = ih0[:, None] + dh[None, :] * dil_h
        iw = iw0[:, None] + dw[None, :] * dil_w
        inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        ok = m_ok[:, None] & k_ok[None, :] & inside
        x_off = (x_row[:, None] + (i.to(IDX) * stride_x_c + s.to(IDX) * stride_x_g)[None, :]
                 + ih.to(IDX) * stride_x_h + iw.to(IDX) * stride_x_w)
        a = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(ACC)                               # [BM, BK]
        wv = tl.load(w_ptr + w_col[None, :] + k[:, None], mask=k_ok[:, None] & n_ok[None, :],
                     other=0.0).to(ACC)                                                     # [BK, BN]
        f = TAP(a[:, :, None], wv[None, :, :])                                              # [BM, BK, BN]
        if IGNORE:
            use = (k_ok[None, :] & inside)[:, :, None]
        else:  # a padded pixel is 0 and goes through the tap
            use = k_ok[None, :, None]
        if REDUCE == "sum":
            acc += tl.sum(tl.where(use, f, 0.0), axis=1)
        elif REDUCE == "max" or REDUCE == "min":
            # the extreme, then the first lane holding it (two plain reductions; tl.max's return_indices runs
            # elementwise in Python under the interpreter).  A NaN is the extreme and propagates (torch.amax's
            # rule): tl.max/tl.min skip NaNs, so the lane search ranks NaN lanes (key lane − BLOCK_K < 0) before
            # the extreme's (key lane), in the same one reduction
            lane = tl.arange(0, BLOCK_K)[None, :, None]
            if REDUCE == "max":
                f = tl.where(use, f, float("-inf"))
                best = tl.max(f, axis=1)
            else:
                f = tl.where(use, f, float("inf"))
                best = tl.min(f, axis=1)
            key = tl.min(tl.where(f != f, lane - BLOCK_K, tl.where(f == best[:, None, :], lane, BLOCK_K)), axis=1)
            nan = key < 0
            best = tl.where(nan, float("nan"), best)
            if REDUCE == "max":
                better = best > acc  # strict: an earlier block keeps a tie
            else:
                better = best < acc
            better = better | (nan & (acc == acc))  # the first NaN wins, and stays
            acc = tl.where(better, best, acc)
            aux = tl.where(better, tl.where(nan, key + BLOCK_K, key) + k0, aux)
        else:
            f = tl.where(use, f, 1.0)
            zero = f == 0
            aux += tl.sum(zero.to(tl.int32), axis=1)
            f = tl.where(zero, 1.0, f)
            # one factor at a time, in k order: a masked sum picks it (tl.reduce with a product combine runs
            # elementwise in Python under the interpreter; this is as cheap on a GPU for a small BLOCK_K)
            lane = tl.arange(0, BLOCK_K)[None, :, None]
            for j in tl.static_range(BLOCK_K):
                acc *= tl.sum(tl.where(lane == j, f, 0.0), axis=1)

    y_pix = b.to(IDX) * stride_y_n + tl.cast(g, IDX) * stride_y_g + oh.to(IDX) * stride_y_h + ow.to(IDX) * stride_y_w
    y_off = y_pix[:, None] + (grp * C_OUT_G + n).to(IDX)[None, :] * stride_y_c
    out_ok = m_ok[:, None] & n_ok[None, :]
    if REDUCE != "sum":
        tl.store(aux_ptr + y_off, aux, mask=out_ok)
    if not STATS:
        if REDUCE == "prod":
            acc = tl.where(aux > 0, 0.0, acc)
        if IGNORE:  # a window with no in-bounds position: 0 for every reduction
            acc = tl.where(_window_inside(ih0, iw0, H, W, dil_h, dil_w, KH, KW)[:, None], acc, 0.0)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + grp * C_OUT_G + n, mask=n_ok, other=0.0).to(ACC)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


# ------------------------------------------------------------------------------------------- input gradient
@triton.jit
def _input_grad_kernel(
    dy_ptr, x_ptr, w_ptr, aux_ptr, pnz_ptr, dx_ptr, stab_index_ptr, pos_dh_ptr, pos_dw_ptr,
    M_TOTAL, H, W, HO, WO, C_IN_G, C_OUT_G,
    stride_dy_n, stride_dy_c, stride_dy_g, stride_dy_h, stride_dy_w,
    stride_aux_n, stride_aux_c, stride_aux_g, stride_aux_h, stride_aux_w,
    stride_x_n, stride_x_c, stride_x_g, stride_x_h, stride_x_w,
    stride_dx_n, stride_dx_c, stride_dx_g, stride_dx_h, stride_dx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    TAP: tl.constexpr, TAP_DX: tl.constexpr, REDUCE: tl.constexpr,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (input-pixel tile, in-channel tile) of input slice ``s`` in channel group ``grp``: every output pixel,
    element and channel whose window reads the pixel, gathered (no scatter).  ``aux``/``pnz`` (strides
    ``stride_aux_*``): the arg-extreme for max/min; the zero count and non-zero product for prod."""
    KPOS: tl.constexpr = KH * KW
    pid_n = tl.program_id(1)
    s = tl.program_id(2) % S_IN
    grp = tl.program_id(2) // S_IN
    m_ok, b, ih, iw = pixel_block(tl.program_id(0), BLOCK_M, M_TOTAL, H, W)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < C_IN_G
    x_off = ((b.to(IDX) * stride_x_n + s.to(IDX) * stride_x_g + ih.to(IDX) * stride_x_h
              + iw.to(IDX) * stride_x_w)[:, None]
             + (grp * C_IN_G + n).to(IDX)[None, :] * stride_x_c)
    xv = tl.load(x_ptr + x_off, mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(ACC)       # [BM, BN]
    dy_row = b.to(IDX) * stride_dy_n + (grp * C_OUT_G).to(IDX) * stride_dy_c
    a_row = b.to(IDX) * stride_aux_n + (grp * C_OUT_G).to(IDX) * stride_aux_c
    K = C_IN_G * S_IN * KPOS

    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    for g in range(S_OUT):
        u = tl.load(stab_index_ptr + g * S_IN + s)
        for t in range(KPOS):  # the position outside the channel loop: pixel arithmetic per pixel, not per (pixel, k)
            dh = tl.load(pos_dh_ptr + g * KPOS + t)
            dw = tl.load(pos_dw_ptr + g * KPOS + t)
            ph_num = ih + pad_h - dh * dil_h
            pw_num = iw + pad_w - dw * dil_w
            ph = ph_num // stride_h
            pw = pw_num // stride_w
            p_ok = (m_ok & (ph_num >= 0) & (pw_num >= 0) & (ph * stride_h == ph_num) & (pw * stride_w == pw_num)
                    & (ph < HO) & (pw < WO))
            dy_pix = (dy_row + tl.cast(g, IDX) * stride_dy_g + ph.to(IDX) * stride_dy_h
                      + pw.to(IDX) * stride_dy_w)                                                      # [BM]
            a_pix = a_row + tl.cast(g, IDX) * stride_aux_g + ph.to(IDX) * stride_aux_h + pw.to(IDX) * stride_aux_w
            w_col = (n * S_IN + u) * KPOS + t                                                   # [BN]: also k
            for o0 in range(0, C_OUT_G, BLOCK_K):
                o = o0 + tl.arange(0, BLOCK_K)
                o_ok = o < C_OUT_G
                ok = p_ok[:, None] & o_ok[None, :]                                          # [BM, BK]
                dyv = tl.load(dy_ptr + dy_pix[:, None] + (o.to(IDX) * stride_dy_c)[None, :], mask=ok,
                              other=0.0).to(ACC)
                w_off = (grp * C_OUT_G + o).to(IDX)[:, None] * K + w_col[None, :]
                wv = tl.load(w_ptr + w_off, mask=o_ok[:, None] & n_ok[None, :], other=0.0).to(ACC)  # [BK, BN]
                x3 = xv[:, None, :]
                w3 = wv[None, :, :]
                term = dyv[:, :, None] * TAP_DX(x3, w3)                                     # [BM, BK, BN]
                use = ok[:, :, None]
                if REDUCE != "sum":
                    a_off = a_pix[:, None] + (o.to(IDX) * stride_aux_c)[None, :]
                    aux = tl.load(aux_ptr + a_off, mask=ok, other=-1)                       # [BM, BK]
                    if REDUCE == "prod":
                        pnz = tl.load(pnz_ptr + a_off, mask=ok, other=0.0).to(ACC)
                        term *= _prod_factor(TAP(x3, w3), pnz[:, :, None], aux[:, :, None])
                    else:
                        use = use & (aux[:, :, None] == w_col[None, None, :])
                acc += tl.sum(tl.where(use, term, 0.0), axis=1)

    dx_off = ((b.to(IDX) * stride_dx_n + s.to(IDX) * stride_dx_g + ih.to(IDX) * stride_dx_h
               + iw.to(IDX) * stride_dx_w)[:, None] + (grp * C_IN_G + n).to(IDX)[None, :] * stride_dx_c)
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ------------------------------------------------------------------------------------------ weight gradient
@triton.jit
def _weight_grad_kernel(
    dy_ptr, x_ptr, w_ptr, aux_ptr, pnz_ptr, dw_ptr, in_index_ptr, pos_dh_ptr, pos_dw_ptr,
    R_TOTAL, R_PER_SPLIT, H, W, HO, WO, C_IN_G, C_OUT_G, GROUPS,
    stride_dy_n, stride_dy_c, stride_dy_g, stride_dy_h, stride_dy_w,
    stride_aux_n, stride_aux_c, stride_aux_g, stride_aux_h, stride_aux_w,
    stride_x_n, stride_x_c, stride_x_g, stride_x_h, stride_x_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    TAP: tl.constexpr, TAP_DW: tl.constexpr, REDUCE: tl.constexpr, IGNORE: tl.constexpr,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One (out-channel tile, k tile) of channel group ``grp``'s weight, summed over the output pixels of split
    ``pid_s`` and every group element, in a fixed order: no atomics."""
    KPOS: tl.constexpr = KH * KW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    grp = tl.program_id(2) % GROUPS
    pid_s = tl.program_id(2) // GROUPS

    o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_ok = o < C_OUT_G
    K = C_IN_G * S_IN * KPOS
    k = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = k < K
    i = k // (S_IN * KPOS)
    u = (k // KPOS) % S_IN
    t = k % KPOS
    w_off = (grp * C_OUT_G + o).to(IDX)[:, None] * K + k[None, :]
    wv = tl.load(w_ptr + w_off, mask=o_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)        # [BM, BN]
    w3 = wv[:, None, :]
    dy_chan = (grp * C_OUT_G + o).to(IDX) * stride_dy_c
    a_chan = (grp * C_OUT_G + o).to(IDX) * stride_aux_c
    x_chan = (grp * C_IN_G + i).to(IDX) * stride_x_c
    r_start = pid_s * R_PER_SPLIT
    r_stop = tl.minimum(r_start + R_PER_SPLIT, R_TOTAL)

    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    for g in range(S_OUT):
        s = tl.load(in_index_ptr + g * S_IN + u, mask=k_ok, other=0)
        dh = tl.load(pos_dh_ptr + g * KPOS + t, mask=k_ok, other=0)
        dw = tl.load(pos_dw_ptr + g * KPOS + t, mask=k_ok, other=0)
        x_col = x_chan + s.to(IDX) * stride_x_g
        for r0 in range(r_start, r_stop, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            r_ok = r < r_stop
            b, oh, ow = split_pixel(r, HO, WO)
            pix = (b.to(IDX) * stride_dy_n + tl.cast(g, IDX) * stride_dy_g + oh.to(IDX) * stride_dy_h
                   + ow.to(IDX) * stride_dy_w)
            dyv = tl.load(dy_ptr + dy_chan[:, None] + pix[None, :], mask=o_ok[:, None] & r_ok[None, :],
                          other=0.0).to(ACC)                                                # [BM, BR]
            ih = (oh * stride_h - pad_h)[:, None] + dh[None, :] * dil_h
            iw = (ow * stride_w - pad_w)[:, None] + dw[None, :] * dil_w
            inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            ok = r_ok[:, None] & k_ok[None, :] & inside
            x_off = ((b.to(IDX) * stride_x_n)[:, None] + x_col[None, :] + ih.to(IDX) * stride_x_h
                     + iw.to(IDX) * stride_x_w)
            x3 = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(ACC)[None, :, :]              # [1, BR, BN]
            term = dyv[:, :, None] * TAP_DW(x3, w3)                                         # [BM, BR, BN]
            if IGNORE:
                use = ok[None, :, :]
            else:  # padded positions went through the tap: they have a weight gradient
                use = (r_ok[:, None] & k_ok[None, :])[None, :, :]
            if REDUCE != "sum":
                a_off = a_chan[:, None] + (b.to(IDX) * stride_aux_n + tl.cast(g, IDX) * stride_aux_g
                                           + oh.to(IDX) * stride_aux_h + ow.to(IDX) * stride_aux_w)[None, :]
                a_ok = o_ok[:, None] & r_ok[None, :]
                aux = tl.load(aux_ptr + a_off, mask=a_ok, other=-1)                        # [BM, BR]
                if REDUCE == "prod":
                    pnz = tl.load(pnz_ptr + a_off, mask=a_ok, other=0.0).to(ACC)
                    term *= _prod_factor(TAP(x3, w3), pnz[:, :, None], aux[:, :, None])
                else:
                    use = use & (aux[:, :, None] == k[None, None, :])
            acc += tl.sum(tl.where(use, term, 0.0), axis=1)

    row = (pid_s * GROUPS + grp) * C_OUT_G + o                                            # (split, C_out) stack
    tl.store(dw_ptr + row.to(IDX)[:, None] * K + k[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=o_ok[:, None] & k_ok[None, :])


# ----------------------------------------------------------------------------------------------- launchers
#: fixed tiles (no tuning, so results never depend on timing), 8 warps: ``(pixels or out-channels, reduction
#: step, channels)`` of the forward, input gradient and weight gradient.  Chosen so that no launch spills
#: (docs/tap-convolutions.md, "Compiled for a GPU").
BLOCK_M, BLOCK_K, BLOCK_N = 64, 4, 16
# the input gradient also holds [BLOCK_M, BLOCK_K] loads and offsets per output-channel block: a smaller tile, and
# 2 output channels a step
DX_BLOCK_M, DX_BLOCK_K = 32, 2
WGRAD_BLOCK_M, WGRAD_BLOCK_R, WGRAD_BLOCK_N = 32, 8, 32
NUM_WARPS = 8
# A register ceiling for ptxas at the most a 256-thread block can have: left to itself ptxas caps these kernels at
# an occupancy step and spills what does not fit (docs/tap-convolutions.md, "Compiled for a GPU").
MAX_REGISTERS = 255
if INTERPRET:  # numpy runs one program at a time: fewer, larger steps (the masks are the same)
    BLOCK_K, DX_BLOCK_K, WGRAD_BLOCK_R = 16, 16, 32


def _tiles(block_wide: int, block_chan: int, channels: int) -> tuple[int, int]:
    """``(wide, chan)`` tile sizes of a ``[wide, step, chan]`` kernel whose ``chan`` axis runs over ``channels``
    per group: fewer channels than ``block_chan`` (a depthwise layer has one) give a narrower channel tile and a
    wider other axis, the same number of lanes, rather than lanes that are masked out.  Neither axis is summed
    over (the weight gradient's split of the pixels follows the tile count, a function of the shape), so every
    sum's order stays fixed for a given problem."""
    chan = min(block_chan, next_power_of_2(channels))
    return block_wide * (block_chan // chan), chan


def _index_type(*tensors):
    """The kernels' offset type: int32 when every offset of these tensors fits (fewer registers and
    instructions), else int64."""
    return tl.int64 if needs_int64(*tensors) else tl.int32


def _out_shape(spec):
    return (spec.batch, spec.groups * spec.out_channels, spec.s_out, spec.out_height, spec.out_width)


def forward(x, weight, bias, spec, fns, reduce: str, ignore: bool, stats: bool = False):
    """``x (B, groups·C_in_g, S_in, H, W)``, weight ``(groups·C_out_g, C_in_g, S_in, kh, kw)`` -> ``(y, aux)``.

    ``y`` in ``x``'s layout; ``aux`` int32 of ``y``'s shape and strides for max/min (the arg-extreme) and with
    ``stats`` for prod, else None.  With ``stats`` (prod) ``y`` is the fp32 (fp64) product of the non-zero factors
    and ``aux`` their zero count (the backward's inputs).  ``fns = (tap, ∂/∂x, ∂/∂w)`` ``@triton.jit`` functions.
    """
    in_index, _, pos_dh, pos_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    y_dtype = torch.promote_types(x.dtype, torch.float32) if stats else x.dtype
    y = empty_output(_out_shape(spec), dim_order(x), y_dtype, x.device)
    aux = None
    if reduce in ("max", "min") or stats:
        aux = torch.empty_strided(y.shape, y.stride(), dtype=torch.int32, device=x.device)
    m_total = spec.batch * spec.out_height * spec.out_width
    if y.numel() == 0:
        return y, aux
    weight = weight.contiguous()
    block_m, block_n = _tiles(BLOCK_M, BLOCK_N, spec.out_channels)
    grid = (cdiv(m_total, block_m), cdiv(spec.out_channels, block_n), spec.s_out * spec.groups)
    _forward_kernel[grid](
        x, weight, bias.contiguous() if bias is not None else weight, y, y if aux is None else aux,
        in_index, pos_dh, pos_dw,
        m_total, spec.height, spec.width, spec.out_height, spec.out_width, spec.in_channels, spec.out_channels,
        *x.stride(), *y.stride(), *geometry_args(spec),
        TAP=fns[0], REDUCE=reduce, IGNORE=ignore, STATS=stats, HAS_BIAS=bias is not None and not stats,
        **static_args(spec, x.dtype), IDX=_index_type(x, weight, y), BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=BLOCK_K, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS)
    return y, aux


def _reduction_state(x, weight, spec, fns, reduce, ignore, aux):
    """What the backward kernels read besides ``dy``: ``(aux, pnz)`` (``pnz`` only for prod, recomputed here)."""
    if reduce == "prod":
        pnz, count = forward(x, weight, None, spec, fns, reduce, ignore, stats=True)
        return count, pnz
    return aux, None


def input_grad(dy, x, weight, aux, spec, fns, reduce: str, ignore: bool, order, state=None):
    """``dx (B, groups·C_in_g, S_in, H, W)`` stored in dim ``order``; ``aux`` from :func:`forward` (max/min)."""
    _, stab_index, pos_dh, pos_dw = group_tables(spec.group, spec.in_group, spec.kernel, dy.device)
    shape = (spec.batch, spec.groups * spec.in_channels, spec.s_in, spec.height, spec.width)
    dx = empty_output(shape, order, dy.dtype, dy.device)
    m_total = spec.batch * spec.height * spec.width
    if dx.numel() == 0:
        return dx
    aux, pnz = state if state is not None else _reduction_state(x, weight, spec, fns, reduce, ignore, aux)
    weight = weight.contiguous()
    block_m, block_n = _tiles(DX_BLOCK_M, BLOCK_N, spec.in_channels)
    if dy.dtype == torch.float64:  # its values and their loads take two registers each: half the pixels
        block_m //= 2
    grid = (cdiv(m_total, block_m), cdiv(spec.in_channels, block_n), spec.s_in * spec.groups)
    a = aux if aux is not None else dy
    p = pnz if pnz is not None else dy
    _input_grad_kernel[grid](
        dy, x, weight, a, p, dx, stab_index, pos_dh, pos_dw,
        m_total, spec.height, spec.width, spec.out_height, spec.out_width, spec.in_channels, spec.out_channels,
        *dy.stride(), *a.stride(), *x.stride(), *dx.stride(), *geometry_args(spec),
        TAP=fns[0], TAP_DX=fns[1], REDUCE=reduce, **static_args(spec, dy.dtype),
        IDX=_index_type(dy, x, weight, a, p, dx),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=DX_BLOCK_K, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS)
    return dx


def weight_grad(dy, x, weight, aux, spec, fns, reduce: str, ignore: bool, state=None):
    """``dw`` of ``weight``'s shape: fp32 (fp64) partial sums over fixed pixel ranges, summed in a fixed order."""
    in_index, _, pos_dh, pos_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    r_total = spec.batch * spec.out_height * spec.out_width
    k_total = spec.in_channels * spec.s_in * spec.kernel[0] * spec.kernel[1]
    block_n, block_m = _tiles(WGRAD_BLOCK_N, WGRAD_BLOCK_M, spec.out_channels)
    if reduce == "prod" and x.dtype == torch.float64:  # the factor, P and Z tiles live too: a quarter of the lanes
        block_n //= 4
    tiles = cdiv(spec.out_channels, block_m) * cdiv(k_total, block_n) * spec.groups
    split = _common.weight_split(r_total, tiles)   # a function of the shape only: dw's summation order is fixed
    split, r_per_split = _common.split_ranges(r_total, split, WGRAD_BLOCK_R)
    partial = torch.zeros((split, *weight.shape), dtype=torch.promote_types(x.dtype, torch.float32),
                          device=x.device)
    if r_total == 0:
        return partial.sum(0).to(x.dtype)
    aux, pnz = state if state is not None else _reduction_state(x, weight, spec, fns, reduce, ignore, aux)
    weight = weight.contiguous()
    a = aux if aux is not None else dy
    p = pnz if pnz is not None else dy
    grid = (cdiv(spec.out_channels, block_m), cdiv(k_total, block_n), spec.groups * split)
    _weight_grad_kernel[grid](
        dy, x, weight, a, p, partial, in_index, pos_dh, pos_dw,
        r_total, r_per_split, spec.height, spec.width, spec.out_height, spec.out_width, spec.in_channels,
        spec.out_channels, spec.groups, *dy.stride(), *a.stride(), *x.stride(), *geometry_args(spec),
        TAP=fns[0], TAP_DW=fns[2], REDUCE=reduce, IGNORE=ignore, **static_args(spec, x.dtype),
        IDX=_index_type(dy, x, weight, a, p, partial),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=WGRAD_BLOCK_R, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS)
    return (partial[0] if split == 1 else partial.sum(0)).to(x.dtype)


def backward(dy, x, weight, aux, spec, fns, reduce: str, ignore: bool, need_input: bool, need_weight: bool,
             order):
    """``(dx or None, dw or None)``; prod's ``(P, Z)`` pass runs once for both."""
    state = None
    if (need_input or need_weight) and dy.numel() and x.numel():
        state = _reduction_state(x, weight, spec, fns, reduce, ignore, aux)
    dx = input_grad(dy, x, weight, aux, spec, fns, reduce, ignore, order, state) if need_input else None
    dw = weight_grad(dy, x, weight, aux, spec, fns, reduce, ignore, state) if need_weight else None
    return dx, dw


@triton.jit
def _eval_kernel(x_ptr, w_ptr, f_ptr, dx_ptr, dw_ptr, N, TAP: tl.constexpr, TAP_DX: tl.constexpr,
                 TAP_DW: tl.constexpr, BLOCK: tl.constexpr):
    """``f, ∂f/∂x, ∂f/∂w`` at ``N`` points: what ``check_tap`` compares with autograd."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = r < N
    x = tl.load(x_ptr + r, mask=ok, other=0.0)
    w = tl.load(w_ptr + r, mask=ok, other=0.0)
    tl.store(f_ptr + r, TAP(x, w), mask=ok)
    tl.store(dx_ptr + r, TAP_DX(x, w), mask=ok)
    tl.store(dw_ptr + r, TAP_DW(x, w), mask=ok)


def evaluate(fns, x: torch.Tensor, w: torch.Tensor):
    """``(f, ∂f/∂x, ∂f/∂w)`` of the ``@triton.jit`` functions ``fns`` at the points ``x, w`` (1-D, same dtype)."""
    out = [torch.empty_like(x) for _ in range(3)]
    n = x.numel()
    _eval_kernel[(cdiv(n, 256),)](x, w, *out, n, TAP=fns[0], TAP_DX=fns[1], TAP_DW=fns[2], BLOCK=256)
    return tuple(out)
