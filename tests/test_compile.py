"""torch.compile: the ops are registered through ``torch.library`` (schema, fake kernels, autograd:
``torch.library.opcheck``), and a G-CNN compiles with ``fullgraph=True`` (no graph break), forward and backward,
on the reference path, on the Triton kernels (interpreted on the CPU), and with Inductor on CUDA when present.

Compiled results are compared with the same model run eagerly (same backend, same dtype) after the compiled
call, which meets cold caches (:func:`helpers.clear_caches`), as a model that is built, compiled and trained
does; a fresh process checks that for every layer family, compiler and mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
from helpers import DEVICE, assert_close, clear_caches, torch_backend, triton_backend
from torch import nn

from gconv_triton import GroupConv2d, GroupPool
from gconv_triton.ops import group_conv as ops
from gconv_triton.nn import GroupBatchNorm, GroupConvTranspose2d

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
    """The compiled model against the same model run eagerly after it: compiled first, on cold caches, as a
    model that is built, compiled and trained meets them."""
    clear_caches()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: a graph break raises
    y, g = _run(compiled, x)
    eager_y, eager_g = _run(model, x)
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
def test_fake_kernel_layout_matches_both_backends(monkeypatch, backend):
    """Inductor plans buffers from the fake kernel's strides: they must be the strides the kernels (and the
    reference path) really return, here for a channels-last-like ``(B, H, W, C, S)`` input; and for a contiguous
    one, of which the kernels' forward makes a zero-halo copy that the op returns for the weight gradient (a
    lifting layer's narrow input, padded to 8 channels, too)."""
    torch.manual_seed(0)
    device = DEVICE if backend == "triton" else torch.device("cpu")
    x = torch.randn(2, 5, 5, 2, 4, device=device).permute(0, 3, 4, 1, 2)
    w = torch.randn(3, 2, 4, 3, 3, device=device)
    geometry = ("p4", "p4", [1, 1], [1, 1, 1, 1], [1, 1], 1, 1)
    torch.library.opcheck(ops._conv_op, (x, w, None, *geometry, "gelu", backend), test_utils=("test_faketensor",))
    torch.library.opcheck(ops._conv_op, (x.contiguous(), w, None, *geometry, "relu", backend),
                          test_utils=("test_faketensor",))
    lifting = ("p4", "z2", [1, 1], [1, 1, 1, 1], [1, 1], 1, 1)
    torch.library.opcheck(ops._conv_op, (x[:, :, :1].contiguous(), w[:, :, :1], None, *lifting, "none", backend),
                          test_utils=("test_faketensor",))
    if backend == "triton":   # the copies the kernels return, as the fake kernel says
        for x_in, geo in ((x.contiguous(), geometry), (x[:, :, :1].contiguous(), lifting)):
            copy = ops._conv_op(x_in, w[:, :, :x_in.shape[2]], None, *geo, "none", backend)[2]
            assert copy.shape == (2, 7, 7, 8) and copy.is_contiguous(), copy.shape
    # a contiguous x that the forward reads in place (128-pixel maps), the input gradient's weight kept: in tf32
    # laid out element-major (4-D) for the channels-first dy such an x suggests, else N-major (5-D)
    x_first = torch.randn(1, 2, 4, 16, 8, device=device)
    for tf32 in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        args = (x_first, w, None, *geometry, "none", backend, True)
        torch.library.opcheck(ops._conv_op, args, test_utils=("test_faketensor",))
        if backend == "triton":
            assert ops._conv_op(*args)[3].dim() == (4 if tf32 else 5)


def test_no_graph_break():
    model = _model(DT)
    x = torch.randn(2, 2, 9, 9, dtype=DT)
    with torch_backend():
        clear_caches()
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


# ------------------------------------------------------------------------------------- a fresh process, cold
# Each case builds its model, clears every cache (helpers.clear_caches), compiles and runs the model, and only then
# runs it eagerly for the comparison: the usual build, compile, train, where no eager call has filled a cache for
# the model's weight shapes.  Modes: "train" (forward and backward in float64; float32 on the Triton kernels),
# "autocast" (bf16 on the CPU, forward and backward; float32 parameters) and "no_grad" (forward only).
COLD_SCRIPT = """
import pickle, sys, traceback
import torch
from torch import nn
import gconv_triton as gt
from helpers import DEVICE, assert_close, clear_caches

def chain():
    return nn.Sequential(gt.P4ConvZ2(2, 3, 3, padding=1), gt.GroupConvTranspose2d(3, 3, 3, padding=1),
                         gt.P4ConvP4(3, 2, 3, padding=1), gt.GroupPool('max'), gt.Conv2d(2, 2, 3, padding=1),
                         gt.SharedKernelConv2d(3, 2, padding=1))

def user_group_layer():  # a group built by the user: it crosses the op boundary by its registry key
    group = gt.Group.from_matrices([((1, 0), (0, 1)), ((-1, 0), (0, -1))], name='my_p2')
    return gt.GroupConv2d(2, 3, 3, group=group, in_group=group, padding=1)

def steerable():  # C8 on the in-GEMM steering kernels ('triton') or the bank path ('torch')
    return nn.Sequential(gt.GroupConv2d(2, 3, 5, group='c8', padding=2, activation='relu'),
                         gt.GroupConv2d(3, 2, 3, group='c8', in_group='c8', padding=1),
                         gt.GroupPool('max', group='c8'))

def steerable_transpose():  # a C8 decoder: lifting, the transposed doubling, the transposed projection to planes
    return nn.Sequential(gt.GroupConv2d(2, 3, 3, group='c8', padding=1),
                         gt.GroupConvTranspose2d(3, 2, 4, stride=2, padding=1, group='c8'),
                         gt.GroupConvTranspose2d(2, 2, 3, padding=1, groups=2, group='c8', out_group='z2'))

def unpickled_user_group_layer():  # a copy of it, as torch.load gives back a whole pickled model
    return pickle.loads(pickle.dumps(user_group_layer()))

MODELS = {
    'user_group': (user_group_layer, (2, 2, 2, 5, 5)),
    'unpickled_user_group': (unpickled_user_group_layer, (2, 2, 2, 5, 5)),
    'P4ConvZ2': (lambda: gt.P4ConvZ2(2, 3, 3, padding=1), (2, 2, 5, 5)),
    'P4ConvP4': (lambda: gt.P4ConvP4(2, 3, 3, padding=1), (2, 2, 4, 5, 5)),
    'Conv2d': (lambda: gt.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
    'GroupConvTranspose2d': (lambda: gt.GroupConvTranspose2d(2, 3, 3, stride=2, padding=1), (2, 2, 4, 3, 3)),
    'SharedKernelConv2d': (lambda: gt.SharedKernelConv2d(3, 2, padding=1), (2, 2, 5, 5)),
    'p4m_resnet44': (lambda: gt.models.p4m_resnet44(num_classes=3, equal='compute'), (2, 3, 4, 4)),
    'chain': (chain, (2, 2, 5, 5)),
    'steerable': (steerable, (2, 2, 5, 5)),
    'steerable_transpose': (steerable_transpose, (2, 2, 3, 3)),
}

def step(model, x, mode):
    if mode == 'no_grad':
        with torch.no_grad():
            return [model(x)]
    x = x.detach().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=mode == 'autocast'):
        y = model(x)
    y.float().square().sum().backward()
    out = [y.detach(), x.grad] + [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out

def case(name, compiler, mode, backend):
    build, shape = MODELS[name]
    device = DEVICE if backend == 'triton' else torch.device('cpu')
    dtype = torch.float32 if mode == 'autocast' or backend == 'triton' else torch.float64
    torch.manual_seed(0)
    model = build().to(device, dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    clear_caches()
    with gt.backend(backend):
        compiled = step(torch.compile(model, backend=compiler, fullgraph=True), x, mode)
        eager = step(model, x, mode)
    for i, (got, want) in enumerate(zip(compiled, eager)):
        assert_close(got, want, torch.bfloat16 if mode == 'autocast' else dtype, f'output {i}')

failed = 0
for spec in sys.argv[1:]:
    try:
        case(*spec.split(':'))
        print('ok', spec, flush=True)
    except Exception:
        failed += 1
        print('FAILED', spec, flush=True)
        traceback.print_exc()
sys.exit(1 if failed else 0)
"""

# Inductor compiles slowly on a small CPU: it gets the chain of every layer family.  p4m_resnet44 (about 45 layers:
# near a minute of Inductor codegen, ten seconds of tracing per mode) is traced once, under aot_eager, forward and
# backward; every layer family meets every compiler and mode on its own or in the chain.
COLD_CASES = (
    [f"{name}:aot_eager:{mode}:torch" for name in ("P4ConvZ2", "P4ConvP4", "Conv2d", "GroupConvTranspose2d",
                                                   "SharedKernelConv2d") for mode in ("train", "autocast", "no_grad")]
    + ["p4m_resnet44:aot_eager:train:torch"]
    + [f"{name}:aot_eager:train:{backend}" for name in ("user_group", "unpickled_user_group")
       for backend in ("torch", "triton")]
    + [f"chain:inductor:{mode}:torch" for mode in ("train", "autocast", "no_grad")]
    + [f"chain:aot_eager:{mode}:triton" for mode in ("train", "no_grad")]
    + [f"steerable:aot_eager:{mode}:torch" for mode in ("train", "autocast")]
    + [f"steerable:aot_eager:{mode}:triton" for mode in ("train", "no_grad")])


def run_cold_cases(cases: list[str]) -> None:
    """Run ``COLD_SCRIPT`` on ``cases`` in a fresh process; every case must print its ``ok`` line."""
    tests = Path(__file__).resolve().parent
    path = [str(tests.parent), str(tests), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))  # TRITON_INTERPRET etc. as conftest
    proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT, *cases], capture_output=True, text=True, env=env,
                          timeout=600)
    report = proc.stdout + proc.stderr[-6000:]  # one ok/FAILED line per case, then the last tracebacks
    assert proc.returncode == 0, report
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")] == list(cases), report


def test_compile_before_any_eager_call_in_a_fresh_process():
    """The usual build, compile, train: no eager call before the compiled one has filled a cache (the filter-bank
    index, the kernels' tables), in a fresh process as a user starts one, for every layer family and
    p4m_resnet44, under aot_eager and Inductor, with and without autocast and grad, on both backends."""
    run_cold_cases(COLD_CASES)
