"""What every kernel family shares: the interpreter switch, launch configs, the group tables on the device,
output allocation in the input's memory layout, and small `@triton.jit` helpers."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Read once, like Triton itself reads it when a @triton.jit function is defined.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def poison_outputs() -> bool:
    """Fill outputs with NaN before a launch so that an element a kernel never writes shows (tests set this)."""
    return os.environ.get("GCONV_TRITON_POISON", "0") not in ("", "0")


def empty_like_layout(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` whose memory order follows ``like``'s strides (same rank).

    This keeps a channels-last-like input ``(B, C, S, H, W)`` stored as ``(B, H, W, C, S)`` in that layout.
    """
    order = sorted(range(like.dim()), key=lambda d: (-like.stride(d), d))
    out = torch.empty([shape[d] for d in order], dtype=dtype or like.dtype, device=like.device)
    out = out.permute([order.index(d) for d in range(like.dim())])
    if poison_outputs():
        out.fill_(float("nan"))
    return out


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


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: tf32 for fp32 exactly when cuDNN would use it."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def maybe_autotune(configs, key, **kwargs):
    """``triton.autotune`` on a GPU; under the interpreter (which cannot autotune) the bare kernel, to be launched
    with the fixed config ``INTERPRETER_CONFIG`` of its launcher."""
    def wrap(fn):
        if INTERPRET:
            return fn
        return triton.autotune(configs=configs, key=key, **kwargs)(fn)
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
def split_pixel(m, HO, WO):
    """Flat pixel index over ``(B, HO, WO)`` -> ``(b, row, col)``."""
    col = m % WO
    rest = m // WO
    return rest // HO, rest % HO, col
