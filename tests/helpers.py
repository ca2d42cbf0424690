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


def clear_caches() -> None:
    """Start cold, as a fresh process does: forget TorchDynamo's compiled code and everything the package fills
    on first use: the filter-bank index (``reference._BANK_INDEX``), each group's position tables, every
    ``functools`` cache in ``gconv_triton`` and its kernels (the launchers' per-device group, phase and gather
    tables), the launchers' geometry tables (``kernels._common._GEOMETRY_TABLES``) and the kernel autotuners'
    in-memory choices.  The registries of groups and tap functions are not caches (an object registers itself
    when it is built) and stay as they are."""
    import sys

    import torch._dynamo

    from gconv_triton import _support, reference

    torch._dynamo.reset()
    reference._BANK_INDEX.clear()
    for group in _support.GROUPS._objects.values():
        group._cache.clear()
    for name, module in list(sys.modules.items()):
        if name == "gconv_triton" or name.startswith("gconv_triton."):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
                    value.cache_clear()
    common = sys.modules.get("gconv_triton.kernels._common")
    if common is not None:
        common._GEOMETRY_TABLES.clear()
    autotune = sys.modules.get("gconv_triton.kernels.tuner")
    if autotune is not None:
        for tuner in autotune.KERNEL_TUNERS.values():
            tuner._best.clear()
        autotune.DEFAULT_CACHE._entries.clear()
