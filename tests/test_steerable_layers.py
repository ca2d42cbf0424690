"""C_N / D_N wired into the ordinary layers: group names, GroupConv2d on steerable coefficients (the reference
path: steerable_bank + F.conv2d, compared with that float64 oracle built here by hand), pooling and batch norm with
S = N, check_equivariance on the grid symmetries, export, e2cnn conversion, compile / autocast / gradcheck /
pickling."""

import copy
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gconv_triton as gt
from gconv_triton import steerable as st
from gconv_triton.groups import get_group

DT = torch.float64
ROOT = Path(__file__).resolve().parent.parent


def _oracle(x, coefficients, bias, group, in_group, k, stride=1, padding=0, dilation=1, groups=1):
    """The float64 reference: the bank of steerable_bank on the cached tables, then F.conv2d on flattened maps."""
    bank = st.steerable_bank(coefficients, group, in_group, k)
    x4 = x.flatten(1, 2) if x.dim() == 5 else x
    b = None if bias is None else bias.repeat_interleave(group.order)
    return F.conv2d(x4, bank, b, stride, padding, dilation, groups).unflatten(1, (-1, group.order))


# ------------------------------------------------------------------------------------------------- names
def test_group_names():
    assert get_group("c8") is st.cyclic_group(8) and get_group("D16") is st.dihedral_group(16)
    assert get_group("c3") is st.cyclic_group(3) and get_group("d1").order == 2
    # "c4" / "d4" are the steerable groups; "p4" / "p4m" keep their free per-position weights
    assert get_group("c4") is st.cyclic_group(4) and get_group("c4") != gt.p4
    assert get_group("d4") is st.dihedral_group(4) and get_group("p4m") is gt.p4m
    for bad in ("c0", "d", "c8x", "q8"):
        with pytest.raises(ValueError, match=r"group: unknown group .*'cN' / 'dN'"):
            get_group(bad)
    with pytest.raises(ValueError, match="in_group: expected 'z2' or the output group C4"):
        gt.GroupConv2d(2, 2, 3, group="c4", in_group="p4")


def test_pooling_and_batch_norm_with_s_equal_n():
    torch.manual_seed(0)
    y = torch.randn(2, 3, 8, 6, 6, dtype=DT)
    assert torch.equal(gt.GroupPool("max", group="c8")(y), y.amax(2))
    assert torch.equal(gt.GroupPool("mean", group="c8")(y.flatten(1, 2)), y.mean(2))
    assert torch.equal(gt.GroupMaxPool2d(2, group="c8")(y), F.max_pool2d(y.flatten(1, 2), 2).unflatten(1, (3, 8)))
    y16 = torch.randn(2, 3, 16, 6, 6, dtype=DT)
    assert torch.equal(gt.GroupAvgPool2d(2, group="d8")(y16), F.avg_pool2d(y16.flatten(1, 2), 2).unflatten(1, (3, 16)))
    norm = gt.GroupBatchNorm(3, group="c8").double()
    expected = (y - y.mean((0, 2, 3, 4), keepdim=True)) / (y.var((0, 2, 3, 4), unbiased=False, keepdim=True)
                                                           + 1e-5).sqrt()
    assert torch.allclose(norm(y.flatten(1, 2)), expected.flatten(1, 2), atol=1e-12)
    with pytest.raises(ValueError, match=r"group axis of 8 elements \(C8\)"):
        gt.GroupPool(group="c8")(torch.randn(1, 1, 4, 3, 3))


def test_exactness_warning_uses_grid_symmetries():
    """C8 contains the quarter turn: a non-square input warns as for p4; C3 has no grid symmetry to break."""
    x = torch.randn(1, 1, 8, 9)
    with pytest.warns(gt.EquivarianceWarning, match="C8 rotates by 90 degrees"):
        gt.GroupConv2d(1, 1, 3, group="c8")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gt.EquivarianceWarning)
        gt.GroupConv2d(1, 1, 3, group="c3")(x)


# ----------------------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("group, lifting, kwargs", [
    ("c8", True, dict(padding=2)),
    ("c8", False, dict(stride=2, padding=1, groups=2)),
    ("d8", False, dict(dilation=2, padding="same")),
    ("c3", True, dict(stride=(1, 2), padding=(1, 0), bias=False)),
    ("d6", False, dict(padding=1, groups=2, activation="relu")),
])
def test_layer_is_the_reference_path(group, lifting, kwargs):
    """Forward and gradients (input, coefficients, bias) equal the float64 oracle."""
    torch.manual_seed(0)
    g = get_group(group)
    k = 5 if lifting else 3
    layer = gt.GroupConv2d(2, 4, k, group=group, in_group="z2" if lifting else group, dtype=DT, **kwargs)
    in_group = layer.in_group
    assert layer.weight.shape == (4, 2 // layer.groups, in_group.order, st.basis_size(k))
    x = torch.randn(2, 2, *((in_group.order,) if not lifting else ()), 9, 9, dtype=DT, requires_grad=True)
    y = layer(x)
    padding = kwargs.get("padding", 0)
    if padding == "same":
        padding = kwargs["dilation"] * (k - 1) // 2
    expected = _oracle(x, layer.weight, layer.bias, g, in_group, k, kwargs.get("stride", 1), padding,
                       kwargs.get("dilation", 1), kwargs.get("groups", 1))
    if kwargs.get("activation") == "relu":
        expected = expected.relu()
    assert y.shape == expected.shape and torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y)
    params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    got = torch.autograd.grad(y, params, dy)
    want = torch.autograd.grad(expected, params, dy)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_padding_modes():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 8, 7, 7, dtype=DT)
    for mode in ("reflect", "replicate", "circular"):
        layer = gt.GroupConv2d(2, 2, 3, group="c8", in_group="c8", padding=1, padding_mode=mode, dtype=DT)
        padded = F.pad(x.flatten(1, 2), (1, 1, 1, 1), mode=mode)
        expected = _oracle(padded, layer.weight, layer.bias, layer.group, layer.in_group, 3)
        assert torch.allclose(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_parameters_state_dict_repr_and_init():
    torch.manual_seed(0)
    layer = gt.GroupConv2d(16, 32, 5, group="c8", in_group="c8")
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (32, 16, 8, 11)
    keys = list(layer.state_dict())
    layer.eval()
    assert keys == list(layer.state_dict()) == ["weight", "bias"]  # no basis tables, the same in train and eval
    fresh = gt.GroupConv2d(16, 32, 5, group="c8", in_group="c8")
    fresh.load_state_dict(layer.state_dict())
    assert "group=C8" in repr(layer) and "basis=11" in repr(layer)
    # nn.Conv2d's variance 1 / (3 fan_in) on the bank's per-position weights, fan_in = C_in·S_in·k²;
    # bias bound 1/sqrt(fan_in)
    fan_in = 16 * 8 * 25
    bank = st.steerable_bank(layer.weight.detach().double(), layer.group, layer.in_group, 5)
    assert abs(float(bank.var()) * 3 * fan_in - 1) < 0.05
    assert 0.9 / math.sqrt(fan_in) < float(layer.bias.detach().abs().max()) <= 1 / math.sqrt(fan_in)


def test_other_axis_by_group_object():
    axis = math.pi / 8
    group = st.dihedral_group(8, axis)
    layer = gt.GroupConv2d(1, 2, 3, group=group, padding=1, dtype=DT)
    x = torch.randn(1, 1, 6, 6, dtype=DT)
    assert layer.group is group and group != get_group("d8") and get_group("d8").axis == 0.0
    assert "group=D8" in repr(layer) and "axis=0.392699" in repr(layer)
    assert torch.allclose(layer(x), _oracle(x, layer.weight, layer.bias, group, gt.z2, 3, padding=1), atol=1e-13)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"kernel_size: steerable filters are square"):
        gt.GroupConv2d(1, 1, (3, 5), group="c8")
    with pytest.raises(ValueError, match="kernel_size: e2cnn's default basis vanishes on a 2x2 grid"):
        gt.GroupConv2d(1, 1, 2, group="d8")
    layer = gt.GroupConv2d(2, 2, 3, group="c8", in_group="c8")
    with pytest.raises(ValueError, match=r"input: expected group axis of size 8"):
        layer(torch.randn(1, 2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"input: expected 2 channels"):
        layer(torch.randn(1, 3, 8, 5, 5))
    with pytest.raises(ValueError, match=r"coefficients: expected \(C_out, C_in/groups, 8, 6\)"):
        st.steerable_conv2d(torch.randn(1, 2, 8, 5, 5), torch.randn(2, 2, 8, 11), group="c8", in_group="c8",
                            kernel_size=3)
    with pytest.raises(ValueError, match="group C8: .* use GroupConv2d, steerable_conv2d or steerable_bank"):
        gt.functional.gconv2d(torch.randn(1, 2, 8, 5, 5), torch.randn(2, 2, 8, 3, 3), group="c8", in_group="c8")


def test_every_backend_gives_the_reference():
    """'auto' and 'torch' on CPU tensors run the reference path; 'triton' runs the kernels (in the interpreter
    here), the same function to float64 rounding."""
    layer = gt.GroupConv2d(1, 2, 3, group="c8", dtype=DT)
    x = torch.randn(1, 1, 5, 5, dtype=DT)
    expected = _oracle(x, layer.weight, layer.bias, layer.group, gt.z2, 3)
    for name in ("auto", "torch", "triton"):
        with gt.backend(name):
            assert torch.allclose(layer(x), expected, atol=1e-13)


# ------------------------------------------------------------------------------------------------- models
def _model(group: str, dtype=DT):
    torch.manual_seed(0)
    return nn.Sequential(
        gt.GroupConv2d(2, 3, 5, group=group, padding=2, activation="relu"),
        gt.GroupBatchNorm(3, group=group),
        gt.GroupConv2d(3, 3, 3, group=group, in_group=group, padding=1, groups=3),
        gt.GroupMaxPool2d(3, group=group),
        gt.GroupConv2d(3, 2, 3, group=group, in_group=group, padding=1),
        gt.GroupPool("max", group=group),
    ).to(dtype)


def test_c8_model_exactly_c4_equivariant_d8_exactly_d4():
    x = torch.randn(2, 2, 9, 9, dtype=DT)
    result = gt.check_equivariance(_model("c8"), x, "c8")
    assert float(result) < 1e-12 and result.elements == [0, 2, 4, 6]  # the quarter turns
    assert "elements [1, 3, 5, 7] of C8" in result.unchecked and "NOT checked" in repr(result)
    result = gt.check_equivariance(_model("d8"), x, "d8")
    # the quarter turns and the flips across the grid axes and diagonals: D4 in D8
    assert float(result) < 1e-12 and result.elements == [0, 2, 4, 6, 8, 10, 12, 14]
    assert [st.dihedral_group(8).lattice_matrices[g] for g in result.elements] == gt.p4m.matrices
    # an exact p4 model: every element checked, nothing left out
    p4 = gt.check_equivariance(gt.GroupConv2d(2, 2, 3, group="p4").double(), x, "p4")
    assert p4.elements == [0, 1, 2, 3] and p4.unchecked == ""
    with pytest.raises(ValueError, match="group: C3 has no grid symmetry but the identity"):
        gt.check_equivariance(_model("c3"), x, "c3")


def test_check_equivariance_catches_a_broken_c8_model():
    """Not a silent pass: weighting the output by its column breaks the quarter turns, which are reported."""
    model = _model("c8")
    x = torch.randn(1, 2, 9, 9, dtype=DT)

    def broken(t):
        y = model(t)
        return y * torch.arange(1, y.shape[-1] + 1, dtype=DT)

    assert float(gt.check_equivariance(model, x, "c8")) < 1e-12
    assert float(gt.check_equivariance(broken, x, "c8", out_group="z2")) > 1e-2


def test_export_deepcopy_pickle():
    model = _model("d8").eval()
    x = torch.randn(2, 2, 9, 9, dtype=DT)
    y = model(x)
    exported = gt.export_model(model)
    assert not any(isinstance(m, gt.GroupConv2d) for m in exported.modules())
    assert torch.allclose(exported(x), y, rtol=1e-12, atol=1e-12)
    conv = model[0].export()
    assert type(conv[0]) is nn.Conv2d and conv[0].weight.shape == (3 * 16, 2, 5, 5)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone[0].group is model[0].group  # the cached group, not an equal stranger
        assert torch.equal(clone(x), y)


def test_gradcheck_and_autocast_bf16():
    torch.manual_seed(0)
    layer = gt.GroupConv2d(1, 1, 3, group="d8", in_group="d8", padding=1, dtype=DT)
    x = torch.randn(1, 1, 16, 3, 3, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x, w, b: st.steerable_conv2d(
        x, w, b, group="d8", in_group="d8", kernel_size=3, padding=1, tables=layer.basis),
        (x, layer.weight, layer.bias), fast_mode=True)
    model = _model("c8", torch.float32).eval()
    image = torch.randn(2, 2, 9, 9)
    expected = model.double()(image.double())
    model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model[0](image)
        assert got.dtype == torch.bfloat16
        got = model(image)
    err = float((got.double() - expected).detach().norm() / expected.detach().norm())
    assert err < 3e-2, err


def test_from_e2cnn_c8_d8():
    pytest.importorskip("e2cnn")
    import e2cnn.nn.modules.r2_conv.basisexpansion_singleblock as single
    from e2cnn import gspaces, nn as enn

    import gconv_triton.interop as interop

    torch.manual_seed(0)
    for name in ("C8", "D8"):
        for lifting in (True, False):
            single._stored_filters.clear()
            gspace = gspaces.Rot2dOnR2(8) if name == "C8" else gspaces.FlipRot2dOnR2(8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                in_type = enn.FieldType(gspace, [gspace.trivial_repr if lifting else gspace.regular_repr] * 2)
                out_type = enn.FieldType(gspace, [gspace.regular_repr] * 3)
                conv = enn.R2Conv(in_type, out_type, 5, padding=2)
            with torch.no_grad():
                conv.weights.normal_()
                conv.bias.normal_()
            conv.eval()
            layer = interop.from_e2cnn(conv)
            assert isinstance(layer, gt.GroupConv2d) and layer.group.name == name
            assert layer.in_group.name == ("z2" if lifting else name)
            x = torch.randn(2, in_type.size, 9, 9)
            with torch.no_grad():
                theirs = conv(enn.GeometricTensor(x, in_type)).tensor
            perm = st.e2cnn_permutation(gspace, layer.group)
            ours_in = x if lifting else x.unflatten(1, (2, -1))[:, :, perm]
            ours = layer(ours_in)
            theirs = theirs.unflatten(1, (3, -1))[:, :, perm]
            assert float((ours - theirs).detach().norm() / theirs.norm()) < 1e-5


def test_compile_cold_start():
    """A fresh process compiles a C8 model before any eager call (aot_eager, fullgraph: no graph break), forward
    and backward; then compares with eager."""
    script = """
import torch, gconv_triton as gt
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(gt.GroupConv2d(2, 3, 5, group="c8", padding=2, activation="relu"),
                      gt.GroupConv2d(3, 2, 3, group="c8", in_group="c8", padding=1), gt.GroupPool(group="c8"))
x = torch.randn(2, 2, 9, 9)
y = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
y.square().sum().backward()
grads = [p.grad.clone() for p in model.parameters()]
model.zero_grad()
ref = model(x)
ref.square().sum().backward()
assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6), (y - ref).abs().max()
assert all(torch.allclose(a, p.grad, rtol=1e-5, atol=1e-6) for a, p in zip(grads, model.parameters()))
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_torch_export_and_quiet_jit_trace():
    """torch.export and torch.jit.trace give the eager function; tracing reads only constant sizes (the
    coefficients', the basis'), so it raises no TracerWarning."""
    model = _model("c8").eval()
    x = torch.randn(1, 2, 9, 9, dtype=DT)
    y = model(x)
    assert torch.equal(torch.export.export(model, (x,)).module()(x), y)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(_model("d8").eval(), x, check_trace=False)
    assert torch.allclose(traced(x), _model("d8").eval()(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- the lifting layout
def _lifting_network(dtype):
    """No activation: its kink would turn a rounding into a different gradient."""
    torch.manual_seed(0)
    return nn.Sequential(gt.GroupConv2d(1, 3, 5, group="c8", padding=1),
                         gt.GroupConv2d(3, 2, 3, group="c8", in_group="c8", padding=1),
                         gt.GroupPool("max", group="c8")).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_lifting_kernel_output_feeds_the_next_layer(dtype):
    """The lifting kernel stores its output channels-last (``(B, H', W', C, S)`` in memory, the group map the p4
    layers hand on); the regular layer after it reads that in place (bf16: the channels-last window) and its
    gradients flow back through the lifting layer.  Each layer on the kernels (the interpreter here), on its
    exact inputs, matches its float64 reference, forward and every gradient; ``.contiguous()`` gives the
    familiar layout, the same values."""
    from helpers import assert_close

    model = _lifting_network(dtype)
    reference = _lifting_network(DT)
    reference.load_state_dict({name: t.double() for name, t in model.state_dict().items()})
    x = torch.randn(2, 1, 11, 11).to(dtype).requires_grad_()
    with gt.backend("triton"):
        lifted = model[0](x)
        assert lifted.shape == (2, 3, 8, 9, 9) and lifted.permute(0, 3, 4, 1, 2).is_contiguous()
        assert lifted.contiguous().is_contiguous() and torch.equal(lifted.contiguous(), lifted)
        hidden = lifted.detach().requires_grad_()
        y = model[1](hidden)
    gen = torch.Generator().manual_seed(1)
    for layer, ref_layer, inp, out in ((model[1], reference[1], hidden, y), (model[0], reference[0], x, lifted)):
        inp_ref = inp.detach().double().requires_grad_()
        expected = ref_layer(inp_ref)
        assert_close(out, expected, dtype, f"{type(layer).__name__} y")
        dy = torch.randn(out.shape, generator=gen, dtype=DT)
        with gt.backend("triton"):
            out.backward(dy.to(dtype))
        expected.backward(dy)
        assert_close(inp.grad, inp_ref.grad, dtype, "dx")
        for (name, p), q in zip(layer.named_parameters(), ref_layer.parameters()):
            assert_close(p.grad, q.grad, dtype, name)


LIFTING_COMPILE = """
import torch, gconv_triton as gt
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(gt.GroupConv2d(1, 3, 5, group="c8", padding=1, activation="relu"),
                      gt.GroupConv2d(3, 2, 3, group="c8", in_group="c8", padding=1),
                      gt.GroupPool("max", group="c8")).to(torch.bfloat16)
x = torch.randn(2, 1, 11, 11, dtype=torch.bfloat16)
with gt.backend("triton"):
    for compiler in ("inductor", "aot_eager"):
        torch._dynamo.reset()
        y = torch.compile(model, backend=compiler, fullgraph=True)(x)   # the first call ever
        y.float().square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ref = model(x)
        ref.float().square().sum().backward()
        assert torch.equal(y, ref), (compiler, (y - ref).abs().max())
        assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters())), compiler
        model.zero_grad()
    exported = torch.export.export(model, (x,)).module()
    assert torch.equal(exported(x), model(x))
print("ok")
"""


def test_lifting_layout_compiles_cold_and_exports(tmp_path):
    """A fresh process (cold TorchInductor and Triton caches) compiles a lifting → regular → pool network on the
    kernels before any eager call, with inductor (which plans the next ops on the fake kernel's strides: they must
    be the lifting kernel's channels-last ones) and aot_eager, forward and backward equal to eager; torch.export
    gives the same function."""
    env = dict(TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TRITON_CACHE_DIR=str(tmp_path / "triton"))
    proc = subprocess.run([sys.executable, "-c", LIFTING_COMPILE], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**__import__("os").environ, **env})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
