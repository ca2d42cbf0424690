"""Implicit-GEMM group convolution: the forward and the input gradient, one kernel (:func:`_conv_gemm_kernel`).

The math and the design (notation, the GEMMs, why the activation is read channels-last, the phases of a strided
input gradient, the folded narrow forward) are in ``docs/kernels.md``, "The three GEMMs".  The weight gradient is
in ``group_conv_weight_grad.py``; what the families share is in ``_common.py``.

Reading order: :func:`forward` and :func:`input_grad` -> :func:`_launch_gemm` (lays out A and B, builds the
position tables) -> :func:`_conv_gemm_kernel` -> :func:`_per_position_loop` or :func:`_folded_positions_loop`.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .._support import empty_in_order
from ._common import (accumulator, apply_activation, cdiv, channels_last, dot_precision, empty_group_map,
                      forward_result, gather_tables, input_grad_buffer, interpreter_config, is_channels_last,
                      maybe_autotune, mma, needs_int64, pixel_block, preact_buffer, round_up, upcast,
                      vector_padding, vector_width)
from .group_conv_layouts import padded_copy, permute_weights

INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16)


def _configs():
    # Every BLOCK_K divides 64, so every power-of-two group order up to 16 divides it (see ``HOIST``).  Short
    # channel loops (a few blocks per window position) want BLOCK_K 16 or 2 stages, else the pipeline's prologue
    # is the loop.
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in [
                (128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                (128, 64, 32, 4, 4), (64, 64, 64, 4, 4), (128, 32, 64, 4, 4), (64, 32, 64, 4, 4),
                (64, 16, 64, 4, 4), (128, 16, 64, 4, 4), (64, 64, 32, 4, 2), (128, 64, 16, 4, 3),
                (64, 64, 16, 4, 3), (128, 256, 64, 8, 3),
            ]]


# ------------------------------------------------------------------------------- the B operand: the rotated filter
@triton.jit
def _slice_offsets(c, j, r, stab_ptr, S_IN: tl.constexpr, S_K: tl.constexpr, ROWS: tl.constexpr,
                   R_PAD: tl.constexpr, GROUP_ON_N: tl.constexpr, K_MAJOR: tl.constexpr, SLOT_ORDER: tl.constexpr):
    """``[BK, BN]`` offsets into the permuted weight (:func:`permuted_weight`) of reduction indices ``c`` and
    N indices ``(j, r)``, window position excluded: the channel outside the group index, ``c // S_K``, then the
    stabilizer slice ``u = g⁻¹·s`` (``stab[g, s]``), then ``r`` (``K_MAJOR``: ``r`` first).  The group element
    ``g`` is ``j`` when the group copies are on N (forward: ``s = c % S_K``) and ``c % S_K`` when they are on K
    (input gradient: ``s = j``).  ``SLOT_ORDER``: K index ``c`` is slot ``u = c % S_K`` itself (the activation lanes
    read the input element ``s`` whose slot it is: :func:`_conv_gemm_kernel`)."""
    kx = c % S_K
    if SLOT_ORDER:
        u = kx[:, None]
    elif S_IN == 1 and K_MAJOR:
        # one slice: the K-major runs are then provably contiguous along K.  (N-major tiles keep the table load:
        # with every offset known, the compiler would recompute the folded forward's offset tile inside the loop;
        # docs/static-analysis.md has the count)
        u = 0
    elif GROUP_ON_N:
        u = tl.load(stab_ptr + j[None, :] * S_IN + kx[:, None])
    else:
        u = tl.load(stab_ptr + kx[:, None] * S_IN + j[None, :])
    if K_MAJOR:
        return ((c // S_K) * S_IN)[:, None] + u + (r * (ROWS * S_IN))[None, :]
    else:
        return ((c // S_K) * (S_IN * R_PAD))[:, None] + u * R_PAD + r[None, :]


@triton.jit
def _position_offsets(c, j, t, pos_src_ptr, KPOS: tl.constexpr, S_K: tl.constexpr, POS_STRIDE: tl.constexpr,
                      GROUP_ON_N: tl.constexpr):
    """The weight offset of base-filter position ``pos_src[g, t']`` for window position ``t'``, broadcastable to
    ``[BK, BN]``."""
    if GROUP_ON_N:
        return (tl.load(pos_src_ptr + j * KPOS + t) * POS_STRIDE)[None, :]
    else:
        return (tl.load(pos_src_ptr + (c % S_K) * KPOS + t) * POS_STRIDE)[:, None]


@triton.jit
def _vector_runs(w_off, VEC_B: tl.constexpr, K_MAJOR: tl.constexpr):
    """``w_off`` with the hint that runs of ``VEC_B`` offsets are contiguous and aligned: along K (``K_MAJOR``)
    or along N, so that the B tile loads as vectors."""
    if K_MAJOR:
        return tl.max_contiguous(tl.multiple_of(w_off, [VEC_B, 1]), [VEC_B, 1])
    else:
        return tl.max_contiguous(tl.multiple_of(w_off, [1, VEC_B]), [1, VEC_B])


@triton.jit
def _weight_pointers(w_base, c, j, r, t, pos_src_ptr, stab_ptr, KPOS: tl.constexpr, S_IN: tl.constexpr,
                     S_K: tl.constexpr, ROWS: tl.constexpr, R_PAD: tl.constexpr, POS_STRIDE: tl.constexpr,
                     VEC_B: tl.constexpr, GROUP_ON_N: tl.constexpr, K_MAJOR: tl.constexpr):
    """The B tile's pointers for reduction indices ``c`` and window position ``t'``."""
    w_off = (_slice_offsets(c, j, r, stab_ptr, S_IN, S_K, ROWS, R_PAD, GROUP_ON_N, K_MAJOR, False)
             + _position_offsets(c, j, t, pos_src_ptr, KPOS, S_K, POS_STRIDE, GROUP_ON_N))
    return w_base + _vector_runs(w_off, VEC_B, K_MAJOR)


@triton.jit
def _accumulate(acc, a, bw, PRECISION: tl.constexpr, UPCAST: tl.constexpr, TRANSPOSED: tl.constexpr):
    """``acc + a @ bw``, or with ``TRANSPOSED`` its transpose ``acc + bwᵀ @ aᵀ`` (``acc`` is then ``[N, M]``)."""
    if TRANSPOSED:
        return mma(acc, tl.trans(bw), tl.trans(a), PRECISION, UPCAST)
    else:   # in an else: a return after the branch would be compiled too (dead), with shapes that do not match
        return mma(acc, a, bw, PRECISION, UPCAST)


# ------------------------------------------------------------------------------------------- the two K loops
@triton.jit
def _inside_bits(ih0, iw0, m_ok, pos_list, n_pos_ptr, a_height, a_width, KPOS: tl.constexpr):
    """``[BLOCK_M, 1]`` int32 (int64 past 32 window positions): bit ``i`` set where the pixel's ``i``-th window
    position of ``pos_list`` (``(t', dh, dw)`` each) lies inside the ``a_height × a_width`` activation; 0 for pixels
    past the last (``~m_ok``)."""
    BITS: tl.constexpr = tl.int32 if KPOS <= 32 else tl.int64
    inside = tl.zeros_like(ih0).to(BITS)
    for i in range(tl.load(n_pos_ptr)):
        ih = ih0 + tl.load(pos_list + 3 * i + 1)
        iw = iw0 + tl.load(pos_list + 3 * i + 2)
        inside |= ((ih >= 0) & (ih < a_height) & (iw >= 0) & (iw < a_width)).to(BITS) << i
    return tl.where(m_ok, inside, 0)[:, None]


@triton.jit
def _per_position_loop(acc, kl, ka, a_base, w_base, row0, ih0, iw0, m_ok, j, r, pos_list, n_pos_ptr, pos_src_ptr,
                       stab_ptr, a_height, a_width, stride_a_h, stride_a_w, stride_a_c,
                       A_CH: tl.constexpr, KPOS: tl.constexpr, S_IN: tl.constexpr, S_K: tl.constexpr,
                       R_PAD: tl.constexpr, GROUP_ON_N: tl.constexpr, K_MAJOR: tl.constexpr, HALO: tl.constexpr,
                       WIDE: tl.constexpr, VEC_A: tl.constexpr, VEC_B: tl.constexpr, PRECISION: tl.constexpr,
                       UPCAST: tl.constexpr, TRANSPOSED: tl.constexpr, SLOT_ORDER: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """``acc`` plus the products over the window positions of ``pos_list`` (``(t', dh, dw)`` each, ``*n_pos_ptr`` of
    them) and every channel block of each; ``kl``: the K lanes, ``arange(BLOCK_K)``; ``ka``: the activation channel
    each lane reads in the first block (``kl``, or with ``SLOT_ORDER`` the input element whose weight slot the lane
    is); ``row0``: the ``[BLOCK_M]`` offsets of the pixels ``(b, ih0, iw0)``; channel ``c`` of a pixel lies
    ``c·stride_a_c`` after it (1 where A is read channels-last, ``H·W`` for a channels-first activation:
    :func:`_conv_gemm_kernel`).

    Loop order (as in Inductor's convolution template): window positions outer, channels inner.  What depends on
    the position (the A rows, their bounds, the B position offset) is computed once per position, as the hoisted
    row base of the pixels ``(b, ih0, iw0)`` plus a scalar shift; the inner loop is a plain GEMM loop over
    contiguous channel blocks whose pointers step by a constant.  The position list holds only the positions that
    reach this phase, so the loop has no branch: with one channel block per position (a narrow layer) the position
    loop is the innermost loop, and stays software-pipelined (asynchronous copies)."""
    ROWS: tl.constexpr = A_CH // S_K
    POS_STRIDE: tl.constexpr = ROWS * S_IN * R_PAD
    ROW_STRIDE: tl.constexpr = S_IN if K_MAJOR else S_IN * R_PAD   # weight offset per channel outside the group
    HOIST: tl.constexpr = BLOCK_K % S_K == 0      # the group pattern along K repeats every block
    if HOIST:
        slice_off = _slice_offsets(kl, j, r, stab_ptr, S_IN, S_K, ROWS, R_PAD, GROUP_ON_N, K_MAJOR, SLOT_ORDER)
    # The forward's bounds as one bit per row and window position.  The input gradient keeps the four bounds: with
    # the bits, its best config on P4CNN's 4x4 layer spills (perf/results/static-masked-2026-12-05.md)
    BITS: tl.constexpr = not HALO and GROUP_ON_N and KPOS <= 64
    if BITS:
        # as a [BLOCK_M, BLOCK_K] tile (adding kl >> 31, zero, which the compiler does not fold into a broadcast
        # of a column) it takes the A tile's layout: the bit test per position then needs no layout conversion
        # (a shared-memory round trip and two barriers per position)
        inside = tl.max_constancy(_inside_bits(ih0, iw0, m_ok, pos_list, n_pos_ptr, a_height, a_width, KPOS)
                                  + (kl >> 31)[None, :], [1, BLOCK_K])
    for i in range(tl.load(n_pos_ptr)):
        t = tl.load(pos_list + 3 * i)
        dh = tl.load(pos_list + 3 * i + 1)
        dw = tl.load(pos_list + 3 * i + 2)
        if HALO:
            row_ok = m_ok[:, None]
        elif BITS:   # one bit test per row
            row_ok = ((inside >> i) & 1) != 0
        else:
            ih = ih0 + dh
            iw = iw0 + dw
            row_ok = (m_ok & (ih >= 0) & (ih < a_height) & (iw >= 0) & (iw < a_width))[:, None]
        if WIDE:
            dh, dw = dh.to(tl.int64), dw.to(tl.int64)
        row = tl.multiple_of(row0 + (dh * stride_a_h + dw * stride_a_w), VEC_A)
        a_ptrs = a_base + row[:, None] + ka[None, :] * stride_a_c
        if HOIST:   # B pointers for this position: a hoisted tile, then a constant step per channel block
            w_ptrs = w_base + _vector_runs(
                slice_off + _position_offsets(kl, j, t, pos_src_ptr, KPOS, S_K, POS_STRIDE, GROUP_ON_N), VEC_B,
                K_MAJOR)
        for k0 in range(0, A_CH, BLOCK_K):
            c = k0 + kl
            if not HOIST:
                w_ptrs = _weight_pointers(w_base, c, j, r, t, pos_src_ptr, stab_ptr, KPOS, S_IN, S_K, ROWS,
                                          R_PAD, POS_STRIDE, VEC_B, GROUP_ON_N, K_MAJOR)
            if A_CH % BLOCK_K == 0:
                a = tl.load(a_ptrs, mask=row_ok, other=0.0)
                bw = tl.load(w_ptrs)
            else:  # a ragged last block: the mask is constant over runs of VEC_A (A_CH is a multiple of it),
                # which keeps the loads 16-byte vectors
                k_ok = tl.max_constancy(c < A_CH, VEC_A)
                a = tl.load(a_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
                bw = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
            acc = _accumulate(acc, a, bw, PRECISION, UPCAST, TRANSPOSED)
            a_ptrs += BLOCK_K * stride_a_c
            if HOIST:
                w_ptrs += (BLOCK_K // S_K) * ROW_STRIDE
    return acc


@triton.jit
def _element_major_loop(acc, kl, a_base, w_base, row0, ih0, iw0, m_ok, j, r, pos_list, n_pos_ptr, pos_src_ptr,
                        stab_ptr, a_height, a_width, stride_a_h, stride_a_w, stride_a_c,
                        A_CH: tl.constexpr, KPOS: tl.constexpr, S_IN: tl.constexpr, S_K: tl.constexpr,
                        R_PAD: tl.constexpr, WIDE: tl.constexpr, VEC_B: tl.constexpr, PRECISION: tl.constexpr,
                        UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The input gradient's K loop over its element-major weight ``(weight_groups, KH·KW, S_in, R_PAD, C_out)``
    (K-major, :func:`permuted_weight`): K runs over ``(s_out, o)``, the output element outer, one element per K
    block.  Within a block the base filter's window position ``pos_src[s_out, t']`` is one scalar and the slot
    ``stab[s_out, s_in]`` one per column, so the weight's runs along ``o`` are contiguous whatever the tile's width
    (16-byte loads); lane ``k`` reads ``dy`` channel ``(o0 + k)·S_out + s_out``, element by element (a channels-first
    ``dy`` loads so anyway).  Loop order: window positions outer, then the ``(s_out, channel block)`` pairs as one
    loop, which stays software-pipelined where each element has only a few channel blocks."""
    ROWS: tl.constexpr = A_CH // S_K
    BLOCKS: tl.constexpr = (ROWS + BLOCK_K - 1) // BLOCK_K   # channel blocks per output element
    POS_STRIDE: tl.constexpr = ROWS * S_IN * R_PAD
    w_cols = kl[:, None] + (r * ROWS)[None, :]
    j0 = tl.min(j, axis=0)   # the tile's first input element
    lanes = (kl * S_K)[None, :] * stride_a_c
    for i in range(tl.load(n_pos_ptr)):
        t = tl.load(pos_list + 3 * i)
        dh = tl.load(pos_list + 3 * i + 1)
        dw = tl.load(pos_list + 3 * i + 2)
        ih = ih0 + dh
        iw = iw0 + dw
        row_ok = (m_ok & (ih >= 0) & (ih < a_height) & (iw >= 0) & (iw < a_width))[:, None]
        if WIDE:
            dh, dw = dh.to(tl.int64), dw.to(tl.int64)
        a_row = a_base + (row0 + (dh * stride_a_h + dw * stride_a_w))[:, None] + lanes
        for step in range(S_K * BLOCKS):
            kx = step // BLOCKS
            o0 = (step % BLOCKS) * BLOCK_K
            w_off = w_cols + (tl.load(pos_src_ptr + kx * KPOS + t) * POS_STRIDE + o0)
            if R_PAD % BLOCK_N == 0:   # the tile's columns are of one input element: one slot
                w_off += tl.load(stab_ptr + kx * S_IN + j0) * (R_PAD * ROWS)
            else:
                w_off += (tl.load(stab_ptr + kx * S_IN + j) * (R_PAD * ROWS))[None, :]
            w_ptrs = w_base + _vector_runs(w_off, VEC_B, True)
            a_ptrs = a_row + (o0 * S_K + kx) * stride_a_c
            if ROWS % BLOCK_K == 0:
                a = tl.load(a_ptrs, mask=row_ok, other=0.0)
                bw = tl.load(w_ptrs)
            else:   # a ragged last block of each element
                k_ok = (o0 + kl) < ROWS
                a = tl.load(a_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
                bw = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
            acc = _accumulate(acc, a, bw, PRECISION, UPCAST, False)
    return acc


@triton.jit
def _folded_positions_loop(acc, kl, a_base, w_base, row0, ih0, iw0, m_ok, j, r, pos_list, n_pos_ptr, pos_src_ptr,
                           stab_ptr, pos_step_ptr, a_height, a_width, stride_a_h, stride_a_w,
                           A_CH: tl.constexpr, KW: tl.constexpr, KPOS: tl.constexpr, S_IN: tl.constexpr,
                           S_K: tl.constexpr, R_PAD: tl.constexpr, GROUP_ON_N: tl.constexpr,
                           K_MAJOR: tl.constexpr, HALO: tl.constexpr, WIDE: tl.constexpr, VEC_A: tl.constexpr,
                           VEC_B: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                           TRANSPOSED: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc`` plus the products over every window position of a narrow forward, ``F = BLOCK_K // A_CH``
    neighbouring positions of a kernel row per K block (``F·A_CH`` contiguous activation elements: a 3-channel
    lifting layer does not spend most of each MMA on padding).

    Loop order: one K block per ``F`` positions of a kernel row, kernel rows outer (``KH`` rows of
    ``ceil(KW / F)`` blocks, the last one ragged).  The rotated filter's rows for the positions of a block are
    the first position's plus ``tw·pos_step[g]`` (a group acts on the position grid by an affine map:
    :func:`position_steps`), so the B offsets of a block are one hoisted tile plus one table load."""
    ROWS: tl.constexpr = A_CH // S_K
    POS_STRIDE: tl.constexpr = ROWS * S_IN * R_PAD
    F: tl.constexpr = BLOCK_K // A_CH            # window positions per K block
    GROUPS_W: tl.constexpr = (KW + F - 1) // F   # K blocks per kernel row (the last one ragged)
    tw_k = kl // A_CH                            # the position of K index k within its block, and its channel:
    w_fold = (_slice_offsets(kl % A_CH, j, r, stab_ptr, S_IN, S_K, ROWS, R_PAD, GROUP_ON_N, K_MAJOR, False)
              + tw_k[:, None] * (tl.load(pos_step_ptr + j) * POS_STRIDE)[None, :])
    # KH·GROUPS_W blocks, counted from the position list so that the loop is not unrolled away (a few constant
    # iterations would be), which would drop its software pipelining
    for i in range(tl.load(n_pos_ptr) // KW * GROUPS_W):
        tw0 = (i % GROUPS_W) * F
        first = pos_list + 3 * ((i // GROUPS_W) * KW + tw0)   # the forward's list holds every position in order
        t = tl.load(first)
        dh = tl.load(first + 1)
        dw = tl.load(first + 2)
        ih = ih0 + dh
        iw = iw0[:, None] + (dw + tw_k)[None, :]
        pos_ok = (tw0 + tw_k) < KW
        if HALO:
            a_ok = m_ok[:, None] & pos_ok[None, :]
        else:
            a_ok = (m_ok & (ih >= 0) & (ih < a_height))[:, None] & (iw >= 0) & (iw < a_width) & pos_ok[None, :]
        if WIDE:
            dh, dw = dh.to(tl.int64), dw.to(tl.int64)
        row = tl.multiple_of(row0 + (dh * stride_a_h + dw * stride_a_w), VEC_A)
        a = tl.load(a_base + row[:, None] + kl[None, :], mask=tl.max_constancy(a_ok, [1, VEC_A]), other=0.0)
        w_off = w_fold + _position_offsets(kl, j, t, pos_src_ptr, KPOS, S_K, POS_STRIDE, GROUP_ON_N)
        bw = tl.load(w_base + _vector_runs(w_off, VEC_B, K_MAJOR), mask=pos_ok[:, None], other=0.0)
        acc = _accumulate(acc, a, bw, PRECISION, UPCAST, TRANSPOSED)
    return acc


# ------------------------------------------------------------------------------------------------ the kernel
def _linear_out(a: dict) -> bool:
    """``LINEAR_OUT``: the M grid is the output's pixel grid (one sub-pixel phase), stored densely in ``(b, h, w)``
    order, so that pixel ``m`` of the grid lies ``m·stride_out_w`` into the output."""
    one_phase = a["GROUP_ON_N"] or a["stride_h"] * a["stride_w"] == 1
    per_image = a["m_height"] * a["m_width"]
    return (one_phase and (a["m_height"], a["m_width"]) == (a["out_height"], a["out_width"])
            and a["stride_out_h"] == a["m_width"] * a["stride_out_w"]
            and (a["M_TOTAL"] <= per_image or a["stride_out_n"] == a["m_height"] * a["stride_out_h"]))


# The flags that follow from the other arguments, computed at each launch.
_DERIVED = dict(
    HAS_BIAS=lambda a: a["bias_ptr"] is not None,
    STORE_PREACT=lambda a: a["z_ptr"] is not None,
    WIDE=lambda a: needs_int64(a["a_ptr"], a["out_ptr"]),
    VEC_A=lambda a: vector_width(a["a_ptr"].element_size(), a["stride_a_n"], a["stride_a_h"], a["stride_a_w"],
                                 a["A_CH"]),
    PIXEL_MAJOR=lambda a: a["stride_a_c"] != 1,
    # the weight's contiguous runs: along K (the input gradient's element-major one: along o only), else along N
    VEC_B=lambda a: vector_width(a["w_ptr"].element_size(), (a["A_CH"] if a["GROUP_ON_N"] else a["A_CH"] // a["S_K"])
                                 if a["K_MAJOR"] else a["R_PAD"]),
    ACC=lambda a: accumulator(a["a_ptr"].dtype),
    UPCAST=lambda a: upcast(a["a_ptr"].dtype),
    LINEAR_OUT=_linear_out,
)


@maybe_autotune(_configs(), key=["M_TOTAL", "N_TOTAL", "A_CH", "K_RUN", "S_IN", "S_K", "KH", "KW", "GROUP_ON_N",
                                 "PRECISION"],
                tiles=dict(BLOCK_M="M_TOTAL", BLOCK_N="N_TOTAL", BLOCK_K="K_RUN"),
                operands=[("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N")])
@triton.heuristics(_DERIVED)
@triton.jit
def _conv_gemm_kernel(
    a_ptr, w_ptr, bias_ptr, out_ptr, z_ptr, pos_src_ptr, stab_ptr, slot_src_ptr, phase_pos_ptr, phase_count_ptr,
    pos_step_ptr, M_TOTAL, m_height, m_width, a_height, a_width, out_height, out_width, stride_h, stride_w,
    weight_groups,
    stride_a_n, stride_a_h, stride_a_w, stride_a_c,
    stride_out_n, stride_out_g, stride_out_c, stride_out_h, stride_out_w,
    A_CH: tl.constexpr, K_RUN: tl.constexpr, N_TOTAL: tl.constexpr, R_PAD: tl.constexpr, R_VALID: tl.constexpr,
    S_IN: tl.constexpr, S_K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, GROUP_ON_N: tl.constexpr,
    K_MAJOR: tl.constexpr, HALO: tl.constexpr, PRECISION: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_BIAS: tl.constexpr, STORE_PREACT: tl.constexpr, WIDE: tl.constexpr,
    VEC_A: tl.constexpr, PIXEL_MAJOR: tl.constexpr, VEC_B: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
    LINEAR_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One ``[BLOCK_M pixels, BLOCK_N]`` output tile of sub-pixel phase ``ph`` in channel group ``grp``.

    Forward (``GROUP_ON_N``): ``a = x``, one phase, output pixel ``(mh, mw)`` reads the input from
    ``(mh·stride, mw·stride)``.  Input gradient: ``a = dy``, ``stride_h·stride_w`` phases; pixel ``(mh, mw)`` of
    phase ``(ph_h, ph_w)`` reads ``dy`` from ``(mh, mw)`` and writes ``dx`` at ``(mh·stride + ph_h, mw·stride +
    ph_w)``.

    A: the activation ``(B, a_height, a_width, groups·A_CH)``, read channels-last (unit channel stride) or, for an
    activation that arrives channels-first (``PIXEL_MAJOR``: channel stride ``stride_a_c = a_height·a_width``; an
    input gradient's ``dy``, :func:`reads_channels_first_dy`, or a stride-1 forward's ``x``,
    :func:`reads_channels_first_x`), in place with unit pixel stride: a grid as wide as ``a`` (``m_width ==
    a_width``) whose ``BLOCK_M`` tiles never cross an image reads each position's tile as one contiguous run of
    pixels per channel (coalesced).  Its pixel for the ``i``-th window position ``t'`` that reaches the phase is the
    read pixel plus ``(dh, dw)``, with ``(t', dh, dw) = phase_pos[ph, i]``, ``i < phase_count[ph]``
    (:func:`phase_tables`).  ``HALO``: ``a`` carries the convolution's zero padding (:func:`halo_channels_last`), so
    no position of any pixel is out of bounds.
    B: the permuted weight, ``(weight_groups, KH·KW, A_CH // S_K, S_IN, R_PAD)``, gathered per tile; ``K_MAJOR``:
    ``(weight_groups, KH·KW, R_PAD, A_CH // S_K, S_IN)``, so that a tf32 tile (tf32 MMAs read both shared-memory
    operands K-major) lands in shared memory as the MMA reads it, copied in 16-byte runs along K.  A weight
    stabilizer slice ``u = g⁻¹·s`` depends on the column's group element, so a K-major tile of a group input has
    contiguous K runs only in slot order: where the activation's lanes are free to read any channel (``PIXEL_MAJOR``,
    element by element anyway) and a tile's columns share one element ``g`` (``R_PAD % BLOCK_N == 0``), lane ``c``
    reads input element ``s = slot_src[g, c % S_IN]`` (the ``s`` with ``g⁻¹·s = c % S_IN``; ``SLOT_ORDER``) and
    the weight tile is read in 16-byte runs; elsewhere (a tile over several elements) element by element.
    Output: ``N_TOTAL = S_N·R_PAD`` columns ``n = (j, r)``: group element ``j`` (``stride_out_g``) and channel
    ``grp·R_VALID + r`` (``stride_out_c``), stored for ``r < R_VALID``.  Epilogue (forward): bias, then
    ``ACTIVATION``; with ``z_ptr`` the pre-activation is stored there too.

    ``K_RUN``: how many contiguous activation elements one kernel row reads: ``A_CH``, or ``KW·A_CH`` in a forward
    whose pixels are ``A_CH`` elements apart with dilation 1 along W (:func:`position_steps` must hold).  Where
    whole positions also fit a K block, :func:`_folded_positions_loop` runs instead of :func:`_per_position_loop`.
    """
    KPOS: tl.constexpr = KH * KW
    FOLD: tl.constexpr = K_RUN > A_CH and A_CH < BLOCK_K and BLOCK_K % A_CH == 0
    POS_STRIDE: tl.constexpr = (A_CH // S_K) * S_IN * R_PAD      # weight offset per window position
    if GROUP_ON_N:
        phases_h, phases_w, read_h, read_w, write_h, write_w = 1, 1, stride_h, stride_w, 1, 1
    else:
        phases_h, phases_w, read_h, read_w, write_h, write_w = stride_h, stride_w, 1, 1, stride_h, stride_w
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phases = phases_h * phases_w
    grp = tl.program_id(2) // phases
    ph_h = (tl.program_id(2) % phases) // phases_w
    ph_w = tl.program_id(2) % phases_w
    wg = grp % weight_groups

    m_ok, b, mh, mw = pixel_block(pid_m, BLOCK_M, M_TOTAL, m_height, m_width)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if N_TOTAL == R_PAD:
        # one group element on N (a plain convolution's output): j is 0, and saying so keeps the columns' offsets
        # provably aligned, so that the epilogue stores vectors (else one element per thread, its pixel math done
        # for every row: register pressure that made a 128 x 256 tile spill)
        j = tl.zeros_like(n)
    else:
        j = tl.minimum(n // R_PAD, N_TOTAL // R_PAD - 1)   # columns past N_TOTAL read a valid weight, never stored
    r = n % R_PAD
    if WIDE:  # offsets past int32 (else int32 index math: fewer instructions, no carries)
        b, mh, mw = b.to(tl.int64), mh.to(tl.int64), mw.to(tl.int64)
    kl = tl.arange(0, BLOCK_K)
    a_base = a_ptr + grp * A_CH * stride_a_c
    w_base = w_ptr + wg * (KPOS * POS_STRIDE)

    # tf32 MMAs read both shared-memory operands K-major: an N-major weight tile makes them run transposed,
    # out^T = w^T · a^T, where the activation tile (K-major as loaded) is the shared-memory operand
    TRANSPOSED: tl.constexpr = PRECISION == "tf32" and not K_MAJOR
    SLOT_ORDER: tl.constexpr = (PIXEL_MAJOR and K_MAJOR and GROUP_ON_N and S_IN > 1 and R_PAD % BLOCK_N == 0
                                and BLOCK_K % S_K == 0)
    # a K-major group-input tile in stabilizer order has no contiguous K runs
    VEC_W: tl.constexpr = VEC_B if (not K_MAJOR or S_IN == 1 or SLOT_ORDER) else 1
    if SLOT_ORDER:
        ka = (kl // S_K) * S_K + tl.load(slot_src_ptr + (pid_n * BLOCK_N) // R_PAD * S_IN + kl % S_K)
    else:
        ka = kl
    if TRANSPOSED:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    pos_list = phase_pos_ptr + (ph_h * phases_w + ph_w) * (3 * KPOS)
    n_pos_ptr = phase_count_ptr + ph_h * phases_w + ph_w
    ih0 = mh * read_h      # per window position, the A rows are these plus a scalar shift: one add per row and axis
    iw0 = mw * read_w
    if PIXEL_MAJOR:
        # the tile's pixels are (mh, mw) of one image, mh·a_width + mw its flat index: as a scalar plus a range, so
        # that the compiler sees the rows contiguous (threads along pixels: coalesced loads)
        per_image = m_height * m_width
        m0 = pid_m * BLOCK_M
        b0 = m0 // per_image
        if WIDE:
            b0 = b0.to(tl.int64)
        row0 = b0 * stride_a_n + (m0 - b0 * per_image) + tl.arange(0, BLOCK_M)
    else:
        row0 = b * stride_a_n + ih0 * stride_a_h + iw0 * stride_a_w
    # the input gradient's K-major weight is element-major (the plain convolution's, one element, is the same)
    ELEMENT_MAJOR: tl.constexpr = not GROUP_ON_N and K_MAJOR and (S_K > 1 or S_IN > 1)
    if FOLD:
        acc = _folded_positions_loop(acc, kl, a_base, w_base, row0, ih0, iw0, m_ok, j, r, pos_list, n_pos_ptr,
                                     pos_src_ptr, stab_ptr, pos_step_ptr, a_height, a_width, stride_a_h, stride_a_w,
                                     A_CH, KW, KPOS, S_IN, S_K, R_PAD, GROUP_ON_N, K_MAJOR, HALO, WIDE, VEC_A, VEC_W,
                                     PRECISION, UPCAST, TRANSPOSED, BLOCK_K)
    elif ELEMENT_MAJOR:
        acc = _element_major_loop(acc, kl, a_base, w_base, row0, ih0, iw0, m_ok, j, r, pos_list, n_pos_ptr,
                                  pos_src_ptr, stab_ptr, a_height, a_width, stride_a_h, stride_a_w, stride_a_c, A_CH,
                                  KPOS, S_IN, S_K, R_PAD, WIDE, VEC_B, PRECISION, UPCAST, BLOCK_N, BLOCK_K)
    else:
        acc = _per_position_loop(acc, kl, ka, a_base, w_base, row0, ih0, iw0, m_ok, j, r, pos_list, n_pos_ptr,
                                 pos_src_ptr, stab_ptr, a_height, a_width, stride_a_h, stride_a_w, stride_a_c, A_CH,
                                 KPOS, S_IN, S_K, R_PAD, GROUP_ON_N, K_MAJOR, HALO, WIDE, VEC_A, VEC_W, PRECISION,
                                 UPCAST, TRANSPOSED, SLOT_ORDER, BLOCK_K)

    if LINEAR_OUT:
        # the M grid is the output's pixel grid, stored densely in (b, h, w) order: pixel m lies m·stride_out_w in,
        # with no division per row (each thread of the store's layout may hold many rows)
        m_flat = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        if WIDE:
            m_flat = m_flat.to(tl.int64)
        row_off = m_flat * stride_out_w
    else:
        oh = mh * write_h + ph_h
        ow = mw * write_w + ph_w
        m_ok = m_ok & (oh < out_height) & (ow < out_width)
        row_off = b * stride_out_n + oh * stride_out_h + ow * stride_out_w
    n_ok = (n < N_TOTAL) & (r < R_VALID)
    if TRANSPOSED:
        acc = tl.trans(acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + wg * R_VALID + r, mask=n_ok, other=0.0).to(ACC)[None, :]
    col = j * stride_out_g + (grp * R_VALID + r) * stride_out_c
    if WIDE:
        col = j.to(tl.int64) * stride_out_g + (grp * R_VALID + r).to(tl.int64) * stride_out_c
    out_off = row_off[:, None] + col[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if STORE_PREACT:
        tl.store(z_ptr + out_off, acc.to(z_ptr.dtype.element_ty), mask=mask)
    acc = apply_activation(acc, ACTIVATION)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------- the launchers
def forward(x: torch.Tensor, weight: torch.Tensor, bias, spec, activation: str = "none",
            return_preact: bool = False, return_input_copy: bool = False, return_input_grad_weight: bool = False):
    """``x (B, groups·C_in_g, S_in, H, W)``, weight ``(weight_groups·C_out_g, C_in_g, S_in, kh, kw)`` ->
    ``y (B, groups·C_out_g, S_out, H_out, W_out)`` stored ``(B, H, W, C, S)`` whatever ``x``'s layout (the layout
    the next layer reads in place), ``y = activation(conv + bias)``.
    With ``return_preact``, also ``z``, the pre-activation (None for ``"none"``); with ``return_input_copy``, also
    the channels-last copy of ``x`` the kernel read (shape :func:`input_copy_shape`; None when it read ``x`` in
    place), which the weight gradient takes instead of copying ``x`` again: ``y``, ``(y, z)``, ``(y, copy)`` or
    ``(y, z, copy)``.  With ``return_input_grad_weight``, last, the input gradient's permuted weight
    (:func:`input_grad_weight_shape`), written by the forward's weight launch, for :func:`input_grad` to take."""
    y = empty_group_map((spec.batch, spec.groups * spec.out_channels, spec.s_out, spec.out_height,
                         spec.out_width), x)
    z = preact_buffer(activation, return_preact, y)
    copy = w_ig = None
    if y.numel() != 0:
        copy, w_ig = _launch_gemm(x, weight, y, spec, group_on_n=True,
                                  bias=None if bias is None else bias.contiguous(), z=z, activation=activation,
                                  with_input_grad_weight=return_input_grad_weight)
    out = forward_result(y, z, copy, return_preact, return_input_copy)
    return (*(out if isinstance(out, tuple) else (out,)), w_ig) if return_input_grad_weight else out


def input_grad(dy: torch.Tensor, weight: torch.Tensor, spec, order, permuted=None) -> torch.Tensor:
    """``dy (B, groups·C_out_g, S_out, H_out, W_out)`` -> ``dx (B, groups·C_in_g, S_in, H, W)`` stored in dim
    ``order`` (the input's: ``gconv_triton._support.dim_order(x)``).  ``permuted``: the weight already re-laid as
    this launch reads it (the forward's, ``return_input_grad_weight``), taken when its shape and dtype are the
    ones wanted now (else the weight is re-laid again)."""
    dx = input_grad_buffer(spec, order, dy)
    if dx.numel() != 0:
        _launch_gemm(dy, weight, dx, spec, group_on_n=False, permuted=permuted)
    return dx


# A channels-first forward of a group input reads its weight K-major where tiles up to this wide keep one group
# element (perf/results/static-slot-order-2026-12-05.md: wider tiles then gather the weight element by element,
# which compiled to fewer instructions than the transposed product at 32 columns per group, more at 16)
SLOT_ORDER_COLUMNS = 32


def _weight_layout(spec, dtype, group_on_n: bool, pixel_major: bool = False) -> tuple[int, bool]:
    """``(rows_pad, k_major)`` of the permuted weight the forward (``group_on_n``) or the input gradient reads
    (:func:`permuted_weight`); ``pixel_major``: the launch reads its activation channels-first (``PIXEL_MAJOR``)."""
    a_ch, s_k = (spec.in_channels * spec.s_in, spec.s_in) if group_on_n else (spec.out_channels * spec.s_out,
                                                                               spec.s_out)
    # tf32 MMAs read both shared-memory operands K-major: the weight is laid out so where its K runs are
    # contiguous, as they are when neither the stabilizer slice nor the window position changes along K (a plain
    # input, and for the input gradient a plain output too), or where a channels-first activation, read element by
    # element anyway, can be read in the order of the weight's runs: the forward's lanes in the slice's order
    # (SLOT_ORDER: where tiles up to SLOT_ORDER_COLUMNS wide keep one group element), the input gradient's output
    # element outermost (its element-major weight); elsewhere the kernel runs the MMA transposed
    k_major = dot_precision(dtype) == "tf32" and (
        (spec.s_in == 1 and (group_on_n or spec.s_out == 1))
        or (pixel_major and (not group_on_n or vector_padding(spec.out_channels) % SLOT_ORDER_COLUMNS == 0)))
    return vector_channels(a_ch, spec.groups, s_k) // s_k, k_major


def input_grad_weight_shape(spec, dtype, x=None) -> tuple[int, ...]:
    """The shape of the input gradient's permuted weight for activations of ``dtype`` (as the kernel reads it: a
    dense tensor), which :func:`forward` of ``x`` returns with ``return_input_grad_weight``: laid out for the
    channels-first ``dy`` that a channels-first ``x`` suggests (the loss's gradient of a single layer), else for
    a channels-last one; the input gradient reads either with either ``dy``."""
    return _input_grad_weight_shape(spec, dtype, x is not None and reads_channels_first_x(x, spec))


def _input_grad_weight_shape(spec, dtype, pixel_major: bool) -> tuple[int, ...]:
    """The input gradient's permuted weight's shape as the kernel reads it: 5-D N-major ``(weight_groups, kh·kw,
    C_out, S_in, R_PAD)``, or K-major element-major flattened to 4-D ``(weight_groups, kh·kw, S_in, R_PAD·C_out)``
    (so that the two can never be taken for each other)."""
    rows_pad, k_major = _weight_layout(spec, dtype, False, pixel_major)
    wg, kpos, rows, s_in, cols = _weight_shape(spec, False, rows_pad)
    return (wg, kpos, s_in, cols * rows) if k_major else (wg, kpos, rows, s_in, cols)


def input_copy_shape(x: torch.Tensor, spec):
    """The shape of the channels-last copy of ``x`` that :func:`forward` makes and returns for the weight gradient
    to reuse, ``(B, HP, WP, groups·channels)`` (:func:`halo_channels_last`), or None when it reads ``x`` in place
    (:func:`reads_in_place`) or launches nothing."""
    if spec.batch * spec.groups * spec.out_channels * spec.s_out * spec.out_height * spec.out_width == 0:
        return None
    if reads_in_place(x, spec) or reads_channels_first_x(x, spec):
        return None
    return (spec.batch, *halo_size(spec), spec.groups * vector_channels(spec.in_channels * spec.s_in, spec.groups,
                                                                        spec.s_in))


def reads_in_place(x: torch.Tensor, spec) -> bool:
    """Whether the forward and the weight gradient read ``x (B, C, S, H, W)`` in place, with no zero-halo copy: it
    is stored channels-last and its channels need no padding to load as vectors.  With padding, the forward then
    tests each row's bounds per window position and the weight gradient reads the padding from a zero page through
    an int64 table of ``kh·kw`` rows per output pixel, made per call: not where that table outweighs the copy."""
    a_ch = spec.in_channels * spec.s_in
    if vector_channels(a_ch, spec.groups, spec.s_in) != a_ch or not is_channels_last(x):
        return False
    hp, wp = halo_size(spec)
    table = spec.kernel[0] * spec.kernel[1] * spec.out_height * spec.out_width * 8
    return halo_is_input(spec) or table <= hp * wp * spec.groups * a_ch * x.element_size()


# The largest BLOCK_M the tuner may pick: a channels-first dy is read in place only where its tiles never cross an
# image, whatever the pick (the interpreter's BLOCK_M divides it too)
MAX_BLOCK_M = max(config.kwargs["BLOCK_M"] for config in _configs())


# Whether the GEMMs may read a channels-first activation in place (``PIXEL_MAJOR``): :func:`pixel_major_reads`.
_pixel_major_allowed = True


@contextlib.contextmanager
def pixel_major_reads(allowed: bool):
    """Within: whether the forward and the input gradient may read a channels-first ``x`` / ``dy`` in place
    (:func:`reads_channels_first_x`, :func:`reads_channels_first_dy`); ``False`` copies it channels-last first, as
    the launchers did before those reads.  Process-wide (not per thread), for the ``gconv_triton_copy`` provider of
    ``python -m perf``, which times both ways on a GPU: the in-place tiles load 4 bytes per element where the
    copy's load 16, so only a GPU says which step is faster.  Hold it around the backward too."""
    global _pixel_major_allowed
    saved, _pixel_major_allowed = _pixel_major_allowed, bool(allowed)
    try:
        yield
    finally:
        _pixel_major_allowed = saved


def reads_channels_first_dy(dy: torch.Tensor, spec) -> bool:
    """Whether the input gradient reads ``dy (B, groups·C_out, S_out, H_out, W_out)`` in place channels-first
    (``PIXEL_MAJOR`` in :func:`_conv_gemm_kernel`) instead of copying it channels-last: each image's ``(C, S, H,
    W)`` dense (the loss's gradient), elements of 4 bytes or more, channels that need no padding to whole vectors,
    a sub-pixel phase grid as wide as ``dy`` (``ceil(W / stride) == W_out``: a dx pixel's ``dy`` pixels then lie
    at its flat index plus a shift) whose pixels per image are a multiple of every ``BLOCK_M`` (no tile crosses an
    image).  A window position's shift leaves the pixel runs unaligned, so they load element by element: as
    asynchronous copies from 4 bytes, while 16-bit elements would load synchronously (the copy is cheaper then)."""
    m_height, m_width = cdiv(spec.height, spec.stride[0]), cdiv(spec.width, spec.stride[1])
    return (_pixel_major_fits(dy, spec, spec.out_channels * spec.s_out, spec.s_out, m_height * m_width)
            and m_width == spec.out_width and spec.out_height * spec.out_width > 1)


def reads_channels_first_x(x: torch.Tensor, spec) -> bool:
    """Whether the forward reads ``x (B, groups·C_in, S_in, H, W)`` in place channels-first (``PIXEL_MAJOR``)
    instead of making its zero-halo channels-last copy: :func:`reads_channels_first_dy`'s conditions for the
    forward's A, whose output pixel ``(oh, ow)`` reads ``(oh·stride + dh, ow·stride + dw)``: stride 1 and ``W_out ==
    W`` (the read pixel is then the output pixel's flat index plus a shift), the output's pixels per image a multiple
    of every ``BLOCK_M``.  The padding is then tested per row and window position (one bit each), not copied."""
    return (spec.stride == (1, 1) and spec.out_width == spec.width and spec.height * spec.width > 1
            and _pixel_major_fits(x, spec, spec.in_channels * spec.s_in, spec.s_in,
                                  spec.out_height * spec.out_width))


def _pixel_major_fits(a: torch.Tensor, spec, a_ch: int, group_order: int, tile_pixels: int) -> bool:
    """What reading ``a (B, C, S, H, W)`` channels-first in place needs of ``a`` whichever GEMM reads it: each
    image's ``(C, S, H, W)`` dense, elements of 4 bytes or more, channels that need no padding to whole vectors, not
    depthwise, and ``tile_pixels`` (pixels per image of the GEMM's M grid) a multiple of every ``BLOCK_M``; and
    such reads not switched off (:func:`pixel_major_reads`)."""
    return (_pixel_major_allowed and not spec.depthwise and a.dim() == 5 and a.element_size() >= 4
            and a[:1].is_contiguous() and vector_channels(a_ch, spec.groups, group_order) == a_ch
            and tile_pixels % MAX_BLOCK_M == 0)


def pixel_major_view(a: torch.Tensor) -> torch.Tensor:
    """``a (B, C, S, H, W)`` (``x`` or ``dy``) dense per image -> the ``(B, H, W, C·S)`` view of it that
    :func:`_conv_gemm_kernel` takes as A: unit pixel stride, channel stride ``H·W``."""
    b, c, s, h, w = a.shape
    return a.as_strided((b, h, w, c * s), (a.stride(0), w, 1, h * w))


def halo_is_input(spec) -> bool:
    """Whether every window of every output pixel lies inside the input (no padding): its zero-halo copy would be
    the input itself."""
    return halo_size(spec) == (spec.height, spec.width) and spec.padding[0] == spec.padding[2] == 0


def _launch_gemm(a: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, spec, *, group_on_n: bool, bias=None,
                 z=None, activation: str = "none", permuted=None, with_input_grad_weight: bool = False):
    """Launch :func:`_conv_gemm_kernel`: the forward (``group_on_n``; ``a = x``, ``out = y``) or the input
    gradient (``a = dy``, ``out = dx``), both 5-D ``(B, C, S, H, W)`` in any layout.  Returns the forward's
    zero-halo copy of ``x`` when it made one, else None, and the input gradient's permuted weight when the forward
    was asked for it (``with_input_grad_weight``), else None; the input gradient reads ``permuted`` (that weight)
    when it fits."""
    pad = (spec.padding[0], spec.padding[2])
    if group_on_n:
        a_ch, s_k, s_n, r_valid = spec.in_channels * spec.s_in, spec.s_in, spec.s_out, spec.out_channels
        m_height, m_width = spec.out_height, spec.out_width
    else:   # one sub-pixel phase per program along grid axis 2: each covers a ceil(H / stride) grid of pixels
        a_ch, s_k, s_n, r_valid = spec.out_channels * spec.s_out, spec.s_out, spec.s_in, spec.in_channels
        m_height, m_width = cdiv(spec.height, spec.stride[0]), cdiv(spec.width, spec.stride[1])
    phases = 1 if group_on_n else spec.stride[0] * spec.stride[1]
    padded = vector_channels(a_ch, spec.groups, s_k)
    # A forward that copies its input anyway copies it with the zero padding in place: no bounds in the loop;
    # so does one whose windows all lie inside an input it reads in place.  One that reads a padded input in place
    # tests each row's bounds, one bit per window position (_inside_bits)
    copied = group_on_n and input_copy_shape(a, spec) is not None
    halo = copied or (group_on_n and reads_in_place(a, spec) and halo_is_input(spec))
    pixel_major = not halo and (reads_channels_first_x(a, spec) if group_on_n else reads_channels_first_dy(a, spec))
    if halo:
        pad = (0, 0)   # the halo copy is made below, by the weights' launch
    elif pixel_major:
        a_cl = pixel_major_view(a)
    else:
        a_cl = channels_last(a, padded)
    layout = _weight_layout(spec, a.dtype, group_on_n, pixel_major)
    w_ig = None
    if group_on_n:   # one launch: the weight, the input gradient's layout too when asked for, the halo copy
        # laid out for a dy as channels-first as x (input_grad_weight_shape)
        ig_layout = _weight_layout(spec, a.dtype, False, pixel_major) if with_input_grad_weight else None
        if halo:
            w, w_ig, a_cl = permuted_weights(weight, spec, a.dtype, layout, ig_layout, (a, spec, padded))
        else:
            w, w_ig = permuted_weights(weight, spec, a.dtype, layout, ig_layout)
    elif (permuted is not None and permuted.dtype == a.dtype and permuted.is_contiguous()
          and tuple(permuted.shape) in (_input_grad_weight_shape(spec, a.dtype, p) for p in (False, True))):
        w = permuted     # the forward's, in either layout (the kernel reads either with either dy)
        layout = (layout[0], permuted.dim() == 4)
    else:
        w = permuted_weight(weight, spec, group_on_n, *layout, a.dtype)
    k_major = layout[1]
    stab, pos_src = gather_tables(spec.group, spec.in_group, spec.kernel, a.device)
    # the forward's lanes in slot order (SLOT_ORDER); any valid pointer elsewhere
    slot_src = (slot_sources(spec.group, spec.in_group, spec.kernel, a.device) if group_on_n and k_major
                and spec.s_in > 1 else stab)
    phase_pos, phase_count = phase_tables(spec.kernel, spec.stride, spec.dilation, pad, not group_on_n, a.device)
    # A narrow forward folds neighbouring window positions of a kernel row into one K block where they are
    # contiguous
    steps = position_steps(spec.group, spec.in_group, spec.kernel, a.device) if group_on_n else None
    contiguous_rows = steps is not None and spec.dilation[1] == 1 and a_cl.stride(2) == padded
    r_pad = _weight_shape(spec, group_on_n, layout[0])[-1]
    n_total = s_n * r_pad
    m_total = spec.batch * m_height * m_width

    out_n, out_c, out_g, out_h, out_w = out.stride()   # out is (B, C, S, H, W): S is the group element's axis

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_M"]), cdiv(n_total, meta["BLOCK_N"]), spec.groups * phases)

    _conv_gemm_kernel[grid](
        a_cl, w, bias, out, z, pos_src, stab, slot_src, phase_pos, phase_count, phase_count if steps is None else steps,
        m_total, m_height, m_width, a_cl.shape[1], a_cl.shape[2], out.shape[3], out.shape[4], *spec.stride,
        spec.weight_groups, *a_cl.stride(), out_n, out_g, out_c, out_h, out_w,
        A_CH=padded, K_RUN=padded * spec.kernel[1] if contiguous_rows else padded, N_TOTAL=n_total, R_PAD=r_pad,
        R_VALID=r_valid, S_IN=spec.s_in, S_K=s_k, KH=spec.kernel[0], KW=spec.kernel[1], GROUP_ON_N=group_on_n,
        K_MAJOR=k_major, HALO=halo, PRECISION=dot_precision(a.dtype), ACTIVATION=activation,
        **interpreter_config(INTERPRETER_CONFIG))
    return (a_cl if copied else None), w_ig


# ------------------------------------------------------------------------------------------------- layouts
def permuted_weight(weight: torch.Tensor, spec, group_on_n: bool, rows_pad: int = 0, k_major: bool = False,
                    dtype=None) -> torch.Tensor:
    """The base weight ``(weight_groups·C_out, C_in, S_in, kh, kw)`` re-laid as the B operand reads it:
    ``(weight_groups, kh·kw, A_CH // S_K, S_in, R_PAD)``, the ``R_PAD`` axis zero-padded.  Forward (group copies on
    N): the ``(A_CH // S_K, S_in)`` axes are ``(i, u)`` (the reduction runs over the input's ``(i, s)`` channels)
    and ``R_PAD`` is ``o``.  Input gradient: ``(o, u)`` and ``i``.  ``k_major``: the reduction axes innermost,
    ``(weight_groups, kh·kw, R_PAD, A_CH // S_K, S_in)``.  Same size as the weight up to padding: no filter bank.
    ``rows_pad`` zero rows meet the zero channels of a padded activation (:func:`channels_last`).  In ``dtype``
    (default the weight's); one launch (:func:`permuted_weights` builds both layouts at once)."""
    layout = (rows_pad, k_major)
    fwd, ig = permuted_weights(weight, spec, dtype or weight.dtype, layout if group_on_n else None,
                               None if group_on_n else layout)
    return fwd if group_on_n else ig


def permuted_weights(weight: torch.Tensor, spec, dtype, forward_layout, input_grad_layout, halo=None):
    """The forward's and the input gradient's permuted weights (:func:`permuted_weight`), each given by its
    ``(rows_pad, k_major)`` or None (not built), written in one launch: ``(forward's or None, input gradient's or
    None)``, each as the kernel reads it.  ``halo``: :func:`halo_channels_last`'s ``(x, spec, channels)``, made by
    the same launch and returned third."""
    buffers = [None if layout is None else _weight_buffer(weight, spec, group_on_n, *layout, dtype)
               for group_on_n, layout in ((True, forward_layout), (False, input_grad_layout))]
    # converted first (a launch only when the dtypes differ): a cast in the kernel would round differently from
    # torch's under the interpreter
    weights = (weight.to(dtype), *buffers)
    copy = halo_channels_last(*halo, weights=weights) if halo is not None else permute_weights(*weights)
    views = tuple(None if buf is None else _kernel_view(buf, group_on_n, layout[1])
                  for buf, group_on_n, layout in zip(buffers, (True, False), (forward_layout, input_grad_layout)))
    return views if halo is None else (*views, copy)


def _kernel_view(buf: torch.Tensor, group_on_n: bool, k_major: bool) -> torch.Tensor:
    """A permuted weight buffer (:func:`_weight_buffer`) as the kernel reads it, dense: as stored, the input
    gradient's K-major one flattened to ``(weight_groups, kh·kw, S_in, cols·rows)``
    (:func:`_input_grad_weight_shape`)."""
    if not k_major:
        return buf
    view = buf.permute(*_K_MAJOR_ORDER[group_on_n])
    return view if group_on_n else view.flatten(3)


def _weight_shape(spec, group_on_n: bool, rows_pad: int) -> tuple[int, ...]:
    """``(weight_groups, kh·kw, rows, S_in, cols)``: the permuted weight's shape (:func:`permuted_weight`), rows
    over the reduction's channels (at least ``rows_pad``), columns over the others, padded to whole vectors."""
    rows, cols = (spec.in_channels, spec.out_channels) if group_on_n else (spec.out_channels, spec.in_channels)
    return (spec.weight_groups, spec.kernel[0] * spec.kernel[1], max(rows, rows_pad), spec.s_in, vector_padding(cols))


def _weight_buffer(weight: torch.Tensor, spec, group_on_n: bool, rows_pad: int, k_major: bool, dtype):
    """An empty ``(weight_groups, kh·kw, rows, S_in, cols)`` permuted weight (:func:`_weight_shape`), stored so when
    N-major; ``k_major``: stored ``(weight_groups, kh·kw, cols, rows, S_in)`` for the forward, element-major
    ``(weight_groups, kh·kw, S_in, cols, rows)`` for the input gradient (the same for a plain convolution)."""
    return empty_in_order(_weight_shape(spec, group_on_n, rows_pad), _K_MAJOR_ORDER[group_on_n] if k_major
                          else (0, 1, 2, 3, 4), dtype=dtype, device=weight.device)


# the storage order of a K-major permuted weight's (weight_groups, kh·kw, rows, S_in, cols) axes: the forward's,
# the input gradient's
_K_MAJOR_ORDER = {True: (0, 1, 4, 2, 3), False: (0, 1, 3, 4, 2)}


@functools.lru_cache(maxsize=256)
def slot_sources(group, in_group, kernel, device: torch.device) -> torch.Tensor:
    """``(S_out, S_in)`` int32 ``slot_src[g, u]``: the input element ``s`` whose weight slice element ``g`` reads
    from slot ``u`` (``g⁻¹·s = u``), each row the inverse of the stabilizer index's (:func:`gather_tables`)."""
    stab, _ = gather_tables(group, in_group, kernel, torch.device("cpu"))
    return torch.argsort(stab.long(), dim=1).to(device=device, dtype=torch.int32)


@functools.lru_cache(maxsize=256)
def phase_tables(kernel, stride, dilation, pad, transposed: bool, device: torch.device):
    """The window positions that reach each sub-pixel phase: ``(phase_pos (phases, kh·kw, 3), phase_count
    (phases,))`` int32.

    ``phase_pos[ph, i] = (t', dh, dw)`` for the ``i``-th window position ``t' = th·kw + tw`` reaching phase ``ph``,
    ``i < phase_count[ph]``, with the pixel shifts ``dh, dw`` of :func:`_axis_shifts`.  Forward: one phase, every
    position."""
    (kh, kw), (sh, sw), (dh_, dw_), (ph_, pw_) = kernel, stride, dilation, pad
    rows_h = _axis_shifts(kh, sh, dh_, ph_, transposed)
    rows_w = _axis_shifts(kw, sw, dw_, pw_, transposed)
    positions = torch.zeros((len(rows_h) * len(rows_w), kh * kw, 3), dtype=torch.int32)
    count = torch.zeros(len(rows_h) * len(rows_w), dtype=torch.int32)
    for ph, (row_h, row_w) in enumerate((a, b) for a in rows_h for b in rows_w):
        reach = [(th * kw + tw, row_h[th], row_w[tw]) for th in range(kh) for tw in range(kw)
                 if row_h[th] is not None and row_w[tw] is not None]
        count[ph] = len(reach)
        if reach:
            positions[ph, :len(reach)] = torch.tensor(reach, dtype=torch.int32)
    return positions.to(device), count.to(device)


def _axis_shifts(k: int, s: int, d: int, p: int, transposed: bool) -> list[list]:
    """Per-axis pixel shift of each window position, one row per phase (None where a position misses the phase).

    Forward: one phase; the input row of output row ``oh`` for position ``th`` is ``oh·stride + th·dil − pad``.
    Input gradient, phase ``rh`` (input rows ``rh + stride·j``): the output row ``j + (rh + pad − th·dil) / stride``
    when that division is exact, else the position does not reach the phase."""
    if not transposed:
        return [[t * d - p for t in range(k)]]
    return [[(r + p - t * d) // s if (r + p - t * d) % s == 0 else None for t in range(k)] for r in range(s)]


@functools.lru_cache(maxsize=256)
def position_steps(group, in_group, kernel, device: torch.device):
    """``(S_out,)`` int32 ``pos_step[g]`` with ``pos_src[g, th·kw + tw] = pos_src[g, th·kw] + tw·pos_step[g]`` for
    every window position (a rotation or reflection moves a kernel row onto a row or column of the base filter, read
    forwards or backwards), or None when some element's action is not affine along rows (or ``kw == 1``)."""
    kh, kw = kernel
    if kw == 1:
        return None
    _, source = gather_tables(group, in_group, kernel, torch.device("cpu"))
    rows = source.reshape(-1, kh, kw).long()
    step = rows[:, 0, 1] - rows[:, 0, 0]
    affine = rows[:, :, :1] + torch.arange(kw)[None, None, :] * step[:, None, None]
    return step.to(device=device, dtype=torch.int32) if torch.equal(rows, affine) else None


def vector_channels(channels: int, groups: int, group_order: int = 1) -> int:
    """How many channels per pixel a channels-last copy holds: a few (a lifting layer's RGB input) would load
    element by element, so a single channel group of fewer than a multiple of 4 is zero-padded to a multiple of 8
    (zero weight rows meet them; it costs little at that width), when whole group-index runs fit in 8."""
    return round_up(channels, 8) if (groups == 1 and channels % 4 and 8 % group_order == 0) else channels


def halo_size(spec) -> tuple[int, int]:
    """``(HP, WP)``: the rows and columns of a zero-halo copy of the input (:func:`halo_channels_last`)."""
    top, left = spec.padding[0], spec.padding[2]
    (sh, sw), (dh, dw), (kh, kw) = spec.stride, spec.dilation, spec.kernel
    hp = max(top + spec.height, (spec.out_height - 1) * sh + (kh - 1) * dh + 1)
    wp = max(left + spec.width, (spec.out_width - 1) * sw + (kw - 1) * dw + 1)
    return hp, wp


def halo_channels_last(x: torch.Tensor, spec, channels: int, weights=None) -> torch.Tensor:
    """``x (B, C, S, H, W)`` -> ``(B, HP, WP, groups·channels)`` channels-last with the convolution's zero padding in
    place: every window of every output pixel lies inside it.  ``channels >= C_in_g·S_in`` per channel group (more
    are zeros).  A contiguous copy, border and padded channels included, in one launch (:func:`padded_copy`), except
    for an unpadded input already stored channels-last: then :func:`channels_last`, a view.  ``weights``: ``(weight,
    fwd, ig)`` (:func:`~.group_conv_layouts.permute_weights`), written by the same launch (or alone)."""
    b, _, _, h, w = x.shape
    top, left = spec.padding[0], spec.padding[2]
    hp, wp = halo_size(spec)
    per_group = spec.in_channels * spec.s_in
    if (hp, wp, top, left, channels) == (h, w, 0, 0, per_group) and is_channels_last(x):
        if weights is not None:
            permute_weights(*weights)
        return channels_last(x)
    # (B, HP, WP, groups, channels / S_in, S_in) from x (B, groups, C_in_g, S_in, H, W); a narrow input's padded
    # channels are whole group-index runs (vector_channels)
    out = x.new_empty((b, hp, wp, spec.groups, channels // spec.s_in, spec.s_in))
    src = x.view(b, spec.groups, spec.in_channels, spec.s_in, h, w).permute(0, 4, 5, 1, 2, 3)
    padded_copy(out, src, (0, top, left, 0, 0, 0), weights)
    return out.view(b, hp, wp, spec.groups * channels)
