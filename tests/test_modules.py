"""The ``nn.Module`` layers: exact equivariance, gradcheck, parameters and initialisation, 4-D/5-D input,
backend selection, pooling, and one forward check of the Triton backend against the reference.

Everything but the last runs on the reference path in float64 on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, torch_backend, triton_backend
from torch import nn

import gconv_triton
from gconv_triton import (GroupAvgPool2d, GroupConv2d, GroupMaxPool2d, GroupPool, P4ConvP4, P4ConvZ2, P4MConvP4M,
                          P4MConvZ2, check_equivariance)
from gconv_triton._backend import current_backend, use_triton
from gconv_triton.functional import gconv2d
from gconv_triton.reference import filter_bank

DT = torch.float64
EXACT = 1e-12  # float64 round-off; an inexact layer is off by O(1)


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """These ops are tiny: a second intra-op thread saves nothing, and on a busy 2-core machine its barrier
    waits made gradcheck 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _general(group, in_group):
    def make(c_in, c_out, k, **kwargs):
        return GroupConv2d(c_in, c_out, k, group=group, in_group=in_group, **kwargs)
    return make


# (id, constructor with GrouPy's leading signature, output group, input group)
LAYERS = [
    ("P4ConvZ2", P4ConvZ2, "p4", "z2"),
    ("P4ConvP4", P4ConvP4, "p4", "p4"),
    ("P4MConvZ2", P4MConvZ2, "p4m", "z2"),
    ("P4MConvP4M", P4MConvP4M, "p4m", "p4m"),
] + [(f"GroupConv2d-{g}-{i}", _general(g, i), g, i) for g in ("p2", "pm", "p2mm") for i in ("z2", g)]
LAYER_IDS = [layer[0] for layer in LAYERS]


def _input(in_group: str, c: int, size: int, batch: int = 2, **factory) -> torch.Tensor:
    """An image batch ``(B, C, H, W)`` for a lifting layer, else a group feature map ``(B, C, S, H, W)``."""
    order = gconv_triton.groups.get_group(in_group).order
    shape = (batch, c, size, size) if order == 1 else (batch, c, order, size, size)
    return torch.randn(shape, dtype=factory.pop("dtype", DT), **factory)


# ------------------------------------------------------------------------------------------ equivariance
# (kernel, stride, padding, dilation, H): every stride-2 case has (H + 2p - d(k-1) - 1) % 2 == 0.
EQUIVARIANT_CONFIGS = [
    (3, 1, 1, 1, 7),
    (3, 1, 0, 1, 6),
    (4, 1, 1, 1, 7),
    (3, 1, 2, 2, 7),
    (3, 2, 1, 1, 9),
    (4, 2, 1, 1, 8),
    (2, 2, 0, 2, 7),
]


@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("k,stride,padding,dilation,size", EQUIVARIANT_CONFIGS)
def test_layer_equivariance(layer, k, stride, padding, dilation, size):
    assert (size + 2 * padding - dilation * (k - 1) - 1) % stride == 0
    _, make, group, in_group = layer
    module = make(2, 3, k, stride=stride, padding=padding, dilation=dilation, dtype=DT)
    with torch_backend():
        err = check_equivariance(module, _input(in_group, 2, size), group)
    assert err < EXACT, f"equivariance error {err:.2e}"


@pytest.mark.filterwarnings("ignore:.*not exactly")
@pytest.mark.parametrize("make,group,in_group", [(P4ConvP4, "p4", "p4"), (P4MConvZ2, "p4m", "z2")])
def test_stride_on_inexact_size_is_not_equivariant(make, group, in_group):
    """The exactness rule is real: (8 + 2 - 2 - 1) % 2 == 1, and the sampling grid no longer rotates onto itself.
    This also shows ``check_equivariance`` can fail."""
    module = make(2, 3, 3, stride=2, padding=1, dtype=DT)
    with torch_backend():
        assert check_equivariance(module, _input(in_group, 2, 8), group) > 1e-2


def test_check_equivariance_flags_an_ordinary_conv():
    conv = nn.Conv2d(2, 3, 3, dtype=DT)
    assert check_equivariance(conv, torch.randn(2, 2, 7, 7, dtype=DT), "p4") > 1e-2


@pytest.mark.parametrize("group,lifting,conv", [("p4", P4ConvZ2, P4ConvP4), ("p4m", P4MConvZ2, P4MConvP4M)])
def test_three_layer_net_equivariance(group, lifting, conv):
    """conv (stride 2) -> ReLU -> conv (even k) -> spatial max pool -> conv (dilated) -> pool over the group.

    Sizes: 13 -(k3, s2, p1)-> 7 -(k4, p2)-> 8 -(pool 2)-> 4 -(k3, d2, p2)-> 4.  The result is rotated (a
    GroupPool map), and its spatial mean is invariant.
    """
    net = nn.Sequential(
        lifting(2, 3, 3, stride=2, padding=1, dtype=DT), nn.ReLU(),
        conv(3, 4, 4, padding=2, dtype=DT), GroupMaxPool2d(2),
        conv(4, 3, 3, padding=2, dilation=2, dtype=DT), GroupPool("max"),
    )
    x = torch.randn(2, 2, 13, 13, dtype=DT)
    with torch_backend():
        assert net(x).shape == (2, 3, 4, 4)
        assert check_equivariance(net, x, group) < EXACT
        assert check_equivariance(lambda t: net(t).mean((-2, -1)), x, group) < EXACT


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("pool", [GroupPool("max"), GroupPool("mean"), GroupMaxPool2d(2), GroupAvgPool2d(2)],
                         ids=["GroupPool-max", "GroupPool-mean", "GroupMaxPool2d", "GroupAvgPool2d"])
def test_pooling_equivariance(group, pool):
    order = gconv_triton.groups.get_group(group).order
    assert check_equivariance(pool, torch.randn(2, 3, order, 6, 6, dtype=DT), group) < EXACT


# -------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("k,stride,padding,dilation,size", [(3, 1, 1, 1, 4), (2, 2, 1, 2, 5)])
def test_layer_gradcheck(layer, k, stride, padding, dilation, size):
    _, make, _, in_group = layer
    c_in = 2 if in_group == "z2" else 1  # keeps every layer's input and weight to a few hundred entries
    module = make(c_in, 2, k, stride=stride, padding=padding, dilation=dilation, dtype=DT)
    x = _input(in_group, c_in, size, batch=1).requires_grad_()
    params = {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}

    def fn(x, weight, bias):
        return torch.func.functional_call(module, {"weight": weight, "bias": bias}, (x,))

    with torch_backend():
        assert torch.autograd.gradcheck(fn, (x, params["weight"], params["bias"]))


def test_functional_gradcheck_same_padding_and_channel_groups():
    """'same' with an even kernel pads asymmetrically; ``groups=2`` splits the channels: both reach the gradients."""
    x = torch.randn(1, 4, 4, 4, 4, dtype=DT, requires_grad=True)
    w = torch.randn(4, 2, 4, 2, 2, dtype=DT, requires_grad=True)
    b = torch.randn(4, dtype=DT, requires_grad=True)

    def fn(x, w, b):
        return gconv2d(x, w, b, group="p4", in_group="p4", padding="same", groups=2)

    with torch_backend():
        assert fn(x, w, b).shape == (1, 4, 4, 4, 4)
        assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("pool", [GroupPool("max"), GroupPool("mean"), GroupMaxPool2d(2, stride=1),
                                  GroupAvgPool2d(3, stride=2, padding=1)],
                         ids=["GroupPool-max", "GroupPool-mean", "GroupMaxPool2d", "GroupAvgPool2d"])
def test_pooling_gradcheck(pool):
    x = torch.randn(1, 2, 4, 5, 5, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(pool, (x,))


# ----------------------------------------------------------------------------- parameters, init, repr
@pytest.mark.parametrize("module,weight_shape,bias", [
    (lambda: P4ConvP4(8, 16, 3), (16, 8, 4, 3, 3), True),
    (lambda: P4ConvZ2(3, 16, 5), (16, 3, 1, 5, 5), True),
    (lambda: P4MConvP4M(8, 16, 3, bias=False), (16, 8, 8, 3, 3), False),
    (lambda: P4MConvZ2(1, 10, 4), (10, 1, 1, 4, 4), True),
    (lambda: GroupConv2d(6, 4, 3, group="p2mm", in_group="p2mm"), (4, 6, 4, 3, 3), True),
    (lambda: GroupConv2d(4, 6, (3, 5), group="pm", in_group="pm"), (6, 4, 2, 3, 5), True),
    (lambda: GroupConv2d(4, 6, 3, group="p4", in_group="p4", groups=2), (6, 2, 4, 3, 3), True),
], ids=["P4ConvP4", "P4ConvZ2", "P4MConvP4M-nobias", "P4MConvZ2", "p2mm", "pm-3x5", "p4-groups2"])
def test_parameters(module, weight_shape, bias):
    """Only the base weight ``(C_out, C_in/groups, S_in, kh, kw)`` and the bias ``(C_out,)`` are stored."""
    m = module()
    expected = math.prod(weight_shape) + (weight_shape[0] if bias else 0)
    assert sum(p.numel() for p in m.parameters()) == expected
    assert [n for n, _ in m.named_parameters()] == (["weight", "bias"] if bias else ["weight"])
    assert m.weight.shape == weight_shape
    assert list(m.state_dict()) == (["weight", "bias"] if bias else ["weight"])  # no buffers, no filter bank


def test_p4convp4_parameter_count():
    assert sum(p.numel() for p in P4ConvP4(8, 16, 3).parameters()) == 16 * 8 * 4 * 9 + 16


@pytest.mark.parametrize("module,fan_in", [
    (lambda: P4ConvP4(8, 16, 3), 8 * 4 * 9),
    (lambda: P4MConvZ2(3, 32, 5), 3 * 1 * 25),
    (lambda: GroupConv2d(8, 16, 3, group="p4m", in_group="p4m", groups=2), 4 * 8 * 9),
])
def test_reset_parameters_like_conv2d(module, fan_in):
    """``nn.Conv2d``'s init with fan-in ``C_in/groups · S_in · k²``: weight and bias in ``±1/sqrt(fan_in)``."""
    torch.manual_seed(0)
    m = module()
    bound = 1 / math.sqrt(fan_in)
    for _ in range(2):
        w = m.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # uniform, not a normal
        assert m.bias.detach().abs().max() <= bound
        before = w.clone()
        m.reset_parameters()
        assert not torch.equal(before, m.weight.detach())


def test_init_equals_conv2d_of_same_fan_in():
    """Same seed, same draws: the base weight is ``nn.Conv2d(C_in·S_in, C_out, k)``'s, reshaped."""
    torch.manual_seed(1)
    m = P4ConvP4(3, 5, 3)
    torch.manual_seed(1)
    ref = nn.Conv2d(3 * 4, 5, 3)
    assert torch.equal(m.weight.detach().flatten(1, 2), ref.weight.detach())
    assert torch.equal(m.bias.detach(), ref.bias.detach())


def test_factory_kwargs_and_extra_repr():
    m = P4ConvP4(8, 16, 3, padding=1, bias=False, dilation=2, dtype=torch.float64)
    assert m.weight.dtype == torch.float64
    text = repr(m)
    assert text.startswith("P4ConvP4(8, 16, kernel_size=(3, 3)")
    for part in ("group=p4", "in_group=p4", "padding=1", "dilation=2", "bias=False"):
        assert part in text, text
    plain = repr(P4MConvZ2(3, 4, 5))
    assert "group=p4m" in plain and "in_group=z2" in plain
    assert "padding" not in plain and "dilation" not in plain and "bias" not in plain


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=0), "in_channels"),
    (dict(kernel_size=(3, 5)), "kernel_size"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(groups=3), "groups"),
    (dict(group="p3"), "group"),
    (dict(in_group="p4m"), "in_group"),
])
def test_constructor_validation(kwargs, match):
    args = dict(in_channels=4, out_channels=4, kernel_size=3, group="p4", in_group="p4") | kwargs
    with pytest.raises(ValueError, match=match):
        GroupConv2d(**args)


# --------------------------------------------------------------------------------------- 4-D and 5-D
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
def test_flat_and_5d_input_agree(layer):
    """GrouPy-PyTorch's ``(B, C·S, H, W)`` (channel ``c·S + s``) is a view of ``(B, C, S, H, W)``."""
    _, make, _, in_group = layer
    module = make(3, 2, 3, padding=1, dtype=DT)
    x = _input(in_group, 3, 6)
    x5 = x if x.dim() == 5 else x.unsqueeze(2)
    with torch_backend():
        outs = [module(inp) for inp in (x5.flatten(1, 2), x5)]
        grads = [torch.autograd.grad(y.square().sum(), module.weight)[0] for y in outs]
    assert outs[0].shape == (2, 2, module.group.order, 6, 6)
    assert torch.equal(*outs) and torch.equal(*grads)


def test_flat_channel_order_is_c_times_s_plus_s():
    """With a 1×1 one-hot weight at ``(o=0, i=1, u=2)``, identity output element 0 reads input slice ``s = 2`` of
    channel 1: flat channel ``1·4 + 2``."""
    module = P4ConvP4(3, 2, 1, bias=False, dtype=DT)
    with torch.no_grad():
        module.weight.zero_()
        module.weight[0, 1, 2] = 1
    x = torch.randn(2, 3 * 4, 5, 5, dtype=DT)
    with torch_backend():
        y = module(x)
    assert torch.equal(y[:, 0, 0], x[:, 1 * 4 + 2])
    assert torch.equal(y[:, 0, 0], x.view(2, 3, 4, 5, 5)[:, 1, 2])


def test_wrong_input_channels_rejected():
    module = P4ConvP4(3, 2, 3, dtype=DT)
    with pytest.raises(ValueError, match="input"):
        module(torch.randn(1, 3 * 4 + 1, 5, 5, dtype=DT))
    with pytest.raises(ValueError, match="input"):
        module(torch.randn(1, 3, 8, 5, 5, dtype=DT))


# ---------------------------------------------------------------------------------------- backends
def test_backend_env_var(monkeypatch):
    x = torch.randn(1, 2, 5, 5)
    monkeypatch.delenv("GCONV_TRITON_BACKEND", raising=False)
    assert current_backend() == "auto" and not use_triton(x)  # auto: CPU tensors take the reference path
    for name in ("torch", "triton", "auto"):
        monkeypatch.setenv("GCONV_TRITON_BACKEND", name)
        assert current_backend() == name
    monkeypatch.setenv("GCONV_TRITON_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="GCONV_TRITON_BACKEND.*cudnn"):
        current_backend()
    with pytest.raises(ValueError, match="GCONV_TRITON_BACKEND"):
        P4ConvZ2(2, 3, 3)(x)


def test_backend_context_manager(monkeypatch):
    monkeypatch.setenv("GCONV_TRITON_BACKEND", "triton")
    with gconv_triton.backend("torch"):
        assert current_backend() == "torch"
        with gconv_triton.backend("triton"):
            assert current_backend() == "triton"
        assert current_backend() == "torch"
    assert current_backend() == "triton"
    with pytest.raises(ValueError, match="backend.*'cuda'"):
        with gconv_triton.backend("cuda"):
            pass
    assert current_backend() == "triton"


def test_backend_dispatch(monkeypatch):
    """``torch`` runs the reference path, ``triton`` the fused kernels, ``auto`` the kernels for CUDA tensors only."""
    from gconv_triton import kernels

    calls = []
    forward = kernels.forward
    monkeypatch.setattr(kernels, "forward", lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs))
    monkeypatch.delenv("GCONV_TRITON_BACKEND", raising=False)
    module, x = P4ConvZ2(2, 3, 3, device=DEVICE), torch.randn(1, 2, 5, 5, device=DEVICE)
    with gconv_triton.backend("torch"):
        module(x)
    assert calls == []
    with gconv_triton.backend("triton"):
        module(x)
    assert calls == [1]
    module(x)  # auto
    assert calls == ([1, 1] if DEVICE.type == "cuda" else [1])
    assert not use_triton(torch.randn(1))  # auto: CPU tensors never take the kernels


# ----------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("mode,reduce", [("max", lambda t: t.amax(2)), ("mean", lambda t: t.mean(2))])
def test_group_pool(mode, reduce):
    x = torch.randn(2, 3, 8, 5, 4, dtype=DT)
    pool = GroupPool(mode)
    assert torch.equal(pool(x), reduce(x)) and pool(x).shape == (2, 3, 5, 4)
    assert repr(pool) == f"GroupPool(mode='{mode}')"
    with pytest.raises(ValueError, match="input"):
        pool(x[:, :, 0])


def test_group_pool_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode.*'sum'"):
        GroupPool("sum")


def test_group_pool_flattened_input():
    """GrouPy's flattened (B, C·S, H, W) form needs S: ``group=`` gives it; without it a 4-D input is refused."""
    x = torch.randn(2, 3, 4, 5, 5, dtype=DT)
    for mode in ("max", "mean"):
        assert torch.equal(GroupPool(mode, group="p4")(x.flatten(1, 2)), GroupPool(mode)(x))
    assert repr(GroupPool(group="p4")) == "GroupPool(mode='max', group=p4)"
    with pytest.raises(ValueError, match=r"input: a 4-D input \(2, 12, 5, 5\) is a flattened group map .* "
                                         r"GroupPool\(group=\.\.\.\)"):
        GroupPool()(x.flatten(1, 2))
    with pytest.raises(ValueError, match=r"input: expected a multiple of S = 8 \(p4m\) channels"):
        GroupPool(group="p4m")(x.flatten(1, 2))
    with pytest.raises(ValueError, match=r"input: expected a group axis of 8 elements \(p4m\) at dim 2"):
        GroupPool(group="p4m")(x)


@pytest.mark.filterwarnings("ignore::gconv_triton.EquivarianceWarning")  # 7x6 is not square
@pytest.mark.parametrize("cls,fn", [(GroupMaxPool2d, F.max_pool2d), (GroupAvgPool2d, F.avg_pool2d)])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)])
def test_spatial_pooling(cls, fn, kwargs):
    x = torch.randn(2, 3, 4, 7, 6, dtype=DT)
    pool = cls(**kwargs)
    y = pool(x)
    stride = kwargs.get("stride", kwargs["kernel_size"])
    expected = torch.stack([fn(x[:, :, s], kwargs["kernel_size"], stride, kwargs.get("padding", 0))
                            for s in range(4)], dim=2)
    assert torch.equal(y, expected)                                          # per (c, s) slice
    assert torch.equal(pool(x.flatten(1, 2)), y.flatten(1, 2))               # 4-D flat input
    with pytest.raises(ValueError, match="input"):
        pool(x[:, 0, 0])


# ------------------------------------------------------------------------------------- padding_mode
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


def _torch_conv(module, x, padding, stride=1):
    """The oracle: ``torch.nn.Conv2d`` with the module's ``padding_mode`` holding the float64 filter bank."""
    bank = filter_bank(module.weight, module.group, module.in_group).flatten(0, 1).flatten(1, 2)
    conv = nn.Conv2d(bank.shape[1], bank.shape[0], bank.shape[-2:], stride=stride, padding=padding,
                     padding_mode=module.padding_mode, dtype=DT)
    with torch.no_grad():
        conv.weight.copy_(bank)
        conv.bias.copy_(module.bias.repeat_interleave(module.group.order))
    return conv(x.flatten(1, 2) if x.dim() == 5 else x).unflatten(1, (module.out_channels, module.group.order))


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("layer", LAYERS[:4], ids=LAYER_IDS[:4])
def test_padding_mode_matches_torch_and_is_equivariant(layer, mode):
    """Every torch padding mode on the P4/P4M layers: torch's own padding around the bank, and exact
    equivariance at stride 1 (padding 1 and 'same') and at an exact stride 2."""
    _, make, group, in_group = layer
    x = _input(in_group, 2, 7)
    for kwargs in (dict(padding=1), dict(padding="same"), dict(padding=1, stride=2)):
        module = make(2, 3, 3, padding_mode=mode, dtype=DT, **kwargs)
        with torch_backend():
            y = module(x)
            assert check_equivariance(module, x, group) < EXACT, kwargs
        assert (y - _torch_conv(module, x, **kwargs)).abs().max() < EXACT, kwargs
    assert ("padding_mode" in repr(module)) == (mode != "zeros")


@pytest.mark.parametrize("mode", PADDING_MODES[1:])
def test_padding_mode_gradcheck_and_export(mode):
    module = GroupConv2d(2, 2, 3, group="p2mm", in_group="p2mm", padding=(1, 2), padding_mode=mode, dtype=DT)
    x = _input("p2mm", 2, 5, batch=1).requires_grad_()
    w, b = (p.detach().clone().requires_grad_() for p in (module.weight, module.bias))
    with torch_backend():
        assert torch.autograd.gradcheck(
            lambda t, w, b: torch.func.functional_call(module, {"weight": w, "bias": b}, (t,)), (x, w, b))
        y = module(x)
    exported = module.export()
    assert exported.padding_mode == mode
    assert (exported(x.flatten(1, 2)).unflatten(1, (2, 4)) - y).abs().max() < EXACT


def test_padding_mode_triton_backend():
    """The kernels see an explicitly padded input and padding 0: one float32 check against the oracle."""
    module = P4MConvP4M(2, 3, 3, padding=1, padding_mode="reflect", device=DEVICE)
    x = _input("p4m", 2, 6, device=DEVICE, dtype=torch.float32)
    with triton_backend():
        y = module(x)
    ref = _torch_conv(module.double().cpu(), x.double().cpu(), padding=1)
    assert_close(y, ref, torch.float32, "reflect padding, Triton")


def test_padding_mode_validation():
    with pytest.raises(ValueError, match=r"padding_mode: expected one of \('zeros', 'reflect', 'replicate', "
                                         r"'circular'\), got 'mirror'"):
        P4ConvZ2(1, 2, 3, padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"padding: \(top, bottom, left, right\) = \(3, 3, 3, 3\) with "
                                         r"padding_mode='reflect' needs at most 2 rows and 2 columns"):
        P4ConvZ2(1, 2, 3, padding=3, padding_mode="reflect")(torch.randn(1, 1, 3, 3))


def test_lifting_channel_error_reads_in_image_channels():
    """A lifting layer's 4-D input is an image, not a flattened map: no "C_in x S_in = 1" arithmetic."""
    with pytest.raises(ValueError) as info:
        P4ConvZ2(3, 2, 3)(torch.randn(1, 4, 5, 5))
    assert str(info.value) == ("input: expected 3 channels (weight.shape[1] = 3 x groups = 1), got 4 in shape "
                               "(1, 4, 5, 5)")
    with pytest.raises(ValueError, match=r"got 2 \(the flattened map \(B, C_in\*S_in, H, W\) of in_group p4 "
                                         r"needs 3 x 4 = 12 channels, got 8\)"):
        P4ConvP4(3, 2, 3)(torch.randn(1, 8, 5, 5))


# ------------------------------------------------------------------------- Triton backend, one check
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
def test_triton_forward_matches_reference(layer):
    """One float32 forward per layer through the fused kernels (the interpreter on a CPU) against the float64
    reference; the full grid of shapes and gradients is ``test_kernels.py``'s."""
    _, make, _, in_group = layer
    module = make(3, 4, 3, padding=1, device=DEVICE, dtype=torch.float32)
    x = _input(in_group, 3, 7, device=DEVICE, dtype=torch.float32)
    with triton_backend():
        y = module(x)
    with torch_backend():
        ref = module.double().cpu()(x.double().cpu())
    assert_close(y, ref, torch.float32, layer[0])
