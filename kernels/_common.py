"""What every kernel family shares: the interpreter switch, launch configs, the group tables on the device,
output allocation in the input's memory layout, and small `@triton.jit` helpers."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._support import dim_order, empty_in_order
from .tuner import KERNEL_TUNERS, Autotuner

# Read once, like Triton itself reads it when a @triton.jit function is defined.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def poison_outputs() -> bool:
    """Fill outputs with NaN before a launch so that an element a kernel never writes shows (tests set this)."""
    return os.environ.get("GCONV_TRITON_POISON", "0") not in ("", "0")


def empty_output(shape, order, dtype, device) -> torch.Tensor:
    """An output tensor of ``shape`` stored in dim ``order`` (see ``gconv_triton._layout``), NaN-filled when
    :func:`poison_outputs` is on."""
    out = empty_in_order(shape, order, dtype=dtype, device=device)
    if poison_outputs():
        out.fill_(float("nan"))
    return out


def empty_like_layout(shape, like: torch.Tensor) -> torch.Tensor:
    """An output of ``shape`` in ``like``'s memory layout and dtype: a channels-last-like input ``(B, C, S, H, W)``
    stored as ``(B, H, W, C, S)`` gives an output stored that way too."""
    return empty_output(shape, dim_order(like), like.dtype, like.device)


@functools.lru_cache(maxsize=256)
def group_tables(group, in_group, kernel: tuple[int, int], device: torch.device):
    """The four small int32 tables the kernels read, cached per device.

    Returns ``(input_index, stabilizer_index, tap_dh, tap_dw)``:
    ``input_index[g, u] = index(g·u)`` and ``stabilizer_index[g, s] = index(g⁻¹ s)`` (both ``(S_out, S_in)``),
    and the row/column ``(tap_dh, tap_dw)[g, t]`` that tap ``t`` of the base filter moves to under ``g``
    (``(S_out, kh·kw)``): the gather side of the rotation.
    """
    kw = kernel[1]
    dest = group.tap_destinations(kernel)
    tables = (group.input_index(in_group), group.stabilizer_index(in_group), dest // kw, dest % kw)
    return tuple(t.to(device=device, dtype=torch.int32).contiguous() for t in tables)


@functools.lru_cache(maxsize=256)
def gather_tables(group, in_group, kernel: tuple[int, int], device: torch.device):
    """The two small int32 tables the implicit-GEMM kernel gathers the rotated filter with, cached per device.

    Returns ``(stabilizer_index, tap_source)``: ``stabilizer_index[g, s] = index(g⁻¹ s)`` (``(S_out, S_in)``), the
    weight slice that element ``g`` reads for input stabilizer index ``s``; ``tap_source[g, t']`` (``(S_out, kh·kw)``),
    the base-filter tap that ``g`` moves onto window position ``t'`` (the inverse of ``tap_destinations``).
    """
    dest = group.tap_destinations(kernel)
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


def maybe_autotune(configs, key, **kwargs):
    """Our autotuner (``_autotune.Autotuner``: pruned config space, bucketed keys, JSON cache across processes) on a
    GPU; under the interpreter (nothing to time) the bare kernel, launched with its launcher's fixed
    ``INTERPRETER_CONFIG``.  The tuner is built either way, so its arguments are checked against the kernel's
    signature on any machine, and registered in ``_autotune.KERNEL_TUNERS``."""
    def wrap(fn):
        tuner = Autotuner(fn, configs, key, **kwargs)
        KERNEL_TUNERS[tuner.name] = tuner
        return fn if INTERPRET else tuner
    return wrap


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
