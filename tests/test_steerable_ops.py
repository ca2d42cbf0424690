"""The steerable (C_N / D_N) layers on the Triton kernels, through the ops of ``gconv_triton/ops/steerable_conv.py``
(the kernels in Triton's interpreter via the ``'triton'`` backend): forward and every gradient of ``GroupConv2d``
against the float64 reference path, gradcheck and gradgradcheck, bf16 autocast, ``opcheck`` of the three ops,
``torch.compile`` from a cold start in a fresh process, the allocation record of a training step (no tensor of
the filter bank's size on the kernels, one on the reference path), and a layer cast to float64 computing with
exact float64 tables."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gconv_triton as gt
from gconv_triton import steerable as st
from gconv_triton.ops import steerable_conv as ops

from helpers import DEVICE, assert_close, torch_backend, triton_backend
from test_compile import COLD_CASES, run_cold_cases
from test_steerable_kernels import _CreatedTensors

DT = torch.float64

# (group, lifting, k, layer options, input size): lifting and regular C8, D8, C16, with stride, dilation, channel
# groups, an even kernel's asymmetric 'same' padding, a padding mode and fused activations
LAYERS = [
    ("c8", True, 5, dict(padding=2), 7),
    ("c8", False, 3, dict(stride=2, padding=1, groups=2, activation="relu"), 7),
    ("d8", True, 3, dict(padding="same", dilation=2), 6),
    ("d8", False, 3, dict(padding=1, padding_mode="reflect", activation="silu"), 5),
    ("c16", True, 3, dict(padding=1, bias=False), 5),
    ("c16", False, 5, dict(padding=2), 5),
    ("c8", False, 4, dict(padding="same"), 6),
]


def _layer_id(case) -> str:
    group, lifting, k, options, _ = case
    extra = "-".join(f"{key}={value}" for key, value in options.items())
    return f"{group}-{'lift' if lifting else 'regular'}-k{k}-{extra}".replace(" ", "")


def _layer_and_input(group: str, lifting: bool, k: int, options: dict, size: int, dtype=torch.float32):
    torch.manual_seed(0)
    layer = gt.GroupConv2d(2, 2, k, group=group, in_group="z2" if lifting else group, dtype=dtype, **options)
    with torch.no_grad():   # a non-zero bias also where the init draws it small
        if layer.bias is not None:
            layer.bias.normal_()
    shape = (2, 2, *(() if lifting else (layer.in_group.order,)), size, size)
    return layer.to(DEVICE), torch.randn(shape, dtype=dtype, device=DEVICE)


def _assert_matches_reference(layer, x, y, grads, dy, dtype) -> None:
    """``y`` and ``grads`` (input, parameters) of ``layer`` on ``x`` within ``dtype``'s error of the same layer in
    float64 on the reference path."""
    with torch_backend():
        want_y, want_grads, _ = _step(copy.deepcopy(layer).cpu().double(), x.cpu().double(), dy)
    assert_close(y, want_y, dtype, "y")
    for i, (got, want) in enumerate(zip(grads, want_grads)):
        assert_close(got, want, dtype, f"gradient {i} (input, then parameters)")


def _step(layer, x, dy=None):
    """``y`` and the gradients of ``⟨y, dy⟩`` to the input and every parameter."""
    x = x.detach().requires_grad_()
    y = layer(x)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=DT) if dy is None else dy
    grads = torch.autograd.grad(y, [x, *layer.parameters()], dy.to(y.dtype).to(y.device))
    return y.detach(), grads, dy


@pytest.mark.parametrize("case", LAYERS, ids=[_layer_id(c) for c in LAYERS])
@pytest.mark.filterwarnings("ignore::gconv_triton.EquivarianceWarning")   # the even kernel's 'same' padding
def test_layer_on_the_kernels_matches_the_float64_reference(case):
    group, lifting, k, options, size = case
    layer, x = _layer_and_input(group, lifting, k, options, size)
    with triton_backend():
        y, grads, dy = _step(layer, x)
    _assert_matches_reference(layer, x, y, grads, dy, torch.float32)


@pytest.mark.parametrize("group, lifting", [("c8", True), ("c4", False)])
def test_gradcheck_and_gradgradcheck_float64(group, lifting):
    """First and second derivatives of the kernels' ops (every backward op differentiated again), float64."""
    torch.manual_seed(0)
    g = gt.groups.get_group(group)
    in_group = gt.z2 if lifting else g
    x = torch.randn(1, 1, in_group.order, 4, 5, dtype=DT, device=DEVICE, requires_grad=True)
    c = torch.randn(2, 1, in_group.order, st.basis_size(3), dtype=DT, device=DEVICE, requires_grad=True)
    b = torch.randn(2, dtype=DT, device=DEVICE, requires_grad=True)
    tables = st.rotated_basis(g, 3).flatten(2).to(DEVICE)

    def conv(x, c, b):
        return st.steerable_conv2d(x, c, b, group=g, in_group=in_group, kernel_size=3, stride=(1, 2), padding=1,
                                   tables=tables)

    with triton_backend():
        assert torch.autograd.gradcheck(conv, (x, c, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(conv, (x, c, b), fast_mode=True)


def test_bf16_autocast_on_the_kernels():
    """Under autocast the input, coefficients and bias reach the kernels in bf16 (the tables are cast there): a
    bf16 output and gradients within bf16's error of the float64 reference."""
    layer, x = _layer_and_input("c8", False, 3, dict(padding=1), 6)
    with triton_backend(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y, grads, dy = _step(layer, x)
    assert y.dtype == torch.bfloat16
    _assert_matches_reference(layer, x, y, grads, dy, torch.bfloat16)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    """Schema, fake kernels (their strides included), autograd registration and AOT dispatch of the three ops, on
    a regular and a lifting layer, on the reference inside the ops ('torch') and on the kernels ('triton')."""
    torch.manual_seed(0)
    c8 = st.cyclic_group(8)
    device = DEVICE if backend == "triton" else torch.device("cpu")
    dtype = torch.float32 if backend == "triton" else DT
    x = torch.randn(1, 1, 8, 5, 6, dtype=dtype, device=device, requires_grad=True)
    c = torch.randn(2, 1, 8, 6, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(2, dtype=dtype, device=device, requires_grad=True)
    dy = torch.randn(1, 2, 8, 3, 6, dtype=dtype, device=device, requires_grad=True)
    tables = st.rotated_basis(c8, 3).flatten(2).to(device=device, dtype=dtype)
    geometry = ("C8", "C8", 3, [2, 1], [1, 1], [1, 1], backend)
    torch.library.opcheck(ops._conv_op, (x, c, b, tables, *geometry))
    torch.library.opcheck(ops._input_grad_op, (dy, c, tables, [1, 1, 8, 5, 6], *geometry))
    torch.library.opcheck(ops._weight_grad_op, (dy, x, tables, [2, 1, 8, 6], *geometry))
    # a lifting layer: on the kernels its output is stored channels-last, as the fake kernel says; dy so stored too
    x = torch.randn(1, 1, 1, 5, 6, dtype=dtype, device=device, requires_grad=True)
    c = torch.randn(2, 1, 1, 6, dtype=dtype, device=device, requires_grad=True)
    dy = torch.randn(1, 3, 6, 2, 8, dtype=dtype, device=device).permute(0, 3, 4, 1, 2).requires_grad_()
    geometry = ("C8", "z2", 3, [2, 1], [1, 1], [1, 1], backend)
    torch.library.opcheck(ops._conv_op, (x, c, b, tables, *geometry))
    torch.library.opcheck(ops._input_grad_op, (dy, c, tables, [1, 1, 1, 5, 6], *geometry))
    torch.library.opcheck(ops._weight_grad_op, (dy, x, tables, [2, 1, 1, 6], *geometry))


def test_reference_inside_the_ops_is_the_reference_path():
    """The ops' own reference (no autograd: explicit input and coefficient gradients) against autograd on the bank
    path, float64."""
    torch.manual_seed(0)
    d8 = st.dihedral_group(8)
    x = torch.randn(2, 2, 16, 5, 6, dtype=DT, requires_grad=True)
    c = torch.randn(3, 2, 16, 6, dtype=DT, requires_grad=True)
    tables = st.rotated_basis(d8, 3).flatten(2)
    with torch_backend():
        y = st.steerable_conv2d(x, c, None, group=d8, in_group=d8, kernel_size=3, stride=(2, 1), padding=1)
    dy = torch.randn_like(y)
    dx, dc = torch.autograd.grad(y, (x, c), dy)
    geometry = ("D8", "D8", 3, [2, 1], [1, 1], [1, 1], "torch")
    assert torch.allclose(ops._conv_op(x, c, None, tables, *geometry), y, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ops._input_grad_op(dy, c, tables, list(x.shape), *geometry), dx, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ops._weight_grad_op(dy, x, tables, list(c.shape), *geometry), dc, rtol=1e-12, atol=1e-12)


def test_every_op_twice_differentiable_on_the_reference_inside_the_ops():
    """gradcheck and gradgradcheck (full Jacobians, float64) of each op, its backward ops' own autograd included:
    the wiring of the double backward, on the ops' reference (the kernels: test_gradcheck_and_gradgradcheck)."""
    torch.manual_seed(0)
    d8 = st.dihedral_group(8)
    x = torch.randn(1, 1, 16, 4, 5, dtype=DT, requires_grad=True)
    c = torch.randn(2, 1, 16, 6, dtype=DT, requires_grad=True)
    b = torch.randn(2, dtype=DT, requires_grad=True)
    dy = torch.randn(1, 2, 16, 2, 5, dtype=DT, requires_grad=True)
    tables = st.rotated_basis(d8, 3).flatten(2)
    geometry = ("D8", "D8", 3, [2, 1], [1, 1], [1, 1], "torch")
    for op, args in ((lambda x, c, b: ops._conv_op(x, c, b, tables, *geometry), (x, c, b)),
                     (lambda dy, c: ops._input_grad_op(dy, c, tables, list(x.shape), *geometry), (dy, c)),
                     (lambda dy, x: ops._weight_grad_op(dy, x, tables, list(c.shape), *geometry), (dy, x))):
        assert torch.autograd.gradcheck(op, args)
        assert torch.autograd.gradgradcheck(op, args)


def test_compile_before_any_eager_call_in_a_fresh_process():
    """A C8 lifting + regular model compiled (aot_eager, fullgraph) on a cold process before any eager call, on
    the kernels and on the reference path (test_compile.py's script and cases)."""
    run_cold_cases([case for case in COLD_CASES if case.startswith("steerable:")])


def test_training_step_allocates_no_bank_on_the_kernels():
    """A whole training step (forward, backward to the input, coefficients and bias) of GroupConv2d(group="c8"):
    on the kernels nothing of the bank's size ``C_out·S_out·C_in·S_in·k²`` is created; the reference path creates
    it (so the record can fail)."""
    torch.manual_seed(0)
    layer = gt.GroupConv2d(4, 4, 5, group="c8", in_group="c8", padding=2).to(DEVICE)
    x = torch.randn(1, 4, 8, 6, 6, device=DEVICE, requires_grad=True)
    bank_numel = 4 * 8 * 4 * 8 * 5 * 5
    assert bank_numel > 20 * x.numel()

    def step():
        layer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()

    with triton_backend():
        step()   # the tables and index caches filled: what every later step meets
        with _CreatedTensors() as kernels_step:
            step()
    assert kernels_step.sizes, "the recorder saw no op at all"
    largest = max(kernels_step.sizes, key=lambda entry: entry[1])
    assert largest[1] < bank_numel, f"{largest[0]} created {largest[1]} elements (bank: {bank_numel})"
    assert layer.weight.grad is not None and x.grad is not None
    with torch_backend():
        with _CreatedTensors() as reference_step:
            step()
    assert max(n for _, n in reference_step.sizes) >= bank_numel


def test_cast_layer_computes_with_exact_tables():
    """A layer built in float32 and then cast (``.double()``, ``.to``) holds the float64 tables themselves, not
    float32-rounded ones: the same function as the layer built in float64; the tables stay out of the state
    dict."""
    torch.manual_seed(0)
    cast = gt.GroupConv2d(3, 5, 5, group="c8", in_group="c8", padding=2).double()
    built = gt.GroupConv2d(3, 5, 5, group="c8", in_group="c8", padding=2, dtype=DT)
    built.load_state_dict(cast.state_dict())
    exact = st.rotated_basis(cast.group, 5).flatten(2)
    assert torch.equal(cast.basis, exact) and torch.equal(built.basis, exact)
    x = torch.randn(2, 3, 8, 9, 9, dtype=DT)
    with torch_backend():
        assert torch.equal(cast(x), built(x))
    half_then_double = copy.deepcopy(built).half().to(DT)
    assert torch.equal(half_then_double.basis, exact)
    assert list(cast.state_dict()) == ["weight", "bias"] and "basis" in dict(cast.named_buffers())
    assert torch.equal(cast.float().basis, exact.float())


def test_model_on_the_kernels_matches_the_reference_path():
    """A small C8 model (lifting, grouped, pooling, invariant projection) on the kernels equals the same model on
    the reference path (fp32), forward and parameters' gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(gt.GroupConv2d(2, 4, 5, group="c8", padding=2, activation="relu"),
                          gt.GroupConv2d(4, 4, 3, group="c8", in_group="c8", padding=1, groups=2),
                          gt.GroupPool("max", group="c8")).to(DEVICE)
    x = torch.randn(2, 2, 7, 7, device=DEVICE)
    with triton_backend():
        y, grads, dy = _step(model, x)
    _assert_matches_reference(model, x, y, grads, dy, torch.float32)
