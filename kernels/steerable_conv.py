"""Steerable (C_N / D_N) group convolution as implicit GEMMs that steer the filter inside the kernel: forward,
input gradient and coefficient (weight) gradient.  No filter bank exists, in memory or in a launch.

Notation (``gconv_triton.steerable``): coefficients ``c (C_out, C_in, S_in, B)``, per-element tables
``Ψ (S_out, B, P)`` with ``P = k·k`` window positions, ``index[g, s] = index(g⁻¹ s)`` (``(S_out, S_in)``).  The
rotated filter of output element ``g`` is ``W_g[o, i, s, p] = Σ_b c[o, i, index[g, s], b] · Ψ[g, b, p]``, and with
``q(m, p) = m·stride − pad + p·dilation`` (per axis; ``p = (kh, kw)``):

    y[n, o, g, m]  = Σ_{i, s, p} x[n, i, s, q(m, p)] · W_g[o, i, s, p]                            (forward)
    dx[n, i, s, u] = Σ_{g, o, p} dy[n, o, g, m] · W_g[o, i, s, p]    over m with q(m, p) = u      (input grad)
    dc[o, i, r, b] = Σ_g Σ_p Ψ[g, b, p] · Σ_{n, m} dy[n, o, g, m] · x[n, i, s(g, r), q(m, p)]     (coefficient grad)

where ``s(g, r)`` is the input element with ``index[g, s] = r`` (``index[g]`` is a permutation).

The loops (one program per output tile; every reduction in registers, in a fixed order: deterministic, no atomics).
The GEMMs run transposed, channels × pixels: the steered filter is computed in registers, and a register operand
can only be a dot's A operand on Hopper (wgmma reads B from shared memory), so ``W`` is A and the gathered window
is B; on sm_90 both dots compile to wgmma.

- **Forward, channels-last window** (regular C_8, C_16 and D_8 fields in fp16, bf16 and fp32 on tf32 dots:
  ``channels_last_window``), program ``(BLOCK_M pixels, BLOCK_N output columns, element block)`` on ``x``
  channels-last (``(B, H, W, C_in, S_in)`` in memory: the launcher copies it so, zero-padded, so that the window
  needs no bounds masks, unless it already is).  The ``BLOCK_N`` columns are ``(g, o)``, ``BLOCK_G`` output
  elements × ``BLOCK_O`` channels, ``o`` fastest (``_element_block``: several elements where ``C_out`` is narrow,
  so that every window read serves all of them).  K steps over ``(i, 16 window positions)``, each ``(p, s)`` wide
  with ``s`` fastest, so that a (pixel, position) reads ``S_in`` contiguous elements (16-byte vector loads,
  ``cp.async``).  The step's filter is one batched dot, ``W_g ((p, s) × O) = Ψ[g]ᵀ (16 × B) @ Cᵗ_g (B × (s,
  o))`` per element with ``Cᵗ_g[b, (s, o)] = c[o, i, index[g, s], b]`` (read once per ``i`` from the
  coefficients transposed to ``(C_in, S_in, B, C_out)`` by the launcher), permuted to ``W ((p, s) × (g, o))``;
  then ``y (M × (g, o)) += X (M × (p, s)) @ W``.
- **Forward, lifting** (``S_in = 1``, the folded reduction ``(kh, i, kw)`` at most ``MAX_LIFTING_K``), program
  ``(TILES pixel tiles, output channel block, element block)``: the filter ``W ((kh, i, kw) × (o, g))`` is
  steered once, then each tile is one dot ``y (M × (o, g)) = X @ W`` on ``x`` unfolded along the width by the
  launcher (``KW_PAD`` contiguous elements per (pixel, kh, i)), stored into ``y`` laid out ``(B, H', W', C_out,
  S_out)`` (a pixel's outputs contiguous: 16-byte vector stores).
- **Forward**, other inputs (fp64, exact fp32, wider lifting layers), program ``(BLOCK_M output pixels (n, m),
  BLOCK_N output rows (g, o), element block)``, the rows split as above (``BLOCK_O ≥ 16``).  ``Ψ[g]`` (``B ×
  P``) of the block's elements is loaded once.  K steps over ``(i, s)``: the steering dot, batched over the
  elements, ``Wᵀ_g (O × P) = Cᵀ_g (O × B) @ Ψ[g]`` with ``Cᵀ_g[o, b] = c[o, i, index[g, s], b]`` (one tile for
  all elements in a lifting layer, ``index[g, 0] = 0``), rounded to the input dtype, is ``Wᵀ ((g, o) × P)`` in
  order; then the main dot ``yᵀ ((g, o) × M) += Wᵀ @ X (P × M)``, ``X[p, m] = x[n, i, s, q(m, p)]`` gathered
  (masked: zeros padding) once for all the elements.
- **Input gradient, channels-last ``dy``** (fp16, bf16, tf32: ``channels_last_gradients``), program ``(BLOCK_M
  input pixels, BLOCK_N input channels i, input element s)`` on ``dy`` copied to ``(B, S_out, H', W', C_out)``
  (``C_out`` padded to 16 bytes).  K steps over ``(g, O_STEP output channels, P_CHUNK positions)``, ``(p, o)`` with
  ``o`` fastest (one 16-byte load per (pixel, position)); the step's filter ``W ((p, o) × I) = Ψ[g]ᵀ @ Cᵗ (B × (o,
  i))`` reshaped in order, then ``dx (M × I) += dY (M × (p, o)) @ W``.  The output pixel of (input pixel ``u``,
  position ``p``) is ``m = (u + pad − p·dilation) / stride``, masked where it is not whole or out of range; these
  offsets and masks are computed once per position chunk, outside the loop over ``(g, o)`` (split in two on
  sm_90, so that ``Ψ[g]``'s chunk loads once per ``g``).
- **Input gradient**, fp64 and exact fp32, program ``(BLOCK_M input pixels (n, u), BLOCK_N input channels i, input
  element s)``: the same GEMM as the forward with the channel roles swapped.  K steps over ``(g, o)`` (``Ψ[g]``
  loaded per ``g``): ``Wᵀ (I × P) = Cᵀ (I × B) @ Ψ[g]`` with ``Cᵀ[i, b] = c[o, i, index[g, s], b]``, then
  ``dxᵀ (I × M) += Wᵀ @ dY (P × M)``, ``dY[p, u] = dy[n, o, g, m]`` gathered with the same masks (on
  divisibility: a stride ``s`` keeps about ``1/s²`` of the positions live, the rest are multiplied as zeros).
- **Coefficient gradient, channels-last ``x``** (fp16, bf16, tf32, orders powers of two), program ``(BLOCK_O
  output channels, input channel i)`` on ``x`` channels-last with the zeros padding in place (the window needs no
  bounds masks) and ``dy`` as ``(C_out·S_out, pixels)``: per chunk of window positions one dot over all pixels
  holds every group copy and input element, ``dW ((o, g) × (p, s)) = Σ_chunks dY ((o, g) × M) @ X (M × (p, s))``
  (the window read once for all ``g``, ``S_in`` contiguous elements per (pixel, position); each pixel's window
  corner read from a table, not divided out), then ``dc[o, r, b] += Σ_{g, p} dW[(o, g), (p, s(g, r))] · Ψ[g, b,
  p]``: a column gather and one dot over ``(g, p)``.
- **Coefficient gradient**, other cases, program ``(BLOCK_O output channels o, input channel i, slice r)``.  For
  each ``g``:
  ``dW (O × P) = Σ_chunks dYᵀ (O × M) @ X (M × P)`` over chunks of all ``(n, m)`` output pixels, ``X`` from
  ``x[:, i, s(g, r)]``; then ``dc (O × B) += dW @ Ψ[g]ᵀ (P × B)`` in the accumulator dtype.  The sum over the group
  copies happens in registers: nothing of ``dW``'s size (``C_out·S_out·C_in·S_in·k²``) reaches memory.  There are
  ``cdiv(C_out, BLOCK_O)·C_in·S_in`` such programs (``cdiv(C_out, BLOCK_O)·C_in`` channels-last; 3 for a lifting
  layer on RGB images): below 4 per SM, in both kernels, the pixels
  are split into parts, each program writes its part's partial ``dc`` and one fixed-order sum adds them
  (deterministic; the partial sums stay under half the bank's size).

Padding and its waste: every ``tl.dot`` dimension is a power of two ≥ 16, so the window positions ``P = k²`` run
padded to ``P_PAD`` (9 → 16, 25 → 32, 49 → 64: 56%, 78%, 77% of the main dots' K useful) and the basis ``B``
(6, 11, 18 for k = 3, 5, 7) to ``B_PAD`` (16, 16, 32).  The steering dot costs ``B_PAD / BLOCK_M`` of the main one
(12.5% at ``BLOCK_M = 128`` pixels for k ≤ 5, 25% for k = 7) and is recomputed by every pixel block (``W`` never
leaves the program).  The stride-``s`` input gradient multiplies the masked positions too (a phase
decomposition, as the p4 kernels do, would skip them).

Dtypes: fp16 / bf16 / fp32 / fp64 inputs; coefficients and tables in the input's dtype; accumulation in fp32 (fp64
for fp64); element offsets in int32 when every tensor's span fits in 31 bits (the gathered window's offsets live in
registers for the whole K loop), else int64.  ``W`` is rounded to the input dtype before the main dot, as the
reference bank (:func:`gconv_triton.steerable.steerable_bank`) is.  Layout: any strides for ``x``, ``dy`` and the
coefficients (the channels-last forward and coefficient gradient read ``x`` channels-last, copied so when it is
not, and the coefficient gradient also when padded: the copy carries the zeros padding; the channels-last
gradients copy ``dy`` to their layouts; the others read ``(B, C, S, H, W)`` contiguous fastest); outputs are
contiguous, except the lifting forward's (``lifting_layout``: ``(B, C_out, S_out, H', W')`` stored ``(B, H', W',
C_out, S_out)``, the channels-last group map, which the next layer reads in place).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

from ._common import (INTERPRET, cdiv, dot_precision, empty_group_map, geometry_table, is_channels_last, mma,
                      next_power_of_2, poison_outputs, split_pixel)
from .group_conv_layouts import padded_copy

__all__ = ["forward", "input_grad", "weight_grad", "config"]

# Fixed tiles (no autotuning yet).  Under the interpreter every program costs Python time: small tiles.
INTERPRETER_CONFIG = dict(BLOCK_M=64, BLOCK_N=16, num_warps=4, num_stages=1)
# On a GPU the gathered window (P_PAD × BLOCK_M elements) stays within this many bytes per K step: beyond it its
# offsets and masks, held in registers for the whole K loop, spill (docs/steerable.md: the sm_90 compiles).
WINDOW_BYTES = 8192


def config(kernel_size: int, dtype: torch.dtype) -> dict:
    """The launch tile for a ``k × k`` window in ``dtype``: ``BLOCK_M`` pixels, ``BLOCK_N`` channels (the output
    channels' block ``BLOCK_O`` of the coefficient gradient), warps and stages."""
    if INTERPRET:
        return dict(INTERPRETER_CONFIG)
    size = torch.empty((), dtype=dtype).element_size()
    block_m = max(16, min(128, WINDOW_BYTES // (_pad16(kernel_size * kernel_size) * size)))
    return dict(BLOCK_M=block_m, BLOCK_N=32 if size == 8 else 64, num_warps=4, num_stages=3)


def _forward_config(kernel_size: int, dtype: torch.dtype, s_in: int) -> dict:
    """``_forward_kernel``'s tile: ``BLOCK_M`` pixels, ``BLOCK_N`` output columns ``(g, o)`` (the launcher splits
    them, :func:`_element_block`), warps and stages.  A lifting layer has a K step per input channel (one on
    grey images): its gathered window, pixel indices and output addresses are per program, so a wider tile
    amortises them (docs/steerable.md)."""
    cfg = config(kernel_size, dtype)
    if INTERPRET:          # two elements per program where C_out <= 16, so that the tests run that tiling
        cfg["BLOCK_N"] = 32
    elif s_in == 1 and (dtype in (torch.float16, torch.bfloat16) or dot_precision(dtype) == "tf32"):
        # 256 columns, 8 warps: of the tiles tried for sm_90 without a spill, the fewest hot-loop instructions per
        # MAC (tf32 at 128 pixels spills)
        cfg.update(BLOCK_M=128 if dtype != torch.float32 else 64, BLOCK_N=256, num_warps=8)
    return cfg


def _weight_grad_config(kernel_size: int, dtype: torch.dtype) -> dict:
    cfg = config(kernel_size, dtype)
    cfg["BLOCK_O"] = cfg.pop("BLOCK_N")
    size = torch.empty((), dtype=dtype).element_size()
    if not INTERPRET and (kernel_size, size) in _WEIGHT_GRAD_WIDE:
        cfg["num_warps"] = 8
    return cfg


# (k, element size) whose 4-warp coefficient-gradient tile spills on sm_90 (the window's offsets, recomputed per
# pixel chunk): 8 warps there.  Elsewhere 4 warps issue fewer instructions per MAC (docs/steerable.md).
_WEIGHT_GRAD_WIDE = {(5, 2), (3, 4)}


def _input_grad_config(kernel_size: int, dtype: torch.dtype) -> dict:
    cfg = config(kernel_size, dtype)
    if not INTERPRET and kernel_size >= 7 and dtype == torch.float32:   # its 4-warp tile spills
        cfg["num_warps"] = 8
    return cfg


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pad16(n: int) -> int:
    """The smallest power of two ≥ max(n, 16): a ``tl.dot`` dimension."""
    return max(16, next_power_of_2(n))


# ------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _load_tables(psi_ptr, g, NBASIS: tl.constexpr, KK: tl.constexpr, P_PAD: tl.constexpr, B_PAD: tl.constexpr):
    """``Ψ[g]`` as a ``(B_PAD, P_PAD)`` tile (zeros in the padding)."""
    p = tl.arange(0, P_PAD)
    b = tl.arange(0, B_PAD)
    mask = (b[:, None] < NBASIS) & (p[None, :] < KK)
    return tl.load(psi_ptr + g * (NBASIS * KK) + b[:, None] * KK + p[None, :], mask=mask, other=0.0)


@triton.jit
def _steer(psi_t, c_ptr, o_off, o_ok, bb, b_ok, P_PAD: tl.constexpr, N: tl.constexpr, OUT_DTYPE: tl.constexpr,
           PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr):
    """The rotated filter slice, transposed: ``Wᵀ (N × P_PAD) = Cᵀ (N × B_PAD) @ Ψ[g] (B_PAD × P_PAD)``, ``Cᵀ``
    read at the offsets ``o_off (N,)`` + ``bb (B_PAD,)`` (``c_ptr`` already at the (i, index) slice), rounded to
    ``OUT_DTYPE``.  Transposed so that the register-resident result is the main dot's A operand (wgmma reads A
    from registers, B only from shared memory)."""
    coef = tl.load(c_ptr + bb[None, :] + o_off[:, None], mask=b_ok[None, :] & o_ok[:, None], other=0.0)
    w = mma(tl.zeros((N, P_PAD), dtype=ACC), coef, psi_t, PRECISION, UPCAST)
    return w.to(OUT_DTYPE)


@triton.jit
def _pixels(start, BLOCK: tl.constexpr, NB, H, W):
    """Flat pixel indices ``start + [0, BLOCK)`` over ``(NB, H, W)``: ``(index, in range, n, row, col)``."""
    m = start + tl.arange(0, BLOCK)
    return m, m < NB * H * W, m // (W * H), (m // W) % H, m % W


@triton.jit
def _window(P_PAD: tl.constexpr, KSIZE: tl.constexpr):
    """Window positions ``p < P_PAD`` (those ``≥ k²`` are padding) and their ``(row, col)`` in the window."""
    p = tl.arange(0, P_PAD)
    return p, p // KSIZE, p % KSIZE


@triton.jit
def _window_gather(n, oh, ow, m_ok, p, kh, kw, H, W, sn, sh, sw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   KK: tl.constexpr, OFFSET: tl.constexpr):
    """``(P, M)`` offsets and mask of the input pixels that window positions ``p`` of output pixels
    ``(n, oh, ow)`` read (the mask is the zeros padding).  Separable: a per-pixel corner plus a per-position shift,
    one unsigned compare per axis, so that a pixel chunk costs few instructions per element."""
    row = oh * stride_h - pad_h
    col = ow * stride_w - pad_w
    ih = row[None, :] + (kh * dil_h)[:, None]
    iw = col[None, :] + (kw * dil_w)[:, None]
    ok = ((ih.to(tl.uint32) < tl.cast(H, tl.uint32)) & (iw.to(tl.uint32) < tl.cast(W, tl.uint32))
          & (p[:, None] < KK) & m_ok[None, :])
    corner = tl.cast(n, OFFSET) * sn + row.to(OFFSET) * sh + col.to(OFFSET) * sw
    shift = (kh * dil_h).to(OFFSET) * sh + (kw * dil_w).to(OFFSET) * sw
    return corner[None, :] + shift[:, None], ok


@triton.jit
def _joint_columns(bias_ptr, pid_o, pid_g, C_OUT, S_OUT, hw, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                   OFFSET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """The ``BLOCK_N`` output columns ``(g, o)``, ``o`` fastest (``BLOCK_G`` elements × ``BLOCK_N / BLOCK_G``
    channels of program ``(pid_o, pid_g)``) of a forward tile: ``(offsets in y (BLOCK_N,), in range, bias)`` for
    ``y (NB, C, S_OUT, HO, WO)`` (``hw = HO·WO``; ``bias_ptr`` at the program's channel group, ``C_OUT`` channels
    of it; the bias is 0 without ``HAS_BIAS``)."""
    BLOCK_O: tl.constexpr = BLOCK_N // BLOCK_G
    j = tl.arange(0, BLOCK_N)
    o = pid_o * BLOCK_O + j % BLOCK_O
    g = pid_g * BLOCK_G + j // BLOCK_O
    ok = (o < C_OUT) & (g < S_OUT)
    bias = tl.zeros((BLOCK_N,), dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + o, mask=ok, other=0.0).to(ACC)
    return (o.to(OFFSET) * S_OUT + g) * hw, ok, bias


@triton.jit
def _store_joint(acc, y_ptr, column, bias, pixel, mask, HAS_BIAS: tl.constexpr, COLUMNS_FIRST: tl.constexpr):
    """Add the bias and store a forward tile into ``y`` at ``column (BLOCK_N,) + pixel (M,)`` (the columns from
    :func:`_joint_columns`; ``pixel``: each pixel's offset, image included) where ``mask`` (None: everywhere).
    ``acc`` and ``mask`` are ``(BLOCK_N × M)`` where ``COLUMNS_FIRST``, else ``(M × BLOCK_N)``."""
    if COLUMNS_FIRST:
        if HAS_BIAS:
            acc += bias[:, None]
        tl.store(y_ptr + (column[:, None] + pixel[None, :]), acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        if HAS_BIAS:
            acc += bias[None, :]
        tl.store(y_ptr + (pixel[:, None] + column[None, :]), acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _channel_group(C_OUT, GROUPS: tl.constexpr, BLOCK_O: tl.constexpr):
    """``(channel group, channel block in it)`` of a forward program: grid axis 1 runs over ``GROUPS`` × the
    ``cdiv(C_OUT, BLOCK_O)`` blocks of a group (with one group, no index arithmetic at all)."""
    blocks = tl.cdiv(C_OUT, BLOCK_O)
    group = tl.program_id(1) // blocks if GROUPS > 1 else 0
    block = tl.program_id(1) % blocks if GROUPS > 1 else tl.program_id(1)
    return group, block


@triton.jit
def _forward_kernel(x_ptr, c_ptr, bias_ptr, psi_ptr, index_ptr, y_ptr,
                    NB, C_IN, C_OUT, H, W, HO, WO,
                    sxn, sxc, sxs, sxh, sxw, sco, sci, scs, scb,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                    S_IN: tl.constexpr, S_OUT: tl.constexpr, KSIZE: tl.constexpr, NBASIS: tl.constexpr,
                    P_PAD: tl.constexpr, B_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPS: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, OFFSET: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """A program's ``BLOCK_N`` output rows are ``BLOCK_G`` output elements × ``BLOCK_O = BLOCK_N / BLOCK_G``
    channels, ``(g, o)`` with ``o`` fastest, so that each gathered window serves every element.  Per K step
    ``(i, s)`` the steering is one batched dot, ``Wᵀ_g (O × P) = Cᵀ_g (O × B) @ Ψ[g] (B × P)`` with ``Cᵀ_g[o, b] =
    c[o, i, index[g, s], b]``, whose ``(G, O, P)`` result is ``Wᵀ ((g, o) × P)`` in order.  ``psi_ptr``: ``Ψ
    (S_OUT_PAD, B_PAD, P_PAD)`` and ``index_ptr``: ``(S_OUT_PAD, S_IN)``, zero-padded by the launcher.  ``C_IN``,
    ``C_OUT``: the channels of one of ``GROUPS`` channel groups.  ``y (NB, GROUPS·C_OUT, S_OUT, HO, WO)``
    contiguous; grid ``(cdiv(NB·HO·WO, BLOCK_M), GROUPS·cdiv(C_OUT, BLOCK_O), cdiv(S_OUT, BLOCK_G))``."""
    BLOCK_O: tl.constexpr = BLOCK_N // BLOCK_G
    pid_m = tl.program_id(0)
    group, pid_o = _channel_group(C_OUT, GROUPS, BLOCK_O)
    pid_g = tl.program_id(2)
    KK: tl.constexpr = KSIZE * KSIZE
    x_ptr += tl.cast(group, OFFSET) * C_IN * sxc
    c_ptr += tl.cast(group, OFFSET) * C_OUT * sco
    bias_ptr += group * C_OUT
    y_ptr += tl.cast(group, OFFSET) * C_OUT * S_OUT * HO * WO
    m, m_ok, n, oh, ow = _pixels(pid_m * BLOCK_M, BLOCK_M, NB, HO, WO)
    p, kh, kw = _window(P_PAD, KSIZE)
    x_off, x_ok = _window_gather(n, oh, ow, m_ok, p, kh, kw, H, W, sxn, sxh, sxw, stride_h, stride_w, pad_h, pad_w,
                                 dil_h, dil_w, KK, OFFSET)                                                  # (P, M)
    g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    bb = tl.arange(0, B_PAD)
    coef_off = o.to(OFFSET)[None, :, None] * sco + (bb * scb)[None, None, :]                        # (1, O, B)
    coef_ok = (o < C_OUT)[None, :, None] & (bb < NBASIS)[None, None, :]
    psi = tl.load(psi_ptr + g[:, None, None] * (B_PAD * P_PAD) + bb[None, :, None] * P_PAD
                  + p[None, None, :]).to(c_ptr.dtype.element_ty)                                    # (G, B, P)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)                                                 # yᵀ
    for step in range(C_IN * S_IN):
        i = step // S_IN
        s = step % S_IN
        if S_IN == 1:   # lifting: every element steers the same coefficients (index[g, 0] = 0)
            coef = tl.load(c_ptr + (coef_off + tl.cast(i, OFFSET) * sci), mask=coef_ok, other=0.0)
            coef = tl.broadcast_to(coef, (BLOCK_G, BLOCK_O, B_PAD))
        else:
            r = tl.load(index_ptr + g * S_IN + s)                                                 # (G,)
            coef = tl.load(c_ptr + (coef_off + (tl.cast(i, OFFSET) * sci + r.to(OFFSET) * scs)[:, None, None]),
                           mask=coef_ok, other=0.0)                                               # (G, O, B)
        w = mma(tl.zeros((BLOCK_G, BLOCK_O, P_PAD), dtype=ACC), coef, psi, PRECISION, UPCAST)
        w = tl.reshape(w.to(x_ptr.dtype.element_ty), (BLOCK_N, P_PAD))                           # Wᵀ ((g, o) × P)
        xs = tl.load(x_ptr + x_off + (tl.cast(i, OFFSET) * sxc + s * sxs), mask=x_ok, other=0.0)
        acc = mma(acc, w, xs, PRECISION, UPCAST)
    column, column_ok, bias = _joint_columns(bias_ptr, pid_o, pid_g, C_OUT, S_OUT, HO * WO, HAS_BIAS, ACC, OFFSET,
                                             BLOCK_N, BLOCK_G)
    _store_joint(acc, y_ptr, column, bias, n.to(OFFSET) * (GROUPS * C_OUT * S_OUT * HO * WO) + m % (HO * WO),
                 column_ok[:, None] & m_ok[None, :], HAS_BIAS, True)


@triton.jit
def _lifting_columns(bias_ptr, C_OUT, S_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """The ``BLOCK_N`` output columns ``(o, g)``, ``g`` fastest (``BLOCK_O = BLOCK_N / BLOCK_G`` channels ×
    ``BLOCK_G`` elements of program ``(·, program_id(1), program_id(2))``) of a lifting tile: ``(o clamped to
    C_OUT, offsets in a pixel's row of y (BLOCK_N,), in range, bias)`` for ``y`` stored ``(NB, HO, WO, C_OUT,
    S_OUT)``.  Where ``BLOCK_G = S_OUT`` the offsets are ``program_id(1)·BLOCK_N + j``, contiguous, so that the
    store is vectorised (the clamped columns are masked, never stored)."""
    BLOCK_O: tl.constexpr = BLOCK_N // BLOCK_G
    j = tl.arange(0, BLOCK_N)
    o = tl.program_id(1) * BLOCK_O + j // BLOCK_G
    g = tl.program_id(2) * BLOCK_G + j % BLOCK_G
    ok = (o < C_OUT) & (g < S_OUT)
    if BLOCK_G == S_OUT:
        column = tl.program_id(1) * BLOCK_N + j
    else:
        column = o * S_OUT + g
    o = tl.minimum(o, C_OUT - 1)
    bias = tl.zeros((BLOCK_N,), dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + o).to(ACC)
    return o, column, ok, bias


@triton.jit
def _forward_lifting_kernel(xw_ptr, c_ptr, bias_ptr, psi_ptr, corner_ptr, y_ptr,
                            NB, C_OUT, HW, ROW_UNITS, TILES_PER_IMAGE, TILES, sxn, sxh, dil_h,
                            C_IN: tl.constexpr, C_PAD: tl.constexpr, S_OUT: tl.constexpr, KSIZE: tl.constexpr,
                            KW_PAD: tl.constexpr, K_PAD: tl.constexpr, B_PAD: tl.constexpr,
                            FULL_TILES: tl.constexpr, FULL_COLUMNS: tl.constexpr,
                            HAS_BIAS: tl.constexpr, BIAS_IN_DOT: tl.constexpr, PRECISION: tl.constexpr,
                            UPCAST: tl.constexpr, ACC: tl.constexpr, OFFSET: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, ROW_ALIGN: tl.constexpr):
    """A lifting layer (``S_in = 1``) whose whole reduction ``K = (kh, i, kw)`` (``k × C_PAD × KW_PAD``, padded to
    ``K_PAD``) is one dot: the program steers its filter ``W (K × (o, g))`` once, then loops over ``TILES`` pixel
    tiles of ``BLOCK_M`` pixels, ``y (M × (o, g)) = X (M × K) @ W`` (``W`` is the dot's B operand, in shared memory
    for the whole loop).

    The input ``xw`` is ``x`` zero-padded and unfolded along the width, ``xw[n, h, ow, i, kw] = x_padded[n, i, h,
    ow·stride_w + kw·dil_w]`` (zeros for ``kw ≥ k``): a (pixel, kh, i) reads ``KW_PAD`` contiguous elements
    (vector loads, no bounds masks).  ``sxn``, ``sxh``: its image and row strides in units of ``KW_PAD`` elements;
    ``corner[m]`` (``TILES_PER_IMAGE·BLOCK_M`` entries): the window corner of an image's pixel ``min(m, HW - 1)``
    in those units.  A tile lies in one image: tile ``j`` of an image covers its pixels from ``min(j·BLOCK_M, HW -
    BLOCK_M)`` (with ``FULL_TILES``, ``HW ≥ BLOCK_M``: the last one overlaps the one before, so that no pixel is
    masked), and a program's tiles past the last image repeat that image's: such repeats store the same values as
    the tiles they repeat.

    The steering is one dot per element ``g``, ``Wᵀ ((o, g') × K) += A_g ((o, g') × (i, b)) @ Ψ'[g] ((i, b) × K)``
    with ``A_g[(o, g'), (i, b)] = c[o, i, b]`` where ``g' = g`` (else 0), on the launcher's zero-padded copies
    ``c (C_OUT, C_PAD, B_PAD)`` and ``Ψ' (S_OUT_PAD, C_PAD·B_PAD, K_PAD)``, ``Ψ'[g, (i, b), (kh, i', kw)] = Ψ[g, b,
    kh·k + kw]`` where ``i = i'`` and ``kw < k``: unmasked vector loads.  ``y (NB, C_OUT, S_OUT, HO, WO)`` is
    stored ``(NB, HO, WO, C_OUT, S_OUT)``: a pixel's ``(o, g)`` columns are contiguous, so that the tile is stored
    by 16-byte vectors where ``BLOCK_G = S_OUT``; its row ``C_OUT·S_OUT = ROW_UNITS·ROW_ALIGN``, ``ROW_ALIGN`` the
    row's largest power-of-two factor up to 16, a constexpr (Triton knows an int argument's divisibility by 16
    only); ``FULL_COLUMNS``: every column is in range (none masked).  Grid ``(cdiv(NB·TILES_PER_IMAGE, TILES),
    cdiv(C_OUT, BLOCK_O), cdiv(S_OUT, BLOCK_G))``."""
    CB: tl.constexpr = C_PAD * B_PAD
    kk = tl.arange(0, K_PAD)
    kh = kk // (C_PAD * KW_PAD)
    i = (kk // KW_PAD) % C_PAD
    kw = kk % KW_PAD
    k_ok = (kh < KSIZE) & (i < C_IN)                     # constant over each KW_PAD run: vector loads stay whole
    # the steered filter, once per program
    o, column, column_ok, bias = _lifting_columns(bias_ptr, C_OUT, S_OUT, HAS_BIAS, ACC, BLOCK_N, BLOCK_G)
    ib = tl.arange(0, CB)
    coef_ptr = c_ptr + o[:, None] * CB + ib[None, :]                                         # ((o, g) × (i, b))
    psi_ptr += tl.program_id(2) * BLOCK_G * CB * K_PAD + ib[:, None] * K_PAD + kk[None, :]
    element = tl.arange(0, BLOCK_N) % BLOCK_G
    w = tl.zeros((BLOCK_N, K_PAD), dtype=ACC)                                                # Wᵀ ((o, g) × K)
    for g in tl.static_range(BLOCK_G):   # unrolled: the tile loop below stays the kernel's only loop
        coef = tl.load(coef_ptr, mask=(element == g)[:, None], other=0.0)
        w = mma(w, coef, tl.load(psi_ptr + g * CB * K_PAD), PRECISION, UPCAST)
    if BIAS_IN_DOT:   # the bias is the filter's column that reads xw's ones (kh = 0, i = 0, kw = KW_PAD - 1)
        w = tl.where((kk == KW_PAD - 1)[None, :], bias[:, None], w)
    w = tl.trans(w.to(xw_ptr.dtype.element_ty))                                               # W (K × (o, g))
    shift = ((kh * dil_h).to(OFFSET) * sxh + i) * KW_PAD + kw                                  # (K,)
    pixels = tl.arange(0, BLOCK_M)
    # each tile's offset into y is one scalar, added to these
    ROW = ROW_UNITS * ROW_ALIGN
    y_offsets = pixels[:, None] * ROW + column[None, :]                                       # (M × (o, g))
    y_ok = column_ok[None, :]
    # the program's first tile (image n, tile j of it), then one step per tile: no division in the loop
    first = tl.program_id(0) * TILES
    n = first // TILES_PER_IMAGE
    j = first % TILES_PER_IMAGE
    for _ in range(TILES):
        start = tl.maximum(tl.minimum(j * BLOCK_M, HW - BLOCK_M), 0)
        corner = tl.load(corner_ptr + start + pixels)
        image_n = tl.cast(tl.minimum(n, NB - 1), OFFSET)
        xs = tl.load(xw_ptr + ((image_n * sxn + corner)[:, None] * KW_PAD + shift[None, :]),
                     mask=k_ok[None, :], other=0.0)                                             # X (M × K)
        acc = mma(tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC), xs, w, PRECISION, UPCAST)
        if HAS_BIAS and not BIAS_IN_DOT:
            acc += bias[None, :]
        tile = y_ptr + (image_n * HW + start) * ROW
        if FULL_TILES and FULL_COLUMNS:
            tl.store(tile + y_offsets, acc.to(y_ptr.dtype.element_ty))
        elif FULL_TILES:
            tl.store(tile + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=y_ok)
        else:
            tl.store(tile + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=y_ok & (pixels < HW)[:, None])
        j += 1
        n += (j == TILES_PER_IMAGE).to(tl.int32)
        j = tl.where(j == TILES_PER_IMAGE, 0, j)


@triton.jit
def _channels_last_step(acc, x_ptr, psi_ptr, coef, pix, row, col, m_ok, kk, i, chunk, psi_g, H, W, sxh, sxw,
                        dil_h, dil_w, S_IN: tl.constexpr, KSIZE: tl.constexpr, P_CHUNK: tl.constexpr,
                        B_PAD: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                        OFFSET: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_O: tl.constexpr, HALO: tl.constexpr):
    """One K step of the channels-last forward: input channel ``i``, window positions ``chunk·P_CHUNK + [0,
    P_CHUNK)``: the window ``X (M × (p, s))`` (``S_IN`` contiguous elements per pixel and position), the steered
    filter of each of the program's ``BLOCK_G`` elements ``W_g ((p, s) × O) = Ψ[g]ᵀ @ Cᵗ_g`` (one batched dot),
    laid side by side as ``W ((p, s) × (g, o))``, ``acc (M × (g, o)) += X @ W``.  ``psi_g (BLOCK_G,)``: the
    elements' offsets in the padded ``Ψᵀ (S_OUT_PAD, P_PAD, B_PAD)``."""
    KK: tl.constexpr = KSIZE * KSIZE
    KC: tl.constexpr = P_CHUNK * S_IN
    p = chunk * P_CHUNK + kk // S_IN                                                            # (KC,)
    kh = p // KSIZE
    kw = p % KSIZE
    if HALO:   # x carries the zeros padding and every pixel is in range: only the padded positions are masked
        ok = (p < KK)[None, :]
    else:
        ih = row[:, None] + (kh * dil_h)[None, :]
        iw = col[:, None] + (kw * dil_w)[None, :]
        ok = ((ih.to(tl.uint32) < tl.cast(H, tl.uint32)) & (iw.to(tl.uint32) < tl.cast(W, tl.uint32))
              & (p[None, :] < KK) & m_ok[:, None])
    shift = (kh * dil_h).to(OFFSET) * sxh + (kw * dil_w).to(OFFSET) * sxw + kk % S_IN
    xs = tl.load(x_ptr + (pix[:, None] + shift[None, :] + tl.cast(i, OFFSET) * S_IN), mask=ok, other=0.0)
    pc = chunk * P_CHUNK + tl.arange(0, P_CHUNK)
    bb = tl.arange(0, B_PAD)
    psi_t = tl.load(psi_ptr + psi_g[:, None, None] + pc[None, :, None] * B_PAD + bb[None, None, :])   # (G, P, B)
    w = mma(tl.zeros((BLOCK_G, P_CHUNK, S_IN * BLOCK_O), dtype=ACC), psi_t, coef, PRECISION, UPCAST)
    w = tl.reshape(w.to(x_ptr.dtype.element_ty), (BLOCK_G, P_CHUNK, S_IN, BLOCK_O))
    w = tl.reshape(tl.permute(w, (1, 2, 0, 3)), (KC, BLOCK_G * BLOCK_O))                     # ((p, s), (g, o))
    return mma(acc, xs, w, PRECISION, UPCAST)


@triton.jit
def _forward_channels_last_kernel(x_ptr, ct_ptr, bias_ptr, psi_ptr, index_ptr, y_ptr,
                                  NB, C_IN, C_OUT, H, W, HO, WO, C_OUT_PAD,
                                  sxn, sxh, sxw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                  S_IN: tl.constexpr, S_OUT: tl.constexpr, KSIZE: tl.constexpr, NBASIS: tl.constexpr,
                                  P_PAD: tl.constexpr, B_PAD: tl.constexpr, P_CHUNK: tl.constexpr,
                                  STATIC_CHUNKS: tl.constexpr, HALO: tl.constexpr, HAS_BIAS: tl.constexpr,
                                  GROUPS: tl.constexpr,
                                  PRECISION: tl.constexpr,
                                  UPCAST: tl.constexpr, ACC: tl.constexpr, OFFSET: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """The forward on a channels-last input (``x[n, i, s, h, w]`` at ``n·sxn + h·sxh + w·sxw + i·S_IN + s``): a K
    step is one input channel ``i`` and ``P_CHUNK`` window positions × all ``S_IN`` elements, ``(p, s)`` with ``s``
    fastest, so the window gather reads ``S_IN`` contiguous elements per (pixel, position).  A program's
    ``BLOCK_N`` output columns are ``BLOCK_G`` output elements × ``BLOCK_O = BLOCK_N / BLOCK_G`` channels, ``(g, o)``
    with ``o`` fastest, so that a narrow ``C_OUT`` still fills the tile and the window is read once for all of
    them.  The steered filter of the step, per element, ``W_g ((p, s) × o) = Ψ[g]ᵀ (P_CHUNK × B) @ Cᵗ_g (B × (s,
    o))`` with ``Cᵗ_g[b, (s, o)] = ct[i, index[g, s], b, o]``; the launcher pads ``ct (C_IN, S_IN, B_PAD,
    C_OUT_PAD)``, ``Ψᵀ (S_OUT_PAD, P_PAD, B_PAD)`` and ``index (S_OUT_PAD, S_IN)`` so that the steering operands
    load unmasked (``ct``'s rows are ``GROUPS`` groups of ``C_IN``; ``C_IN``, ``C_OUT``: one channel group's).
    ``y (NB, GROUPS·C_OUT, S_OUT, HO, WO)`` contiguous; grid ``(cdiv(NB·HO·WO, BLOCK_M), GROUPS·cdiv(C_OUT,
    BLOCK_O), cdiv(S_OUT, BLOCK_G))``."""
    BLOCK_O: tl.constexpr = BLOCK_N // BLOCK_G
    pid_m = tl.program_id(0)
    group, pid_o = _channel_group(C_OUT, GROUPS, BLOCK_O)
    pid_g = tl.program_id(2)
    x_ptr += tl.cast(group, OFFSET) * C_IN * S_IN
    ct_ptr += tl.cast(group, OFFSET) * C_IN * S_IN * B_PAD * C_OUT_PAD
    bias_ptr += group * C_OUT
    y_ptr += tl.cast(group, OFFSET) * C_OUT * S_OUT * HO * WO
    m, m_ok, n, oh, ow = _pixels(pid_m * BLOCK_M, BLOCK_M, NB, HO, WO)
    if HALO:   # the pixels past the last read the last one's window (not stored)
        n, oh, ow = split_pixel(tl.minimum(m, NB * HO * WO - 1), HO, WO)
    row = oh * stride_h - pad_h
    col = ow * stride_w - pad_w
    pix = tl.cast(n, OFFSET) * sxn + row.to(OFFSET) * sxh + col.to(OFFSET) * sxw                        # (M,)
    kk = tl.arange(0, P_CHUNK * S_IN)
    g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    psi_g = g * (P_PAD * B_PAD)
    # the steering operand's columns (s, o) per element: o fastest
    cols = tl.arange(0, S_IN * BLOCK_O)
    col_o = pid_o * BLOCK_O + cols % BLOCK_O
    r = tl.load(index_ptr + g[:, None] * S_IN + (cols // BLOCK_O)[None, :])                   # index[g, s]
    bb = tl.arange(0, B_PAD)
    ct_off = (r[:, None, :] * B_PAD + bb[None, :, None]) * C_OUT_PAD + col_o[None, None, :]   # (G, B, (s, o))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)                                                # y (M × (g, o))
    coef_step = S_IN * B_PAD * C_OUT_PAD
    if STATIC_CHUNKS:   # the chunks unrolled: their window shifts and masks are computed once, outside the loop
        for i in range(C_IN):
            coef = tl.load(ct_ptr + (ct_off + i * coef_step))
            for chunk in tl.static_range(P_PAD // P_CHUNK):
                acc = _channels_last_step(acc, x_ptr, psi_ptr, coef, pix, row, col, m_ok, kk, i, chunk, psi_g, H, W,
                                          sxh, sxw, dil_h, dil_w, S_IN, KSIZE, P_CHUNK, B_PAD, PRECISION, UPCAST,
                                          ACC, OFFSET, BLOCK_G, BLOCK_O, HALO)
    else:               # a loop over the chunks: k = 7's four unrolled chunks would hold too many registers
        for i in range(C_IN):
            coef = tl.load(ct_ptr + (ct_off + i * coef_step))
            for chunk in range(P_PAD // P_CHUNK):
                acc = _channels_last_step(acc, x_ptr, psi_ptr, coef, pix, row, col, m_ok, kk, i, chunk, psi_g, H, W,
                                          sxh, sxw, dil_h, dil_w, S_IN, KSIZE, P_CHUNK, B_PAD, PRECISION, UPCAST,
                                          ACC, OFFSET, BLOCK_G, BLOCK_O, HALO)
    column, column_ok, bias = _joint_columns(bias_ptr, pid_o, pid_g, C_OUT, S_OUT, HO * WO, HAS_BIAS, ACC, OFFSET,
                                             BLOCK_N, BLOCK_G)
    _store_joint(acc, y_ptr, column, bias, n.to(OFFSET) * (GROUPS * C_OUT * S_OUT * HO * WO) + m % (HO * WO),
                 m_ok[:, None] & column_ok[None, :], HAS_BIAS, False)


@triton.jit
def _input_grad_kernel(dy_ptr, c_ptr, psi_ptr, index_ptr, dx_ptr,
                       NB, C_IN, C_OUT, H, W, HO, WO,
                       sdn, sdc, sdg, sdh, sdw, sco, sci, scs, scb,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       S_IN: tl.constexpr, S_OUT: tl.constexpr, KSIZE: tl.constexpr, NBASIS: tl.constexpr,
                       P_PAD: tl.constexpr, B_PAD: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, OFFSET: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``dx (NB, C_IN, S_IN, H, W)`` contiguous; grid ``(cdiv(NB·H·W, BLOCK_M), cdiv(C_IN, BLOCK_N), S_IN)``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    s = tl.program_id(2)
    KK: tl.constexpr = KSIZE * KSIZE
    u, u_ok, n, ih, iw = _pixels(pid_m * BLOCK_M, BLOCK_M, NB, H, W)
    p, kh, kw = _window(P_PAD, KSIZE)
    # The output pixel that reads input pixel u at window position p: m = (u + pad − p·dil) / stride, when whole.
    th = ih[None, :] + pad_h - kh[:, None] * dil_h
    tw = iw[None, :] + pad_w - kw[:, None] * dil_w
    dy_ok = (p[:, None] < KK) & u_ok[None, :] & (th >= 0) & (tw >= 0)
    th = tl.where(th >= 0, th, 0)
    tw = tl.where(tw >= 0, tw, 0)
    oh = th // stride_h
    ow = tw // stride_w
    dy_ok = dy_ok & (th % stride_h == 0) & (tw % stride_w == 0) & (oh < HO) & (ow < WO)
    dy_off = n[None, :].to(OFFSET) * sdn + oh.to(OFFSET) * sdh + ow.to(OFFSET) * sdw          # (P, M)
    i = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    i_ok = i < C_IN
    i_off = i.to(OFFSET) * sci
    bb = tl.arange(0, B_PAD)
    b_ok = bb < NBASIS
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)                                                 # dxᵀ
    for g in range(S_OUT):
        psi = _load_tables(psi_ptr, g, NBASIS, KK, P_PAD, B_PAD).to(c_ptr.dtype.element_ty)
        r = tl.load(index_ptr + g * S_IN + s)
        for o in range(C_OUT):
            w = _steer(psi, c_ptr + tl.cast(o, OFFSET) * sco + r * scs, i_off, i_ok, bb * scb, b_ok, P_PAD,
                       BLOCK_N, dy_ptr.dtype.element_ty, PRECISION, UPCAST, ACC)
            dys = tl.load(dy_ptr + dy_off + (tl.cast(o, OFFSET) * sdc + g * sdg), mask=dy_ok, other=0.0)
            acc = mma(acc, w, dys, PRECISION, UPCAST)
    hw = H * W
    dx_off = ((n[None, :].to(OFFSET) * C_IN + i[:, None]) * S_IN + s) * hw + (u % hw)[None, :]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=i_ok[:, None] & u_ok[None, :])


@triton.jit
def _input_grad_element(psi_ptr, index_ptr, ct_ptr, dyt_ptr, g, s, pc, bb, plane, S_IN: tl.constexpr,
                        NBASIS: tl.constexpr, KK: tl.constexpr, B_PAD: tl.constexpr, C_OUT_PAD: tl.constexpr,
                        C_IN_PAD: tl.constexpr, OFFSET: tl.constexpr):
    """Output element ``g``'s operands in the channels-last input gradient: ``Ψ[g]ᵀ`` at window positions ``pc``
    (``(P_CHUNK, B_PAD)``, zeros in the padding), and ``ct``'s slice ``index[g, s]`` and ``dyt``'s plane ``g``."""
    r = tl.load(index_ptr + g * S_IN + s)
    psi_t = tl.load(psi_ptr + g * (NBASIS * KK) + bb[None, :] * KK + pc[:, None],
                    mask=(bb[None, :] < NBASIS) & (pc[:, None] < KK), other=0.0).to(ct_ptr.dtype.element_ty)
    return psi_t, ct_ptr + r * B_PAD * C_OUT_PAD * C_IN_PAD, dyt_ptr + tl.cast(g, OFFSET) * plane


@triton.jit
def _input_grad_step(acc, psi_t, ct_g, dy_g, ct_off, ct_ok, dy_off, ok, o_base, C_IN_PAD: tl.constexpr,
                     P_CHUNK: tl.constexpr, O_STEP: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                     UPCAST: tl.constexpr, ACC: tl.constexpr):
    """One K step of the channels-last input gradient, output channels ``o_base + [0, O_STEP)``: ``W ((p, o) × i)
    = Ψ[g]ᵀ @ Cᵗ``, then ``acc (M × I) += dY (M × (p, o)) @ W``."""
    coef = tl.load(ct_g + (ct_off + o_base * C_IN_PAD), mask=ct_ok, other=0.0)
    w = mma(tl.zeros((P_CHUNK, O_STEP * BLOCK_N), dtype=ACC), psi_t, coef, PRECISION, UPCAST)
    w = tl.reshape(w.to(dy_g.dtype.element_ty), (P_CHUNK * O_STEP, BLOCK_N))                       # ((p, o), i)
    dys = tl.load(dy_g + (dy_off + o_base), mask=ok, other=0.0)
    return mma(acc, dys, w, PRECISION, UPCAST)


@triton.jit
def _input_grad_channels_last_kernel(dyt_ptr, ct_ptr, psi_ptr, index_ptr, dx_ptr,
                                     NB, C_IN, H, W, HO, WO, pad_h, pad_w, dil_h, dil_w,
                                     S_IN: tl.constexpr, S_OUT: tl.constexpr, KSIZE: tl.constexpr,
                                     NBASIS: tl.constexpr, P_PAD: tl.constexpr, B_PAD: tl.constexpr,
                                     C_OUT_PAD: tl.constexpr, C_IN_PAD: tl.constexpr, O_STEP: tl.constexpr,
                                     P_CHUNK: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
                                     PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                                     OFFSET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                     NESTED: tl.constexpr):
    """The input gradient on ``dy`` channels-last (``dyt (NB, S_OUT, HO, WO, C_OUT_PAD)``, zeros beyond
    ``C_out``): a K step is one element ``g``, ``O_STEP`` output channels and ``P_CHUNK`` window positions,
    ``(p, o)`` with ``o`` fastest, so that a (pixel, position) reads ``O_STEP`` contiguous elements (16 bytes).
    The step's filter ``W ((p, o) × i) = Ψ[g]ᵀ (P_CHUNK × B) @ Cᵗ (B × (o, i))`` with ``Cᵗ[b, (o, i)] = ct[index[g,
    s], b, o, i]`` (``ct (S_IN, B_PAD, C_OUT_PAD, C_IN_PAD)``: the coefficients transposed and zero-padded by the
    launcher), reshaped in order; then ``dx (M × I) += dY (M × (p, o)) @ W``.  The window's offsets and masks
    depend on the position chunk only: computed once per chunk, outside the loop over ``(g, o)``; ``NESTED``: that
    loop split in two, ``Ψ[g]``'s chunk loaded once per ``g``.  ``dx (NB, C_IN, S_IN, H, W)`` contiguous; grid
    ``(cdiv(NB·H·W, BLOCK_M), cdiv(C_IN_PAD, BLOCK_N), S_IN)``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    s = tl.program_id(2)
    KK: tl.constexpr = KSIZE * KSIZE
    O_CHUNKS: tl.constexpr = C_OUT_PAD // O_STEP
    u, u_ok, n, ih, iw = _pixels(pid_m * BLOCK_M, BLOCK_M, NB, H, W)
    kk = tl.arange(0, P_CHUNK * O_STEP)
    # the steering operand's columns (o, i): i fastest
    cols = tl.arange(0, O_STEP * BLOCK_N)
    bb = tl.arange(0, B_PAD)
    col_i = pid_n * BLOCK_N + cols % BLOCK_N
    ct_off = (bb[:, None] * C_OUT_PAD + cols[None, :] // BLOCK_N) * C_IN_PAD + col_i[None, :]
    ct_ok = col_i[None, :] < C_IN_PAD             # C_IN_PAD: a multiple of 8, the masks whole 16-byte vectors
    plane = HO * WO * C_OUT_PAD                                                     # dyt's stride along g
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)                                                # dx (M × I)
    for chunk in range(P_PAD // P_CHUNK):
        # The output pixel that reads input pixel u at window position p: m = (u + pad − p·dil) / stride, if whole.
        p = chunk * P_CHUNK + kk // O_STEP                                                       # (K,)
        th = ih[:, None] + pad_h - (p // KSIZE * dil_h)[None, :]
        tw = iw[:, None] + pad_w - (p % KSIZE * dil_w)[None, :]
        ok = (th >= 0) & (tw >= 0) & (p[None, :] < KK) & u_ok[:, None]
        th = tl.maximum(th, 0)
        tw = tl.maximum(tw, 0)
        ok = ok & (th % STRIDE_H == 0) & (tw % STRIDE_W == 0) & (th // STRIDE_H < HO) & (tw // STRIDE_W < WO)
        dy_off = ((tl.cast(n, OFFSET)[:, None] * S_OUT * HO + th // STRIDE_H) * WO + tw // STRIDE_W) * C_OUT_PAD \
            + kk[None, :] % O_STEP                                                               # (M, K)
        pc = chunk * P_CHUNK + tl.arange(0, P_CHUNK)
        if NESTED:   # Ψ[g]'s chunk and index[g, s] once per element, outside the loop over output channels
            for g in range(S_OUT):
                psi_t, ct_g, dy_g = _input_grad_element(psi_ptr, index_ptr, ct_ptr, dyt_ptr, g, s, pc, bb, plane,
                                                        S_IN, NBASIS, KK, B_PAD, C_OUT_PAD, C_IN_PAD, OFFSET)
                for o_base in range(0, C_OUT_PAD, O_STEP):
                    acc = _input_grad_step(acc, psi_t, ct_g, dy_g, ct_off, ct_ok, dy_off, ok, o_base, C_IN_PAD,
                                           P_CHUNK, O_STEP, BLOCK_N, PRECISION, UPCAST, ACC)
        else:        # one loop over (g, o): fewer registers (sm_80; 16-bit at k = 7)
            for step in range(S_OUT * O_CHUNKS):
                psi_t, ct_g, dy_g = _input_grad_element(psi_ptr, index_ptr, ct_ptr, dyt_ptr, step // O_CHUNKS, s,
                                                        pc, bb, plane, S_IN, NBASIS, KK, B_PAD, C_OUT_PAD, C_IN_PAD,
                                                        OFFSET)
                acc = _input_grad_step(acc, psi_t, ct_g, dy_g, ct_off, ct_ok, dy_off, ok, step % O_CHUNKS * O_STEP,
                                       C_IN_PAD, P_CHUNK, O_STEP, BLOCK_N, PRECISION, UPCAST, ACC)
    i = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    hw = H * W
    dx_off = ((n[:, None].to(OFFSET) * C_IN + i[None, :]) * S_IN + s) * hw + (u % hw)[:, None]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=u_ok[:, None] & (i[None, :] < C_IN))


@triton.jit
def _weight_grad_kernel(dy_ptr, x_ptr, psi_ptr, source_ptr, dc_ptr,
                        NB, C_IN, C_OUT, H, W, HO, WO,
                        sdn, sdc, sdg, sdh, sdw, sxn, sxc, sxs, sxh, sxw,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, O_BLOCKS, PART_CHUNKS,
                        S_IN: tl.constexpr, S_OUT: tl.constexpr, KSIZE: tl.constexpr, NBASIS: tl.constexpr,
                        P_PAD: tl.constexpr, B_PAD: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, OFFSET: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr):
    """``dc (parts, C_OUT, C_IN, S_IN, NBASIS)`` contiguous, one partial sum per part of the pixels (``PART_CHUNKS``
    chunks of ``BLOCK_M`` each); grid ``(O_BLOCKS·parts, C_IN, S_IN)``, ``O_BLOCKS = cdiv(C_OUT, BLOCK_O)``.
    ``source[g, r]``: the input element ``s`` with ``index[g, s] = r``."""
    pid_o = tl.program_id(0) % O_BLOCKS
    part = tl.program_id(0) // O_BLOCKS
    i = tl.program_id(1)
    r = tl.program_id(2)
    KK: tl.constexpr = KSIZE * KSIZE
    # Back onto the coefficients at (near) fp32 accuracy on tensor cores: an ieee fp32 dot of this size runs on FMAs
    # and spills at k = 7.
    BACK_PRECISION: tl.constexpr = "ieee" if ACC == tl.float64 else "tf32x3"
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < C_OUT
    p, kh, kw = _window(P_PAD, KSIZE)
    dc = tl.zeros((BLOCK_O, B_PAD), dtype=ACC)
    for g in range(S_OUT):
        s = tl.load(source_ptr + g * S_IN + r)
        x_base = x_ptr + (tl.cast(i, OFFSET) * sxc + s * sxs)
        dy_base = dy_ptr + (o[:, None].to(OFFSET) * sdc + g * sdg)
        dw = tl.zeros((BLOCK_O, P_PAD), dtype=ACC)
        for start in range(part * PART_CHUNKS * BLOCK_M, tl.minimum((part + 1) * PART_CHUNKS * BLOCK_M, NB * HO * WO),
                           BLOCK_M):
            m, m_ok, n, oh, ow = _pixels(start, BLOCK_M, NB, HO, WO)
            dyt = tl.load(dy_base + (n.to(OFFSET) * sdn + oh.to(OFFSET) * sdh + ow.to(OFFSET) * sdw)[None, :],
                          mask=o_ok[:, None] & m_ok[None, :], other=0.0)                          # (O, M)
            x_off, x_ok = _window_gather(n, oh, ow, m_ok, p, kh, kw, H, W, sxn, sxh, sxw, stride_h, stride_w, pad_h,
                                         pad_w, dil_h, dil_w, KK, OFFSET)                             # (P, M)
            xs = tl.load(x_base + x_off, mask=x_ok, other=0.0)
            dw = mma(dw, dyt, tl.trans(xs), PRECISION, UPCAST)
        psi = _load_tables(psi_ptr, g, NBASIS, KK, P_PAD, B_PAD).to(ACC)
        dc = tl.dot(dw, tl.trans(psi), dc, input_precision=BACK_PRECISION)
    bb = tl.arange(0, B_PAD)
    dc_off = (((part * C_OUT + o[:, None]).to(OFFSET) * C_IN + i) * S_IN + r) * NBASIS + bb[None, :]
    tl.store(dc_ptr + dc_off, dc.to(dc_ptr.dtype.element_ty), mask=o_ok[:, None] & (bb[None, :] < NBASIS))


@triton.jit
def _weight_grad_channels_last_kernel(dyt_ptr, x_ptr, psi_ptr, source_ptr, pixel_ptr, dc_ptr,
                                      C_IN, C_OUT, M_TOTAL, M_PAD, sxh, sxw, dil_h, dil_w, R_BLOCKS,
                                      PART_CHUNKS,
                                      S_IN: tl.constexpr, S_OUT: tl.constexpr, KSIZE: tl.constexpr,
                                      NBASIS: tl.constexpr, P_PAD: tl.constexpr, B_PAD: tl.constexpr,
                                      P_CHUNK: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr,
                                      UPCAST: tl.constexpr, ACC: tl.constexpr, OFFSET: tl.constexpr,
                                      BLOCK_M: tl.constexpr, X_IN_REGISTERS: tl.constexpr):
    """The coefficient gradient on ``x`` channels-last with the zeros padding in place (``x[n, i, s, h, w]`` at
    ``n·sxn + h·sxh + w·sxw + i·S_IN + s``, every window of every pixel inside it: no bounds masks) and ``dyt
    (R_BLOCKS·BLOCK_O·S_OUT, M_PAD)`` (``dy`` with rows ``(o, g)`` and its ``NB·HO·WO`` pixels contiguous, zeros
    beyond both: loaded unmasked), every group copy and every input element in one dot: per chunk of ``P_CHUNK``
    window positions, ``dW ((o, g) × (p, s)) = Σ_pixel chunks dY ((o, g) × M) @ X (M × (p, s))``, the window read
    once for all ``g`` (``S_IN`` contiguous elements per pixel and position), then projected onto the coefficients:
    ``dc[o, r, b] += Σ_{g, p} dW[(o, g), (p, source[g, r])] · Ψ[g, b, p]`` (a column gather, then one dot over
    ``(g, p)``).  ``pixel (M_PAD,)``: each output pixel's window corner, its ``x`` offset / ``S_IN`` (0 beyond
    ``M_TOTAL``: a window in range, times ``dy``'s zeros), read rather than divided out in the loop;
    ``X_IN_REGISTERS``: the window ``X`` reaches the dot through registers (tf32).  ``dc (parts, C_OUT, C_IN, S_IN,
    NBASIS)`` contiguous, one partial sum per part of the pixels; grid ``(R_BLOCKS·parts, C_IN)``, ``R_BLOCKS =
    cdiv(C_OUT, BLOCK_O)``."""
    pid_r = tl.program_id(0) % R_BLOCKS
    part = tl.program_id(0) // R_BLOCKS
    i = tl.program_id(1)
    KK: tl.constexpr = KSIZE * KSIZE
    K2: tl.constexpr = P_CHUNK * S_IN
    BLOCK_R: tl.constexpr = BLOCK_O * S_OUT
    BACK_PRECISION: tl.constexpr = "ieee" if ACC == tl.float64 else "tf32x3"
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)                                             # (o, g)
    kk = tl.arange(0, K2)                                                                      # (p, s)
    bb = tl.arange(0, B_PAD)
    gp = tl.arange(0, S_OUT * P_CHUNK)                                                         # (g, p)
    dc = tl.zeros((BLOCK_O, S_IN * B_PAD), dtype=ACC)                                         # (o, (r, b))
    m_end = tl.minimum((part + 1) * PART_CHUNKS * BLOCK_M, M_TOTAL)
    for chunk in range(P_PAD // P_CHUNK):
        p = chunk * P_CHUNK + kk // S_IN
        shift = (p // KSIZE * dil_h).to(OFFSET) * sxh + (p % KSIZE * dil_w).to(OFFSET) * sxw + kk % S_IN \
            + tl.cast(i, OFFSET) * S_IN
        ok = (p < KK)[None, :]                                      # the padded positions: the same every pixel
        dw = tl.zeros((BLOCK_R, K2), dtype=ACC)
        for start in range(part * PART_CHUNKS * BLOCK_M, m_end, BLOCK_M):
            m = start + tl.arange(0, BLOCK_M)
            dys = tl.load(dyt_ptr + (rows[:, None].to(OFFSET) * M_PAD + m[None, :]))
            pix = tl.load(pixel_ptr + m).to(OFFSET) * S_IN          # a multiple of S_IN: aligned vector loads
            xs = tl.load(x_ptr + (pix[:, None] + shift[None, :]), mask=ok, other=0.0)          # (M, (p, s))
            if X_IN_REGISTERS:   # an op between the load and the dot: Triton keeps the operand in registers
                xs = tl.where(ok, xs, 0.0)
            dw = mma(dw, dys, xs, PRECISION, UPCAST)
        # onto the coefficients' order: column (p, r) of row (o, g) reads column (p, source[g, r]) (the indices
        # computed here, after the loop, so that they hold no registers in it)
        src = tl.load(source_ptr + (rows % S_OUT)[:, None] * S_IN + (kk % S_IN)[None, :])
        dw = tl.gather(dw, (kk // S_IN)[None, :] * S_IN + src, 1)                               # ((o, g), (p, r))
        dw = tl.reshape(tl.permute(tl.reshape(dw, (BLOCK_O, S_OUT, P_CHUNK, S_IN)), (0, 3, 1, 2)),
                        (BLOCK_O * S_IN, S_OUT * P_CHUNK))                                     # ((o, r), (g, p))
        pp = chunk * P_CHUNK + gp % P_CHUNK
        psi = tl.load(psi_ptr + (gp // P_CHUNK)[:, None] * (NBASIS * KK) + bb[None, :] * KK + pp[:, None],
                      mask=(pp[:, None] < KK) & (bb[None, :] < NBASIS), other=0.0).to(ACC)    # ((g, p), b)
        dc += tl.reshape(tl.dot(dw, psi, input_precision=BACK_PRECISION), (BLOCK_O, S_IN * B_PAD))
    o = pid_r * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = tl.arange(0, S_IN * B_PAD)
    dc_off = ((part * C_OUT + o[:, None]).to(OFFSET) * C_IN + i) * (S_IN * NBASIS) \
        + (cols // B_PAD * NBASIS + cols % B_PAD)[None, :]
    dc_ok = (o < C_OUT)[:, None] & (cols % B_PAD < NBASIS)[None, :]
    tl.store(dc_ptr + dc_off, dc.to(dc_ptr.dtype.element_ty), mask=dc_ok)


# ----------------------------------------------------------------------------------------------- launchers
def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each ≥ ``minimum``, as ``(h, w)``; TypeError / ValueError naming ``name``."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {value!r}")
    return pair


def _check_tensor(t, name: str, dims: int, expected: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {expected}, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dims {expected}, got shape {tuple(t.shape)}")


def _check_float(t: torch.Tensor, name: str, like: Optional[torch.Tensor] = None, like_name: str = "") -> None:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected one of {[str(d) for d in _DTYPES]}, got {t.dtype}")
    if like is not None and (t.dtype != like.dtype or t.device != like.device):
        raise ValueError(f"{name}: expected the dtype and device of {like_name} ({like.dtype} on {like.device}), got "
                         f"{t.dtype} on {t.device}")


def _check_groups(groups) -> None:
    if groups != 1:
        raise ValueError(f"groups: the steerable kernels take groups=1 only, got {groups!r}")


def _geometry(kernel_size: int, stride, padding, dilation) -> tuple:
    """``(stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)`` from ints or pairs (``'same'`` is the caller's to
    resolve into numbers)."""
    if isinstance(padding, str):
        raise TypeError(f"padding: expected an int or a pair of ints (resolve {padding!r} first, e.g. k // 2 = "
                        f"{kernel_size // 2} for 'same' at stride 1), got {padding!r}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0), \
        _pair(dilation, "dilation", 1)
    return sh, sw, ph, pw, dh, dw


def _output_size(size: int, kernel_size: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel_size - 1) - 1) // stride + 1


def _check_tables(tables, coefficients_shape, index, device, dtype, coefficients_name: str = "coefficients"
                  ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Validated ``tables (S_out, B, k·k)`` (in ``dtype``, contiguous) and ``index (S_out, S_in)`` (int32 on
    ``device``); returns them with ``k`` and ``S_out``."""
    _check_tensor(tables, "tables", 3, "(S_out, B, k*k) from steerable._tables(group, k, dtype, device)")
    s_out, size, positions = tables.shape
    kernel_size = math.isqrt(positions)
    if kernel_size * kernel_size != positions or kernel_size < 1:
        raise ValueError(f"tables: expected (S_out, B, k*k) with a square window, got shape {tuple(tables.shape)}")
    if tables.dtype not in _DTYPES:
        raise TypeError(f"tables: expected a floating dtype, got {tables.dtype}")
    c_out, c_in, s_in, basis = coefficients_shape
    if basis != size:
        raise ValueError(f"{coefficients_name}: expected (C_out, C_in, S_in, {size}) for tables of shape "
                         f"{tuple(tables.shape)}, got {tuple(coefficients_shape)}")
    _check_tensor(index, "index", 2, "(S_out, S_in) from group.stabilizer_index(in_group)")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"index: expected an integer tensor, got {index.dtype}")
    if tuple(index.shape) != (s_out, s_in):
        raise ValueError(f"index: expected shape (S_out, S_in) = ({s_out}, {s_in}) for tables {tuple(tables.shape)} "
                         f"and coefficients {tuple(coefficients_shape)}, got {tuple(index.shape)}")
    if index.device.type == "cpu":  # a permutation per row (where checking it costs no device sync)
        rows = index.sort(dim=1).values
        if not torch.equal(rows, torch.arange(s_in).expand(s_out, s_in).to(rows.dtype)):
            raise ValueError(f"index: expected each row to be a permutation of 0..{s_in - 1} (index(g^-1 s)), got "
                             f"{index.tolist()}")
    tables = tables.to(device=device, dtype=dtype).contiguous()
    return tables, index.to(device=device, dtype=torch.int32).contiguous(), kernel_size, s_out


def _as_5d(t: torch.Tensor, s: int, name: str) -> torch.Tensor:
    """``(B, C, S, H, W)`` from itself or from ``(B, C·S, H, W)`` (a view)."""
    if t.dim() == 4:
        if t.shape[1] % s:
            raise ValueError(f"{name}: expected (B, C*{s}, H, W) or (B, C, {s}, H, W), got {tuple(t.shape)}")
        return t.unflatten(1, (t.shape[1] // s, s))
    _check_tensor(t, name, 5, f"(B, C, {s}, H, W)")
    return t


def _offset_type(*tensors: torch.Tensor):
    """``tl.int32`` when every element offset of every tensor fits in 31 bits (half the registers for the
    gathered windows' offsets), else ``tl.int64``."""
    span = max(1 + sum((d - 1) * abs(st) for d, st in zip(t.shape, t.stride())) for t in tensors)
    return tl.int32 if span < 2**31 else tl.int64


def _kernel_args(dtype: torch.dtype, *tensors: torch.Tensor) -> dict:
    """The dtype-dependent constexprs: dot precision, interpreter upcast, accumulator, offset type."""
    return dict(PRECISION=dot_precision(dtype), UPCAST=INTERPRET and dtype in (torch.float16, torch.bfloat16),
                ACC=tl.float64 if dtype == torch.float64 else tl.float32, OFFSET=_offset_type(*tensors))


def _empty(shape, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    return out.fill_(float("nan")) if poison_outputs() else out


def forward(x: torch.Tensor, coefficients: torch.Tensor, bias, tables: torch.Tensor, index: torch.Tensor,
            stride=1, padding=0, dilation=1, *, groups: int = 1) -> torch.Tensor:
    """The steerable group convolution, steered in the kernel.

    Args:
        x: ``(B, C_in, S_in, H, W)`` or ``(B, C_in·S_in, H, W)`` (lifting: ``S_in = 1``).
        coefficients: ``(C_out, C_in / groups, S_in, B)``, x's dtype and device.  bias: ``(C_out,)`` or None.
        tables: ``Ψ (S_out, B, k·k)``, ``steerable._tables(group, k, dtype, device)``.
        index: ``(S_out, S_in)`` integer, ``group.stabilizer_index(in_group)``.
        stride, padding, dilation: ints or pairs (zeros padding).
        groups: channel groups, one launch for all (output channels ``[j·C_out/groups, (j+1)·C_out/groups)`` read
            input channels ``[j·C_in/groups, (j+1)·C_in/groups)``).
    Returns ``y (B, C_out, S_out, H', W')`` in x's dtype: contiguous, or stored ``(B, H', W', C_out, S_out)``
    where :func:`lifting_layout` says so (the lifting kernel stores each pixel's ``C_out·S_out`` outputs
    contiguously, by vectors).
    """
    _check_tensor(coefficients, "coefficients", 4, "(C_out, C_in/groups, S_in, B)")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor (B, C_in, S_in, H, W), got {type(x).__name__}")
    _check_float(x, "x")
    _check_float(coefficients, "coefficients", x, "x")
    c_out, c_in, s_in, basis = coefficients.shape
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c_out % groups:
        raise ValueError(f"groups: expected a positive int dividing C_out = {c_out}, got {groups!r}")
    x = _as_5d(x, s_in, "x")
    if tuple(x.shape[1:3]) != (groups * c_in, s_in):
        raise ValueError(f"x: expected (B, {groups * c_in}, {s_in}, H, W) for coefficients "
                         f"{tuple(coefficients.shape)} and groups={groups}, got {tuple(x.shape)}")
    tables, index, k, s_out = _check_tables(tables, coefficients.shape, index, x.device, x.dtype)
    if bias is not None:
        _check_tensor(bias, "bias", 1, f"({c_out},)")
        _check_float(bias, "bias", x, "x")
        if bias.shape[0] != c_out:
            raise ValueError(f"bias: expected shape ({c_out},), got {tuple(bias.shape)}")
    sh, sw, ph, pw, dh, dw = _geometry(k, stride, padding, dilation)
    nb, _, _, h, w = x.shape
    ho, wo = _output_size(h, k, sh, ph, dh), _output_size(w, k, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"x: a {h}x{w} input gives an empty {ho}x{wo} output (k={k}, stride={stride}, "
                         f"padding={padding}, dilation={dilation})")
    lifting = lifting_layout(s_in, c_in, k, groups)
    if lifting:
        y = empty_group_map((nb, c_out, s_out, ho, wo), x)
    else:
        y = _empty((nb, c_out, s_out, ho, wo), x)
    if y.numel() == 0:
        return y
    if channels_last_window(s_in, x.dtype, k):
        _forward_channels_last(x, coefficients, bias, tables, index, y, k, (sh, sw, ph, pw, dh, dw), groups)
        return y
    if lifting:
        _forward_lifting(x, coefficients, bias, tables, index, y, k, (sh, sw, ph, pw, dh, dw))
        return y
    cfg = _forward_config(k, x.dtype, s_in)
    # the steering dot's M, BLOCK_O, is a dot dimension (>= 16)
    cfg["BLOCK_N"], cfg["BLOCK_G"] = _element_block(c_out // groups, s_out, cfg["BLOCK_N"], 16)
    p_pad, b_pad = _pad16(k * k), _pad16(basis)
    psi, index = _padded_tables(tables, index, cdiv(s_out, cfg["BLOCK_G"]) * cfg["BLOCK_G"], p_pad, b_pad)
    grid = (cdiv(nb * ho * wo, cfg["BLOCK_M"]), groups * cdiv(c_out // groups, cfg["BLOCK_N"] // cfg["BLOCK_G"]),
            cdiv(s_out, cfg["BLOCK_G"]))
    _forward_kernel[grid](x, coefficients, bias if bias is not None else coefficients, psi, index, y,
                          nb, c_in, c_out // groups, h, w, ho, wo, *x.stride(), *coefficients.stride(),
                          sh, sw, ph, pw, dh, dw, S_IN=s_in, S_OUT=s_out, KSIZE=k, NBASIS=basis,
                          P_PAD=p_pad, B_PAD=b_pad, HAS_BIAS=bias is not None, GROUPS=groups,
                          **_kernel_args(x.dtype, x, coefficients, y), **cfg)
    return y


# The widest folded reduction (window × input channels, padded) the lifting forward keeps in registers as its
# steered filter; wider lifting layers step over (i, s) in ``_forward_kernel``
MAX_LIFTING_K = 128


def lifting_layout(s_in: int, c_in: int, kernel_size: int, groups: int) -> bool:
    """Whether :func:`forward` runs ``_forward_lifting_kernel`` (a lifting layer whose folded reduction fits,
    one channel group) and so returns ``y (B, C_out, S_out, H', W')`` stored ``(B, H', W', C_out, S_out)``, the
    channels-last group map, rather than contiguous (the fake kernel of the op gives the same strides)."""
    return s_in == 1 and groups == 1 and _lifting_k_pad(c_in, kernel_size) <= MAX_LIFTING_K


def _lifting_k_pad(c_in: int, kernel_size: int) -> int:
    """The lifting forward's reduction ``(kh, i, kw)``: ``k`` rows × ``C_in`` (padded to a power of two) × ``k``
    (padded to a power of two, the vector run of ``xw``), padded to a ``tl.dot`` dimension."""
    return _pad16(kernel_size * next_power_of_2(c_in) * next_power_of_2(kernel_size))


def _lifting_config(kernel_size: int, dtype: torch.dtype) -> dict:
    """The lifting forward's tile: ``BLOCK_M`` pixels, ``BLOCK_N`` output columns ``(o, g)``, warps, stages."""
    if INTERPRET:   # small pixel tiles, so that the tests' programs cover several, the last one ragged
        return dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)


def _tiles_per_program(tiles: int, other_programs: int) -> int:
    """Pixel tiles per lifting program: each steers its filter once (a prologue of a few tiles' loop instructions,
    docs/steerable.md) for up to 8 tiles, in about 256 programs (2 per SM of an H100) where there are
    enough tiles.  3 under the interpreter (a ragged last program)."""
    if INTERPRET:
        return 3
    return max(1, min(8, tiles * other_programs // 256))


def _lifting_corners(ho: int, wo: int, stride_h: int, c_in: int, length: int, wide: bool, device) -> torch.Tensor:
    """The window corner of an image's output pixel ``min(m, HO·WO - 1)`` in ``xw``, in units of ``KW_PAD``
    elements, for ``m < length`` (int64 where ``wide``, else int32): built once per geometry."""
    def build():
        m = torch.arange(length, device=device).clamp_max(ho * wo - 1)
        return ((m // wo * stride_h * wo + m % wo) * c_in).to(torch.int64 if wide else torch.int32)

    return geometry_table(("steerable_lifting_corners", ho, wo, stride_h, c_in, length, wide, device), build)


def _lifting_tables(tables: torch.Tensor, s_out_pad: int, c_pad: int, b_pad: int, k_pad: int) -> torch.Tensor:
    """``Ψ' (S_OUT_PAD, C_PAD·B_PAD, K_PAD)`` from ``Ψ (S_out, B, k·k)``: ``Ψ'[g, (i, b), (kh, i', kw)] = Ψ[g, b,
    kh·k + kw]`` where ``i = i'`` and ``kw < k``, zero elsewhere (the padding elements, basis functions and columns
    included), ``kw`` padded to a power of two as ``xw``'s runs are: element ``g``'s steering operand."""
    s_out, basis, positions = tables.shape
    k, kw_pad = math.isqrt(positions), next_power_of_2(math.isqrt(positions))
    out = tables.new_zeros((s_out_pad, c_pad * b_pad, k_pad))
    # the (i, i') diagonal of the folded columns: a view of (S_OUT_PAD, B_PAD, k, KW_PAD, C_PAD)
    diagonal = out[:, :, :k * c_pad * kw_pad].unflatten(1, (c_pad, b_pad)).unflatten(3, (k, c_pad, kw_pad)) \
        .diagonal(dim1=1, dim2=4)
    diagonal[:s_out, :basis, :, :k] = tables.unflatten(2, (k, k))[..., None]
    return out


def _forward_lifting(x, coefficients, bias, tables, index, y, k: int, geometry: tuple) -> None:
    """Launch ``_forward_lifting_kernel`` into ``y`` (stored ``(B, H', W', C_out, S_out)``: :func:`lifting_layout`):
    ``x (B, C_in, 1, H, W)`` zero-padded and unfolded along the width into ``xw (B, H + 2·pad_h, W', C_in,
    KW_PAD)`` (``KW_PAD`` × the input's elements: small beside a lifting layer's ``C_out·S_out`` output channels),
    each pixel's window corner in ``xw`` as a table, the coefficients and :func:`_lifting_tables` zero-padded."""
    nb, c_in, _, h, w = x.shape
    c_out, _, _, basis = coefficients.shape
    _, _, s_out, ho, wo = y.shape
    sh, sw, ph, pw, dh, dw = geometry
    kw_pad = next_power_of_2(k)
    padded = torch.nn.functional.pad(x[:, :, 0], (pw, pw, ph, ph))                            # (B, C, H_pad, W_pad)
    windows = padded.unfold(3, (k - 1) * dw + 1, sw)[..., ::dw]                               # (B, C, H_pad, W', k)
    xw = x.new_zeros((nb, h + 2 * ph, wo, c_in, kw_pad))
    xw[..., :k] = windows.permute(0, 2, 3, 1, 4)
    args = _kernel_args(x.dtype, xw, y)
    # the bias as one more filter column, on ones that xw holds past the window (exact but in tf32)
    bias_in_dot = bias is not None and kw_pad > k and args["PRECISION"] != "tf32"
    if bias_in_dot:
        xw[..., 0, kw_pad - 1] = 1
    cfg = _lifting_config(k, x.dtype)
    # the steering dots' M is BLOCK_N (not BLOCK_O, as in _forward_kernel): any channel block
    cfg["BLOCK_N"], cfg["BLOCK_G"] = _element_block(c_out, s_out, cfg["BLOCK_N"], 1)
    block_o = cfg["BLOCK_N"] // cfg["BLOCK_G"]
    per_image = cdiv(ho * wo, cfg["BLOCK_M"])
    corner = _lifting_corners(ho, wo, sh, c_in, per_image * cfg["BLOCK_M"], args["OFFSET"] == tl.int64, x.device)
    b_pad, k_pad = _pad16(basis), _lifting_k_pad(c_in, k)
    psi = _lifting_tables(tables, cdiv(s_out, cfg["BLOCK_G"]) * cfg["BLOCK_G"], next_power_of_2(c_in), b_pad, k_pad)
    coef = coefficients.new_zeros((c_out, next_power_of_2(c_in), b_pad))   # zero-padded: unmasked vector loads
    coef[:, :c_in, :basis] = coefficients[:, :, 0]
    others = cdiv(c_out, block_o) * cdiv(s_out, cfg["BLOCK_G"])
    tiles = _tiles_per_program(nb * per_image, others)
    row = c_out * s_out
    align = min(16, row & -row)   # a pixel row's alignment, in elements: a constexpr, so that stores vectorise
    grid = (cdiv(nb * per_image, tiles), cdiv(c_out, block_o), cdiv(s_out, cfg["BLOCK_G"]))
    _forward_lifting_kernel[grid](
        xw, coef, bias if bias is not None else coef, psi, corner, y, nb, c_out, ho * wo, row // align, per_image,
        tiles, (h + 2 * ph) * wo * c_in, wo * c_in, dh, C_IN=c_in, C_PAD=next_power_of_2(c_in), S_OUT=s_out,
        KSIZE=k, KW_PAD=kw_pad, K_PAD=k_pad, B_PAD=b_pad, FULL_TILES=ho * wo >= cfg["BLOCK_M"],
        FULL_COLUMNS=c_out % block_o == 0 and s_out % cfg["BLOCK_G"] == 0, HAS_BIAS=bias is not None,
        BIAS_IN_DOT=bias_in_dot, ROW_ALIGN=align, **args, **cfg)


def channels_last_window(s_in: int, dtype: torch.dtype, kernel_size: int) -> bool:
    """Whether the forward gathers its window channels-last (``S_in`` contiguous elements per pixel and position:
    16-byte vector loads for 16-bit inputs at ``S_in = 8``): regular C_8, C_16 and D_8 fields in fp16, bf16 and
    fp32 on tf32 dots.  Not wider fields (a steering tile of ``S_in × BLOCK_N`` columns), nor exact fp32 dots (they
    run on FMAs and spill kilobytes), nor fp64."""
    return s_in in (8, 16) and channels_last_gradients(dtype)


def _channels_last_config(kernel_size: int, dtype: torch.dtype, s_in: int) -> dict:
    """The channels-last forward's tile: ``BLOCK_M`` pixels, ``BLOCK_N`` output columns (``(g, o)``: the launcher
    splits them, :func:`_element_block`), 8 warps (at 4 the steering tile ``P_CHUNK × S_in·BLOCK_N`` in fp32 and the
    window's addresses spill), the window chunks unrolled up to k = 5 (``STATIC_CHUNKS``) except for fp32 C_16 / D_8
    fields: of the tiles tried for sm_90 without a spill or a shared-memory overflow on sm_90 and sm_80, those with
    the fewest hot-loop instructions per MAC (docs/steerable.md).  Under the interpreter the same chunking, so that
    the tests run it."""
    # 16-bit C_8 at k = 7: chunks of 32 positions, unpipelined (two stages overflow shared memory)
    wide = kernel_size == 7 and s_in == 8 and dtype in (torch.float16, torch.bfloat16)
    chunk = 2 * P_CHUNK if wide else P_CHUNK
    # looped, not unrolled, chunks at k = 7 and for fp32 C_16 / D_8 beyond k = 3: unrolled, their windows spill
    looped = kernel_size > 5 or dtype == torch.float32 and s_in > 8 and kernel_size > 3
    cfg = dict(INTERPRETER_CONFIG, P_CHUNK=chunk,
               STATIC_CHUNKS=_pad16(kernel_size * kernel_size) // chunk <= 2 and not looped)
    if INTERPRET:
        return cfg
    # two stages: each unrolled chunk's window is its own ring of pipeline buffers in shared memory
    cfg.update(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=1 if wide else 2)
    if dtype == torch.float32 or s_in > 8 and kernel_size > 5:
        cfg["BLOCK_M"] = 64
    if s_in > 8 and kernel_size > 5:   # C_16 / D_8 at k = 7: two stages, or 16 elements of 4 channels, spill
        cfg.update(num_stages=1, BLOCK_G=8)
    elif s_in > 8 and kernel_size > 3:   # C_16 / D_8 at k = 5: 128 x 64 spills, two stages of 128 x 32 overflow
        cfg.update(BLOCK_N=32, num_stages=1)
    if dtype == torch.float32 and (s_in > 8 or kernel_size > 5):   # two stages overflow or spill (sm_80 at k = 7)
        cfg["num_stages"] = 1
    if dtype == torch.float32 and s_in > 8 and kernel_size > 3:   # 64 x 64 overflows sm_80's shared memory at k = 7
        cfg.update(BLOCK_N=32, BLOCK_G=16)
    return cfg


# Window positions per K step of the channels-last forward (times S_in elements: the step's K), by default
P_CHUNK = 16


def _forward_channels_last(x, coefficients, bias, tables, index, y, k: int, geometry: tuple, groups: int) -> None:
    """Launch ``_forward_channels_last_kernel`` into ``y``.  ``x`` is copied channels-last (``(B, H, W, C_in,
    S_in)`` in memory) unless it is already, the coefficients transposed to ``(C_in, S_in, B_PAD, C_OUT_PAD)`` (per
    channel group: ``C_in`` rows of each group's ``C_out / groups`` channels) and the tables to ``Ψᵀ (S_OUT_PAD,
    P_PAD, B_PAD)``, zero-padded (``C_OUT_PAD``: whole channel blocks, a multiple of 16 for vector loads along the
    output channels)."""
    nb, c_in_all, s_in, h, w = x.shape
    c_out, c_in, _, basis = coefficients.shape
    _, _, s_out, ho, wo = y.shape
    c_out_group = c_out // groups
    halo = not is_channels_last(x)
    if halo:   # copied channels-last with the zeros padding: the window needs no bounds masks
        sh, sw, ph, pw, dh, dw = geometry
        x, h, w, geometry = _zero_padded_channels_last(x, ph, pw), h + 2 * ph, w + 2 * pw, (sh, sw, 0, 0, dh, dw)
    cfg = _channels_last_config(k, x.dtype, s_in)
    # the steering dot's N, S_in·BLOCK_O, is a dot dimension (>= 16)
    cfg["BLOCK_N"], cfg["BLOCK_G"] = _element_block(c_out_group, s_out, cfg["BLOCK_N"], max(1, 16 // s_in),
                                                    cfg.get("BLOCK_G", s_out))
    block_o = cfg["BLOCK_N"] // cfg["BLOCK_G"]
    c_out_pad = cdiv(c_out_group, max(16, block_o)) * max(16, block_o)
    p_pad, b_pad = _pad16(k * k), _pad16(basis)
    ct = torch.zeros((groups, c_in, s_in, b_pad, c_out_pad), dtype=x.dtype, device=x.device)
    ct[..., :basis, :c_out_group] = coefficients.unflatten(0, (groups, c_out_group)).permute(0, 2, 3, 4, 1)
    psi, index = _padded_tables(tables, index, cdiv(s_out, cfg["BLOCK_G"]) * cfg["BLOCK_G"], p_pad, b_pad)
    grid = (cdiv(nb * ho * wo, cfg["BLOCK_M"]), groups * cdiv(c_out_group, block_o), cdiv(s_out, cfg["BLOCK_G"]))
    _forward_channels_last_kernel[grid](
        x, ct, bias if bias is not None else ct, psi.transpose(1, 2).contiguous(), index, y, nb, c_in, c_out_group,
        h, w, ho, wo, c_out_pad, x.stride(0), x.stride(3), x.stride(4), *geometry, S_IN=s_in, S_OUT=s_out, KSIZE=k,
        NBASIS=basis, P_PAD=p_pad, B_PAD=b_pad, HALO=halo, HAS_BIAS=bias is not None, GROUPS=groups,
        **_kernel_args(x.dtype, x, ct, y), **cfg)


def _element_block(c_out: int, s_out: int, block_n: int, min_channels: int, max_elements: Optional[int] = None
                   ) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_G)`` of a forward program whose ``BLOCK_N`` output columns are ``BLOCK_G`` output elements
    × ``BLOCK_O = BLOCK_N / BLOCK_G`` channels (powers of two, ``BLOCK_O >= min_channels``, ``BLOCK_G <=
    max_elements``, ``BLOCK_N`` at most the given width and at least 16): the split with the least padded work,
    the padded ``C_out·S_out`` columns counted twice per halving of the tile (ties: the fewest padded columns, then
    the widest channel block).  A narrow ``C_out`` so fills the tile with several elements, which then share each
    window read."""
    elements = next_power_of_2(min(s_out, max_elements or s_out))
    best = None
    block_o = block_n
    while block_o >= min_channels:
        block_g = min(block_n // block_o, elements)
        width = block_o * block_g
        padded = cdiv(c_out, block_o) * block_o * cdiv(s_out, block_g) * block_g
        # the padded columns' work, twice per MAC where the tile is half as wide (its per-program costs); then
        # the fewest padded columns
        key = (padded * block_n // width, padded)
        if width >= 16 and (best is None or key < best[0]):
            best = (key, width, block_g)
        block_o //= 2
    if best is None:
        raise AssertionError(f"no element block for C_out={c_out}, S_out={s_out}, BLOCK_N={block_n}")
    return best[1], best[2]


def _padded_tables(tables: torch.Tensor, index: torch.Tensor, s_out_pad: int, p_pad: int, b_pad: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``Ψ (S_OUT_PAD, B_PAD, P_PAD)`` and ``index (S_OUT_PAD, S_in)``, zero-padded (a padding element reads slice
    0 and is never stored), so that a program's ``BLOCK_G`` elements load their tables unmasked."""
    s_out, basis, positions = tables.shape
    psi = tables.new_zeros((s_out_pad, b_pad, p_pad))
    psi[:s_out, :basis, :positions] = tables
    padded = index.new_zeros((s_out_pad, index.shape[1]))
    padded[:s_out] = index
    return psi, padded


def channels_last_gradients(dtype: torch.dtype) -> bool:
    """Whether the gradients run channels-last (16-byte vector loads): the input gradient gathering ``dy`` with
    ``O_STEP`` output channels contiguous per pixel, the coefficient gradient ``x`` with its ``S_in`` elements
    contiguous: fp16, bf16, and fp32 on tf32 dots.  Not exact fp32 dots (they run on FMAs) nor fp64."""
    return dtype in (torch.float16, torch.bfloat16) or dtype == torch.float32 and dot_precision(dtype) == "tf32"


def _target_arch(device: torch.device) -> int:
    """The architecture the kernels compile for, ``major·10 + minor``: the device's; on meta tensors the Triton
    driver's target (``perf.static`` compiles so for each architecture); else (the interpreter) 90."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    if device.type == "meta":
        try:
            return int(triton.runtime.driver.active.get_current_target().arch)
        except Exception:  # noqa: BLE001  (no GPU driver: meta tensors outside perf.static)
            pass
    return 90


def _input_grad_channels_last_config(kernel_size: int, dtype: torch.dtype, arch: int) -> dict:
    """The channels-last input gradient's tile for ``sm_<arch>``: ``BLOCK_M`` pixels, ``BLOCK_N`` input channels,
    ``O_STEP`` output channels (16 bytes) × ``P_CHUNK`` window positions per K step (32 from k = 5 on: fewer
    instructions per MAC on sm_90 than 16, docs/steerable.md), ``NESTED`` (the loop over ``(g, o)`` split in two:
    on sm_90 but for 16-bit at k = 7, where it spills, as it does on sm_80), warps and stages; under the interpreter
    too, so that the tests run the same chunking and loops."""
    size = torch.empty((), dtype=dtype).element_size()
    cfg = dict(INTERPRETER_CONFIG, O_STEP=16 // size, P_CHUNK=min(2 * P_CHUNK, _pad16(kernel_size * kernel_size)),
               NESTED=arch >= 90 and not (size == 2 and kernel_size >= 7))
    if INTERPRET:
        return cfg
    cfg.update(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
    return cfg


def _channels_last_input_grad(kernel_size: int, dtype: torch.dtype, arch: int) -> bool:
    """Whether the input gradient runs ``_input_grad_channels_last_kernel``: :func:`channels_last_gradients`, but
    below sm_90 not from k = 7 on (every tile tried there spills on sm_80; ``_input_grad_kernel`` does not)."""
    return channels_last_gradients(dtype) and (arch >= 90 or kernel_size < 7)


def _input_grad_channels_last(dy, coefficients, tables, index, dx, k: int, geometry: tuple) -> None:
    """Launch ``_input_grad_channels_last_kernel`` into ``dx``: ``dy`` copied to ``(B, S_out, H', W', C_out)`` and
    the coefficients to ``(S_in, B, C_out, C_in)``, both zero-padded (``C_out`` to ``O_STEP``, ``C_in`` to 8,
    ``B`` to ``B_PAD``: aligned 16-byte vector loads, no mask on the basis).  The padded coefficients stay far
    below the bank's size (``B_PAD`` against ``S_out·k²``) but for a few channels."""
    nb, c_out, s_out, ho, wo = dy.shape
    _, c_in, s_in, basis = coefficients.shape
    cfg = _input_grad_channels_last_config(k, dy.dtype, _target_arch(dy.device))
    c_out_pad = cdiv(c_out, cfg["O_STEP"]) * cfg["O_STEP"]
    c_in_pad = cdiv(c_in, 8) * 8
    dyt = torch.empty((nb, s_out, ho, wo, c_out_pad), dtype=dy.dtype, device=dy.device)
    dyt[..., :c_out] = dy.permute(0, 2, 3, 4, 1)
    if c_out_pad > c_out:   # only the padding channels are zero-filled: the vector loads read them unmasked
        dyt[..., c_out:] = 0
    ct = torch.zeros((s_in, _pad16(basis), c_out_pad, c_in_pad), dtype=dy.dtype, device=dy.device)
    ct[:, :basis, :c_out, :c_in] = coefficients.permute(2, 3, 0, 1)
    sh, sw, ph, pw, dh, dw = geometry
    grid = (cdiv(nb * dx.shape[3] * dx.shape[4], cfg["BLOCK_M"]), cdiv(c_in_pad, cfg["BLOCK_N"]), s_in)
    _input_grad_channels_last_kernel[grid](
        dyt, ct, tables, index, dx, nb, c_in, dx.shape[3], dx.shape[4], ho, wo, ph, pw, dh, dw, S_IN=s_in,
        S_OUT=s_out, KSIZE=k, NBASIS=basis, P_PAD=_pad16(k * k), B_PAD=_pad16(basis), C_OUT_PAD=c_out_pad,
        C_IN_PAD=c_in_pad, STRIDE_H=sh, STRIDE_W=sw, **_kernel_args(dy.dtype, dyt, ct, dx), **cfg)


def input_grad(dy: torch.Tensor, coefficients: torch.Tensor, tables: torch.Tensor, index: torch.Tensor, x_shape,
               stride=1, padding=0, dilation=1, *, groups: int = 1) -> torch.Tensor:
    """``dx`` of :func:`forward`: the adjoint, again a steerable convolution (K over ``(g, o)``).

    Args:
        dy: ``(B, C_out, S_out, H', W')``.  coefficients: ``(C_out, C_in, S_in, B)``, dy's dtype and device.
        tables, index, stride, padding, dilation, groups: as :func:`forward`.
        x_shape: the input's shape, ``(B, C_in, S_in, H, W)`` or ``(B, C_in·S_in, H, W)``.
    Returns ``dx`` of shape ``x_shape``, contiguous, in dy's dtype.
    """
    _check_groups(groups)
    _check_tensor(dy, "dy", 5, "(B, C_out, S_out, H', W')")
    _check_tensor(coefficients, "coefficients", 4, "(C_out, C_in, S_in, B)")
    _check_float(dy, "dy")
    _check_float(coefficients, "coefficients", dy, "dy")
    c_out, c_in, s_in, basis = coefficients.shape
    tables, index, k, s_out = _check_tables(tables, coefficients.shape, index, dy.device, dy.dtype)
    x_shape = tuple(x_shape)
    if len(x_shape) not in (4, 5) or not all(isinstance(v, int) for v in x_shape):
        raise TypeError(f"x_shape: expected (B, C_in, S_in, H, W) ints, got {x_shape!r}")
    full = x_shape if len(x_shape) == 5 else (x_shape[0], x_shape[1] // s_in, s_in, *x_shape[2:])
    if full[1:3] != (c_in, s_in) or (len(x_shape) == 4 and x_shape[1] != c_in * s_in):
        raise ValueError(f"x_shape: expected (B, {c_in}, {s_in}, H, W) for coefficients {tuple(coefficients.shape)}, "
                         f"got {x_shape}")
    sh, sw, ph, pw, dh, dw = _geometry(k, stride, padding, dilation)
    nb, _, _, h, w = full
    ho, wo = _output_size(h, k, sh, ph, dh), _output_size(w, k, sw, pw, dw)
    if tuple(dy.shape) != (nb, c_out, s_out, ho, wo):
        raise ValueError(f"dy: expected {(nb, c_out, s_out, ho, wo)} for x_shape {x_shape}, got {tuple(dy.shape)}")
    dx = _empty(full, dy)
    if dx.numel() == 0:
        return dx.view(x_shape)
    if _channels_last_input_grad(k, dy.dtype, _target_arch(dy.device)):
        _input_grad_channels_last(dy, coefficients, tables, index, dx, k, (sh, sw, ph, pw, dh, dw))
        return dx.view(x_shape)
    cfg = _input_grad_config(k, dy.dtype)
    grid = (cdiv(nb * h * w, cfg["BLOCK_M"]), cdiv(c_in, cfg["BLOCK_N"]), s_in)
    _input_grad_kernel[grid](dy, coefficients, tables, index, dx, nb, c_in, c_out, h, w, ho, wo,
                             *dy.stride(), *coefficients.stride(), sh, sw, ph, pw, dh, dw,
                             S_IN=s_in, S_OUT=s_out, KSIZE=k, NBASIS=basis, P_PAD=_pad16(k * k),
                             B_PAD=_pad16(basis), **_kernel_args(dy.dtype, dy, coefficients, dx), **cfg)
    return dx.view(x_shape)


def _window_corners(nb: int, ho: int, wo: int, m_pad: int, x: torch.Tensor, stride: tuple) -> torch.Tensor:
    """``(m_pad,)``: per output pixel ``(n, oh, ow)`` (flat, then padding), its window corner's offset in ``x``,
    channels-last with the zeros padding in place, over ``S_in``: ``(n·sxn + oh·stride_h·sxh + ow·stride_w·sxw) /
    S_in``; 0 for the padding pixels.  int32, or int64 when ``x`` needs it.  A function of the geometry only:
    built once per shape, strides and device (:func:`~._common.geometry_table`)."""
    wide = _offset_type(x) == tl.int64
    key = ("steer_window_corners", nb, ho, wo, m_pad, x.shape[2], x.stride(0), x.stride(3), x.stride(4), *stride,
           wide, x.device)
    return geometry_table(key, lambda: _build_window_corners(nb, ho, wo, m_pad, x.shape[2], x.stride(0), x.stride(3),
                                                             x.stride(4), stride, wide, x.device))


def _build_window_corners(nb: int, ho: int, wo: int, m_pad: int, s_in: int, sxn: int, sxh: int, sxw: int,
                          stride: tuple, wide: bool, device: torch.device) -> torch.Tensor:
    m = torch.arange(m_pad, device=device, dtype=torch.int64)
    offset = m // (ho * wo) * sxn + (m // wo) % ho * stride[0] * sxh + m % wo * stride[1] * sxw
    return (torch.where(m < nb * ho * wo, offset, 0) // s_in).to(torch.int64 if wide else torch.int32)


def _zero_padded_channels_last(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """``x (B, C, S, H, W)`` copied channels-last (``(B, H + 2·pad_h, W + 2·pad_w, C, S)`` in memory) with the zeros
    padding in place, viewed ``(B, C, S, H + 2·pad_h, W + 2·pad_w)``: every window of every output pixel lies in
    it.  One launch, the group convolution's halo copy (:func:`~.group_conv_layouts.padded_copy`)."""
    nb, c, s, h, w = x.shape
    padded = x.new_empty((nb, h + 2 * pad_h, w + 2 * pad_w, c, s))
    return padded_copy(padded, x.permute(0, 3, 4, 1, 2), (0, pad_h, pad_w, 0, 0)).permute(0, 3, 4, 1, 2)


# index tensor -> (its version, source): the inverse permutations the coefficient gradient reads, built once per
# index tensor (the ops pass one cached tensor per group pair and device) and again if it changes in place
_SOURCES = WeakIdKeyDictionary()


def _source_table(index: torch.Tensor) -> torch.Tensor:
    """``source (S_out, S_in)`` int32 with ``source[g, r]`` = the input element ``s`` where ``index[g, s] = r``
    (each row of ``index`` a permutation), cached per ``index`` tensor."""
    version = None if index.is_inference() else index._version   # inference tensors keep no version counter
    entry = _SOURCES.get(index)
    if entry is None or entry[0] != version or version is None:
        entry = (version, torch.argsort(index, dim=1).to(torch.int32).contiguous())
        _SOURCES[index] = entry
    return entry[1]


def _weight_grad_channels_last_config(kernel_size: int, dtype: torch.dtype, s_in: int, s_out: int, arch: int,
                                      c_out: int) -> dict:
    """The channels-last coefficient gradient's tile for ``sm_<arch>``: ``BLOCK_M`` pixels per chunk, ``BLOCK_O``
    output channels (rows ``BLOCK_O·S_out`` of the main dot, ``BLOCK_O·S_in ≥ 16`` for the projection's dot),
    ``P_CHUNK`` window positions (``P_CHUNK·S_in`` columns, 128 where the window has them; 16 for lifting layers),
    warps and stages: of the tiles tried without a spill, those with the fewest hot-loop instructions per MAC
    on sm_90 (docs/steerable.md): regular layers 128 rows where ``C_out`` fills more than 64 (a warp group's
    64 × 128 wgmma each), 64 pixels.  Below sm_90 (no wgmma: the accumulators and the projection's operands share
    the registers with the window's addresses) 64 rows, 32 pixels, one stage, at most 64 columns at k = 7 and 8
    positions in lifting layers.  ``X_IN_REGISTERS`` (tf32 on sm_90, but lifting layers): the window reaches the
    dot through registers.  The rows, the chunking and ``X_IN_REGISTERS`` under the interpreter too."""
    block_o = max(1, 64 // s_out, 16 // s_in)
    if arch >= 90 and s_in > 1 and c_out > block_o:
        block_o = max(block_o, 128 // s_out)
    p_chunk = min(_pad16(kernel_size * kernel_size), max(1, 128 // s_in)) if s_in > 1 else 16
    if arch < 90 and s_in == 1:
        p_chunk = 8
    elif arch < 90 and kernel_size >= 7:
        p_chunk = min(p_chunk, max(1, 64 // s_in))
    # tf32 wgmma reads its B operand K-major only: the window X (M × (p, s)), (p, s)-contiguous, would be copied
    # to shared memory 4 bytes at a time; through registers it is loaded 16 bytes at a time, then stored K-major
    x_in_registers = arch >= 90 and dtype == torch.float32 and s_in > 1
    cfg = dict(BLOCK_M=16, BLOCK_O=block_o, P_CHUNK=p_chunk, num_warps=4, num_stages=1,
               X_IN_REGISTERS=x_in_registers)
    if INTERPRET:
        return cfg
    if arch < 90:
        cfg.update(BLOCK_M=32, num_warps=8, num_stages=1)
        return cfg
    cfg.update(BLOCK_M=64, num_warps=8, num_stages=2)
    # lifting layers: 16 positions (wider chunks spill); at 256 rows (C_16 / D_8) 16-bit takes 32 pixels (64 spill),
    # fp32 one stage (two spill)
    if block_o * s_out >= 256 and dtype == torch.float32:
        cfg["num_stages"] = 1
    elif block_o * s_out >= 256:
        cfg["BLOCK_M"] = 32
    if cfg["X_IN_REGISTERS"]:   # three stages: fewer instructions per MAC than two
        cfg["num_stages"] = 3
    return cfg


def weight_grad(dy: torch.Tensor, x: torch.Tensor, tables: torch.Tensor, index: torch.Tensor, coeff_shape,
                stride=1, padding=0, dilation=1, *, groups: int = 1) -> torch.Tensor:
    """``dc`` of :func:`forward`, summed over the group copies in the kernel (deterministic: no atomics).

    Args:
        dy: ``(B, C_out, S_out, H', W')``.  x: ``(B, C_in, S_in, H, W)`` or ``(B, C_in·S_in, H, W)``, dy's dtype.
        coeff_shape: ``(C_out, C_in, S_in, B)``.  tables, index, stride, padding, dilation, groups: as
            :func:`forward`.
    Returns ``dc (C_out, C_in, S_in, B)`` contiguous, in dy's dtype (the bias gradient is ``dy.sum((0, 2, 3, 4))``,
    the caller's).
    """
    _check_groups(groups)
    _check_tensor(dy, "dy", 5, "(B, C_out, S_out, H', W')")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor (B, C_in, S_in, H, W), got {type(x).__name__}")
    _check_float(dy, "dy")
    _check_float(x, "x", dy, "dy")
    coeff_shape = tuple(coeff_shape)
    if len(coeff_shape) != 4 or not all(isinstance(v, int) and v >= 1 for v in coeff_shape):
        raise ValueError(f"coeff_shape: expected (C_out, C_in, S_in, B) positive ints, got {coeff_shape!r}")
    c_out, c_in, s_in, basis = coeff_shape
    x = _as_5d(x, s_in, "x")
    if tuple(x.shape[1:3]) != (c_in, s_in):
        raise ValueError(f"x: expected (B, {c_in}, {s_in}, H, W) for coeff_shape {coeff_shape}, got {tuple(x.shape)}")
    tables, index, k, s_out = _check_tables(tables, coeff_shape, index, dy.device, dy.dtype, "coeff_shape")
    sh, sw, ph, pw, dh, dw = _geometry(k, stride, padding, dilation)
    nb, _, _, h, w = x.shape
    ho, wo = _output_size(h, k, sh, ph, dh), _output_size(w, k, sw, pw, dw)
    if tuple(dy.shape) != (nb, c_out, s_out, ho, wo):
        raise ValueError(f"dy: expected {(nb, c_out, s_out, ho, wo)} for x {tuple(x.shape)}, got {tuple(dy.shape)}")
    source = _source_table(index)                                            # source[g, r] = s with index[g, s] = r
    # its tiles hold every group copy and input element: powers of two (C_N / D_N with N a power of two, lifting)
    last = channels_last_gradients(dy.dtype) and s_in & (s_in - 1) == 0 and s_out & (s_out - 1) == 0
    cfg = _weight_grad_channels_last_config(k, dy.dtype, s_in, s_out, _target_arch(dy.device), c_out) if last \
        else _weight_grad_config(k, dy.dtype)
    m_total = nb * ho * wo
    o_blocks, chunks = cdiv(c_out, cfg["BLOCK_O"]), cdiv(m_total, cfg["BLOCK_M"])
    # the partial sums (parts × the coefficients) stay under half the bank: parts·B < S_out·k² / 2
    parts = _pixel_parts(o_blocks * c_in * (1 if last else s_in), chunks, max(1, s_out * k * k // (2 * basis)),
                         dy.device)
    part_chunks = max(1, cdiv(chunks, parts))
    parts = max(1, cdiv(chunks, part_chunks))
    out = _empty(coeff_shape, dy) if parts == 1 else \
        torch.empty((parts, *coeff_shape), dtype=torch.float64 if dy.dtype == torch.float64 else torch.float32,
                    device=dy.device)
    common = dict(S_IN=s_in, S_OUT=s_out, KSIZE=k, NBASIS=basis, P_PAD=_pad16(k * k), B_PAD=_pad16(basis))
    if last:
        if ph or pw or not is_channels_last(x):   # every window inside x: the kernel masks no pixel
            x = _zero_padded_channels_last(x, ph, pw)
        # dy as (C_out·S_out, pixels), both padded to whole blocks (zeros): unmasked 16-byte loads
        dyt = torch.zeros((o_blocks * cfg["BLOCK_O"] * s_out, chunks * cfg["BLOCK_M"]), dtype=dy.dtype,
                          device=dy.device)
        dyt[:c_out * s_out, :m_total] = dy.permute(1, 2, 0, 3, 4).reshape(c_out * s_out, m_total)
        pixel = _window_corners(nb, ho, wo, dyt.shape[1], x, (sh, sw))
        _weight_grad_channels_last_kernel[(o_blocks * parts, c_in)](
            dyt, x, tables, source, pixel, out, c_in, c_out, m_total, dyt.shape[1], x.stride(3), x.stride(4),
            dh, dw, o_blocks, part_chunks, **common, **_kernel_args(dy.dtype, dyt, x, out), **cfg)
    else:
        _weight_grad_kernel[(o_blocks * parts, c_in, s_in)](
            dy, x, tables, source, out, nb, c_in, c_out, h, w, ho, wo, *dy.stride(), *x.stride(), sh, sw, ph, pw, dh,
            dw, o_blocks, part_chunks, **common, **_kernel_args(dy.dtype, dy, x, out), **cfg)
    return out if parts == 1 else out.sum(0).to(dy.dtype)     # a fixed-order sum over the parts: deterministic


# Below this many coefficient-gradient programs the pixels are split into parts (partial sums, then one sum).  On a
# GPU: 4 programs per SM; elsewhere this value (tests raise it to exercise the split under the interpreter).
MIN_PROGRAMS = 1


def _pixel_parts(programs: int, chunks: int, limit: int, device: torch.device) -> int:
    """How many parts the coefficient gradient splits the pixels into: enough for ``MIN_PROGRAMS`` (4 per SM on a
    GPU) programs, at most one per pixel chunk and at most ``limit``."""
    target = MIN_PROGRAMS
    if device.type == "cuda" and not INTERPRET:
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(cdiv(target, programs), chunks, limit))
