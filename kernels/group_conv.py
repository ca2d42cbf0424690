"""Implicit-GEMM group convolution: forward, input gradient and weight gradient.

Notation (``docs/kernels.md``): output element ``g``, input stabilizer index ``s``, weight stabilizer slice
``u = g⁻¹·s``, physical tap ``t'`` (a position of the k×k window) and the base-filter tap ``t = tap_src[g, t']``
that element ``g`` moves onto it.  Input pixel of output pixel ``p`` for tap ``t'``: ``q = p·stride + t'·dil − pad``.

    y[b, o, g, p]  = Σ_{t', i, s} x[b, i, s, q(p, t')] · w[o, i, g⁻¹·s, tap_src[g, t']]          (forward)
    dx[b, i, s, q] = Σ_{t', o, g} dy[b, o, g, p] · w[o, i, g⁻¹·s, tap_src[g, t']],  q = q(p, t')   (input grad)
    dw[o, i, u, t] = Σ_{copies, g, b, p} dy[b, o, g, p] · x[b, i, g·u, q(p, dest[g, t])]          (weight grad)

Forward and input gradient are one kernel, :func:`_conv_gemm_kernel`: an implicit GEMM whose A operand is an
im2col of a channels-last activation (``x`` or ``dy``, read as ``(B, H, W, C·S)``: each A row is contiguous along
the reduction, so it loads as 16-byte vectors) and whose B operand is the rotated filter, gathered tile by tile from
the base weight (a few KB, L2-resident).  The group copies sit on the GEMM's N axis (forward: ``n = (g, o)``) or
on its K axis (input gradient: ``k = (o, g)``), so one activation tile serves every group element and the filter
bank never exists: only the tile being multiplied does.  A stride-``s`` input gradient is split into ``s²``
sub-pixel phases, each a dense stride-1 GEMM over the taps that reach it (no masked-out MMAs).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._support import empty_in_order
from ._common import (INTERPRET, accumulator, cdiv, dot_precision, empty_like_layout, gather_tables, geometry_table,
                      group_tables, input_grad_buffer, maybe_autotune, mma, poison_outputs, split_pixel)

INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16)
WGRAD_INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16)


def _configs():
    # Every BLOCK_K divides 64, so every power-of-two group order up to 16 divides it (see ``HOIST``).  Short
    # channel loops (a few blocks per tap) want BLOCK_K 16 or 2 stages, else the pipeline's prologue is the loop.
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in [
                (128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                (128, 64, 32, 4, 4), (64, 64, 64, 4, 4), (128, 32, 64, 4, 4), (64, 32, 64, 4, 4),
                (64, 16, 64, 4, 4), (128, 16, 64, 4, 4), (64, 64, 32, 4, 2), (128, 64, 16, 4, 3),
                (64, 64, 16, 4, 3), (128, 256, 64, 8, 3),
            ]]


# --------------------------------------------------------------------------------------------- epilogue
ACTIVATIONS = ("none", "relu", "silu", "gelu")


@triton.jit
def apply_activation(v, ACTIVATION: tl.constexpr):
    """The fused epilogue on fp32 values: ``"none"``, ``"relu"``, ``"silu"`` or ``"gelu"`` (erf form, as F.gelu)."""
    if ACTIVATION == "relu":
        v = tl.where(v < 0.0, 0.0, v)  # keeps NaN, as F.relu
    elif ACTIVATION == "silu":
        v = v * tl.sigmoid(v)
    elif ACTIVATION == "gelu":
        v = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    return v


def preact_buffer(activation: str, return_preact: bool, y: torch.Tensor):
    """The pre-activation output of a forward launch: a tensor like ``y`` when asked for (and meaningful), else
    None.  Raises for an unknown activation."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return empty_like_layout(y.shape, y) if return_preact and activation != "none" else None


# ------------------------------------------------------------------------------- forward and input gradient
@triton.jit
def _slice_offsets(c, j, r, stab_ptr, S_IN: tl.constexpr, S_K: tl.constexpr, ROWS: tl.constexpr,
                   R_PAD: tl.constexpr, GROUP_ON_N: tl.constexpr, K_MAJOR: tl.constexpr):
    """``[BK, BN]`` offsets into the permuted weight (:func:`permuted_weight`) of reduction indices ``c`` and
    N indices ``(j, r)``, tap excluded: the channel outside the group index, ``c // S_K``, then the stabilizer
    slice ``u = g⁻¹·s`` (``stab[g, s]``), then ``r`` (``K_MAJOR``: ``r`` first).  The group element ``g`` is ``j``
    when the group copies are on N (forward: ``s = c % S_K``) and ``c % S_K`` when they are on K (input gradient:
    ``s = j``)."""
    kx = c % S_K
    if S_IN == 1 and K_MAJOR:
        # one slice: the K-major runs are then provably contiguous along K.  (N-major tiles keep the table load:
        # with the offsets all known, the compiler recomputes the folded forward's offset tile inside the loop,
        # 516 loop instructions instead of 153 for the bf16 lifting forward at 128x256x64)
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
def _tap_offsets(c, j, t, tap_src_ptr, T: tl.constexpr, S_K: tl.constexpr, TAP_STRIDE: tl.constexpr,
                 GROUP_ON_N: tl.constexpr):
    """The weight offset of base tap ``tap_src[g, t']`` for physical tap ``t'``, broadcastable to ``[BK, BN]``."""
    if GROUP_ON_N:
        return (tl.load(tap_src_ptr + j * T + t) * TAP_STRIDE)[None, :]
    else:
        return (tl.load(tap_src_ptr + (c % S_K) * T + t) * TAP_STRIDE)[:, None]


@triton.jit
def _vector_runs(w_off, VEC_B: tl.constexpr, K_MAJOR: tl.constexpr):
    """``w_off`` with the hint that runs of ``VEC_B`` offsets are contiguous and aligned: along K (``K_MAJOR``)
    or along N, so that the B tile loads as vectors."""
    if K_MAJOR:
        return tl.max_contiguous(tl.multiple_of(w_off, [VEC_B, 1]), [VEC_B, 1])
    else:
        return tl.max_contiguous(tl.multiple_of(w_off, [1, VEC_B]), [1, VEC_B])


@triton.jit
def _accumulate(acc, a, bw, PRECISION: tl.constexpr, UPCAST: tl.constexpr, TRANSPOSED: tl.constexpr):
    """``acc + a @ bw``, or with ``TRANSPOSED`` its transpose ``acc + bwᵀ @ aᵀ`` (``acc`` is then ``[N, M]``)."""
    if TRANSPOSED:
        return mma(acc, tl.trans(bw), tl.trans(a), PRECISION, UPCAST)
    else:   # in an else: a return after the branch would be compiled too (dead), with shapes that do not match
        return mma(acc, a, bw, PRECISION, UPCAST)


@triton.jit
def _weight_pointers(w_base, c, j, r, t, tap_src_ptr, stab_ptr, T: tl.constexpr, S_IN: tl.constexpr,
                     S_K: tl.constexpr, ROWS: tl.constexpr, R_PAD: tl.constexpr, TAP_STRIDE: tl.constexpr,
                     VEC_B: tl.constexpr, GROUP_ON_N: tl.constexpr, K_MAJOR: tl.constexpr):
    """The B tile's pointers for reduction indices ``c`` and tap ``t'``."""
    w_off = (_slice_offsets(c, j, r, stab_ptr, S_IN, S_K, ROWS, R_PAD, GROUP_ON_N, K_MAJOR)
             + _tap_offsets(c, j, t, tap_src_ptr, T, S_K, TAP_STRIDE, GROUP_ON_N))
    return w_base + _vector_runs(w_off, VEC_B, K_MAJOR)


@maybe_autotune(_configs(), key=["M_TOTAL", "N_TOTAL", "A_CH", "K_RUN", "S_IN", "S_K", "KH", "KW", "GROUP_ON_N",
                                 "PRECISION"],
                tiles=dict(BLOCK_M="M_TOTAL", BLOCK_N="N_TOTAL", BLOCK_K="K_RUN"),
                operands=[("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N")])
@triton.jit
def _conv_gemm_kernel(
    a_ptr, w_ptr, bias_ptr, out_ptr, z_ptr, tap_src_ptr, stab_ptr, phase_taps_ptr, phase_count_ptr, tap_step_ptr,
    M_TOTAL, MH, MW, HA, WA, HOUT, WOUT, PHASES_H, PHASES_W, WEIGHT_GROUPS,
    sab, sah, saw, sob, soj, sor, soh, sow, ASH, ASW, OSH, OSW,
    A_CH: tl.constexpr, K_RUN: tl.constexpr, N_TOTAL: tl.constexpr, R_PAD: tl.constexpr, R_VALID: tl.constexpr,
    S_IN: tl.constexpr, S_K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, GROUP_ON_N: tl.constexpr,
    VEC_A: tl.constexpr, VEC_B: tl.constexpr, K_MAJOR: tl.constexpr, WIDE: tl.constexpr, HALO: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One ``[BLOCK_M pixels, BLOCK_N]`` output tile of sub-pixel phase ``ph`` in channel group ``grp``.

    A: the activation ``a`` read channels-last, ``(B, HA, WA, groups·A_CH)`` with unit channel stride; its pixel
    for output pixel ``(mh, mw)`` and the ``i``-th tap ``t'`` that reaches phase ``ph`` is
    ``(mh·ASH + dh, mw·ASW + dw)`` with ``(t', dh, dw) = phase_taps[ph, i]``, ``i < phase_count[ph]``
    (:func:`phase_tables`).
    B: the permuted weight, ``(weight_groups, KH·KW, A_CH // S_K, S_IN, R_PAD)``, gathered per tile; ``K_MAJOR``:
    ``(weight_groups, KH·KW, R_PAD, A_CH // S_K, S_IN)``, so that a tf32 tile (tf32 MMAs read both shared-memory
    operands K-major) lands in shared memory as the MMA reads it, copied in 16-byte runs along K.
    Output: ``N_TOTAL = S_N·R_PAD`` columns ``n = (j, r)``, stored at ``j·soj + (grp·R_VALID + r)·sor`` for
    ``r < R_VALID``, pixel ``(mh·OSH + ph_h, mw·OSW + ph_w)``.  Epilogue (forward): bias, then ``ACTIVATION``;
    ``STORE_PREACT`` also writes the pre-activation to ``z_ptr``.

    ``HALO``: ``a`` carries the convolution's zero padding (:func:`halo_channels_last`; the shifts are then
    ``t'·dil``), so every tap of every pixel is in bounds and the loop checks none.

    ``K_RUN``: how many contiguous activation elements one tap row reads: ``A_CH``, or ``KW·A_CH`` in a forward whose
    pixels are ``A_CH`` elements apart with dilation 1 along W (:func:`tap_steps` must hold).  Then a narrow layer
    (``A_CH`` dividing ``BLOCK_K``) folds: one K block holds ``F = BLOCK_K // A_CH`` neighbouring taps of a kernel
    row, ``F·A_CH`` contiguous elements, so a 3-channel lifting layer does not spend most of each MMA on padding.
    The rotated filter's rows for them are the first tap's plus ``tw·tap_step[g]`` (a group acts on the tap grid by
    an affine map: :func:`tap_steps`).

    Loop order (as in Inductor's convolution template): taps outer, channels inner.  Everything that depends on
    the tap (the A rows and their bounds, the B tap offset) is computed once per tap; the inner loop is a plain
    GEMM loop over contiguous channel blocks whose B offsets are a hoisted tile plus a scalar step.
    """
    T: tl.constexpr = KH * KW
    ROWS: tl.constexpr = A_CH // S_K
    TAP_STRIDE: tl.constexpr = ROWS * S_IN * R_PAD
    ROW_STRIDE: tl.constexpr = S_IN if K_MAJOR else S_IN * R_PAD   # weight offset per channel outside the group
    HOIST: tl.constexpr = BLOCK_K % S_K == 0      # the group pattern along K repeats every block
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phases = PHASES_H * PHASES_W
    grp = tl.program_id(2) // phases
    ph_h = (tl.program_id(2) % phases) // PHASES_W
    ph_w = tl.program_id(2) % PHASES_W
    wg = grp % WEIGHT_GROUPS

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M_TOTAL
    b, mh, mw = split_pixel(m, MH, MW)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.minimum(n // R_PAD, N_TOTAL // R_PAD - 1)   # columns past N_TOTAL read a valid weight, never stored
    r = n % R_PAD
    if WIDE:  # offsets past int32 (else int32 index math: fewer instructions, no carries)
        b, mh, mw = b.to(tl.int64), mh.to(tl.int64), mw.to(tl.int64)
    kl = tl.arange(0, BLOCK_K)
    a_base = a_ptr + grp * A_CH
    w_base = w_ptr + wg * (T * TAP_STRIDE)
    if HOIST:
        slice_off = _slice_offsets(kl, j, r, stab_ptr, S_IN, S_K, ROWS, R_PAD, GROUP_ON_N, K_MAJOR)

    # tf32 MMAs read both shared-memory operands K-major: an N-major weight tile makes them run transposed,
    # out^T = w^T · a^T, where the activation tile (K-major as loaded) is the shared-memory operand
    TRANSPOSED: tl.constexpr = PRECISION == "tf32" and not K_MAJOR
    if TRANSPOSED:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    # Only the taps that reach this phase, so no branch in the loop: with one channel block per tap (a narrow
    # layer) the tap loop is the innermost loop, and stays software-pipelined (asynchronous copies)
    tap_list = phase_taps_ptr + (ph_h * PHASES_W + ph_w) * (3 * T)
    ih0 = mh * ASH      # per tap, the A rows are these plus a scalar shift: one add per row and axis
    iw0 = mw * ASW
    row0 = b * sab + ih0 * sah + iw0 * saw
    if (K_RUN > A_CH) and (A_CH < BLOCK_K) and (BLOCK_K % A_CH == 0):
        F: tl.constexpr = BLOCK_K // A_CH            # taps per K block
        GROUPS_W: tl.constexpr = (KW + F - 1) // F   # K blocks per kernel row (the last one ragged)
        tw_k = kl // A_CH                            # the tap of K index k within its block, and its channel:
        w_fold = (_slice_offsets(kl % A_CH, j, r, stab_ptr, S_IN, S_K, ROWS, R_PAD, GROUP_ON_N, K_MAJOR)
                  + tw_k[:, None] * (tl.load(tap_step_ptr + j) * TAP_STRIDE)[None, :])
        # KH·GROUPS_W blocks, counted from the tap list so that the loop is not unrolled away (a few constant
        # iterations would be), which would drop its software pipelining
        for i in range(tl.load(phase_count_ptr) // KW * GROUPS_W):
            tw0 = (i % GROUPS_W) * F
            first = tap_list + 3 * ((i // GROUPS_W) * KW + tw0)   # the forward's list holds every tap in order
            t = tl.load(first)
            dh = tl.load(first + 1)
            dw = tl.load(first + 2)
            ih = ih0 + dh
            iw = iw0[:, None] + (dw + tw_k)[None, :]
            tap_ok = (tw0 + tw_k) < KW
            if HALO:
                a_ok = m_ok[:, None] & tap_ok[None, :]
            else:
                a_ok = (m_ok & (ih >= 0) & (ih < HA))[:, None] & (iw >= 0) & (iw < WA) & tap_ok[None, :]
            if WIDE:
                dh, dw = dh.to(tl.int64), dw.to(tl.int64)
            row = tl.multiple_of(row0 + (dh * sah + dw * saw), VEC_A)
            a = tl.load(a_base + row[:, None] + kl[None, :], mask=tl.max_constancy(a_ok, [1, VEC_A]), other=0.0)
            w_off = w_fold + _tap_offsets(kl, j, t, tap_src_ptr, T, S_K, TAP_STRIDE, GROUP_ON_N)
            bw = tl.load(w_base + _vector_runs(w_off, VEC_B, K_MAJOR), mask=tap_ok[:, None], other=0.0)
            acc = _accumulate(acc, a, bw, PRECISION, UPCAST, TRANSPOSED)
    else:
        for i in range(tl.load(phase_count_ptr + ph_h * PHASES_W + ph_w)):
            t = tl.load(tap_list + 3 * i)
            dh = tl.load(tap_list + 3 * i + 1)
            dw = tl.load(tap_list + 3 * i + 2)
            ih = ih0 + dh
            iw = iw0 + dw
            if HALO:
                row_ok = m_ok
            else:
                row_ok = m_ok & (ih >= 0) & (ih < HA) & (iw >= 0) & (iw < WA)
            if WIDE:
                dh, dw = dh.to(tl.int64), dw.to(tl.int64)
            row = tl.multiple_of(row0 + (dh * sah + dw * saw), VEC_A)
            a_ptrs = a_base + row[:, None] + kl[None, :]
            if HOIST:   # B pointers for this tap: a hoisted tile, then a constant step per channel block
                w_ptrs = w_base + _vector_runs(
                    slice_off + _tap_offsets(kl, j, t, tap_src_ptr, T, S_K, TAP_STRIDE, GROUP_ON_N), VEC_B, K_MAJOR)
            for k0 in range(0, A_CH, BLOCK_K):
                c = k0 + kl
                if not HOIST:
                    w_ptrs = _weight_pointers(w_base, c, j, r, t, tap_src_ptr, stab_ptr, T, S_IN, S_K, ROWS,
                                              R_PAD, TAP_STRIDE, VEC_B, GROUP_ON_N, K_MAJOR)
                if A_CH % BLOCK_K == 0:
                    a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                    bw = tl.load(w_ptrs)
                else:  # a ragged last block: the mask is constant over runs of VEC_A (A_CH is a multiple of it),
                    # which keeps the loads 16-byte vectors
                    k_ok = tl.max_constancy(c < A_CH, VEC_A)
                    a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                    bw = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
                acc = _accumulate(acc, a, bw, PRECISION, UPCAST, TRANSPOSED)
                a_ptrs += BLOCK_K
                if HOIST:
                    w_ptrs += (BLOCK_K // S_K) * ROW_STRIDE

    oh = mh * OSH + ph_h
    ow = mw * OSW + ph_w
    m_ok = m_ok & (oh < HOUT) & (ow < WOUT)
    n_ok = (n < N_TOTAL) & (r < R_VALID)
    if TRANSPOSED:
        acc = tl.trans(acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + wg * R_VALID + r, mask=n_ok, other=0.0).to(ACC)[None, :]
    col = j * soj + (grp * R_VALID + r) * sor
    if WIDE:
        col = j.to(tl.int64) * soj + (grp * R_VALID + r).to(tl.int64) * sor
    out_off = (b * sob + oh * soh + ow * sow)[:, None] + col[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if STORE_PREACT:
        tl.store(z_ptr + out_off, acc.to(z_ptr.dtype.element_ty), mask=mask)
    acc = apply_activation(acc, ACTIVATION)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------ weight gradient
# The reduction block, fixed (not tuned) so that the reduction order, and so every bit of dw, never depends on
# tuning.  fp64 MMAs keep whole operand tiles in registers: a shorter block keeps them from spilling.
WGRAD_BLOCK_R = 64
WGRAD_BLOCK_R_FP64 = 16


def wgrad_block_r(dtype: torch.dtype) -> int:
    return WGRAD_BLOCK_R_FP64 if dtype == torch.float64 else WGRAD_BLOCK_R


def _wgrad_configs():
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
@maybe_autotune(_wgrad_configs(), key=["R_TOTAL", "M_CH", "O_PAD", "S_IN", "S_OUT", "KH", "KW", "COPIES", "PRECISION"],
                tiles=dict(BLOCK_M="M_CH", BLOCK_N="O_PAD"),
                operands=[("BLOCK_R", "BLOCK_M"), ("BLOCK_R", "BLOCK_N")])
@triton.jit
def _weight_grad_kernel(
    x_ptr, dy_ptr, pix_ptr, dw_ptr, in_index_ptr, tap_dh_ptr, tap_dw_ptr,
    R_TOTAL, R_PER_SPLIT, R_ALLOC, WEIGHT_GROUPS, COPIES, sxh, sxw, dil_h, dil_w,
    M_CH: tl.constexpr, X_CH: tl.constexpr, C_OUT_G: tl.constexpr, O_PAD: tl.constexpr,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, VEC_X: tl.constexpr,
    WIDE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``dw`` of base tap ``t`` for a ``[BLOCK_M (i, u), BLOCK_N o]`` tile of weight slice ``wg``, summed over the
    pixels of split ``pid_s``, every group element ``g`` and the channel groups sharing the slice.

    ``x``: a zero-halo channels-last copy ``(B, HP, WP, groups·X_CH)`` (unit channel stride, ``X_CH >= M_CH =
    C_in_g·S_in`` channels per group, the padding already in place), so that no tap reads out of bounds.
    ``pix``: ``(R_ALLOC,)``, the x offset of output pixel ``r``'s window corner ``(b, oh·stride, ow·stride)``
    (0 past ``R_TOTAL``).  ``dy``: ``(R_ALLOC, groups, S_out, O_PAD)`` contiguous, zero past ``R_TOTAL``.  Then the x
    row of pixel ``r`` under tap ``t`` moved by ``g`` is ``pix[r] + shift[g, t]`` (``shift`` one scalar per ``g``),
    every pixel block is whole, and the hot loop is a plain GEMM loop: a table load, two contiguous tile loads and
    an MMA, with no pixel decomposition and no bounds.

    For element ``g`` the x tile is read in its own channel order ``(i, s)`` and multiplied into ``acc_g``; the rows
    are then moved to the weight's order ``(i, u)``, ``s = g·u``, by an in-register gather, once per ``g`` and not
    per pixel block.  The group copies are reduction: no filter-bank gradient, no scatter, no atomic.
    """
    T: tl.constexpr = KH * KW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    t = tl.program_id(2) % T
    wg = (tl.program_id(2) // T) % WEIGHT_GROUPS
    pid_s = tl.program_id(2) // (T * WEIGHT_GROUPS)

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
    dy_pixel = S_OUT * O_PAD * COPIES * WEIGHT_GROUPS
    if WIDE:
        r_start = r_start.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for copy in range(COPIES):
        grp = wg + copy * WEIGHT_GROUPS
        for g in range(S_OUT):
            th = tl.load(tap_dh_ptr + g * T + t)
            tw = tl.load(tap_dw_ptr + g * T + t)
            if WIDE:
                th, tw = th.to(tl.int64), tw.to(tl.int64)
            shift = (th * dil_h) * sxh + (tw * dil_w) * sxw
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

    row = pid_s * WEIGHT_GROUPS * C_OUT_G + wg * C_OUT_G + o          # row of the (split, C_out) stack
    dw_off = row.to(tl.int64)[None, :] * (M_CH * T) + (m * T + t)[:, None]
    tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty), mask=m_ok[:, None] & (o < C_OUT_G)[None, :])


# ----------------------------------------------------------------------------------------------- launchers
def _dtype_flags(dtype: torch.dtype):
    return dict(PRECISION=dot_precision(dtype), UPCAST=INTERPRET and dtype in (torch.float16, torch.bfloat16))


def _meta(config=INTERPRETER_CONFIG):
    """The launch's fixed blocks under the interpreter (nothing to tune there); on a GPU the autotuner picks."""
    return dict(config) if INTERPRET else {}


def _round_up(value: int, multiple: int) -> int:
    return cdiv(value, multiple) * multiple


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether ``t (B, C, S, H, W)`` has ``(C, S)`` innermost with unit stride (readable as ``(B, H, W, C·S)``)."""
    _, c, s, _, _ = t.shape
    return (s == 1 or t.stride(2) == 1) and (c == 1 or t.stride(1) == s)


def channels_last(t: torch.Tensor, channels: int = 0) -> torch.Tensor:
    """``(B, C, S, H, W)`` -> a ``(B, H, W, C·S)`` view with unit channel stride: free when ``(C, S)`` already sit
    innermost (an input stored ``(B, H, W, C, S)``, including strided views of one), a copy otherwise.  With
    ``channels > C·S``, a copy zero-padded to that many channels (so a narrow input still loads as vectors)."""
    b, c, s, h, w = t.shape
    if channels > c * s:
        out = t.new_zeros((b, h, w, channels))
        out[..., :c * s] = t.permute(0, 3, 4, 1, 2).reshape(b, h, w, c * s)
        return out
    if not is_channels_last(t):
        t = t.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    # a size-1 axis is only ever indexed at 0: stride 0, so that its arbitrary stride (1 in a contiguous 1x1 map)
    # does not hide that every pixel starts 16-byte aligned
    strides = [st if n > 1 else 0 for n, st in zip((b, h, w), (t.stride(0), t.stride(3), t.stride(4)))]
    return t.as_strided((b, h, w, c * s), (*strides, 1))


def permuted_weight(weight: torch.Tensor, spec, group_on_n: bool, rows_pad: int = 0,
                    k_major: bool = False) -> torch.Tensor:
    """The base weight ``(weight_groups·C_out, C_in, S_in, kh, kw)`` re-laid as the B operand reads it:
    ``(weight_groups, kh·kw, A_CH // S_K, S_in, R_PAD)``, the ``R_PAD`` axis zero-padded.  Forward (group copies on
    N): the ``(A_CH // S_K, S_in)`` axes are ``(i, u)`` (the reduction runs over the input's ``(i, s)`` channels)
    and ``R_PAD`` is ``o``.  Input gradient: ``(o, u)`` and ``i``.  ``k_major``: the reduction axes innermost,
    ``(weight_groups, kh·kw, R_PAD, A_CH // S_K, S_in)``.  Same size as the weight up to padding: no filter bank.
    ``rows_pad`` zero rows meet the zero channels of a padded activation (:func:`channels_last`)."""
    kh, kw = spec.kernel
    c_out, c_in, s_in = spec.out_channels, spec.in_channels, spec.s_in
    rows, cols = (c_in, c_out) if group_on_n else (c_out, c_in)
    w = weight.reshape(spec.weight_groups, c_out, c_in, s_in, kh * kw)
    w = w.permute(0, 4, 2, 3, 1) if group_on_n else w.permute(0, 4, 1, 3, 2)
    # pad the contiguous axis to a multiple of 8 (4 or fewer columns: to a power of two) for 16-byte vector loads
    r_pad = _round_up(cols, min(8, 1 << (cols - 1).bit_length()))
    shape = (spec.weight_groups, kh * kw, max(rows, rows_pad), s_in, r_pad)
    # built in its final memory order in one copy; zero-filled first only when some rows or columns are padding
    padded = shape[2] != rows or r_pad != cols
    order = (0, 1, 4, 2, 3) if k_major else (0, 1, 2, 3, 4)
    out = empty_in_order(shape, order, dtype=weight.dtype, device=weight.device)
    if padded:
        out.zero_()
    out[:, :, :rows, :, :cols] = w
    return out.permute(order) if k_major else out   # k_major: (weight_groups, kh·kw, R_PAD, A_CH // S_K, S_in)


@functools.lru_cache(maxsize=256)
def phase_tables(kernel, stride, dilation, pad, transposed: bool, device: torch.device):
    """The taps that reach each sub-pixel phase: ``(phase_taps (phases, kh·kw, 3), phase_count (phases,))`` int32.

    ``phase_taps[ph, i] = (t', dh, dw)`` for the ``i``-th tap ``t' = th·kw + tw`` reaching phase ``ph``, ``i <
    phase_count[ph]``, with the pixel shifts ``dh, dw`` of :func:`_axis_shifts`.  Forward: one phase, every tap."""
    (kh, kw), (sh, sw), (dh_, dw_), (ph_, pw_) = kernel, stride, dilation, pad
    rows_h = _axis_shifts(kh, sh, dh_, ph_, transposed)
    rows_w = _axis_shifts(kw, sw, dw_, pw_, transposed)
    taps = torch.zeros((len(rows_h) * len(rows_w), kh * kw, 3), dtype=torch.int32)
    count = torch.zeros(len(rows_h) * len(rows_w), dtype=torch.int32)
    for ph, (row_h, row_w) in enumerate((a, b) for a in rows_h for b in rows_w):
        reach = [(th * kw + tw, row_h[th], row_w[tw]) for th in range(kh) for tw in range(kw)
                 if row_h[th] is not None and row_w[tw] is not None]
        count[ph] = len(reach)
        if reach:
            taps[ph, :len(reach)] = torch.tensor(reach, dtype=torch.int32)
    return taps.to(device), count.to(device)


def _axis_shifts(k: int, s: int, d: int, p: int, transposed: bool) -> list[list]:
    """Per-axis pixel shift of each tap, one row per phase (None where a tap misses the phase).

    Forward: one phase; the input row of output row ``oh`` for tap ``th`` is ``oh·stride + th·dil − pad``.
    Input gradient, phase ``rh`` (input rows ``rh + stride·j``): the output row ``j + (rh + pad − th·dil) / stride``
    when that division is exact, else the tap does not reach the phase."""
    if not transposed:
        return [[t * d - p for t in range(k)]]
    return [[(r + p - t * d) // s if (r + p - t * d) % s == 0 else None for t in range(k)] for r in range(s)]


@functools.lru_cache(maxsize=256)
def tap_steps(group, in_group, kernel, device: torch.device):
    """``(S_out,)`` int32 ``tap_step[g]`` with ``tap_src[g, th·kw + tw] = tap_src[g, th·kw] + tw·tap_step[g]`` for every
    window position (a rotation or reflection moves a kernel row onto a row or column of the base filter, read
    forwards or backwards), or None when some element's action is not affine along rows (or ``kw == 1``)."""
    kh, kw = kernel
    if kw == 1:
        return None
    _, source = gather_tables(group, in_group, kernel, torch.device("cpu"))
    rows = source.reshape(-1, kh, kw).long()
    step = rows[:, 0, 1] - rows[:, 0, 0]
    affine = rows[:, :, :1] + torch.arange(kw)[None, None, :] * step[:, None, None]
    return step.to(device=device, dtype=torch.int32) if torch.equal(rows, affine) else None


def _vector_channels(channels: int, groups: int, group_order: int = 1) -> int:
    """How many channels per pixel a channels-last copy holds: a few (a lifting layer's RGB input) would load
    element by element, so a single channel group of fewer than a multiple of 4 is zero-padded to a multiple of 8
    (zero weight rows meet them; it costs little at that width), when whole group-index runs fit in 8."""
    return _round_up(channels, 8) if (groups == 1 and channels % 4 and 8 % group_order == 0) else channels


def _vector_width(elem_size: int, *values: int) -> int:
    """The largest power of two, up to 16 bytes of elements, dividing every value (offsets the hints vouch for)."""
    v = max(1, 16 // elem_size)
    while v > 1 and any(x % v for x in values):
        v //= 2
    return v


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether some element offset of these tensors passes int32 (then every offset is computed in int64)."""
    return any(sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) >= 2**31 - 1 for t in tensors)


def _launch_gemm(a: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, spec, *, group_on_n: bool, bias=None,
                 z=None, activation: str = "none"):
    """Launch :func:`_conv_gemm_kernel`: the forward (``group_on_n``; ``a = x``, ``out = y``) or the input
    gradient (``a = dy``, ``out = dx``), both 5-D ``(B, C, S, H, W)`` in any layout."""
    (sh, sw) = spec.stride
    pad = (spec.padding[0], spec.padding[2])
    if group_on_n:
        a_ch, s_k, s_n, r_valid = spec.in_channels * spec.s_in, spec.s_in, spec.s_out, spec.out_channels
        mh, mw, phases, pixel_stride, out_stride = spec.out_height, spec.out_width, (1, 1), (sh, sw), (1, 1)
    else:
        a_ch, s_k, s_n, r_valid = spec.out_channels * spec.s_out, spec.s_out, spec.s_in, spec.in_channels
        mh, mw, phases = cdiv(spec.height, sh), cdiv(spec.width, sw), (sh, sw)
        pixel_stride, out_stride = (1, 1), (sh, sw)
    padded = _vector_channels(a_ch, spec.groups, s_k)
    # A forward that copies its input anyway copies it with the zero padding in place: no bounds in the loop
    halo = group_on_n and input_copy_shape(a, spec) is not None
    if halo:
        a_cl, pad = halo_channels_last(a, spec, padded), (0, 0)
    else:
        a_cl = channels_last(a, padded)
    # tf32 MMAs read both shared-memory operands K-major: the weight is laid out so where its K runs are
    # contiguous, as they are when neither the stabilizer slice nor the tap changes along K (a plain input, and for
    # the input gradient a plain output too); elsewhere the kernel runs the MMA transposed
    k_major = dot_precision(a.dtype) == "tf32" and spec.s_in == 1 and (group_on_n or spec.s_out == 1)
    w = permuted_weight(weight.to(a.dtype), spec, group_on_n, padded // s_k, k_major)
    a_ch = padded
    stab, tap_src = gather_tables(spec.group, spec.in_group, spec.kernel, a.device)
    ob, oc, os_, oh, ow = out.stride()
    phase_taps, phase_count = phase_tables(spec.kernel, spec.stride, spec.dilation, pad, not group_on_n, a.device)
    # A narrow forward folds neighbouring taps of a kernel row into one K block where they are contiguous
    steps = tap_steps(spec.group, spec.in_group, spec.kernel, a.device) if group_on_n else None
    k_run = a_ch * spec.kernel[1] if (steps is not None and spec.dilation[1] == 1 and a_cl.stride(2) == a_ch) else a_ch
    r_pad = w.shape[2 if k_major else -1]
    vec_b = _vector_width(w.element_size(), a_ch if k_major else r_pad)   # B vectors along K, else along N
    n_total = s_n * r_pad
    m_total = spec.batch * mh * mw

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_M"]), cdiv(n_total, meta["BLOCK_N"]), spec.groups * phases[0] * phases[1])

    _conv_gemm_kernel[grid](
        a_cl, w, bias if bias is not None else w, out, z if z is not None else out, tap_src, stab, phase_taps,
        phase_count, phase_count if steps is None else steps,
        m_total, mh, mw, a_cl.shape[1], a_cl.shape[2], out.shape[3], out.shape[4], phases[0], phases[1],
        spec.weight_groups, *a_cl.stride()[:3], ob, os_, oc, oh, ow, *pixel_stride, *out_stride,
        A_CH=a_ch, K_RUN=k_run, N_TOTAL=n_total, R_PAD=r_pad, R_VALID=r_valid, S_IN=spec.s_in,
        S_K=s_k, KH=spec.kernel[0], KW=spec.kernel[1], GROUP_ON_N=group_on_n,
        VEC_A=_vector_width(a.element_size(), *a_cl.stride()[:3], a_ch), VEC_B=vec_b, K_MAJOR=k_major,
        WIDE=_needs_int64(a_cl, out), HALO=halo, HAS_BIAS=bias is not None, ACC=accumulator(a.dtype),
        ACTIVATION=activation, STORE_PREACT=z is not None, **_dtype_flags(a.dtype), **_meta())
    return a_cl if halo else None


def forward(x: torch.Tensor, weight: torch.Tensor, bias, spec, activation: str = "none",
            return_preact: bool = False, return_input_copy: bool = False):
    """``x (B, groups·C_in_g, S_in, H, W)``, weight ``(weight_groups·C_out_g, C_in_g, S_in, kh, kw)`` ->
    ``y (B, groups·C_out_g, S_out, H_out, W_out)`` in ``x``'s memory layout, ``y = activation(conv + bias)``.
    With ``return_preact``, also ``z``, the pre-activation (None for ``"none"``); with ``return_input_copy``, also
    the channels-last copy of ``x`` the kernel read (shape :func:`input_copy_shape`; None when it read ``x`` in
    place), which :func:`weight_grad` takes instead of copying ``x`` again: ``y``, ``(y, z)``, ``(y, copy)`` or
    ``(y, z, copy)``."""
    y = empty_like_layout((spec.batch, spec.groups * spec.out_channels, spec.s_out, spec.out_height,
                           spec.out_width), x)
    z = preact_buffer(activation, return_preact, y)
    copy = None
    if y.numel() != 0:
        copy = _launch_gemm(x, weight, y, spec, group_on_n=True, bias=None if bias is None else bias.contiguous(),
                            z=z, activation=activation)
    return _forward_result(y, z, copy, return_preact, return_input_copy)


def _forward_result(y, z, copy, return_preact: bool, return_input_copy: bool):
    """What :func:`forward` returns for its two flags."""
    out = (y,) + ((z,) if return_preact else ()) + ((copy,) if return_input_copy else ())
    return out if len(out) > 1 else y


def input_grad(dy: torch.Tensor, weight: torch.Tensor, spec, order) -> torch.Tensor:
    """``dy (B, groups·C_out_g, S_out, H_out, W_out)`` -> ``dx (B, groups·C_in_g, S_in, H, W)`` stored in dim
    ``order`` (the input's: ``gconv_triton._layout.dim_order(x)``)."""
    dx = input_grad_buffer(spec, order, dy)
    if dx.numel() != 0:
        _launch_gemm(dy, weight, dx, spec, group_on_n=False)
    return dx


def weight_split(spec, reduction: int, tiles: int, weight_numel: int) -> int:
    """How many pixel ranges the weight-gradient reduction is cut into, so that small weights still fill a GPU.

    The partial sums go to a ``(split, *weight.shape)`` fp32 workspace summed afterwards in a fixed order
    (deterministic).  The workspace stays under half the filter bank, so it never costs what the bank would.
    """
    if INTERPRET:
        return 1 if reduction < 64 else 2  # exercise the split path on the small test shapes
    split = max(1, min(cdiv(264, tiles), cdiv(reduction, 4096), 64))
    if spec.s_out > 1:
        split = max(1, min(split, spec.bank_numel() // (2 * weight_numel)))
    return split


def halo_size(spec) -> tuple[int, int]:
    """``(HP, WP)``: the rows and columns of a zero-halo copy of the input (:func:`halo_channels_last`)."""
    top, left = spec.padding[0], spec.padding[2]
    (sh, sw), (dh, dw), (kh, kw) = spec.stride, spec.dilation, spec.kernel
    hp = max(top + spec.height, (spec.out_height - 1) * sh + (kh - 1) * dh + 1)
    wp = max(left + spec.width, (spec.out_width - 1) * sw + (kw - 1) * dw + 1)
    return hp, wp


def halo_channels_last(x: torch.Tensor, spec, channels: int) -> torch.Tensor:
    """``x (B, C, S, H, W)`` -> ``(B, HP, WP, groups·channels)`` channels-last with the convolution's zero padding in
    place: every window of every output pixel lies inside it.  ``channels >= C_in_g·S_in`` per channel group (more
    are zeros).  A contiguous copy, except for an unpadded input already stored channels-last: then
    :func:`channels_last`, a view."""
    b, _, _, h, w = x.shape
    top, left = spec.padding[0], spec.padding[2]
    hp, wp = halo_size(spec)
    per_group = spec.in_channels * spec.s_in
    if (hp, wp, top, left, channels) == (h, w, 0, 0, per_group) and is_channels_last(x):
        return channels_last(x)
    if channels > per_group:   # a narrow input: the padded channels are most of the copy
        out = x.new_zeros((b, hp, wp, spec.groups, channels))
    else:                      # zeros only where no pixel of x lands (poisoned first, so a missed one shows)
        out = x.new_empty((b, hp, wp, spec.groups, channels))
        if poison_outputs():
            out.fill_(float("nan"))
        _zero_border(out.view(b, hp * wp * spec.groups * channels), (hp, wp), (top, left), (h, w),
                     spec.groups * channels)
    out[:, top:top + h, left:left + w, :, :per_group] = (
        x.permute(0, 3, 4, 1, 2).reshape(b, h, w, spec.groups, per_group))
    return out.view(b, hp, wp, spec.groups * channels)


def _zero_border(flat: torch.Tensor, size, corner, inner, pixel: int) -> None:
    """Zero the pixels of ``flat`` (``(B, HP·WP·pixel)``, each image ``HP × WP`` pixels of ``pixel`` elements) outside
    the ``inner = (H, W)`` rectangle at ``corner = (top, left)``, in two or three launches: per image, the head
    (rows above, and the left border of the first inner row) with the tail (the right border of the last inner row,
    and the rows below) when both have one length, else apart; and the runs from one inner row's right border to
    the next one's left border."""
    (hp, wp), (top, left), (h, w) = size, corner, inner
    if h == 0 or w == 0:
        flat.zero_()
        return
    image, row = hp * wp * pixel, wp * pixel
    head = (top * wp + left) * pixel
    tail_start = ((top + h - 1) * wp + left + w) * pixel
    tail = image - tail_start
    base = flat.storage_offset()

    def zero(shape, strides, start):
        if all(n > 0 for n in shape):
            flat.as_strided(shape, strides, base + start).zero_()

    if head == tail:
        zero((flat.shape[0], 2, head), (image, tail_start, 1), 0)
    else:
        zero((flat.shape[0], head), (image, 1), 0)
        zero((flat.shape[0], tail), (image, 1), tail_start)
    zero((flat.shape[0], h - 1, (wp - w) * pixel), (image, row, 1), (top * wp + left + w) * pixel)


def input_copy_shape(x: torch.Tensor, spec):
    """The shape of the channels-last copy of ``x`` that :func:`forward` makes and returns for :func:`weight_grad`
    to reuse, ``(B, HP, WP, groups·channels)`` (:func:`halo_channels_last`), or None when it reads ``x`` in place
    (an unpadded input already stored channels-last) or launches nothing."""
    a_ch = spec.in_channels * spec.s_in
    padded = _vector_channels(a_ch, spec.groups, spec.s_in)
    if spec.batch * spec.groups * spec.out_channels * spec.s_out * spec.out_height * spec.out_width == 0:
        return None
    if padded == a_ch and is_channels_last(x):
        return None
    return (spec.batch, *halo_size(spec), spec.groups * padded)


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


def weight_grad(dy: torch.Tensor, x: torch.Tensor, spec, weight_shape, x_copy=None) -> torch.Tensor:
    """``dy`` and the 5-D input ``x`` -> ``dw`` of ``weight_shape`` (fp32 accumulation, then x's dtype).

    ``dy`` is re-laid ``(B·H_out·W_out, groups, S_out, C_out padded to 8)``, rounded up to whole pixel blocks with
    zeros (one copy of ``dy``); ``x`` is read from a zero-halo channels-last copy: ``x_copy``, the one
    :func:`forward` made, when given, else :func:`halo_channels_last` (a copy unless unpadded and channels-last
    already), with a narrow lifting input padded to 8 channels."""
    in_index, _, tap_dh, tap_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    kh, kw = spec.kernel
    r_total = spec.batch * spec.out_height * spec.out_width
    m_ch = spec.in_channels * spec.s_in
    weight_numel = spec.weight_groups * spec.out_channels * m_ch * kh * kw
    split = weight_split(spec, r_total, cdiv(m_ch, 64) * cdiv(spec.out_channels, 64) * spec.weight_groups * kh * kw,
                         weight_numel)
    block_r = wgrad_block_r(x.dtype)
    r_per_split = cdiv(cdiv(r_total, split), block_r) * block_r
    split = max(1, cdiv(r_total, r_per_split)) if r_total else 1
    partial_dtype = torch.promote_types(x.dtype, torch.float32) if split > 1 else x.dtype
    partial = torch.empty((split, *weight_shape), dtype=partial_dtype, device=x.device)
    if r_total == 0:
        return partial.zero_().sum(0).to(x.dtype)
    c_out = spec.out_channels
    o_pad = _round_up(c_out, min(8, 1 << (c_out - 1).bit_length()))
    r_alloc = _round_up(r_total, block_r)
    # One strided copy; zeros only in the rows past the last pixel (they meet real x rows).  The padded channels
    # are left as they are (NaN when poisoned): dw's column o reads dy's column o only, and is stored for o < C_out.
    dy_go = dy.new_empty((r_alloc, spec.groups, spec.s_out, o_pad))
    if poison_outputs():
        dy_go.fill_(float("nan"))
    b, ho, wo = spec.batch, spec.out_height, spec.out_width
    dy_go[:r_total].view(b, ho, wo, spec.groups, spec.s_out, o_pad)[..., :c_out].copy_(
        dy.view(b, spec.groups, c_out, spec.s_out, ho, wo).permute(0, 4, 5, 1, 3, 2))
    if r_alloc > r_total:
        dy_go[r_total:].zero_()
    if x_copy is None:
        x_ch = _vector_channels(m_ch, spec.groups)   # the padded channels give zero rows of dw, not stored
        x_cl = halo_channels_last(x, spec, x_ch)
    else:
        x_ch, x_cl = x_copy.shape[-1] // spec.groups, x_copy
        expected = (spec.batch, *halo_size(spec))
        if tuple(x_copy.shape[:3]) != expected or x_ch < m_ch or x_copy.stride(-1) != 1:
            raise ValueError(f"x_copy: expected forward's copy of x, shape ({', '.join(map(str, expected))}, "
                             f"groups·channels >= {spec.groups * m_ch}) with unit channel stride, got shape "
                             f"{tuple(x_copy.shape)} strides {x_copy.stride()}")
    wide = _needs_int64(x_cl, dy_go)
    pix = _window_offsets(x_cl, spec, r_alloc, wide)

    def grid(meta):
        rows = meta["BLOCK_M"] // spec.s_in * spec.s_in
        return (cdiv(m_ch, rows), cdiv(o_pad, meta["BLOCK_N"]), kh * kw * spec.weight_groups * split)

    _weight_grad_kernel[grid](
        x_cl, dy_go, pix, partial, in_index, tap_dh, tap_dw,
        r_total, r_per_split, r_alloc, spec.weight_groups, spec.groups // spec.weight_groups,
        *x_cl.stride()[1:3], *spec.dilation,
        M_CH=m_ch, X_CH=x_ch, C_OUT_G=c_out, O_PAD=o_pad, S_IN=spec.s_in,
        S_OUT=spec.s_out, KH=kh, KW=kw, VEC_X=_vector_width(x.element_size(), *x_cl.stride()[:3], x_ch),
        WIDE=wide, ACC=accumulator(x.dtype), BLOCK_R=block_r, **_dtype_flags(x.dtype),
        **_meta(WGRAD_INTERPRETER_CONFIG))
    return partial[0] if split == 1 else partial.sum(0).to(x.dtype)
