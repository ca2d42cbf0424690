"""Implicit-GEMM group convolution: forward, input gradient and weight gradient.

Notation (``../shared/DESIGN.md``, "The three GEMMs"): output element ``g``, weight stabilizer slice ``u``, tap
``t`` of the base filter, which element ``g`` moves to ``(dh, dw) = dest[g, t]``; input pixel of output pixel
``p`` for that tap ``q = p·stride + (dh, dw)·dilation − padding``.  Channel group ``grp`` reads weight slice
``wg = grp % WEIGHT_GROUPS`` (``WEIGHT_GROUPS = groups`` normally, 1 when one kernel is shared by all groups).

    y[b, o, g, p]   = Σ_{i, u, t} w[o, i, u, t] · x[b, i, g·u, q(p, dest[g, t])]
    dw[o, i, u, t]  = Σ_{copies, g, b, p} dy[b, o, g, p] · x[b, i, g·u, q(p, dest[g, t])]
    dx[b, i, s, q]  = Σ_{g, o, t} w[o, i, g⁻¹·s, t] · dy[b, o, g, p]   where q = q(p, dest[g, t])

The base weight is read as it is (contiguous ``(C_out, C_in_g, S_in, kh·kw)``, so the forward's reduction axis
``k = (i·S_in + u)·T + t`` is its memory order); the rotation and the stabilizer permutation are table lookups
on the gather side.  The filter bank never exists.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (INTERPRET, cdiv, dot_precision, empty_like_layout, geometry_args, group_tables,
                      input_grad_buffer, maybe_autotune, mma, offset, split_pixel, static_args)

INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=32)


def _configs():
    out = []
    for bm, bn, bk, warps, stages in [
        (128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4),
        (128, 32, 32, 4, 4), (64, 32, 64, 4, 3), (32, 32, 64, 2, 4), (128, 16, 32, 4, 4),
        (64, 16, 64, 2, 4), (128, 128, 64, 8, 3),
    ]:
        out.append(triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=warps, num_stages=stages))
    return out


# ------------------------------------------------------------------------------------------------- forward
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


@maybe_autotune(_configs(), key=["M_TOTAL", "C_OUT_G", "C_IN_G", "S_IN", "S_OUT", "KH", "KW", "PRECISION"],
                tiles=dict(BLOCK_M="M_TOTAL", BLOCK_N="C_OUT_G", BLOCK_K="C_IN_G*S_IN*KH*KW"),
                operands=[("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N")])
@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, in_index_ptr, tap_dh_ptr, tap_dw_ptr,
    M_TOTAL, H, W, HO, WO, C_IN_G, C_OUT_G, WEIGHT_GROUPS,
    sxb, sxc, sxs, sxh, sxw, syb, syc, sys, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (pixel tile, out-channel tile) of output element ``g`` in channel group ``grp``.  Epilogue: bias, then
    ``ACTIVATION``; ``STORE_PREACT`` also writes the pre-activation to ``z_ptr`` (same strides as ``y``)."""
    T: tl.constexpr = KH * KW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2) % S_OUT
    grp = tl.program_id(2) // S_OUT
    wg = grp % WEIGHT_GROUPS

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M_TOTAL
    b, oh, ow = split_pixel(m, HO, WO)
    x_row = b.to(tl.int64) * sxb + (grp * C_IN_G).to(tl.int64) * sxc                # [BM]
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w

    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < C_OUT_G
    K = C_IN_G * S_IN * T
    w_col = (wg * C_OUT_G + n).to(tl.int64) * K                                      # [BN]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        i = k // (S_IN * T)
        u = (k // T) % S_IN
        t = k % T
        s = tl.load(in_index_ptr + g * S_IN + u, mask=k_ok, other=0)
        dh = tl.load(tap_dh_ptr + g * T + t, mask=k_ok, other=0)
        dw = tl.load(tap_dw_ptr + g * T + t, mask=k_ok, other=0)
        ih = ih0[:, None] + dh[None, :] * dil_h
        iw = iw0[:, None] + dw[None, :] * dil_w
        ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_off = (x_row[:, None] + (i.to(tl.int64) * sxc + s.to(tl.int64) * sxs)[None, :]
                 + offset(0, 0, ih, iw, 0, 0, sxh, sxw))
        a = tl.load(x_ptr + x_off, mask=ok, other=0.0)
        bw = tl.load(w_ptr + w_col[None, :] + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = mma(acc, a, bw, PRECISION, UPCAST)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + wg * C_OUT_G + n, mask=n_ok, other=0.0).to(ACC)[None, :]
    y_off = (offset(b, g, oh, ow, syb, sys, syh, syw)[:, None]
             + (grp * C_OUT_G + n).to(tl.int64)[None, :] * syc)
    if STORE_PREACT:
        tl.store(z_ptr + y_off, acc.to(z_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
    acc = apply_activation(acc, ACTIVATION)
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ------------------------------------------------------------------------------------------- input gradient
@maybe_autotune(_configs(), key=["M_TOTAL", "C_OUT_G", "C_IN_G", "S_IN", "S_OUT", "KH", "KW", "PRECISION"],
                tiles=dict(BLOCK_M="M_TOTAL", BLOCK_N="C_IN_G", BLOCK_K="C_OUT_G*KH*KW"),
                operands=[("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N")])
@triton.jit
def _input_grad_kernel(
    dy_ptr, w_ptr, dx_ptr, stab_index_ptr, tap_dh_ptr, tap_dw_ptr,
    M_TOTAL, H, W, HO, WO, C_IN_G, C_OUT_G, WEIGHT_GROUPS,
    sdyb, sdyc, sdys, sdyh, sdyw, sdxb, sdxc, sdxs, sdxh, sdxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (input-pixel tile, in-channel tile) of input stabilizer slice ``s`` in channel group ``grp``: a
    transposed convolution; an output pixel contributes only where ``q + pad − tap·dil`` is a multiple of stride."""
    T: tl.constexpr = KH * KW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    s = tl.program_id(2) % S_IN
    grp = tl.program_id(2) // S_IN
    wg = grp % WEIGHT_GROUPS

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M_TOTAL
    b, ih, iw = split_pixel(m, H, W)
    dy_row = b.to(tl.int64) * sdyb + (grp * C_OUT_G).to(tl.int64) * sdyc                # [BM]

    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                        # input channel i
    n_ok = n < C_IN_G
    K = C_IN_G * S_IN * T                                                              # weight row length
    OT = C_OUT_G * T

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for g in range(S_OUT):
        u = tl.load(stab_index_ptr + g * S_IN + s)
        w_col = n.to(tl.int64) * (S_IN * T) + u * T                                   # [BN]
        for k0 in range(0, OT, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < OT
            o = k // T
            t = k % T
            dh = tl.load(tap_dh_ptr + g * T + t, mask=k_ok, other=0)
            dw = tl.load(tap_dw_ptr + g * T + t, mask=k_ok, other=0)
            ph_num = ih[:, None] + pad_h - dh[None, :] * dil_h
            pw_num = iw[:, None] + pad_w - dw[None, :] * dil_w
            ph = ph_num // stride_h
            pw = pw_num // stride_w
            ok = (m_ok[:, None] & k_ok[None, :] & (ph_num >= 0) & (pw_num >= 0)
                  & (ph * stride_h == ph_num) & (pw * stride_w == pw_num) & (ph < HO) & (pw < WO))
            dy_off = (dy_row[:, None] + (o.to(tl.int64) * sdyc + tl.cast(g, tl.int64) * sdys)[None, :]
                      + offset(0, 0, ph, pw, 0, 0, sdyh, sdyw))
            a = tl.load(dy_ptr + dy_off, mask=ok, other=0.0)
            w_off = (wg * C_OUT_G + o).to(tl.int64)[:, None] * K + t[:, None] + w_col[None, :]
            bw = tl.load(w_ptr + w_off, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(acc, a, bw, PRECISION, UPCAST)

    dx_off = (offset(b, s, ih, iw, sdxb, sdxs, sdxh, sdxw)[:, None]
              + (grp * C_IN_G + n).to(tl.int64)[None, :] * sdxc)
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ------------------------------------------------------------------------------------------ weight gradient
WGRAD_BLOCK_R = 32  # fixed (not tuned) so that the reduction order, and so every bit of dw, never depends on tuning


# Tuned over the output tile (BLOCK_M x BLOCK_N), warps and stages only: BLOCK_K is unused and stays fixed.
@maybe_autotune(_configs(), key=["R_TOTAL", "C_OUT_G", "C_IN_G", "S_IN", "S_OUT", "KH", "KW", "COPIES", "PRECISION"],
                tiles=dict(BLOCK_M="C_OUT_G", BLOCK_N="C_IN_G*S_IN*KH*KW"),
                operands=[("BLOCK_M", "BLOCK_R"), ("BLOCK_R", "BLOCK_N")])
@triton.jit
def _weight_grad_kernel(
    dy_ptr, x_ptr, dw_ptr, in_index_ptr, tap_dh_ptr, tap_dw_ptr,
    R_TOTAL, R_PER_SPLIT, H, W, HO, WO, C_IN_G, C_OUT_G, WEIGHT_GROUPS, COPIES,
    sdyb, sdyc, sdys, sdyh, sdyw, sxb, sxc, sxs, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (out-channel tile, k tile) of weight slice ``wg``, summed over the pixels of split ``pid_s``, over every
    group element ``g`` and over the channel groups that share the slice: the group copies are reduction, so
    there is no filter-bank gradient, no scatter and no atomic.  ``BLOCK_K`` is unused (the reduction block is
    ``BLOCK_R``); it is accepted so all three kernels share one config list."""
    T: tl.constexpr = KH * KW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    wg = tl.program_id(2) % WEIGHT_GROUPS
    pid_s = tl.program_id(2) // WEIGHT_GROUPS

    o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_ok = o < C_OUT_G
    K = C_IN_G * S_IN * T
    k = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = k < K
    i = k // (S_IN * T)
    u = (k // T) % S_IN
    t = k % T
    r_start = pid_s * R_PER_SPLIT
    r_stop = tl.minimum(r_start + R_PER_SPLIT, R_TOTAL)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for copy in range(COPIES):
        grp = wg + copy * WEIGHT_GROUPS
        dy_chan = (grp * C_OUT_G + o).to(tl.int64) * sdyc                               # [BM]
        x_chan = (grp * C_IN_G + i).to(tl.int64) * sxc                                  # [BN]
        for g in range(S_OUT):
            s = tl.load(in_index_ptr + g * S_IN + u, mask=k_ok, other=0)
            dh = tl.load(tap_dh_ptr + g * T + t, mask=k_ok, other=0)
            dw = tl.load(tap_dw_ptr + g * T + t, mask=k_ok, other=0)
            x_col = x_chan + s.to(tl.int64) * sxs
            for r0 in range(r_start, r_stop, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                r_ok = r < r_stop
                b, oh, ow = split_pixel(r, HO, WO)
                dy_off = (dy_chan[:, None] + tl.cast(g, tl.int64) * sdys
                          + offset(b, 0, oh, ow, sdyb, 0, sdyh, sdyw)[None, :])
                a = tl.load(dy_ptr + dy_off, mask=o_ok[:, None] & r_ok[None, :], other=0.0)   # [BM, BR]
                ih = (oh * stride_h - pad_h)[:, None] + dh[None, :] * dil_h
                iw = (ow * stride_w - pad_w)[:, None] + dw[None, :] * dil_w
                ok = r_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_off = (b.to(tl.int64) * sxb)[:, None] + x_col[None, :] + offset(0, 0, ih, iw, 0, 0, sxh, sxw)
                bx = tl.load(x_ptr + x_off, mask=ok, other=0.0)                                  # [BR, BN]
                acc = mma(acc, a, bx, PRECISION, UPCAST)

    row = pid_s * WEIGHT_GROUPS * C_OUT_G + wg * C_OUT_G + o                       # row of the (split, C_out) stack
    dw_off = row.to(tl.int64)[:, None] * K + k[None, :]
    tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty), mask=o_ok[:, None] & k_ok[None, :])


# ----------------------------------------------------------------------------------------------- launchers
def _dtype_flags(dtype: torch.dtype):
    return dict(PRECISION=dot_precision(dtype), UPCAST=INTERPRET and dtype in (torch.float16, torch.bfloat16))


def _meta():
    return dict(INTERPRETER_CONFIG) if INTERPRET else {}


def forward(x: torch.Tensor, weight: torch.Tensor, bias, spec, activation: str = "none",
            return_preact: bool = False):
    """``x (B, groups·C_in_g, S_in, H, W)``, weight ``(weight_groups·C_out_g, C_in_g, S_in, kh, kw)`` ->
    ``y (B, groups·C_out_g, S_out, H_out, W_out)`` in ``x``'s memory layout, ``y = activation(conv + bias)``.
    With ``return_preact``, returns ``(y, z)`` where ``z`` is the pre-activation (None for ``"none"``)."""
    in_index, _, tap_dh, tap_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    y = empty_like_layout((spec.batch, spec.groups * spec.out_channels, spec.s_out, spec.out_height,
                           spec.out_width), x)
    z = preact_buffer(activation, return_preact, y)
    m_total = spec.batch * spec.out_height * spec.out_width
    if y.numel() == 0:
        return (y, z) if return_preact else y
    weight = weight.contiguous()

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_M"]), cdiv(spec.out_channels, meta["BLOCK_N"]), spec.s_out * spec.groups)

    _forward_kernel[grid](
        x, weight, bias.contiguous() if bias is not None else weight, y, y if z is None else z,
        in_index, tap_dh, tap_dw,
        m_total, spec.height, spec.width, spec.out_height, spec.out_width, spec.in_channels, spec.out_channels,
        spec.weight_groups, *x.stride(), *y.stride(), *geometry_args(spec), **static_args(spec, x.dtype),
        HAS_BIAS=bias is not None, ACTIVATION=activation, STORE_PREACT=z is not None, **_dtype_flags(x.dtype),
        **_meta())
    return (y, z) if return_preact else y


def input_grad(dy: torch.Tensor, weight: torch.Tensor, spec, order) -> torch.Tensor:
    """``dy (B, groups·C_out_g, S_out, H_out, W_out)`` -> ``dx (B, groups·C_in_g, S_in, H, W)`` stored in dim
    ``order`` (the input's: ``gconv_triton._layout.dim_order(x)``)."""
    _, stab_index, tap_dh, tap_dw = group_tables(spec.group, spec.in_group, spec.kernel, dy.device)
    dx = input_grad_buffer(spec, order, dy)
    m_total = spec.batch * spec.height * spec.width
    if dx.numel() == 0:
        return dx
    weight = weight.contiguous()

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_M"]), cdiv(spec.in_channels, meta["BLOCK_N"]), spec.s_in * spec.groups)

    _input_grad_kernel[grid](
        dy, weight, dx, stab_index, tap_dh, tap_dw,
        m_total, spec.height, spec.width, spec.out_height, spec.out_width, spec.in_channels, spec.out_channels,
        spec.weight_groups, *dy.stride(), *dx.stride(), *geometry_args(spec), **static_args(spec, dy.dtype),
        **_dtype_flags(dy.dtype), **_meta())
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


def weight_grad(dy: torch.Tensor, x: torch.Tensor, spec, weight_shape) -> torch.Tensor:
    """``dy`` and the 5-D input ``x`` -> ``dw`` of ``weight_shape`` (fp32 accumulation, then x's dtype)."""
    in_index, _, tap_dh, tap_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    r_total = spec.batch * spec.out_height * spec.out_width
    k_total = spec.in_channels * spec.s_in * spec.kernel[0] * spec.kernel[1]
    weight_numel = spec.weight_groups * spec.out_channels * k_total
    split = weight_split(spec, r_total, cdiv(spec.out_channels, 64) * cdiv(k_total, 64) * spec.weight_groups,
                         weight_numel)
    r_per_split = cdiv(cdiv(r_total, split), WGRAD_BLOCK_R) * WGRAD_BLOCK_R
    split = max(1, cdiv(r_total, r_per_split)) if r_total else 1
    partial_dtype = torch.promote_types(x.dtype, torch.float32) if split > 1 else x.dtype
    partial = torch.empty((split, *weight_shape), dtype=partial_dtype, device=x.device)
    if r_total == 0:
        return partial.zero_().sum(0).to(x.dtype)

    def grid(meta):
        return (cdiv(spec.out_channels, meta["BLOCK_M"]), cdiv(k_total, meta["BLOCK_N"]), spec.weight_groups * split)

    _weight_grad_kernel[grid](
        dy, x, partial, in_index, tap_dh, tap_dw,
        r_total, r_per_split, spec.height, spec.width, spec.out_height, spec.out_width, spec.in_channels,
        spec.out_channels, spec.weight_groups, spec.groups // spec.weight_groups,
        *dy.stride(), *x.stride(), *geometry_args(spec), **static_args(spec, x.dtype), BLOCK_R=WGRAD_BLOCK_R,
        **_dtype_flags(x.dtype), **_meta())
    return partial[0] if split == 1 else partial.sum(0).to(x.dtype)
