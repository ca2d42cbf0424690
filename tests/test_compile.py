"""torch.compile: the ops are registered through ``torch.library`` (schema, fake kernels, autograd:
``torch.library.opcheck``), and a G-CNN compiles with ``fullgraph=True`` (no graph break), forward and backward,
on the reference path, on the Triton kernels (interpreted on the CPU), and with Inductor on CUDA when present.

Compiled results are compared with the same model run eagerly (same backend, same dtype).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from helpers import DEVICE, assert_close, torch_backend, triton_backend
from torch import nn

from gconv_triton import GroupConv2d, GroupPool
from gconv_triton import _library as ops
from gconv_triton.layers import GroupBatchNorm, GroupConvTranspose2d

DT = torch.float64


def _model(dtype, device="cpu"):
    """Every op: a lifting conv with a fused activation, batch norm, a strided group conv (kernel padding 'same'
    needs stride 1, so explicit), a transposed conv back up, a depthwise conv, group pooling."""
    torch.manual_seed(0)
    return nn.Sequential(
        GroupConv2d(2, 4, 3, group="p4", in_group="z2", padding=1, activation="silu"),
        GroupBatchNorm(4),
        GroupConv2d(4, 4, 3, group="p4", in_group="p4", stride=2, padding=1, activation="relu"),
        GroupConvTranspose2d(4, 4, 3, stride=2, padding=1, group="p4"),
        GroupConv2d(4, 4, 3, group="p4", in_group="p4", padding="same", groups=4),
        GroupPool("max"),
    ).to(device, dtype)


def _small_model(dtype, device="cpu"):
    """One of each op family for the slow cases: lifting conv (fused silu: pre-activation output), transposed conv
    (the input-gradient op forward, the conv and weight-gradient ops backward), depthwise conv (fused relu)."""
    torch.manual_seed(0)
    return nn.Sequential(
        GroupConv2d(1, 2, 3, group="p4", in_group="z2", padding=1, activation="silu"),
        GroupConvTranspose2d(2, 2, 3, padding=1, group="p4"),
        GroupConv2d(2, 2, 3, group="p4", in_group="p4", groups=2, activation="relu"),
    ).to(device, dtype)


def _run(model, x):
    x = x.detach().requires_grad_()
    y = model(x)
    y.square().sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return y.detach(), grads


def _compare(model, x, backend, dtype):
    eager_y, eager_g = _run(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: a graph break raises
    y, g = _run(compiled, x)
    assert_close(y, eager_y, dtype, "compiled forward")
    for i, (a, b) in enumerate(zip(g, eager_g)):
        assert_close(a, b, dtype, f"compiled gradient {i}")


def test_opcheck_registered_ops():
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of the three ops."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 4, 5, 5, dtype=DT, requires_grad=True)
    w = torch.randn(3, 2, 4, 3, 3, dtype=DT, requires_grad=True)
    b = torch.randn(3, dtype=DT, requires_grad=True)
    dy = torch.randn(2, 3, 4, 5, 5, dtype=DT, requires_grad=True)
    geometry = ("p4", "p4", [1, 1], [1, 1, 1, 1], [1, 1], 1, 1)
    for activation in ("relu", "gelu"):
        torch.library.opcheck(ops._conv_op, (x, w, b, *geometry, activation, "torch"))
    torch.library.opcheck(ops._input_grad_op, (dy, w, [2, 2, 4, 5, 5], [0, 1, 2, 3, 4], *geometry, "torch"))
    torch.library.opcheck(ops._weight_grad_op, (dy.detach(), x.detach(), [3, 2, 4, 3, 3], *geometry, "torch"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fake_kernel_layout_matches_both_backends(backend):
    """Inductor plans buffers from the fake kernel's strides: they must be the strides the kernels (and the
    reference path) really return, here for a channels-last-like ``(B, H, W, C, S)`` input."""
    torch.manual_seed(0)
    device = DEVICE if backend == "triton" else torch.device("cpu")
    x = torch.randn(2, 5, 5, 2, 4, device=device).permute(0, 3, 4, 1, 2)
    w = torch.randn(3, 2, 4, 3, 3, device=device)
    geometry = ("p4", "p4", [1, 1], [1, 1, 1, 1], [1, 1], 1, 1)
    torch.library.opcheck(ops._conv_op, (x, w, None, *geometry, "gelu", backend), test_utils=("test_faketensor",))


def test_no_graph_break():
    model = _model(DT)
    x = torch.randn(2, 2, 9, 9, dtype=DT)
    with torch_backend():
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compile_reference_path_aot_eager():
    """AOTAutograd traces forward and backward through the fake kernels and registered backward."""
    with torch_backend():
        _compare(_model(DT), torch.randn(2, 2, 9, 9, dtype=DT), "aot_eager", DT)


def test_compile_reference_path_inductor():
    """The default backend (Inductor's C++ code on the CPU) around the ops; small model to keep codegen short."""
    with torch_backend():
        _compare(_small_model(DT), torch.randn(2, 1, 5, 5, dtype=DT), "inductor", DT)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the interpreter case; CUDA has its own test")
def test_compile_triton_kernels_interpreted():
    """The kernels stay opaque custom ops in the graph, so the interpreter runs them inside a compiled model."""
    with triton_backend():
        _compare(_small_model(torch.float32), torch.randn(2, 1, 5, 5), "aot_eager", torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compile_triton_kernels_cuda_inductor():
    _compare(_model(torch.float32, "cuda"), torch.randn(2, 2, 9, 9, device="cuda"), "inductor", torch.float32)
