"""Determinism: every kernel gives bit-identical outputs and gradients run after run, and nothing on either backend
raises under ``torch.use_deterministic_algorithms(True)``; kernels launch on the current CUDA stream.

The kernels use no atomics: the weight gradient reduces the group copies inside one program and sums its split
partial results in a fixed order, so determinism holds by construction; these tests keep it that way.  Under the
interpreter programs run one by one, so only a GPU run can catch a race; the same tests run there.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from helpers import DEVICE, assert_close

import gconv_triton
from gconv_triton.functional import gconv2d

# (input shape, weight shape, conv arguments).  B·H_out·W_out = 75 >= 64 makes the interpreter split the weight
# gradient's reduction in two (the split path's fixed-order sum is under test too).
CASES = {
    "gemm": ((3, 2, 4, 5, 5), (3, 2, 4, 3, 3), dict(group="p4", in_group="p4", padding=1)),
    "gemm-lifting-strided": ((3, 3, 1, 9, 9), (4, 3, 1, 3, 3), dict(group="p4m", in_group="z2", stride=2)),
    "depthwise": ((3, 2, 2, 5, 5), (2, 1, 2, 3, 3), dict(group="p2", in_group="p2", padding=1, groups=2)),
}


def _run(backend, case, dtype=torch.float32):
    """``(y, dx, dw, db)`` for fixed (seeded) inputs and output gradient."""
    x_shape, w_shape, conv = CASES[case]
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen).to(DEVICE, dtype).requires_grad_()
               for s in (x_shape, w_shape, w_shape[:1]))
    with gconv_triton.backend(backend):
        y = gconv2d(x, w, b, **conv)
        dy = (torch.rand(y.shape, generator=gen) + 0.5).to(DEVICE, dtype)  # positive: a well-conditioned db
        return (y.detach(), *torch.autograd.grad(y, (x, w, b), dy))


@functools.lru_cache(maxsize=None)
def _first_run(backend, case, dtype=torch.float32):
    """The results every other run must reproduce bit for bit (computed once per session)."""
    return _run(backend, case, dtype)


def _assert_identical(first, second, what):
    for name, a, b in zip(("y", "dx", "dw", "db"), first, second):
        assert torch.equal(a, b), f"{what}: {name} differs between runs"


@pytest.mark.parametrize("case, dtype", [("gemm", torch.float32), ("gemm", torch.bfloat16),
                                         ("gemm-lifting-strided", torch.float32), ("depthwise", torch.float32)])
def test_kernels_bitwise_deterministic(case, dtype):
    first = _first_run("triton", case, dtype)
    _assert_identical(first, _run("triton", case, dtype), case)
    ref = _run("torch", case, torch.float64)
    for name, out, expected in zip(("y", "dx", "dw", "db"), first, ref):
        assert_close(out, expected, dtype, name)


@contextlib.contextmanager
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` (erroring, not warn-only) for the block, then the old mode."""
    old, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", ["gemm", "depthwise"])
def test_under_use_deterministic_algorithms(backend, case):
    """Nothing we call raises in deterministic mode (which also NaN-fills torch.empty, so an unwritten output
    element would show), and the results are the same bits as without it."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    with deterministic_algorithms():
        strict = _run(backend, case, dtype)
    _assert_identical(_first_run(backend, case, dtype), strict, f"{case} under use_deterministic_algorithms")


# ------------------------------------------------------------------------------------------- CUDA streams
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda_only
def test_kernels_launch_on_current_stream():
    """Triton launches on ``torch.cuda.current_stream()``: work queued on a side stream is ordered with the
    kernels (a long ``_sleep`` before the input is written would expose a launch on another stream), and the
    kernels can be captured in a CUDA graph, which fails for a launch on any stream but the capturing one."""
    x_shape, w_shape, conv = CASES["gemm"]
    w = torch.randn(w_shape, device="cuda")
    src = torch.randn(x_shape, device="cuda")
    with gconv_triton.backend("triton"):
        expected = gconv2d(src, w, **conv)  # also autotunes, outside the capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            x = torch.zeros(x_shape, device="cuda")
            torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time on the side stream
            x.copy_(src)
            y = gconv2d(x, w, **conv)
        side.synchronize()
        assert torch.equal(y, expected)

        static_x = src.clone()
        graph = torch.cuda.CUDAGraph()
        capture = torch.cuda.Stream()
        capture.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(capture):
            gconv2d(static_x, w, **conv)  # warm-up on the capture stream
            with torch.cuda.graph(graph, stream=capture):
                static_y = gconv2d(static_x, w, **conv)
        torch.cuda.current_stream().wait_stream(capture)
        static_x.copy_(src * 2)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, gconv2d(src * 2, w, **conv))
