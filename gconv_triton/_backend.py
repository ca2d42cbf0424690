"""Which implementation serves a call: the fused Triton kernels or the plain-PyTorch reference path.

``GCONV_TRITON_BACKEND`` (read at each call) = ``auto`` (default: CUDA tensors -> Triton, others -> PyTorch),
``torch`` or ``triton``; ``with gconv_triton.backend("torch"):`` overrides it for a block (per thread/task).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

import torch

BACKENDS = ("auto", "torch", "triton")
_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("gconv_triton_backend", default=None)


def _check_name(name, where: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{where}: expected one of {BACKENDS}, got {name!r}")
    return name.lower()


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the block on one backend: ``"torch"`` (reference path), ``"triton"`` (fused kernels) or ``"auto"``."""
    token = _override.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _override.reset(token)


def current_backend() -> str:
    """The backend asked for: the innermost :func:`backend` block, else ``GCONV_TRITON_BACKEND``, else auto."""
    name = _override.get()
    if name is None:
        name = _check_name(os.environ.get("GCONV_TRITON_BACKEND", "auto"), "GCONV_TRITON_BACKEND")
    return name


def reference_path(x: torch.Tensor, backend: str) -> bool:
    """Whether a call with backend name ``backend`` runs ``x`` on the reference path: ``'torch'``, or ``'auto'`` on
    a non-CUDA tensor (``use_triton``'s rule, in a form TorchDynamo traces: no context variable)."""
    return backend == "torch" or (backend == "auto" and not x.is_cuda)


def use_triton(tensor: torch.Tensor) -> bool:
    """True when ``tensor``'s call should run the fused kernels; raises if that cannot work here."""
    if reference_path(tensor, current_backend()):
        return False
    if not tensor.is_cuda:
        from . import kernels  # noqa: F401  (imported lazily: the reference path needs no triton)
        if not kernels.INTERPRET:
            raise RuntimeError("the 'triton' backend got CPU tensors, which it can run only under Triton's "
                               "interpreter: set TRITON_INTERPRET=1 before importing gconv_triton, or use "
                               "the 'torch' backend for CPU tensors")
    return True
