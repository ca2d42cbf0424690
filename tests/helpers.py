"""Shared test utilities: the device the kernels run on, error bars, relative-error comparison."""

from __future__ import annotations

import torch

import gconv_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = DEVICE.type == "cpu"


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64; NaN anywhere gives inf (a NaN never passes)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def tolerance(dtype: torch.dtype) -> float:
    """The error bars of docs/numerics.md: fp32 far under 1e-5 (exact fp32 dot in the interpreter, or tf32 ~1e-3
    on a GPU when allowed), half types 1e-2, float64 round-off."""
    if dtype == torch.float64:
        return 1e-12
    if dtype == torch.float32:
        tf32 = not INTERPRETED and torch.backends.cudnn.allow_tf32
        return 3e-3 if tf32 else 1e-5
    return 1e-2


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_error(out, ref)
    assert err < tolerance(dtype), f"{what}: relative error {err:.3e} >= {tolerance(dtype):.0e} ({dtype})"


def triton_backend():
    return gconv_triton.backend("triton")


def torch_backend():
    return gconv_triton.backend("torch")
