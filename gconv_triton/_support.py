"""What every op needs around its numerics: the names under which Python objects cross the ops' boundary, the
compile / export / autocast state of a call, and the memory layouts the kernels and the fake kernels agree on.

* **Registry.** Groups and tap functions cross the boundary of the package's ``torch.library`` ops (whose
  arguments are tensors, numbers and strings) by name.  Every object registers itself when it is built (the
  built-ins at import) and when a copy of it is unpickled, never during a call: ``torch.compile`` applies a traced
  call's writes to Python state only after the compiled graph has run, so an object first registered inside a
  trace would not yet be there when its op looks it up.
* **Call state.** Whether ``torch.compile`` or an ONNX export traces the call, which backend it runs on, what
  ``torch.autocast`` casts its inputs to, and :func:`untraced` for tensors cached while something traces.
* **Layouts** of 5-D group feature maps, shared by the kernels' launchers and the ops' fake kernels (which must
  agree for torch.compile) without importing Triton.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._backend import backend as _use_backend, current_backend, use_triton

# ------------------------------------------------------------------------------------------------ registry
_KEY_ATTR = "_gconv_triton_op_key"


class OpRegistry:
    """``key -> object`` for one kind of object (``what``, for messages); keys are the objects' ``name``, made
    unique with a ``#n`` suffix.  Registered objects live as long as the process (as a module-level def does)."""

    def __init__(self, what: str):
        self.what = what
        self._objects: dict = {}

    def register(self, obj) -> str:
        """Register ``obj`` under a new key and return it."""
        key = obj.name if obj.name not in self._objects else f"{obj.name}#{len(self._objects)}"
        self._objects[key] = obj
        setattr(obj, _KEY_ATTR, key)
        return key

    def key(self, obj) -> str:
        """The key of ``obj``; an object that was not registered (built around :meth:`register`) is registered
        now, which a compiled first call cannot see (see the module docstring)."""
        key = getattr(obj, _KEY_ATTR, None)
        if key is not None and self._objects.get(key) is obj:
            return key
        return self.register(obj)

    def __getitem__(self, key: str):
        try:
            return self._objects[key]
        except KeyError:
            raise KeyError(f"no {self.what} is registered under {key!r}; registered: {sorted(self._objects)}") \
                from None

    def __contains__(self, key: str) -> bool:
        return key in self._objects


GROUPS = OpRegistry("group")
TAP_FUNCTIONS = OpRegistry("tap function")


# ---------------------------------------------------------------------------------------------- call state
assume_constant = torch.compiler.assume_constant_result


@assume_constant
def backend_name() -> str:
    """The current backend, read by torch.compile at trace time (a ContextVar is not traceable) and baked in: a
    compiled model keeps the backend that was current when it was traced."""
    return current_backend()


@assume_constant
def onnx_exporting() -> bool:
    """True inside ``torch.onnx.export`` (either exporter), read once at trace time."""
    return torch.onnx.is_in_onnx_export()


def compiling() -> bool:
    """True while ``torch.compile`` (or ``torch.export``) traces the call."""
    return torch.compiler.is_compiling()


def kernels_for(x: Tensor, backend: str) -> bool:
    """Whether an op called with backend name ``backend`` runs ``x`` on the Triton kernels (see ``use_triton``)."""
    with _use_backend(backend):
        return use_triton(x)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype ``torch.autocast`` casts convolutions to on ``device_type``, or None when it is off there."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if enabled else None
    except RuntimeError:  # a device type autocast does not know (meta, ...): nothing is cast there
        return None


def autocast_inputs(*tensors: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """The tensors as ``torch.autocast`` hands them to ``nn.Conv2d``: under autocast for a tensor's device type,
    a floating tensor other than float64 is cast to the autocast dtype (fp16/bf16; the kernels accumulate in
    fp32); anything else (float64, integer tensors, None, non-tensors left for the argument checks) is returned
    as is.  The custom ops are not autocast-aware on their own, so the entry points call this first, before
    validating, so that a layer fed the bf16 output of the one before it sees the dtype it will compute in."""
    out = []
    for t in tensors:
        if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64:
            dtype = _autocast_dtype(t.device.type)
            t = t if dtype is None else t.to(dtype)
        out.append(t)
    return tuple(out)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Build a cached tensor from real tensors, unrecorded, whatever traces the caller.

    * ``torch.onnx.export`` / ``torch.export`` run the model on fake tensors, which the cache must not keep,
      under a mode that records every op: every ``__torch_dispatch__`` mode (fake tensors, graph recording,
      functionalization) is off for the block, so the exported graph holds the cached tensor as one constant
      whether or not the cache was warm, not the ops that built it.
    * ``torch.jit.trace`` records every op: its tracing state is cleared for the block, so that the graph holds
      the cached tensor as one constant whether or not the cache was warm (else the tracer's check that two
      invocations give the same graph fails).  Only while a trace records (its state is set): elsewhere the
      state is left alone, as it must be where PyTorch runs an op's implementation with the tracer's dispatch
      key excluded (``NoTracerDispatchMode``: inside a ``__torch_dispatch__`` mode, as a ``torch.compile``\\ d
      graph runs its custom ops), where setting it at all, even to None, is an internal assert.
    """
    from torch.utils._python_dispatch import _disable_current_modes

    tracing = torch._C._get_tracing_state()
    if tracing is not None:
        torch._C._set_tracing_state(None)
    try:
        with _disable_current_modes():
            yield
    finally:
        if tracing is not None:
            torch._C._set_tracing_state(tracing)


# -------------------------------------------------------------------------------------------------- layouts
# (B, C, S, H, W) and the channels-last-like (B, H, W, C, S)
_CANONICAL_ORDERS = ((0, 1, 2, 3, 4), (0, 3, 4, 1, 2))
# The layout of every group map the package's layers produce on the kernel path: (B, H, W, C, S) in memory behind
# the (B, C, S, H, W) shape, what the kernels read in place (docs/conventions.md, "Memory layout").
GROUP_MAP_ORDER = (0, 3, 4, 1, 2)


def dim_order(t: torch.Tensor) -> list[int]:
    """``t``'s dims from outermost to innermost in memory.

    A size-1 dim's stride is arbitrary (``unflatten`` of a channels_last ``(B, C, H, W)`` gives the new S = 1 axis
    the batch's stride), so when the other dims agree with a canonical 5-D layout, that layout places them.
    """
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    if t.dim() == 5:
        sized = [d for d in order if t.shape[d] != 1]
        for canonical in _CANONICAL_ORDERS:
            if [d for d in canonical if t.shape[d] != 1] == sized:
                return list(canonical)
    return order


def empty_in_order(shape: Sequence[int], order: Sequence[int], *, dtype, device) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` stored with its dims in ``order`` (outermost first)."""
    out = torch.empty([shape[d] for d in order], dtype=dtype, device=device)
    return out.permute([list(order).index(d) for d in range(len(shape))])


def empty_group_map(shape: Sequence[int], like: Tensor) -> Tensor:
    """An empty group map of ``shape`` ``(B, C, S, H, W)`` in :data:`GROUP_MAP_ORDER`, ``like``'s dtype and device:
    the layout the kernels write their outputs in, whatever the input's (the fake kernels must agree)."""
    return empty_in_order(shape, GROUP_MAP_ORDER, dtype=like.dtype, device=like.device)


def as_group_map(t: Tensor) -> Tensor:
    """``t (B, C, S, H, W)`` stored densely in :data:`GROUP_MAP_ORDER`: ``t`` itself where it is, else a copy."""
    inverse = [GROUP_MAP_ORDER.index(d) for d in range(len(GROUP_MAP_ORDER))]
    return t.permute(GROUP_MAP_ORDER).contiguous().permute(inverse)


def empty_like_layout(shape, like: Tensor) -> Tensor:
    """An empty tensor of ``shape`` in ``like``'s layout: the layout the kernels write (fake kernels must agree)."""
    return empty_in_order(shape, dim_order(like), dtype=like.dtype, device=like.device)
