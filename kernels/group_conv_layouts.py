"""Layout kernels: the re-layouts the group convolution's launchers make around their GEMMs, one launch each.

Each writes every element of its output, the zeros included (a halo's border, padded rows or columns, the rows past
the last pixel block), so that no re-layout needs a fill before its copy:

* :func:`padded_copy` (:func:`_padded_copy_kernel`): ``out[i] = src[i - shift]`` where that index lies inside
  ``src``, else 0, over up to six dims: the zero-halo channels-last copy of ``x`` (a narrow input's padded
  channels too).
* :func:`permute_weights` (:func:`_permute_weight_kernel`): the base weight into the forward's and, in the same
  launch, the input gradient's B-operand layouts (``group_conv.permuted_weight``); beside a copy of ``x``,
  :func:`padded_copy` writes them in its own launch (the forward's re-layouts: one launch).
* :func:`relayout_dy` (:func:`_dy_relayout_kernel`): a ``dy`` that the weight gradient cannot read in place
  (channels-first, say) as it reads it, with the bias gradient's per-program partial sums and, for an input read
  in place, the weight gradient's row table resolved against this call's zero page.
* :func:`finish_weight_grad` (:func:`_finish_kernel`): the weight gradient's split partial sums and the bias
  gradient's, added up in one launch, in a fixed order (no atomics: deterministic).

These are memory-bound, not GEMMs: ``python -m perf.launches`` counts their launches and bytes outside the GEMMs,
and an activation-sized one as a copy (docs/launches.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import accumulator, cdiv, needs_int64, poison_outputs
from .tuner import next_power_of_2

DIMS = 6                 # the most dims padded_copy takes (after merging; fewer are padded with size-1 dims)
COPY_BLOCK = 2048        # elements per program
WEIGHT_BLOCK = 1024


# ------------------------------------------------------------------------------------------- the padded copy
@triton.jit
def _padded_copy_block(
    pid_r, pid_i, out_ptr, src_ptr, total, E1, E2, E3, E4, T0, T1, T2, T3, T4, T5, N0, N1, N2, N3, N4, N5,
    S0, S1, S2, S3, S4, S5, INNER: tl.constexpr, WIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """``out`` (contiguous, ``total`` elements, dims ``(…, E1, E2, E3, E4, INNER)``, dim 0 as long as ``total``
    makes it) from ``src``: ``out[d0..d5] = src[d0 − T0, …, d5 − T5]`` inside ``src`` (sizes ``N``, strides
    ``S``), else 0; the ``[BLOCK_R, BLOCK_I]`` tile ``(pid_r, pid_i)``.  The row index is decomposed once per row,
    the inner one once per column."""
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    if WIDE:   # every index, so that no product with a stride wraps at 2**31
        r = r.to(tl.int64)
        i = i.to(tl.int64)
    r_ok = r * INNER < total
    rest = r
    d4 = rest % E4 - T4
    rest = rest // E4
    d3 = rest % E3 - T3
    rest = rest // E3
    d2 = rest % E2 - T2
    rest = rest // E2
    d1 = rest % E1 - T1
    d0 = rest // E1 - T0
    row_ok = (r_ok & (d0 >= 0) & (d0 < N0) & (d1 >= 0) & (d1 < N1) & (d2 >= 0) & (d2 < N2) & (d3 >= 0) & (d3 < N3)
              & (d4 >= 0) & (d4 < N4))
    row_src = d0 * S0 + d1 * S1 + d2 * S2 + d3 * S3 + d4 * S4
    d5 = i - T5
    col_ok = (i < INNER) & (d5 >= 0) & (d5 < N5)
    value = tl.load(src_ptr + row_src[:, None] + (d5 * S5)[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0)
    flat = r[:, None] * INNER + i[None, :]
    tl.store(out_ptr + flat, value.to(out_ptr.dtype.element_ty), mask=(flat < total) & (i < INNER)[None, :])


@triton.jit
def _padded_copy_kernel(
    out_ptr, src_ptr, total,
    E1, E2, E3, E4,                    # out's extents of dims 1..4 (dim 0: as many as the rows need)
    T0, T1, T2, T3, T4, T5,            # shifts: out index minus src index
    N0, N1, N2, N3, N4, N5,            # src sizes
    S0, S1, S2, S3, S4, S5,            # src strides
    copy_programs,                     # programs along axis 0 that copy; the ones past them re-lay the weight
    w_ptr, fwd_ptr, ig_ptr, w_total, KPOS, S_IN, C_OUT, C_IN, O_EXT, I_EXT, sw_g, sw_o, sw_i, sw_s, sw_t,
    FO_EXT, FI_EXT, sf_g, sf_t, sf_i, sf_s, sf_o, GO_EXT, GI_EXT, sg_g, sg_t, sg_o, sg_s, sg_i,
    INNER: tl.constexpr, WIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
    HAS_WEIGHTS: tl.constexpr, HAS_FWD: tl.constexpr, HAS_IG: tl.constexpr, WEIGHT_BLOCK: tl.constexpr,
):
    """:func:`_padded_copy_block` for programs ``< copy_programs`` along axis 0; with ``HAS_WEIGHTS``, the ones
    past them (and 0 along axis 1) run :func:`_permute_weight_block`: the forward's layouts in one launch."""
    pid = tl.program_id(0)
    if pid < copy_programs:
        _padded_copy_block(pid, tl.program_id(1), out_ptr, src_ptr, total, E1, E2, E3, E4, T0, T1, T2, T3, T4, T5,
                           N0, N1, N2, N3, N4, N5, S0, S1, S2, S3, S4, S5, INNER, WIDE, BLOCK_R, BLOCK_I)
    elif HAS_WEIGHTS:
        if tl.program_id(1) == 0:
            _permute_weight_block(pid - copy_programs, w_ptr, fwd_ptr, ig_ptr, w_total, KPOS, S_IN, C_OUT, C_IN,
                                  O_EXT, I_EXT, sw_g, sw_o, sw_i, sw_s, sw_t, FO_EXT, FI_EXT, sf_g, sf_t, sf_i, sf_s,
                                  sf_o, GO_EXT, GI_EXT, sg_g, sg_t, sg_o, sg_s, sg_i, HAS_FWD, HAS_IG, WEIGHT_BLOCK)


def _merged(extents, shifts, sizes, strides):
    """The copy's dims with neighbours merged where one index runs over both (no shift, no padding on the inner
    one, strides that chain), innermost last."""
    dims = [list(d) for d in zip(extents, shifts, sizes, strides)]
    out = [dims[0]]
    for e, t, n, s in dims[1:]:
        pe, pt, pn, ps = out[-1]
        if e == n == 1 and t == 0:    # a size-1 dim: its index is always 0
            continue
        if t == 0 and pt == 0 and n == e and (ps == s * n or pn == 1):
            out[-1] = [pe * e, 0, pn * n, s]
        else:
            out.append([e, t, n, s])
    return out


def padded_copy(out: torch.Tensor, src: torch.Tensor, shifts=None, weights=None) -> torch.Tensor:
    """Fill ``out`` (contiguous, as many dims as ``src``, at most six) in one launch: ``out[idx] = src[idx −
    shifts]`` where that index lies inside ``src``, else 0.  ``src`` may have any strides (a permuted view).
    ``weights``: ``(weight, fwd, ig)``, :func:`permute_weights`'s arguments, written by the same launch.  Returns
    ``out``."""
    if not out.is_contiguous() or out.dim() != src.dim() or src.dim() > DIMS:
        raise ValueError(f"padded_copy: expected a contiguous out with src's dims (at most {DIMS}), got out "
                         f"{tuple(out.shape)} strides {out.stride()}, src {tuple(src.shape)} strides {src.stride()}")
    if out.numel() == 0:
        if weights is not None:
            permute_weights(*weights)
        return out
    shifts = tuple(shifts) if shifts is not None else (0,) * src.dim()
    dims = _merged(out.shape, shifts, src.shape, src.stride())
    dims = [[1, 0, 1, 0]] * (DIMS - len(dims)) + dims
    extents, shift, sizes, strides = zip(*dims)
    inner = extents[-1]
    block_i = min(next_power_of_2(inner), COPY_BLOCK)
    block_r = COPY_BLOCK // block_i
    copy_programs = cdiv(cdiv(out.numel(), inner), block_r)
    weight_args, weight_programs, flags = _weight_args(*(weights or (None, None, None)), fallback=out)
    grid = (copy_programs + weight_programs, cdiv(inner, block_i))
    _padded_copy_kernel[grid](out, src, out.numel(), *extents[1:5], *shift, *sizes, *strides, copy_programs,
                              *weight_args, INNER=inner, WIDE=needs_int64(out, src), BLOCK_R=block_r,
                              BLOCK_I=block_i, HAS_WEIGHTS=weight_programs > 0, **flags, WEIGHT_BLOCK=WEIGHT_BLOCK)
    return out


# ------------------------------------------------------------------------------------------ the permuted weights
@triton.jit
def _permute_weight_block(
    pid, w_ptr, fwd_ptr, ig_ptr, total, KPOS, S_IN, C_OUT, C_IN, O_EXT, I_EXT,
    sw_g, sw_o, sw_i, sw_s, sw_t,
    FO_EXT, FI_EXT, sf_g, sf_t, sf_i, sf_s, sf_o,
    GO_EXT, GI_EXT, sg_g, sg_t, sg_o, sg_s, sg_i,
    HAS_FWD: tl.constexpr, HAS_IG: tl.constexpr, BLOCK: tl.constexpr,
):
    """Over ``(weight_groups, KPOS, O_EXT, S_IN, I_EXT)`` (``O_EXT``, ``I_EXT``: the larger of the two layouts'
    extents): ``w[g, o, i, s, t]`` (0 past ``C_OUT`` or ``C_IN``) into, with ``HAS_FWD``, the forward's layout
    ``fwd[g, t, i, s, o]`` (``i < FI_EXT``, ``o < FO_EXT``) and, with ``HAS_IG``, the input gradient's
    ``ig[g, t, o, s, i]`` (``o < GO_EXT``, ``i < GI_EXT``), each at its own strides: every element of both written
    once; the block ``pid`` of ``BLOCK`` elements."""
    e = pid * BLOCK + tl.arange(0, BLOCK)
    ok = e < total
    i = e % I_EXT
    rest = e // I_EXT
    s = rest % S_IN
    rest = rest // S_IN
    o = rest % O_EXT
    rest = rest // O_EXT
    t = rest % KPOS
    g = rest // KPOS
    value = tl.load(w_ptr + g * sw_g + o * sw_o + i * sw_i + s * sw_s + t * sw_t,
                    mask=ok & (o < C_OUT) & (i < C_IN), other=0.0)
    if HAS_FWD:
        tl.store(fwd_ptr + g * sf_g + t * sf_t + i * sf_i + s * sf_s + o * sf_o,
                 value.to(fwd_ptr.dtype.element_ty), mask=ok & (o < FO_EXT) & (i < FI_EXT))
    if HAS_IG:
        tl.store(ig_ptr + g * sg_g + t * sg_t + o * sg_o + s * sg_s + i * sg_i, value.to(ig_ptr.dtype.element_ty),
                 mask=ok & (o < GO_EXT) & (i < GI_EXT))


@triton.jit
def _permute_weight_kernel(
    w_ptr, fwd_ptr, ig_ptr, total, KPOS, S_IN, C_OUT, C_IN, O_EXT, I_EXT, sw_g, sw_o, sw_i, sw_s, sw_t,
    FO_EXT, FI_EXT, sf_g, sf_t, sf_i, sf_s, sf_o, GO_EXT, GI_EXT, sg_g, sg_t, sg_o, sg_s, sg_i,
    HAS_FWD: tl.constexpr, HAS_IG: tl.constexpr, BLOCK: tl.constexpr,
):
    """:func:`_permute_weight_block`, one block per program (the weights alone: no copy of ``x`` beside them)."""
    _permute_weight_block(tl.program_id(0), w_ptr, fwd_ptr, ig_ptr, total, KPOS, S_IN, C_OUT, C_IN, O_EXT, I_EXT,
                          sw_g, sw_o, sw_i, sw_s, sw_t, FO_EXT, FI_EXT, sf_g, sf_t, sf_i, sf_s, sf_o, GO_EXT, GI_EXT,
                          sg_g, sg_t, sg_o, sg_s, sg_i, HAS_FWD, HAS_IG, BLOCK)


def _weight_args(weight, fwd, ig, fallback: torch.Tensor):
    """:func:`_permute_weight_block`'s runtime arguments for :func:`permute_weights` ``(weight, fwd, ig)``, its
    program count and its flags; with neither layout, placeholders (``fallback`` for every pointer) and 0
    programs."""
    some = fwd if fwd is not None else ig
    if some is None:
        return (fallback,) * 3 + (0,) * 26, 0, dict(HAS_FWD=False, HAS_IG=False)
    g, kpos, _, s_in, _ = some.shape
    c_out, c_in = weight.shape[0] // g, weight.shape[1]
    fi, fo = (fwd.shape[2], fwd.shape[4]) if fwd is not None else (0, 0)
    go, gi = (ig.shape[2], ig.shape[4]) if ig is not None else (0, 0)
    o_ext, i_ext = max(fo, go), max(fi, gi)
    w = weight.reshape(g, c_out, c_in, s_in, kpos)
    total = g * kpos * o_ext * s_in * i_ext
    flags = dict(HAS_FWD=fwd is not None, HAS_IG=ig is not None)
    fwd, ig = (fwd if fwd is not None else some), (ig if ig is not None else some)
    args = (w, fwd, ig, total, kpos, s_in, c_out, c_in, o_ext, i_ext, *w.stride(), fo, fi, *fwd.stride(), go, gi,
            *ig.stride())
    return args, cdiv(total, WEIGHT_BLOCK), flags


def permute_weights(weight: torch.Tensor, fwd=None, ig=None) -> None:
    """Write ``weight (weight_groups·C_out, C_in, S_in, kh, kw)`` into ``fwd``, a ``(weight_groups, kh·kw, rows,
    S_in, cols)`` tensor with rows over the input channel and columns over the output channel (the forward's B
    operand), and into ``ig``, the same with rows and columns swapped (the input gradient's), any strides each,
    zeros past the weight; either may be None; one launch (none for an empty weight)."""
    args, programs, flags = _weight_args(weight, fwd, ig, weight)
    if programs:
        _permute_weight_kernel[(programs,)](*args, **flags, BLOCK=WEIGHT_BLOCK)


# ---------------------------------------------------------------------------------- dy for the weight gradient
@triton.jit
def _dy_relayout_kernel(
    dy_ptr, out_ptr, bias_part_ptr, table_ptr, rows_ptr, zero_delta, r_total, r_alloc, m_height,
    m_width, stride_b, stride_c, stride_s, stride_h, stride_w,
    C_OUT: tl.constexpr, GROUPS: tl.constexpr, S_OUT: tl.constexpr, O_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
    KPOS: tl.constexpr, WIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """``dy (B, groups·C_OUT, S_OUT, H, W)`` (any strides) -> ``out (r_alloc, groups, S_OUT, O_PAD)``: pixel ``r``
    of ``(B, H, W)``, zeros past ``r_total``, the channels past ``C_OUT`` not written; a ``[BLOCK_P, BLOCK_O]`` tile
    of one ``(grp, s)`` per program.  ``HAS_BIAS``: also the tile's column sums (``bias_part``'s dtype, fp32 at
    least) at ``bias_part[pid_p, grp, s, o]``, the per-program partial sums of the bias gradient.  ``KPOS > 0``:
    also ``rows[t, r] = zero_delta`` where ``table[t, r] < 0`` else ``table[t, r]`` (``(KPOS, r_alloc)`` int64), the
    in-place weight gradient's row table resolved against this call's zero page, by the programs of the first
    ``(grp, s)`` and channel block: the ``where`` it would otherwise take, in this launch."""
    pid_p = tl.program_id(0)
    grp = tl.program_id(1) // S_OUT
    s = tl.program_id(1) % S_OUT
    r = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    if WIDE:   # every index, so that no product with a stride wraps at 2**31
        r, o, grp, s = r.to(tl.int64), o.to(tl.int64), grp.to(tl.int64), s.to(tl.int64)
    w = r % m_width
    h = (r // m_width) % m_height
    b = r // (m_width * m_height)
    row = b * stride_b + h * stride_h + w * stride_w + s * stride_s
    value = tl.load(dy_ptr + row[:, None] + ((grp * C_OUT + o) * stride_c)[None, :],
                    mask=(r < r_total)[:, None] & (o < C_OUT)[None, :], other=0.0)
    out = ((r * GROUPS + grp) * S_OUT + s) * O_PAD
    tl.store(out_ptr + out[:, None] + o[None, :], value, mask=(r < r_alloc)[:, None] & (o < C_OUT)[None, :])
    if HAS_BIAS:
        part = ((pid_p * GROUPS + grp) * S_OUT + s) * O_PAD + o
        column_sums = tl.sum(value.to(bias_part_ptr.dtype.element_ty), axis=0)
        tl.store(bias_part_ptr + part, column_sums, mask=o < O_PAD)
    if KPOS > 0:
        if (tl.program_id(1) == 0) & (tl.program_id(2) == 0):
            cell = r.to(tl.int64)
            for t in range(KPOS):
                at = t * r_alloc + cell
                offset = tl.load(table_ptr + at, mask=cell < r_alloc, other=0)
                tl.store(rows_ptr + at, tl.where(offset < 0, zero_delta, offset), mask=cell < r_alloc)


DY_BLOCK_P = 64


def relayout_dy(dy: torch.Tensor, spec, r_alloc: int, o_pad: int, with_bias: bool, in_place_rows=None):
    """``dy (B, groups·C_out, S_out, H_out, W_out)`` -> ``(dy_go (r_alloc, groups, S_out, o_pad), bias_part)``,
    one launch: the weight gradient's ``dy`` (zeros past the last pixel, where they meet real rows of ``x``; the
    channels past ``C_out`` are not written: column ``o`` of ``dw`` reads column ``o`` of ``dy`` only, and is stored
    for ``o < C_out``; NaN when poisoned, which shows it) and, ``with_bias``,
    the bias gradient's per-program partial sums ``(programs, groups, S_out, o_pad)`` (fp32 at least; else None),
    which :func:`finish_weight_grad` adds up.  ``in_place_rows``: ``(table, zero_delta)``, the in-place weight
    gradient's cached row table ``(kh·kw, r_alloc)`` int64 (-1 where it lies in the padding) and this call's
    zero-page offset: resolved by the same launch and returned third (else None)."""
    c_out, groups, s_out = spec.out_channels, spec.groups, spec.s_out
    out = dy.new_empty((r_alloc, groups, s_out, o_pad))
    if poison_outputs():
        out.fill_(float("nan"))
    block_o = min(next_power_of_2(o_pad), 64)
    programs = cdiv(r_alloc, DY_BLOCK_P)
    bias_part = (dy.new_empty((programs, groups, s_out, o_pad), dtype=torch.promote_types(dy.dtype, torch.float32))
                 if with_bias else None)
    grid = (programs, groups * s_out, cdiv(o_pad, block_o))
    written = out[..., :c_out]   # the elements the launch writes (the same pointer as out)
    table, zero_delta = in_place_rows if in_place_rows is not None else (written, 0)
    rows = torch.empty_like(table) if in_place_rows is not None else None
    _dy_relayout_kernel[grid](
        dy, written, bias_part if with_bias else written, table, written if rows is None
        else rows, zero_delta, spec.batch * spec.out_height * spec.out_width, r_alloc, spec.out_height,
        spec.out_width, *dy.stride(), C_OUT=c_out, GROUPS=groups, S_OUT=s_out, O_PAD=o_pad, HAS_BIAS=with_bias,
        KPOS=0 if rows is None else table.shape[0], WIDE=needs_int64(dy, out), BLOCK_P=DY_BLOCK_P, BLOCK_O=block_o)
    return out, bias_part, rows


# ------------------------------------------------------------------------------ the weight gradient's sums
@triton.jit
def _finish_kernel(
    partial_ptr, dw_ptr, numel, split, dw_programs, bias_part_ptr, db_ptr, part_rows, weight_groups, C_OUT, O_PAD,
    S_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    """Programs ``< dw_programs``: ``dw[e] = Σ_k partial[k, e]``, ``k`` in order, in ``ACC``.  The others
    (``HAS_BIAS``): ``db[wg·C_OUT + o] = Σ bias_part[q, wg, s, o]`` over the ``part_rows`` rows ``q`` (a
    relayout program, or a split of the in-place weight gradient, and a channel group of the slice ``wg``) and
    ``s``, in a fixed order.  No atomics."""
    pid = tl.program_id(0)
    if pid < dw_programs:
        e = pid * BLOCK + tl.arange(0, BLOCK)
        e_ok = e < numel
        acc = tl.zeros((BLOCK,), dtype=ACC)
        ptrs = partial_ptr + e
        for _ in range(split):   # a pointer step per split: no int32 product k·numel to wrap
            acc += tl.load(ptrs, mask=e_ok, other=0.0).to(ACC)
            ptrs += numel
        tl.store(dw_ptr + e, acc.to(dw_ptr.dtype.element_ty), mask=e_ok)
    elif HAS_BIAS:   # (names apart from the branch above: Triton types each name once across an if)
        j = (pid - dw_programs) * BLOCK_O + tl.arange(0, BLOCK_O)    # the bias row (wg, o)
        j_ok = j < weight_groups * C_OUT
        col = (j // C_OUT) * (S_OUT * O_PAD) + j % C_OUT
        bias_acc = tl.zeros((BLOCK_Q, BLOCK_O), dtype=ACC)
        ql = tl.arange(0, BLOCK_Q)
        for q0 in range(0, part_rows * S_OUT, BLOCK_Q):
            q = q0 + ql                                  # (row, s)
            off = (q // S_OUT) * (weight_groups * S_OUT * O_PAD) + (q % S_OUT) * O_PAD
            bias_acc += tl.load(bias_part_ptr + off[:, None] + col[None, :],
                                mask=(q < part_rows * S_OUT)[:, None] & j_ok[None, :], other=0.0).to(ACC)
        tl.store(db_ptr + j, tl.sum(bias_acc, axis=0).to(db_ptr.dtype.element_ty), mask=j_ok)


FINISH_BLOCK = 1024
FINISH_BLOCK_Q = 32


def finish_weight_grad(partial: torch.Tensor, dtype, bias_part, spec):
    """``partial (split, *weight_shape)`` -> ``dw`` in ``dtype`` (the split's sum, in order; ``partial[0]`` itself
    when there is one and of that dtype), and with ``bias_part`` ``(rows, groups, S, O_PAD)``, the bias gradient's
    partial sums (:func:`relayout_dy`'s, or the in-place weight gradient's with ``S = 1``), the bias gradient
    ``(weight_groups·C_out,)`` (else None): one launch for both, none when there is nothing to add."""
    split, numel = partial.shape[0], partial[0].numel()
    sum_split = split > 1 or partial.dtype != dtype
    if not sum_split and bias_part is None:
        return partial[0], None
    dw = partial[0] if not sum_split else torch.empty(partial.shape[1:], dtype=dtype, device=partial.device)
    dw_programs = cdiv(numel, FINISH_BLOCK) if sum_split else 0
    db = None
    grid = dw_programs
    rows = block_o = 1
    if bias_part is not None:
        rows_total = spec.weight_groups * spec.out_channels
        db = torch.empty((rows_total,), dtype=dtype, device=partial.device)
        block_o = min(next_power_of_2(rows_total), 64)
        grid += cdiv(rows_total, block_o)
        # bias_part (rows, groups, S, O_PAD) read as (rows·copies, weight_groups, S, O_PAD)
        bias_part = bias_part.reshape(-1, spec.weight_groups, *bias_part.shape[2:])
        rows = bias_part.shape[0]
    # a pointer a launch does not store to is given a tensor it does store to (python -m perf.launches counts the
    # tensors passed for stored pointers)
    _finish_kernel[(grid,)](
        partial, dw if sum_split else db, numel, split, dw_programs, bias_part if bias_part is not None else partial,
        db if db is not None else dw, rows, spec.weight_groups, spec.out_channels,
        bias_part.shape[-1] if bias_part is not None else 1,
        S_OUT=bias_part.shape[2] if bias_part is not None else 1, HAS_BIAS=bias_part is not None,
        ACC=accumulator(dtype), BLOCK=FINISH_BLOCK, BLOCK_Q=FINISH_BLOCK_Q, BLOCK_O=block_o)
    return dw, db
