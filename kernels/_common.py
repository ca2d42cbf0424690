"""What every kernel family shares: the interpreter switch, launch configs, the group tables on the device,
output allocation ((B, H, W, C, S) group maps, or the input's memory layout), channels-last views, the
weight-gradient split, the fused activation epilogue, and small `@triton.jit` helpers."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._args import ACTIVATIONS
from .._support import GROUP_MAP_ORDER, as_group_map, dim_order, empty_in_order
from .tuner import KERNEL_TUNERS, Autotuner, next_power_of_2

# Read once, like Triton itself reads it when a @triton.jit function is defined.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def poison_outputs() -> bool:
    """Fill outputs with NaN before a launch so that an element a kernel never writes shows (tests set this)."""
    return os.environ.get("GCONV_TRITON_POISON", "0") not in ("", "0")


def empty_output(shape, order, dtype, device) -> torch.Tensor:
    """An output tensor of ``shape`` stored in dim ``order`` (see ``gconv_triton._support``), NaN-filled when
    :func:`poison_outputs` is on."""
    out = empty_in_order(shape, order, dtype=dtype, device=device)
    if poison_outputs():
        out.fill_(float("nan"))
    return out


def empty_group_map(shape, like: torch.Tensor) -> torch.Tensor:
    """A forward's output ``(B, C, S, H, W)`` in ``like``'s dtype, stored ``(B, H, W, C, S)``
    (``GROUP_MAP_ORDER``): what the next layer's kernels read in place, whatever the layout of this one's input."""
    return empty_output(shape, GROUP_MAP_ORDER, like.dtype, like.device)


def empty_like_layout(shape, like: torch.Tensor) -> torch.Tensor:
    """An output of ``shape`` in ``like``'s memory layout and dtype: a channels-last-like input ``(B, C, S, H, W)``
    stored as ``(B, H, W, C, S)`` gives an output stored that way too."""
    return empty_output(shape, dim_order(like), like.dtype, like.device)


@functools.lru_cache(maxsize=256)
def group_tables(group, in_group, kernel: tuple[int, int], device: torch.device):
    """The four small int32 tables the kernels read, cached per device.

    Returns ``(input_index, stabilizer_index, pos_dh, pos_dw)``:
    ``input_index[g, u] = index(g·u)`` and ``stabilizer_index[g, s] = index(g⁻¹ s)`` (both ``(S_out, S_in)``),
    and the row/column ``(pos_dh, pos_dw)[g, t]`` that window position ``t`` of the base filter moves to under
    ``g`` (``(S_out, kh·kw)``): the gather side of the rotation.
    """
    kw = kernel[1]
    dest = group.position_destinations(kernel)
    tables = (group.input_index(in_group), group.stabilizer_index(in_group), dest // kw, dest % kw)
    return tuple(t.to(device=device, dtype=torch.int32).contiguous() for t in tables)


@functools.lru_cache(maxsize=256)
def position_orbits(group, kernel: tuple[int, int], device: torch.device):
    """The orbits of the window positions under the group's moves, as one int32 table, cached per device.

    Returns ``(table, orbit_max)``: ``table (n_orbits, 1 + orbit_max + orbit_max·S_out)``, row ``q`` holding the
    orbit's length ``L``, its positions ``members[0..L)`` (flat ``th·kw + tw``, ascending; the rest 0), and
    ``slot[k, g]`` (``(orbit_max, S_out)``, 0 past ``L``): the index in ``members`` of the base-filter position
    ``t`` that ``g`` moves onto ``members[k]``.  An orbit is a connected set of positions under ``t -> dest[g, t]``,
    so it holds, with every position ``p``, every ``t`` that some ``g`` moves onto ``p``; orbits are ordered by
    their first position.
    """
    dest = group.position_destinations(kernel)                               # (S_out, kh·kw): dest[g, t] = p
    n_pos = dest.shape[1]
    root = list(range(n_pos))

    def find(a):
        while root[a] != a:
            a = root[a]
        return a

    for g_row in dest.tolist():
        for t, p in enumerate(g_row):
            root[find(t)] = find(p)
    orbits: dict = {}
    for t in range(n_pos):
        orbits.setdefault(find(t), []).append(t)
    members = sorted(orbits.values())
    orbit_max = max(len(m) for m in members)
    source = torch.empty_like(dest)
    source.scatter_(1, dest, torch.arange(n_pos).expand_as(dest).contiguous())    # source[g, p] = t
    table = torch.zeros((len(members), 1 + orbit_max + orbit_max * dest.shape[0]), dtype=torch.int32)
    for q, positions in enumerate(members):
        index = {t: k for k, t in enumerate(positions)}
        table[q, 0] = len(positions)
        table[q, 1:1 + len(positions)] = torch.tensor(positions)
        slots = [[index[t] for t in source[:, p].tolist()] for p in positions]       # (L, S_out)
        table[q, 1 + orbit_max:1 + orbit_max + len(positions) * dest.shape[0]] = torch.tensor(slots).reshape(-1)
    return table.to(device).contiguous(), orbit_max


@functools.lru_cache(maxsize=256)
def gather_tables(group, in_group, kernel: tuple[int, int], device: torch.device):
    """The two small int32 tables the implicit-GEMM kernel gathers the rotated filter with, cached per device.

    Returns ``(stabilizer_index, pos_source)``: ``stabilizer_index[g, s] = index(g⁻¹ s)`` (``(S_out, S_in)``), the
    weight slice that element ``g`` reads for input stabilizer index ``s``; ``pos_source[g, t']`` (``(S_out, kh·kw)``),
    the window position of the base filter that ``g`` moves onto window position ``t'`` (the inverse of
    ``position_destinations``).
    """
    dest = group.position_destinations(kernel)
    source = torch.empty_like(dest)
    source.scatter_(1, dest, torch.arange(dest.shape[1]).expand_as(dest).contiguous())
    tables = (group.stabilizer_index(in_group), source)
    return tuple(t.to(device=device, dtype=torch.int32).contiguous() for t in tables)


# key -> tensor(s): the geometry-only tables launchers would otherwise rebuild every step (a few small launches
# each), keyed by plain ints and a device.  Bounded: the oldest entry goes first.
_GEOMETRY_TABLES: dict = {}
GEOMETRY_TABLES_MAX = 256


def geometry_table(key: tuple, build):
    """``build()`` (a tensor or a tuple of them, a function of the plain-int ``key`` only), built once per ``key``,
    from real tensors and unrecorded whatever traces the first call (``reference.untraced``, as the filter-bank
    index): the cache never holds a fake tensor."""
    entry = _GEOMETRY_TABLES.get(key)
    if entry is None:
        from ..reference import untraced

        with untraced():
            entry = build()
        while len(_GEOMETRY_TABLES) >= GEOMETRY_TABLES_MAX:
            del _GEOMETRY_TABLES[next(iter(_GEOMETRY_TABLES))]
        _GEOMETRY_TABLES[key] = entry
    return entry


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: tf32 for fp32 exactly when cuDNN would use it."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def accumulator(dtype: torch.dtype):
    """The kernels' accumulator type: fp32 for fp32/fp16/bf16 inputs, fp64 for fp64 ones (which would otherwise
    lose their precision; ``tl.dot`` of fp64 operands also returns fp64)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def geometry_args(spec) -> tuple:
    """``(stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)``, as every kernel takes them."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    return (sh, sw, spec.padding[0], spec.padding[2], dh, dw)


def static_args(spec, dtype: torch.dtype) -> dict:
    """The compile-time arguments every kernel shares: group orders, kernel size, accumulator type."""
    return dict(S_IN=spec.s_in, S_OUT=spec.s_out, KH=spec.kernel[0], KW=spec.kernel[1], ACC=accumulator(dtype))


def input_grad_buffer(spec, order, dy: torch.Tensor) -> torch.Tensor:
    """``dx (B, groups·C_in_g, S_in, H, W)`` stored in dim ``order`` (the input's)."""
    shape = (spec.batch, spec.groups * spec.in_channels, spec.s_in, spec.height, spec.width)
    return empty_output(shape, order, dy.dtype, dy.device)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(value: int, multiple: int) -> int:
    return cdiv(value, multiple) * multiple


def vector_padding(columns: int) -> int:
    """``columns`` padded for 16-byte vector loads: to a multiple of 8, or for 4 or fewer to a power of two."""
    return round_up(columns, min(8, next_power_of_2(columns)))


def interpreter_config(config: dict) -> dict:
    """A launch's fixed blocks under the interpreter (nothing to tune there); on a GPU the autotuner picks."""
    return dict(config) if INTERPRET else {}


def upcast(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` runs half-precision operands in fp32: under the interpreter only (its bf16 dot is broken;
    products of two halves are exact in fp32, so the result is the same)."""
    return INTERPRET and dtype in (torch.float16, torch.bfloat16)


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether some element offset of these tensors passes int32 (then every offset is computed in int64)."""
    return any(sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) >= 2**31 - 1 for t in tensors)


def vector_width(elem_size: int, *values: int) -> int:
    """The largest power of two, up to 16 bytes of elements, dividing every value (offsets the hints vouch for)."""
    v = max(1, 16 // elem_size)
    while v > 1 and any(x % v for x in values):
        v //= 2
    return v


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
        t = as_group_map(t)
    # a size-1 axis is only ever indexed at 0: stride 0, so that its arbitrary stride (1 in a contiguous 1x1 map)
    # does not hide that every pixel starts 16-byte aligned
    strides = [st if n > 1 else 0 for n, st in zip((b, h, w), (t.stride(0), t.stride(3), t.stride(4)))]
    return t.as_strided((b, h, w, c * s), (*strides, 1))


# ------------------------------------------------------------------------------------- the weight-gradient split
# The weight gradients cut their reduction over pixels into ranges reduced by separate programs, whose partial sums
# are then added in a fixed order (deterministic).  The split is a function of the shape only.
SPLIT_TARGET_PROGRAMS = 264        # programs to aim for: two waves of an H100's 132 SMs
SPLIT_MIN_PIXELS = 4096            # a range shorter than this costs more in partial sums than it gains
SPLIT_MAX = 64                     # partial sums at the most
INTERPRETER_SPLIT_PIXELS = 64      # under the interpreter: split in two from this many pixels (tests reach it)


def weight_split(reduction: int, tiles: int, max_split: int = SPLIT_MAX) -> int:
    """How many pixel ranges a weight-gradient reduction over ``reduction`` pixels, launched as ``tiles`` output
    tiles, is cut into so that a small weight still fills a GPU; at most ``max_split`` (a caller's workspace
    bound).  Under the interpreter 1 or 2, so that the small test shapes exercise the split path."""
    if INTERPRET:
        return 1 if reduction < INTERPRETER_SPLIT_PIXELS else 2
    split = min(cdiv(SPLIT_TARGET_PROGRAMS, tiles), cdiv(reduction, SPLIT_MIN_PIXELS), SPLIT_MAX, max_split)
    return max(1, split)


def split_ranges(reduction: int, split: int, block: int = 1) -> tuple[int, int]:
    """``(split, per_split)``: ``reduction`` pixels cut into ``split`` ranges of whole ``block``s each, the count
    taken again so that no range is empty (at least one range, also for no pixels)."""
    per_split = round_up(cdiv(max(reduction, 1), split), block)
    return max(1, cdiv(reduction, per_split)), per_split


def bank_split_limit(spec, weight_numel: int) -> int:
    """The most pixel ranges a group convolution's weight gradient may use: its ``(split, *weight.shape)`` fp32
    workspace stays under half the filter bank (so it never costs what the bank would); no bound for ``S_out = 1``."""
    return max(1, spec.bank_numel() // (2 * weight_numel)) if spec.s_out > 1 else SPLIT_MAX


# ------------------------------------------------------------------------------------------ the forward's outputs


def preact_buffer(activation: str, return_preact: bool, y: torch.Tensor):
    """The pre-activation output of a forward launch: a tensor like ``y`` when asked for (and meaningful), else
    None.  Raises for an unknown activation."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return empty_like_layout(y.shape, y) if return_preact and activation != "none" else None


def forward_result(y, z, copy, return_preact: bool, return_input_copy: bool):
    """What a family's ``forward`` returns for its two flags: ``y``, or the tuple of ``y``, ``z`` (the
    pre-activation) and ``copy`` (the channels-last copy of ``x``) as asked for."""
    out = (y,) + ((z,) if return_preact else ()) + ((copy,) if return_input_copy else ())
    return out if len(out) > 1 else y


def maybe_autotune(configs, key, **kwargs):
    """Our autotuner (``tuner.Autotuner``: pruned config space, bucketed keys, JSON cache across processes) on a
    GPU; under the interpreter (nothing to time) the bare kernel, launched with its launcher's fixed
    ``INTERPRETER_CONFIG``.  The tuner is built either way, so its arguments are checked against the kernel's
    signature on any machine, and registered in ``tuner.KERNEL_TUNERS``."""
    def wrap(fn):
        tuner = Autotuner(fn, configs, key, **kwargs)
        KERNEL_TUNERS[tuner.name] = tuner
        return fn if INTERPRET else tuner
    return wrap


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


@triton.jit
def mma(acc, a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc += a @ b`` with fp32 accumulation; ``UPCAST`` runs half-precision dots in fp32 (the interpreter's bf16
    dot is broken; products of two halves are exact in fp32, so the result is the same)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def offset(b, s, h, w, sb, ss, sh, sw):
    """``b·sb + s·ss + h·sh + w·sw`` in int64 (indices are blocks or scalars), so that no product wraps at 2³¹."""
    return (tl.cast(b, tl.int64) * sb + tl.cast(s, tl.int64) * ss + tl.cast(h, tl.int64) * sh
            + tl.cast(w, tl.int64) * sw)


@triton.jit
def split_pixel(m, HO, WO):
    """Flat pixel index over ``(B, HO, WO)`` -> ``(b, row, col)``."""
    col = m % WO
    rest = m // WO
    return rest // HO, rest % HO, col


@triton.jit
def pixel_block(pid, BLOCK: tl.constexpr, total, HO, WO):
    """Program ``pid``'s block of ``BLOCK`` flat pixels over ``(B, HO, WO)`` (``total`` of them) ->
    ``(in range, b, row, col)``."""
    m = pid * BLOCK + tl.arange(0, BLOCK)
    in_range = m < total
    b, row, col = split_pixel(m, HO, WO)
    return in_range, b, row, col
