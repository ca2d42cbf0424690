"""Depthwise group convolution (one input G-channel per channel group): no GEMM.

Padding a reduction over one channel up to a 16-wide ``tl.dot`` would waste up to 16x the work, so these
kernels are elementwise multiply-adds over tiles of (pixels × channels), looping over the ``kh·kw`` window
positions.  Same math and tables as ``group_conv.py`` with ``C_in_g = 1``: output channel ``oc = grp·C_OUT_G + n`` of
channel group ``grp`` reads input channel ``grp`` through weight row ``(grp % WEIGHT_GROUPS)·C_OUT_G + n``.

Every activation operand is read channels-last, ``(B, H, W, channels)`` with unit channel stride, and each tile's
channel axis is a run of contiguous channels of one of them, so that it loads as 16-byte vectors: the forward's
columns are the input's ``(grp, s)`` channels, the input gradient's the output's ``(grp, n, g)`` channels, the weight
gradient's again the input's ``(grp, s)`` (its ``dy`` is then read one value per column).  What a column
contributes to (its output channel, its weight slice ``u = g⁻¹·s``) is a small reduction or permutation of the
tile, once per tile and outside the pixel loop.
A group order that is not a power of two pads each group's run of channels to one (``S_PAD``, ``R_PAD``), and then
loads element by element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import (INTERPRET, apply_activation, bank_split_limit, cdiv, channels_last, empty_group_map,
                      empty_output, forward_result, gather_tables, geometry_args, group_tables, input_grad_buffer,
                      interpreter_config, is_channels_last, maybe_autotune, needs_int64, next_power_of_2, offset,
                      pixel_block, preact_buffer, split_pixel, split_ranges, static_args, vector_width)

INTERPRETER_CONFIG = dict(BLOCK_P=64, BLOCK_C=16)


def _configs():
    # BLOCK_C is the number of contiguous channels a tile covers (rounded up to whole groups of channels).
    return [triton.Config(dict(BLOCK_P=p, BLOCK_C=c), num_warps=w, num_stages=1)
            for p, c, w in [(128, 32, 8), (64, 32, 4), (128, 16, 4), (32, 32, 4), (32, 16, 4), (64, 64, 8),
                            (32, 64, 4)]]


@triton.jit
def _columns(pid, CH, RUN: tl.constexpr, RUN_PAD: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    """A tile's columns: whole runs of ``RUN`` contiguous channels (one channel group's), each padded to
    ``RUN_PAD`` (a power of two).  Returns ``(channel, ok, run, index in run)``: the channel offsets (``VEC`` of
    them contiguous), the mask, and which run and element each column is."""
    RUNS: tl.constexpr = (BLOCK_C + RUN_PAD - 1) // RUN_PAD
    col = tl.arange(0, RUNS * RUN_PAD)
    run = pid * RUNS + col // RUN_PAD
    j = col % RUN_PAD
    ch = run * RUN + j
    if RUN == RUN_PAD:
        ok = ch < CH            # one bound: the mask stays uniform over each vector
    else:
        ok = (ch < CH) & (j < RUN)
    return tl.max_contiguous(tl.multiple_of(ch, VEC), VEC), ok, run, j


@maybe_autotune(_configs(), key=["M_TOTAL", "CH", "S_IN", "S_OUT", "KH", "KW"],
                tiles=dict(BLOCK_P="M_TOTAL", BLOCK_C="CH"))
@triton.jit
def _dw_forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, pos_src_ptr, stab_ptr,
    M_TOTAL, CH, H, W, HO, WO, C_OUT_G, WEIGHT_GROUPS,
    stride_x_n, stride_x_h, stride_x_w, stride_y_n, stride_y_c, stride_y_g, stride_y_h, stride_y_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, S_PAD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    VEC: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Output channel ``n`` of each channel group of the tile, element ``g``, over a tile of output pixels.

    ``x``: ``(B, H, W, CH = groups·S_IN)``, unit channel stride.  The columns are the ``(grp, s)`` input channels;
    column ``s`` meets weight slice ``u = g⁻¹·s`` (``stab[g, s]``) at base-filter position ``pos_src[g, t']`` for
    window position ``t'``, and the ``S_IN`` columns of a group are summed at the end.  Epilogue as
    ``group_conv._conv_gemm_kernel``: bias, then ``ACTIVATION``; ``STORE_PREACT`` also writes the pre-activation to
    ``z_ptr`` (same strides as ``y``)."""
    KPOS: tl.constexpr = KH * KW
    G_TILE: tl.constexpr = (BLOCK_C + S_PAD - 1) // S_PAD
    g = tl.program_id(2) % S_OUT
    n = tl.program_id(2) // S_OUT
    m_ok, b, oh, ow = pixel_block(tl.program_id(0), BLOCK_P, M_TOTAL, HO, WO)
    x_ch, c_ok, grp, s = _columns(tl.program_id(1), CH, S_IN, S_PAD, VEC, BLOCK_C)
    w_col = ((grp % WEIGHT_GROUPS) * C_OUT_G + n) * (S_IN * KPOS) + tl.load(stab_ptr + g * S_IN + s, mask=s < S_IN,
                                                                             other=0) * KPOS
    w_col = tl.where(c_ok, w_col, 0)   # a valid address in every column: the loop's weight loads need no mask
    if WIDE:  # offsets past int32 (else int32 index math: fewer instructions, no carries)
        b, oh, ow, x_ch = b.to(tl.int64), oh.to(tl.int64), ow.to(tl.int64), x_ch.to(tl.int64)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_b = b * stride_x_n

    acc = tl.zeros((BLOCK_P, G_TILE * S_PAD), dtype=ACC)
    for th in range(KH):
        ih = ih0 + th * dil_h
        row_ok = m_ok & (ih >= 0) & (ih < H)
        x_h = x_b + ih * stride_x_h
        for tw in range(KW):
            iw = iw0 + tw * dil_w
            ok = row_ok & (iw >= 0) & (iw < W)
            x_row = tl.multiple_of(x_h + iw * stride_x_w, VEC)
            xv = tl.load(x_ptr + x_row[:, None] + x_ch[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
            pos = tl.load(pos_src_ptr + g * KPOS + th * KW + tw)
            wv = tl.load(w_ptr + w_col + pos)
            acc += xv.to(ACC) * wv.to(ACC)[None, :]

    out = tl.sum(tl.reshape(acc, (BLOCK_P, G_TILE, S_PAD)), axis=2)
    grp_o = tl.program_id(1) * G_TILE + tl.arange(0, G_TILE)
    o_ok = grp_o < CH // S_IN
    if HAS_BIAS:
        out += tl.load(bias_ptr + (grp_o % WEIGHT_GROUPS) * C_OUT_G + n, mask=o_ok, other=0.0).to(ACC)[None, :]
    y_off = (offset(b, g, oh, ow, stride_y_n, stride_y_g, stride_y_h, stride_y_w)[:, None]
             + ((grp_o * C_OUT_G + n).to(tl.int64) * stride_y_c)[None, :])
    if STORE_PREACT:
        tl.store(z_ptr + y_off, out.to(z_ptr.dtype.element_ty), mask=m_ok[:, None] & o_ok[None, :])
    out = apply_activation(out, ACTIVATION)
    tl.store(y_ptr + y_off, out.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & o_ok[None, :])


@maybe_autotune(_configs(), key=["M_TOTAL", "CH", "S_IN", "S_OUT", "KH", "KW"],
                tiles=dict(BLOCK_P="M_TOTAL", BLOCK_C="CH"))
@triton.jit
def _dw_input_grad_kernel(
    dy_ptr, w_ptr, dx_ptr, pos_src_ptr, stab_ptr,
    M_TOTAL, CH, H, W, HO, WO, C_OUT_G, WEIGHT_GROUPS,
    stride_dy_n, stride_dy_h, stride_dy_w, stride_dx_n, stride_dx_c, stride_dx_g, stride_dx_h, stride_dx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, R: tl.constexpr, R_PAD: tl.constexpr, KH: tl.constexpr,
    KW: tl.constexpr, VEC: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Stabilizer slice ``s`` of the input channels of the tile's channel groups, over a tile of input pixels.

    ``dy``: ``(B, HO, WO, CH = groups·R)``, unit channel stride, ``R = C_OUT_G·S_OUT``.  The columns are each
    group's ``R`` output channels ``(n, g)``; column ``(n, g)`` meets weight slice ``u = g⁻¹·s`` at base-filter
    position ``pos_src[g, t']``, reached from input pixel ``q`` through output pixel ``(q + pad − t'·dil) / stride``
    when that division is exact.  The ``R`` columns of a group are summed at the end."""
    KPOS: tl.constexpr = KH * KW
    G_TILE: tl.constexpr = (BLOCK_C + R_PAD - 1) // R_PAD
    s = tl.program_id(2)
    m_ok, b, ih, iw = pixel_block(tl.program_id(0), BLOCK_P, M_TOTAL, H, W)
    dy_ch, c_ok, grp, j = _columns(tl.program_id(1), CH, R, R_PAD, VEC, BLOCK_C)
    g = j % S_OUT
    src_col = g * KPOS
    w_col = (((grp % WEIGHT_GROUPS) * C_OUT_G + j // S_OUT) * (S_IN * KPOS)
             + tl.load(stab_ptr + g * S_IN + s) * KPOS)
    w_col = tl.where(c_ok, w_col, 0)   # a valid address in every column: the loop's weight loads need no mask
    if WIDE:
        b, ih, iw, dy_ch = b.to(tl.int64), ih.to(tl.int64), iw.to(tl.int64), dy_ch.to(tl.int64)
    dy_b = b * stride_dy_n

    acc = tl.zeros((BLOCK_P, G_TILE * R_PAD), dtype=ACC)
    for th in range(KH):
        ph_num = ih + pad_h - th * dil_h
        ph = ph_num // stride_h
        row_ok = m_ok & (ph_num >= 0) & (ph * stride_h == ph_num) & (ph < HO)
        dy_h = dy_b + ph * stride_dy_h
        for tw in range(KW):
            pw_num = iw + pad_w - tw * dil_w
            pw = pw_num // stride_w
            ok = row_ok & (pw_num >= 0) & (pw * stride_w == pw_num) & (pw < WO)
            dy_row = tl.multiple_of(dy_h + pw * stride_dy_w, VEC)
            dyv = tl.load(dy_ptr + dy_row[:, None] + dy_ch[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
            pos = tl.load(pos_src_ptr + src_col + th * KW + tw)
            wv = tl.load(w_ptr + w_col + pos)
            acc += dyv.to(ACC) * wv.to(ACC)[None, :]

    out = tl.sum(tl.reshape(acc, (BLOCK_P, G_TILE, R_PAD)), axis=2)
    grp_o = tl.program_id(1) * G_TILE + tl.arange(0, G_TILE)
    dx_off = (offset(b, s, ih, iw, stride_dx_n, stride_dx_g, stride_dx_h, stride_dx_w)[:, None]
              + (grp_o.to(tl.int64) * stride_dx_c)[None, :])
    tl.store(dx_ptr + dx_off, out.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & (grp_o < CH // R)[None, :])


@triton.jit
def _next_pixels(b, oh, ow, step_b, step_h, step_w, HO, WO):
    """``(b, oh, ow)`` advanced by the flat pixel step ``(step_b, step_h, step_w)`` without a division: each digit
    carries at most once, since both it and its step are below the radix."""
    ow += step_w
    carry = ow >= WO
    ow = tl.where(carry, ow - WO, ow)
    oh += step_h + carry.to(oh.dtype)
    carry = oh >= HO
    oh = tl.where(carry, oh - HO, oh)
    return b + step_b + carry.to(b.dtype), oh, ow


@triton.jit
def _wgrad_product(x_ptr, dy_ptr, x_ch, dy_ch, c_ok, r, r_stop, b, oh, ow, dh, dw, H, W,
                   stride_x_n, stride_x_h, stride_x_w, stride_dy_n, stride_dy_h, stride_dy_w, stride_h, stride_w,
                   VEC: tl.constexpr, DY_VEC: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr):
    """``x · dy`` over one block of output pixels ``r = (b, oh, ow)`` (those ``< r_stop``), for element ``g`` whose
    window position reads input pixel ``(oh·stride_h + dh, ow·stride_w + dw)``."""
    r_ok = r < r_stop
    ih = oh * stride_h + dh
    iw = ow * stride_w + dw
    ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    if WIDE:
        b, oh, ow, ih, iw = b.to(tl.int64), oh.to(tl.int64), ow.to(tl.int64), ih.to(tl.int64), iw.to(tl.int64)
    x_row = tl.multiple_of(b * stride_x_n + ih * stride_x_h + iw * stride_x_w, VEC)
    xv = tl.load(x_ptr + x_row[:, None] + x_ch[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
    dy_row = tl.multiple_of(b * stride_dy_n + oh * stride_dy_h + ow * stride_dy_w, DY_VEC)
    dyv = tl.load(dy_ptr + dy_row[:, None] + dy_ch[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
    return xv.to(ACC) * dyv.to(ACC)


# Not tuned: the tile shape and warp count fix the order of the tl.sum over pixels, and so every bit of dw.
WGRAD_CONFIG = dict(BLOCK_P=64, BLOCK_C=32) if INTERPRET else dict(BLOCK_P=64, BLOCK_C=32, num_warps=4, num_stages=1)


@triton.jit
def _dw_weight_grad_kernel(
    dy_ptr, x_ptr, dw_ptr, in_index_ptr, pos_dh_ptr, pos_dw_ptr,
    R_TOTAL, R_PER_SPLIT, CH_W, H, W, HO, WO, C_OUT_G, WEIGHT_GROUPS, COPIES,
    stride_dy_n, stride_dy_h, stride_dy_w, stride_x_n, stride_x_h, stride_x_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    S_IN: tl.constexpr, S_OUT: tl.constexpr, S_PAD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    VEC: tl.constexpr, DY_VEC: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``dw[row, 0, u, t]`` for output channel ``n`` and base-filter window position ``t`` of the tile's weight
    groups, summed over the pixels of split ``pid_s``, every ``g`` and every channel group sharing the rows
    (``COPIES`` of them).

    ``x``: ``(B, H, W, groups·S_IN)`` and ``dy``: ``(B, HO, WO, groups·C_OUT_G·S_OUT)``, unit channel strides.  The
    columns are the input's ``(grp, s)`` channels, ``CH_W = WEIGHT_GROUPS·S_IN`` of them per copy: for element
    ``g`` the tile is multiplied in that order, summed over its pixels, and then moved to the weight's order
    ``(grp, u)``, ``s = g·u``, once per ``g`` and not per pixel block."""
    KPOS: tl.constexpr = KH * KW
    G_TILE: tl.constexpr = (BLOCK_C + S_PAD - 1) // S_PAD
    COLS: tl.constexpr = G_TILE * S_PAD
    n = tl.program_id(1) // KPOS
    t = tl.program_id(1) % KPOS
    pid_s = tl.program_id(2)
    x_ch0, c_ok, wg, u = _columns(tl.program_id(0), CH_W, S_IN, S_PAD, VEC, BLOCK_C)
    col = tl.arange(0, COLS)
    r_start = pid_s * R_PER_SPLIT
    r_stop = tl.minimum(r_start + R_PER_SPLIT, R_TOTAL)

    step_b, step_h, step_w = split_pixel(BLOCK_P, HO, WO)

    total = tl.zeros((COLS,), dtype=ACC)
    for copy in range(COPIES):
        x_ch = x_ch0 + copy * CH_W                                # channel (wg + copy·WEIGHT_GROUPS, s)
        if DY_VEC > 1:  # one output channel per input channel: dy's columns are x's, a contiguous run too
            dy_ch = x_ch
        else:
            dy_ch = ((wg + copy * WEIGHT_GROUPS) * C_OUT_G + n) * S_OUT
        if WIDE:
            x_ch, dy_ch = x_ch.to(tl.int64), dy_ch.to(tl.int64)
        for g in range(S_OUT):
            dh = tl.load(pos_dh_ptr + g * KPOS + t) * dil_h - pad_h
            dw = tl.load(pos_dw_ptr + g * KPOS + t) * dil_w - pad_w
            if DY_VEC > 1:
                dy_chg = dy_ch
            else:
                dy_chg = dy_ch + g
            r = r_start + tl.arange(0, BLOCK_P)
            b, oh, ow = split_pixel(r, HO, WO)
            # the first block starts the sum (no zero-filled accumulator to add it to)
            acc = _wgrad_product(x_ptr, dy_ptr, x_ch, dy_chg, c_ok, r, r_stop, b, oh, ow, dh, dw, H, W,
                                 stride_x_n, stride_x_h, stride_x_w, stride_dy_n, stride_dy_h, stride_dy_w,
                                 stride_h, stride_w, VEC, DY_VEC, WIDE, ACC)
            for r0 in range(r_start + BLOCK_P, r_stop, BLOCK_P):
                b, oh, ow = _next_pixels(b, oh, ow, step_b, step_h, step_w, HO, WO)
                r += BLOCK_P
                acc += _wgrad_product(x_ptr, dy_ptr, x_ch, dy_chg, c_ok, r, r_stop, b, oh, ow, dh, dw, H, W,
                                      stride_x_n, stride_x_h, stride_x_w, stride_dy_n, stride_dy_h, stride_dy_w,
                                      stride_h, stride_w, VEC, DY_VEC, WIDE, ACC)
            # column (grp, u) takes the pixel sum of column (grp, g·u)
            part = tl.sum(acc, axis=0)
            src = (col // S_PAD) * S_PAD + tl.load(in_index_ptr + g * S_IN + u, mask=u < S_IN, other=0)
            total += tl.sum(tl.where(src[:, None] == col[None, :], part[None, :], 0.0), axis=1)

    dw_off = (pid_s.to(tl.int64) * (CH_W * C_OUT_G * KPOS) + ((wg * C_OUT_G + n) * S_IN + u).to(tl.int64) * KPOS
              + t)
    tl.store(dw_ptr + dw_off, total.to(dw_ptr.dtype.element_ty), mask=c_ok)


# ----------------------------------------------------------------------------------------------- launchers
def _vec(t: torch.Tensor, run: int) -> int:
    """Vector width for the channels-last ``t`` (``(B, H, W, C)``) read in runs of ``run`` channels: 1 when the runs
    are padded (a group order that is not a power of two)."""
    return vector_width(t.element_size(), *t.stride()[:3], t.shape[3]) if run == next_power_of_2(run) else 1


def input_copy_shape(x: torch.Tensor, spec):
    """The shape of the copy of ``x`` that :func:`forward` makes, ``(B, H, W, C·S)`` contiguous, or None when it
    reads ``x`` in place (stored channels-last already) or launches nothing."""
    b, c, s, h, w = x.shape
    empty = spec.batch * spec.groups * spec.out_channels * spec.s_out * spec.out_height * spec.out_width == 0
    return None if empty or is_channels_last(x) else (b, h, w, c * s)


def forward(x: torch.Tensor, weight: torch.Tensor, bias, spec, activation: str = "none",
            return_preact: bool = False, return_input_copy: bool = False):
    """As :func:`group_conv.forward <gconv_triton.kernels.group_conv.forward>` (activation epilogue included; the
    copy of ``x``: :func:`input_copy_shape`)."""
    stab, pos_src = gather_tables(spec.group, spec.in_group, spec.kernel, x.device)
    y = empty_group_map((spec.batch, spec.groups * spec.out_channels, spec.s_out, spec.out_height,
                         spec.out_width), x)
    z = preact_buffer(activation, return_preact, y)
    m_total = spec.batch * spec.out_height * spec.out_width
    copy_shape = input_copy_shape(x, spec)
    if y.numel() == 0:
        return forward_result(y, z, None, return_preact, return_input_copy)
    weight = weight.contiguous()
    copy = None if copy_shape is None else x.permute(0, 3, 4, 1, 2).contiguous().view(copy_shape)
    x_cl = channels_last(x) if copy is None else copy
    s_pad = next_power_of_2(spec.s_in)

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_P"]), cdiv(spec.groups, cdiv(meta["BLOCK_C"], s_pad)),
                spec.s_out * spec.out_channels)

    _dw_forward_kernel[grid](
        x_cl, weight, bias.contiguous() if bias is not None else weight, y, y if z is None else z, pos_src, stab,
        m_total, x_cl.shape[3], spec.height, spec.width, spec.out_height, spec.out_width, spec.out_channels,
        spec.weight_groups, *x_cl.stride()[:3], *y.stride(), *geometry_args(spec),
        S_PAD=s_pad, VEC=_vec(x_cl, spec.s_in), WIDE=needs_int64(x_cl, y), HAS_BIAS=bias is not None,
        ACTIVATION=activation, STORE_PREACT=z is not None, **static_args(spec, x.dtype),
        **interpreter_config(INTERPRETER_CONFIG))
    return forward_result(y, z, copy, return_preact, return_input_copy)


def input_grad(dy: torch.Tensor, weight: torch.Tensor, spec, order) -> torch.Tensor:
    """As :func:`group_conv.input_grad <gconv_triton.kernels.group_conv.input_grad>`."""
    stab, pos_src = gather_tables(spec.group, spec.in_group, spec.kernel, dy.device)
    dx = input_grad_buffer(spec, order, dy)
    m_total = spec.batch * spec.height * spec.width
    if dx.numel() == 0:
        return dx
    weight = weight.contiguous()
    dy_cl = channels_last(dy)
    r = spec.out_channels * spec.s_out
    r_pad = next_power_of_2(r)

    def grid(meta):
        return (cdiv(m_total, meta["BLOCK_P"]), cdiv(spec.groups, cdiv(meta["BLOCK_C"], r_pad)), spec.s_in)

    _dw_input_grad_kernel[grid](
        dy_cl, weight, dx, pos_src, stab,
        m_total, dy_cl.shape[3], spec.height, spec.width, spec.out_height, spec.out_width, spec.out_channels,
        spec.weight_groups, *dy_cl.stride()[:3], *dx.stride(), *geometry_args(spec),
        R=r, R_PAD=r_pad, VEC=_vec(dy_cl, r), WIDE=needs_int64(dy_cl, dx), **static_args(spec, dy.dtype),
        **interpreter_config(INTERPRETER_CONFIG))
    return dx


def weight_grad(dy: torch.Tensor, x: torch.Tensor, spec, weight_shape, x_copy=None) -> torch.Tensor:
    """As :func:`group_conv_weight_grad.weight_grad <gconv_triton.kernels.group_conv_weight_grad.weight_grad>`;
    ``x_copy``: :func:`forward`'s copy."""
    in_index, _, pos_dh, pos_dw = group_tables(spec.group, spec.in_group, spec.kernel, x.device)
    kh, kw = spec.kernel
    r_total = spec.batch * spec.out_height * spec.out_width
    s_pad = next_power_of_2(spec.s_in)
    ch_w = spec.weight_groups * spec.s_in
    n_pos = kh * kw
    tiles = cdiv(spec.weight_groups, cdiv(WGRAD_CONFIG["BLOCK_C"], s_pad))
    split = _common.weight_split(r_total, tiles * spec.out_channels * n_pos,
                                 bank_split_limit(spec, ch_w * spec.out_channels * n_pos))
    split, r_per_split = split_ranges(r_total, split)
    partial_dtype = torch.promote_types(x.dtype, torch.float32) if split > 1 else x.dtype
    if r_total == 0:
        return torch.zeros(weight_shape, dtype=x.dtype, device=x.device)
    # every split has pixels, and each of its programs stores its whole slice: no zero fill
    partial = empty_output((split, *weight_shape), range(len(weight_shape) + 1), partial_dtype, x.device)
    if x_copy is not None and tuple(x_copy.shape) != input_copy_shape(x, spec):
        raise ValueError(f"x_copy: expected forward's copy of x, shape {input_copy_shape(x, spec)}, "
                         f"got {tuple(x_copy.shape)}")
    x_cl, dy_cl = channels_last(x) if x_copy is None else x_copy, channels_last(dy)
    one_to_one = spec.s_in == spec.s_out == spec.out_channels == 1    # dy's channel of each x channel is its own

    grid = (tiles, spec.out_channels * n_pos, split)
    _dw_weight_grad_kernel[grid](
        dy_cl, x_cl, partial, in_index, pos_dh, pos_dw,
        r_total, r_per_split, ch_w, spec.height, spec.width, spec.out_height, spec.out_width, spec.out_channels,
        spec.weight_groups, spec.groups // spec.weight_groups,
        *dy_cl.stride()[:3], *x_cl.stride()[:3], *geometry_args(spec),
        S_PAD=s_pad, VEC=_vec(x_cl, spec.s_in), DY_VEC=_vec(dy_cl, 1) if one_to_one else 1,
        WIDE=needs_int64(x_cl, dy_cl), **static_args(spec, x.dtype),
        **WGRAD_CONFIG)
    return partial[0] if split == 1 else partial.sum(0).to(x.dtype)
