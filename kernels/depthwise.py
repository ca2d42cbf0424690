"""Depthwise group convolution (one input G-channel per channel group): no GEMM.

Padding a reduction over one channel up to a 16-wide ``tl.dot`` would waste up to 16x the work, so these
kernels are elementwise multiply-adds over tiles of (pixels × channels), looping over the ``S_in·kh·kw`` taps.
Same math, tables and notation as ``gconv.py``, with ``C_in_g = 1``: output channel ``oc`` of channel group
``grp = oc // C_OUT_G`` reads input channel ``grp`` and weight row ``(grp % WEIGHT_GROUPS)·C_OUT_G + oc % C_OUT_G``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (INTERPRET, cdiv, empty_like_layout, geometry_args, group_tables, input_grad_buffer,
                      maybe_autotune, offset, split_pixel, static_args)
from .gconv import apply_activation, preact_buffer

INTERPRETER_CONFIG = dict(BLOCK_P=64, BLOCK_C=16)


def _configs():
    # Small tiles too: each thread holds a 64-bit address per element across the tap loop, and tiles of 32 or
    # more elements a thread spill on sm_80/sm_90.
    return [triton.Config(dict(BLOCK_P=p, BLOCK_C=c), num_warps=w, num_stages=1)
            for p, c, w in [(128, 32, 8), (64, 32, 4), (128, 16, 4), (32, 32, 4), (32, 16, 4), (64, 64, 8),
                            (32, 64, 4)]]


@triton.jit
def _weight_row(oc, C_OUT_G, WEIGHT_GROUPS):
    """Channel group of output channel ``oc`` and the weight row it reads."""
    grp = oc // C_OUT_G
    return grp, (grp % WEIGHT_GROUPS) * C_OUT_G + oc % C_OUT_G


@maybe_autotune(_configs(), key=["M_TOTAL", "C_TOTAL", "S_IN", "S_OUT", "KH", "KW"],
                tiles=dict(BLOCK_P="M_TOTAL", BLOCK_C="C_TOTAL"))
@triton.jit
def _dw_forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, in_index_ptr, tap_dh_ptr, tap_dw_ptr,
    M_TOTAL, C_TOTAL, H, W, HO, WO, C_OUT_G, WEIGHT_GROUPS,
    sxb, sxc, sxs, sxh, sxw, syb, syc, sys, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Epilogue as ``gconv._conv_gemm_kernel``: bias, then ``ACTIVATION``; ``STORE_PREACT`` also writes the
    pre-activation to ``z_ptr`` (same strides as ``y``)."""
    T: tl.constexpr = KH * KW
    g = tl.program_id(2)
    m = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    m_ok = m < M_TOTAL
    b, oh, ow = split_pixel(m, HO, WO)
    oc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = oc < C_TOTAL
    grp, w_row = _weight_row(oc, C_OUT_G, WEIGHT_GROUPS)
    x_base = (b.to(tl.int64) * sxb)[:, None] + (grp.to(tl.int64) * sxc)[None, :]
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for k in range(S_IN * T):
        u = k // T
        t = k % T
        s = tl.load(in_index_ptr + g * S_IN + u)
        ih = ih0 + tl.load(tap_dh_ptr + g * T + t) * dil_h
        iw = iw0 + tl.load(tap_dw_ptr + g * T + t) * dil_w
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_off = x_base + offset(0, s, ih, iw, 0, sxs, sxh, sxw)[:, None]
        xv = tl.load(x_ptr + x_off, mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
        wv = tl.load(w_ptr + w_row.to(tl.int64) * (S_IN * T) + k, mask=c_ok, other=0.0).to(ACC)
        acc += xv * wv[None, :]

    if HAS_BIAS:
        acc += tl.load(bias_ptr + w_row, mask=c_ok, other=0.0).to(ACC)[None, :]
    y_off = (offset(b, g, oh, ow, syb, sys, syh, syw)[:, None]
             + (oc.to(tl.int64) * syc)[None, :])
    if STORE_PREACT:
        tl.store(z_ptr + y_off, acc.to(z_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])
    acc = apply_activation(acc, ACTIVATION)
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@maybe_autotune(_configs(), key=["M_TOTAL", "C_TOTAL", "S_IN", "S_OUT", "KH", "KW"],
                tiles=dict(BLOCK_P="M_TOTAL", BLOCK_C="C_TOTAL"))
@triton.jit
def _dw_input_grad_kernel(
    dy_ptr, w_ptr, dx_ptr, stab_index_ptr, tap_dh_ptr, tap_dw_ptr,
    M_TOTAL, C_TOTAL, H, W, HO, WO, C_OUT_G, WEIGHT_GROUPS,
    sdyb, sdyc, sdys, sdyh, sdyw, sdxb, sdxc, sdxs, sdxh, sdxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Tile of (input pixels × input channels = channel groups) of stabilizer slice ``s``; sums over each
    group's ``C_OUT_G`` output channels, every ``g`` and every tap."""
    T: tl.constexpr = KH * KW
    s = tl.program_id(2)
    m = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    m_ok = m < M_TOTAL
    b, ih, iw = split_pixel(m, H, W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C_TOTAL
    w_group = (c % WEIGHT_GROUPS) * C_OUT_G

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for g in range(S_OUT):
        u = tl.load(stab_index_ptr + g * S_IN + s)
        for t in range(T):
            ph_num = ih + pad_h - tl.load(tap_dh_ptr + g * T + t) * dil_h
            pw_num = iw + pad_w - tl.load(tap_dw_ptr + g * T + t) * dil_w
            ph = ph_num // stride_h
            pw = pw_num // stride_w
            ok = (m_ok & (ph_num >= 0) & (pw_num >= 0) & (ph * stride_h == ph_num) & (pw * stride_w == pw_num)
                  & (ph < HO) & (pw < WO))
            dy_pix = offset(b, g, ph, pw, sdyb, sdys, sdyh, sdyw)
            for n in range(C_OUT_G):
                dy_off = dy_pix[:, None] + ((c * C_OUT_G + n).to(tl.int64) * sdyc)[None, :]
                dyv = tl.load(dy_ptr + dy_off, mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
                w_off = (w_group + n).to(tl.int64) * (S_IN * T) + u * T + t
                wv = tl.load(w_ptr + w_off, mask=c_ok, other=0.0).to(ACC)
                acc += dyv * wv[None, :]

    dx_off = (offset(b, s, ih, iw, sdxb, sdxs, sdxh, sdxw)[:, None]
              + (c.to(tl.int64) * sdxc)[None, :])
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


# Not tuned: the tile shape and warp count fix the order of the final tl.sum, and so every bit of dw.
WGRAD_CONFIG = dict(BLOCK_P=64, BLOCK_C=32) if INTERPRET else dict(BLOCK_P=64, BLOCK_C=32, num_warps=4, num_stages=1)


@triton.jit
def _dw_weight_grad_kernel(
    dy_ptr, x_ptr, dw_ptr, in_index_ptr, tap_dh_ptr, tap_dw_ptr,
    R_TOTAL, R_PER_SPLIT, C_W, H, W, HO, WO, C_OUT_G, WEIGHT_GROUPS, COPIES,
    sdyb, sdyc, sdys, sdyh, sdyw, sxb, sxc, sxs, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Weight rows ``[BLOCK_C]`` at reduction index ``k = u·T + t``, summed over the pixels of split ``pid_s``,
    every ``g`` and every channel group sharing the rows (``COPIES`` of them)."""
    T: tl.constexpr = KH * KW
    k = tl.program_id(1)
    pid_s = tl.program_id(2)
    u = k // T
    t = k % T
    w_row = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)          # over WEIGHT_GROUPS · C_OUT_G rows
    c_ok = w_row < C_W
    r_start = pid_s * R_PER_SPLIT
    r_stop = tl.minimum(r_start + R_PER_SPLIT, R_TOTAL)

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for copy in range(COPIES):
        grp = w_row // C_OUT_G + copy * WEIGHT_GROUPS
        oc = grp * C_OUT_G + w_row % C_OUT_G
        for g in range(S_OUT):
            s = tl.load(in_index_ptr + g * S_IN + u)
            dh = tl.load(tap_dh_ptr + g * T + t) * dil_h
            dw = tl.load(tap_dw_ptr + g * T + t) * dil_w
            chan = (oc.to(tl.int64) * sdyc + tl.cast(g, tl.int64) * sdys)[None, :]
            x_chan = (grp.to(tl.int64) * sxc + tl.cast(s, tl.int64) * sxs)[None, :]
            for r0 in range(r_start, r_stop, BLOCK_P):
                r = r0 + tl.arange(0, BLOCK_P)
                r_ok = r < r_stop
                b, oh, ow = split_pixel(r, HO, WO)
                ih = oh * stride_h - pad_h + dh
                iw = ow * stride_w - pad_w + dw
                ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                dy_off = offset(b, 0, oh, ow, sdyb, 0, sdyh, sdyw)[:, None] + chan
                x_off = offset(b, 0, ih, iw, sxb, 0, sxh, sxw)[:, None] + x_chan
                dyv = tl.load(dy_ptr + dy_off, mask=r_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
                xv = tl.load(x_ptr + x_off, mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
                acc += dyv * xv

    total = tl.sum(acc, axis=0)
    dw_off = pid_s.to(tl.int64) * (C_W * S_IN * T) + w_row.to(tl.int64) * (S_IN * T) + k
    tl.store(dw_ptr + dw_off, total.to(dw_ptr.dtype.element_ty), mask=c_ok)


# ----------------------------------------------------------------------------------------------- launchers
def _meta():
    return dict(INTERPRETER_CONFIG) if INTERPRET else {}


def forward(x: torch.Tensor, weight: torch.Tensor, bias, spec, activation: str = "none",
            return_preact: bool = False):
    """As :func:`gconv.forward <gconv_triton.kernels.gconv.forward>` (activation epilogue included)."""
    in_index, _, tap_dh, tap_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    c_total = spec.groups * spec.out_channels
    y = empty_like_layout((spec.batch, c_total, spec.s_out, spec.out_height, spec.out_width), x)
    z = preact_buffer(activation, return_preact, y)
    m_total = spec.batch * spec.out_height * spec.out_width
    if y.numel() == 0:
        return (y, z) if return_preact else y
    weight = weight.contiguous()

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_P"]), cdiv(c_total, meta["BLOCK_C"]), spec.s_out)

    _dw_forward_kernel[grid](
        x, weight, bias.contiguous() if bias is not None else weight, y, y if z is None else z,
        in_index, tap_dh, tap_dw,
        m_total, c_total, spec.height, spec.width, spec.out_height, spec.out_width, spec.out_channels,
        spec.weight_groups, *x.stride(), *y.stride(), *geometry_args(spec), **static_args(spec, x.dtype),
        HAS_BIAS=bias is not None, ACTIVATION=activation, STORE_PREACT=z is not None, **_meta())
    return (y, z) if return_preact else y


def input_grad(dy: torch.Tensor, weight: torch.Tensor, spec, order) -> torch.Tensor:
    _, stab_index, tap_dh, tap_dw = group_tables(spec.group, spec.in_group, spec.kernel, dy.device)
    dx = input_grad_buffer(spec, order, dy)
    m_total = spec.batch * spec.height * spec.width
    if dx.numel() == 0:
        return dx
    weight = weight.contiguous()

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_P"]), cdiv(spec.groups, meta["BLOCK_C"]), spec.s_in)

    _dw_input_grad_kernel[grid](
        dy, weight, dx, stab_index, tap_dh, tap_dw,
        m_total, spec.groups, spec.height, spec.width, spec.out_height, spec.out_width, spec.out_channels,
        spec.weight_groups, *dy.stride(), *dx.stride(), *geometry_args(spec), **static_args(spec, dy.dtype), **_meta())
    return dx


def weight_grad(dy: torch.Tensor, x: torch.Tensor, spec, weight_shape) -> torch.Tensor:
    from .gconv import weight_split

    in_index, _, tap_dh, tap_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    r_total = spec.batch * spec.out_height * spec.out_width
    c_w = spec.weight_groups * spec.out_channels
    taps = spec.s_in * spec.kernel[0] * spec.kernel[1]
    split = weight_split(spec, r_total, cdiv(c_w, 32) * taps, c_w * taps)
    r_per_split = cdiv(r_total, split)
    split = max(1, cdiv(r_total, r_per_split)) if r_total else 1
    partial_dtype = torch.promote_types(x.dtype, torch.float32) if split > 1 else x.dtype
    partial = torch.zeros((split, *weight_shape), dtype=partial_dtype, device=x.device)
    if r_total == 0:
        return partial.sum(0).to(x.dtype)

    grid = (cdiv(c_w, WGRAD_CONFIG["BLOCK_C"]), taps, split)
    _dw_weight_grad_kernel[grid](
        dy, x, partial, in_index, tap_dh, tap_dw,
        r_total, r_per_split, c_w, spec.height, spec.width, spec.out_height, spec.out_width, spec.out_channels,
        spec.weight_groups, spec.groups // spec.weight_groups,
        *dy.stride(), *x.stride(), *geometry_args(spec), **static_args(spec, x.dtype), **WGRAD_CONFIG)
    return partial[0] if split == 1 else partial.sum(0).to(x.dtype)
