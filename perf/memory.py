"""The largest tensor a run creates, without a GPU: the CPU stand-in for a peak-memory reading, and what the tests
use to show that no filter bank or receptive-field buffer is ever allocated."""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


class AllocationRecorder(TorchDispatchMode):
    """Records the largest tensor (in bytes) that any aten op produces while active: allocations, views and outputs
    alike, and the op that made it (``largest_op``).

    A custom op (``gconv_triton::*``) reaches a dispatch mode as one op; this one runs its device kernel with the
    mode still active, so the aten ops inside the op (the launchers' allocations, the reference path's bank) are
    recorded too.
    """

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.largest_op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in ("aten", "prim", "prims"):
            out = func(*args, **kwargs)
        else:
            out = run_inside(self, func, args, kwargs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() * t.element_size() > self.largest:
                self.largest, self.largest_op = t.numel() * t.element_size(), func
        return out


def run_inside(mode: TorchDispatchMode, func, args, kwargs):
    """Run a non-aten op that reached ``mode`` (a custom op such as ``gconv_triton::gconv2d`` reaches a dispatch
    mode as one op) by its kernel below the Python key, with ``mode`` active again, so that the aten ops inside it
    reach ``mode`` too.  An op without tensor arguments (``profiler::_record_function_enter_new``) just runs."""
    first = next((t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)), None)
    if first is None:
        return func(*args, **kwargs)
    below = torch._C._dispatch_keys(first) & torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.Python)
    with mode:
        return func.redispatch(below, *args, **kwargs)
