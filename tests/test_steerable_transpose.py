"""``GroupConvTranspose2d`` on C_N / D_N (``steerable.steerable_conv_transpose2d``): the adjoint of the steerable
convolution, on the kernels (the convolution's input-gradient op, in Triton's interpreter via the ``'triton'``
backend) and on the reference path (bank + ``F.conv_transpose2d``), each against a float64 bank-built
``F.conv_transpose2d`` in the forward and every gradient; gradcheck and gradgradcheck; bf16 autocast; exactness on
the grid symmetries and the approximate 45° of C8; export (plain torch.nn, torch.export, ONNX), copies, the state
dict, the init; a cold ``torch.compile``; the bad arguments."""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gconv_triton as gt
from gconv_triton import steerable as st

from helpers import DEVICE, assert_close, rel_error, torch_backend, triton_backend
from test_compile import run_cold_cases

DT = torch.float64
BACKENDS = {"torch": torch_backend, "triton": triton_backend}

# (group, out_group, k, stride, padding, output_padding, groups, dilation, input (H, W)): regular -> regular and
# regular -> trivial (the adjoint of a lifting layer), stride 1 and 2 with output_padding, padding 0 and 1,
# dilation, channel groups, odd and non-square sizes, an even kernel, C4 / C8 / D8 and C16 on a small case
CASES = [
    ("c4", "c4", 3, 1, 1, 0, 1, 1, (5, 5)),
    ("c8", "c8", 3, 2, 1, 1, 2, 1, (5, 5)),
    ("d8", "d8", 5, 2, 0, 1, 1, 1, (3, 4)),
    ("c8", "z2", 3, 1, 0, 0, 1, 2, (5, 5)),
    ("d8", "z2", 4, 2, 1, 0, 2, 1, (3, 3)),
    ("c8", "c8", 3, 2, 1, 1, 1, 2, (4, 3)),
    ("c16", "c16", 3, 1, 1, 0, 1, 1, (3, 3)),
]


def _case_id(case) -> str:
    group, out_group, k, stride, padding, out_pad, groups, dilation, (h, w) = case
    return f"{group}-to-{out_group}-k{k}-s{stride}-p{padding}-op{out_pad}-g{groups}-d{dilation}-{h}x{w}"


def _oracle(x, coefficients, bias, group, out_group, k, stride=1, padding=0, output_padding=0, groups=1,
            dilation=1):
    """The float64 reference: the bank of steerable_bank on the cached tables, then F.conv_transpose2d on
    flattened maps."""
    bank = st.steerable_bank(coefficients, group, out_group, k)
    b = None if bias is None else bias.repeat_interleave(out_group.order)
    return F.conv_transpose2d(x.flatten(1, 2), bank, b, stride, padding, output_padding, groups,
                              dilation).unflatten(1, (-1, out_group.order))


def _grads(y, leaves, dy):
    return torch.autograd.grad(y, leaves, dy)


@pytest.mark.filterwarnings("ignore::gconv_triton.EquivarianceWarning")   # output_padding, non-square: numerics
@pytest.mark.parametrize("dtype", [torch.float32, DT], ids=["fp32", "fp64"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_float64_bank_conv_transpose(case, backend, dtype):
    """Forward and the gradients to the input, the coefficients and the bias == F.conv_transpose2d of the float64
    bank (autograd), on the kernels and on the reference path."""
    group, out_group, k, stride, padding, out_pad, groups, dilation, (h, w) = case
    torch.manual_seed(0)
    layer = gt.GroupConvTranspose2d(4, 2, k, stride=stride, padding=padding, output_padding=out_pad, groups=groups,
                                    dilation=dilation, group=group, out_group=out_group, dtype=DT)
    with torch.no_grad():
        layer.bias.normal_()   # the init draws it small
    x64 = torch.randn(2, 4, layer.group.order, h, w, dtype=DT, requires_grad=True)
    want = _oracle(x64, layer.weight, layer.bias, layer.group, layer.out_group, k, stride, padding, out_pad, groups,
                   dilation)
    dy = torch.randn_like(want)
    want_grads = _grads(want, [x64, layer.weight, layer.bias], dy)
    device = DEVICE if backend == "triton" else torch.device("cpu")
    layer = layer.to(device, dtype)
    x = x64.detach().to(device, dtype).requires_grad_()
    with BACKENDS[backend]():
        y = layer(x)
        grads = _grads(y, [x, layer.weight, layer.bias], dy.to(device, dtype))
    assert_close(y, want, dtype, "forward")
    for name, got, expected in zip(("input", "coefficients", "bias"), grads, want_grads):
        assert_close(got, expected, dtype, f"gradient to the {name}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("group, out_group", [("c4", "c4"), ("d8", "z2")])
def test_gradcheck_and_gradgradcheck_float64(backend, group, out_group):
    """First and second derivatives in float64: on the kernels the input-gradient op's autograd (the forward op
    for the input, the coefficient-gradient op for the coefficients) and their own backward ops."""
    torch.manual_seed(0)
    g = gt.groups.get_group(group)
    out = gt.z2 if out_group == "z2" else g
    device = DEVICE if backend == "triton" else torch.device("cpu")
    x = torch.randn(1, 1, g.order, 3, 2, dtype=DT, device=device, requires_grad=True)
    c = torch.randn(1, 2, out.order, st.basis_size(3), dtype=DT, device=device, requires_grad=True)
    b = torch.randn(2, dtype=DT, device=device, requires_grad=True)
    tables = st.rotated_basis(g, 3).flatten(2).to(device)

    def conv(x, c, b):
        return st.steerable_conv_transpose2d(x, c, b, group=g, out_group=out, kernel_size=3, stride=(2, 1),
                                             padding=1, output_padding=(1, 0), tables=tables)

    with BACKENDS[backend]():
        assert torch.autograd.gradcheck(conv, (x, c, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(conv, (x, c, b), fast_mode=True)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_autocast(backend):
    """Under autocast the input, coefficients and bias are cast first, as for the steerable GroupConv2d: a bf16
    output and gradients within bf16's error of the float64 oracle."""
    torch.manual_seed(0)
    layer = gt.GroupConvTranspose2d(3, 2, 4, stride=2, padding=1, group="c8")
    x = torch.randn(2, 3, 8, 4, 4)
    x64 = x.double().requires_grad_()
    weight, bias = (p.detach().double().requires_grad_() for p in (layer.weight, layer.bias))
    want = _oracle(x64, weight, bias, layer.group, layer.group, 4, 2, 1)
    dy = torch.randn_like(want)
    want_grads = _grads(want, [x64, weight, bias], dy)
    device = DEVICE if backend == "triton" else torch.device("cpu")
    layer, x = layer.to(device), x.to(device).requires_grad_()
    with BACKENDS[backend](), torch.autocast(device.type, dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    grads = _grads(y, [x, layer.weight, layer.bias], dy.to(device, torch.bfloat16))
    assert_close(y, want, torch.bfloat16, "forward")
    for name, got, expected in zip(("input", "coefficients", "bias"), grads, want_grads):
        assert_close(got, expected, torch.bfloat16, f"gradient to the {name}")


def test_every_backend_and_the_functional_form():
    """'auto' (CPU: the reference), 'torch' and 'triton' give the same function; the layer is
    functional.steerable_conv_transpose2d on its weight and tables, and a flattened input is read as its 5-D
    form."""
    torch.manual_seed(0)
    layer = gt.GroupConvTranspose2d(2, 2, 3, stride=2, group="d8", dtype=DT)
    x = torch.randn(1, 2, 16, 3, 3, dtype=DT)
    expected = _oracle(x, layer.weight, layer.bias, layer.group, layer.group, 3, 2)
    for name in ("auto", "torch", "triton"):
        with gt.backend(name):
            assert rel_error(layer(x), expected) < 1e-13, name
    functional = gt.functional.steerable_conv_transpose2d(x.flatten(1, 2), layer.weight, layer.bias, group="d8",
                                                          kernel_size=3, stride=2)
    assert torch.equal(functional, layer(x))


@pytest.mark.parametrize("out_group", ["d8", "z2"])
def test_adjoint_of_the_steerable_group_conv2d_with_the_same_weight(out_group):
    """<T x, y> = <x, A y> for the transposed layer T and the steerable GroupConv2d A from out_group to group maps
    holding the same weight (the coefficients (C_in_T, C_out_T/groups, S_out, B) = A's (C_out, C_in/groups, S_in,
    B)), float64, stride 2 and channel groups."""
    torch.manual_seed(0)
    layer = gt.GroupConvTranspose2d(4, 2, 3, stride=2, padding=1, groups=2, group="d8", out_group=out_group,
                                    bias=False, dtype=DT)
    conv = gt.GroupConv2d(2, 4, 3, stride=2, padding=1, groups=2, group="d8", in_group=out_group, bias=False,
                          dtype=DT)
    assert conv.weight.shape == layer.weight.shape
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        x = torch.randn(2, 4, 16, 4, 4, dtype=DT)
        y = torch.randn(layer(x).shape, dtype=DT)
        planes_or_maps = y.flatten(1, 2) if out_group == "z2" else y   # the lifting layer takes planes
        left, right = (layer(x) * y).sum(), (x * conv(planes_or_maps)).sum()
    assert abs(float(left - right)) < 1e-12 * float(left.abs()), (float(left), float(right))


# ---------------------------------------------------------------------------------------------- exactness
def test_c8_exact_on_quarter_turns_d8_on_grid_flips():
    """Exact (float64 rounding; <= 1e-6 relative in fp32) on the grid symmetries, stride 1 and the exact stride-2
    doubling (k = 4, padding 1), regular -> regular and regular -> trivial; the other elements are reported as
    not checked."""
    torch.manual_seed(0)
    for dtype, bound in ((DT, 1e-12), (torch.float32, 1e-6)):
        c8 = gt.GroupConvTranspose2d(2, 3, 5, padding=2, group="c8", dtype=dtype)
        x = torch.randn(2, 2, 8, 9, 9, dtype=dtype)
        result = gt.check_equivariance(c8, x, "c8")
        assert float(result) <= bound and result.elements == [0, 2, 4, 6], (dtype, float(result))
        assert "elements [1, 3, 5, 7] of C8" in result.unchecked and "NOT checked" in repr(result)
        up = gt.GroupConvTranspose2d(2, 3, 4, stride=2, padding=1, group="d8", dtype=dtype)
        x16 = torch.randn(2, 2, 16, 5, 5, dtype=dtype)
        result = gt.check_equivariance(up, x16, "d8")
        assert float(result) <= bound and result.elements == [0, 2, 4, 6, 8, 10, 12, 14], (dtype, float(result))
        to_planes = gt.GroupConvTranspose2d(2, 3, 3, stride=2, group="c8", out_group="z2", dtype=dtype)
        result = gt.check_equivariance(lambda t: to_planes(t).flatten(1, 2), x, "c8", out_group="z2")
        assert float(result) <= bound and result.output_form.startswith("planes"), (dtype, float(result))


def test_c8_at_45_degrees_is_approximate():
    """45° moves pixels off the grid: check_equivariance leaves it out (and says so), and the resampled error
    (bicubic rotation of a smooth input, central disc) is the steerable layer's approximate figure, a few percent
    as for the forward layer, against float rounding at 90° on the same protocol."""
    torch.manual_seed(0)
    layer = gt.GroupConvTranspose2d(2, 2, 5, padding=2, group="c8", dtype=DT)
    c8 = layer.group
    at_45 = st.resampled_equivariance_error(layer, c8, 1, lifting=False)
    at_90 = st.resampled_equivariance_error(layer, c8, 2, lifting=False)
    assert 1e-3 < at_45 < 5e-2, at_45
    assert at_90 < 1e-6, at_90
    assert 1 not in gt.check_equivariance(layer, torch.randn(1, 2, 8, 7, 7, dtype=DT), "c8").elements


def test_exactness_warning():
    """A nonzero output_padding warns once per input size, naming C8; the exact doubling does not."""
    x = torch.randn(1, 1, 8, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gt.EquivarianceWarning)
        gt.GroupConvTranspose2d(1, 1, 4, stride=2, padding=1, group="c8")(x)
    with pytest.warns(gt.EquivarianceWarning, match="under C8: height: output_padding 1"):
        gt.GroupConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, group="c8")(x)


# ----------------------------------------------------------------------------------------------- the layer
def test_parameters_state_dict_repr_and_init():
    """weight = the coefficients (C_in, C_out/groups, S_out, B); the tables a non-persistent buffer (state dict
    keys weight and bias in train and eval mode); nn.ConvTranspose2d's variance on the bank's per-position
    weights; extra_repr with the basis size and a non-zero axis."""
    torch.manual_seed(0)
    layer = gt.GroupConvTranspose2d(16, 8, 5, stride=2, padding=2, output_padding=1, groups=2, group="c8")
    assert layer.weight.shape == (16, 4, 8, st.basis_size(5)) and layer.bias.shape == (8,)
    assert layer.basis.shape == (8, st.basis_size(5), 25) and "basis" in dict(layer.named_buffers())
    assert list(layer.state_dict()) == ["weight", "bias"] and list(layer.eval().state_dict()) == ["weight", "bias"]
    assert repr(layer) == ("GroupConvTranspose2d(16, 8, kernel_size=(5, 5), group=C8, out_group=C8, stride=(2, 2), "
                           "padding=(2, 2), basis=11, output_padding=(1, 1), groups=2)")
    fan_in = 4 * 8 * 5 * 5   # C_out/groups · S_out · k², as nn.ConvTranspose2d's (and the p4 layer's)
    bank = st.steerable_bank(layer.weight.detach().double(), layer.group, layer.group, 5)
    assert abs(float(bank.square().mean()) * 3 * fan_in - 1) < 0.1
    assert float(layer.bias.detach().abs().max()) <= 1 / math.sqrt(fan_in)
    projecting = gt.GroupConvTranspose2d(2, 3, 3, group=st.dihedral_group(8, math.pi / 8), out_group="z2",
                                         bias=False)
    assert projecting.weight.shape == (2, 3, 1, 6) and projecting.bias is None
    assert "group=D8, out_group=z2" in repr(projecting) and "basis=6, axis=0.392699" in repr(projecting)


def test_cast_layer_computes_with_exact_tables():
    """A layer built in float32 and cast to float64 holds the exact float64 tables (rebuilt on the cast)."""
    layer = gt.GroupConvTranspose2d(2, 2, 3, group="c8").double()
    assert torch.equal(layer.basis, st.rotated_basis(layer.group, 3).flatten(2))


def test_export_deepcopy_pickle():
    """export(): a plain nn.ConvTranspose2d holding the bank, built once; export_model of a decoder; copies keep
    the cached group and compute the same function."""
    torch.manual_seed(0)
    model = nn.Sequential(gt.GroupConv2d(2, 4, 3, group="d8", padding=1),
                          gt.GroupConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=2, group="d8"),
                          gt.GroupConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1, group="d8",
                                                  out_group="z2")).to(DT).eval()
    x = torch.randn(2, 2, 5, 5, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gt.EquivarianceWarning)   # output_padding
        y = model(x)
        plain = model[1].export()
        assert type(plain) is nn.ConvTranspose2d and plain.weight.shape == (4 * 16, 2 * 16, 4, 4)
        assert torch.equal(plain.weight, st.steerable_bank(model[1].weight, model[1].group, model[1].group, 4))
        hidden = model[0](x)
        assert torch.allclose(plain(hidden.flatten(1, 2)).unflatten(1, (4, 16)), model[1](hidden), rtol=1e-12,
                              atol=1e-12)
        exported = gt.export_model(model)
        assert not any(isinstance(m, (gt.GroupConv2d, gt.GroupConvTranspose2d)) for m in exported.modules())
        assert torch.allclose(exported(x), y, rtol=1e-12, atol=1e-12)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert clone[1].group is model[1].group and clone[2].out_group is gt.z2
            assert torch.equal(clone(x), y)


def test_torch_export_and_onnx():
    """torch.export gives the eager function; an ONNX export (the bank by standard ops, then ConvTranspose) run by
    onnx's reference evaluator gives the float64 model's output within fp32's error."""
    torch.manual_seed(0)
    model = nn.Sequential(gt.GroupConv2d(2, 3, 3, group="c8", padding=1),
                          gt.GroupConvTranspose2d(3, 2, 4, stride=2, padding=1, group="c8")).eval()
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        y = model(x)
        want = copy.deepcopy(model).double()(x.double())
    assert torch.equal(torch.export.export(model, (x,)).module()(x), y)
    onnx = pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    from onnx.reference import ReferenceEvaluator

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation, the output size read as ints
        torch.onnx.export(model, (x,), buffer, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    got = ReferenceEvaluator(graph).run(None, {graph.graph.input[0].name: x.numpy()})[0]
    assert_close(torch.from_numpy(got), want, torch.float32, "ONNX")


def test_compile_before_any_eager_call_in_a_fresh_process():
    """A C8 decoder (lifting, transposed doubling, transposed projection to planes) compiled (aot_eager,
    fullgraph) on a cold process before any eager call, on the kernels and on the reference path
    (test_compile.py's script)."""
    run_cold_cases([f"steerable_transpose:aot_eager:{mode}:{backend}"
                    for backend, modes in (("torch", ("train", "autocast")), ("triton", ("train", "no_grad")))
                    for mode in modes])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"kernel_size: steerable filters are square"):
        gt.GroupConvTranspose2d(1, 1, (3, 5), group="c8")
    with pytest.raises(ValueError, match="kernel_size: e2cnn's default basis vanishes on a 2x2 grid"):
        gt.GroupConvTranspose2d(1, 1, 2, group="d8")
    with pytest.raises(ValueError, match="out_group: expected 'z2' or the input group C8, got C4"):
        gt.GroupConvTranspose2d(1, 1, 3, group="c8", out_group="c4")
    with pytest.raises(ValueError, match="padding: expected an int or a pair, got 'same'"):
        gt.GroupConvTranspose2d(1, 1, 3, group="c8", padding="same")
    with pytest.raises(ValueError, match=r"output_padding: expected values in \[0, max\(stride, dilation\)\)"):
        gt.GroupConvTranspose2d(1, 1, 3, stride=2, output_padding=2, group="c8")
    with pytest.raises(ValueError, match=r"groups: in_channels \(3\) and out_channels \(2\) must both be divisible"):
        gt.GroupConvTranspose2d(3, 2, 3, groups=2, group="c8")
    layer = gt.GroupConvTranspose2d(2, 2, 3, group="c8")
    with pytest.raises(ValueError, match=r"input: expected shape \(B, 2, 8, 5, 5\)"):
        layer(torch.randn(1, 2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"input: expected \(B, C_in, S, H, W\)"):
        layer(torch.randn(2, 8, 5))
    transpose = gt.functional.steerable_conv_transpose2d
    x = torch.randn(1, 2, 8, 5, 5)
    with pytest.raises(ValueError, match=r"coefficients: expected \(C_in, C_out/groups, 8, 6\) for C8 -> C8 with a "
                                         r"3x3 basis, got shape \(2, 2, 8, 11\)"):
        transpose(x, torch.randn(2, 2, 8, 11), group="c8", kernel_size=3)
    with pytest.raises(TypeError, match="coefficients: expected a torch.Tensor"):
        transpose(x, [1.0], group="c8", kernel_size=3)
    with pytest.raises(TypeError, match="group: expected a SteerableGroup"):
        transpose(x, torch.randn(2, 2, 8, 6), group="p4", kernel_size=3)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\), got \(3,\)"):
        transpose(x, torch.randn(2, 2, 8, 6), torch.randn(3), group="c8", kernel_size=3)
