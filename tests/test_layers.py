"""Building blocks: the fused activation epilogue, GroupBatchNorm, GroupConvTranspose2d, width rules and
the p4m ResNet builders.

Oracles are float64 on the reference path: ``F.relu/silu/gelu`` after the reference conv, manual batch statistics,
``F.conv_transpose2d`` of the materialized filter bank.  The Triton cases run the kernels (in the interpreter
without a GPU) in float32 against that oracle, every gradient included.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, torch_backend, triton_backend
from torch import nn

from gconv_triton import EquivarianceWarning, GroupConv2d, GroupMaxPool2d, check_equivariance
from gconv_triton.nn import GroupBatchNorm, GroupConvTranspose2d, gcnn_width
from gconv_triton.models import GroupResNet, count_parameters, p4m_resnet18, p4m_resnet44
from gconv_triton.reference import filter_bank

DT = torch.float64
EXACT = 1e-12
ACTS = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu}
BACKENDS = {"torch": (torch_backend, torch.device("cpu"), torch.float64),
            "triton": (triton_backend, DEVICE, torch.float32)}


def _grads(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad)


# ------------------------------------------------------------------------------------------ activation
# Every activation on both kernel families and backends, except depthwise silu on Triton (the interpreter's time
# budget): silu shares the epilogue's pre-activation store with gelu, which runs on both families.
ACTIVATION_CASES = [(b, a, f) for b in sorted(BACKENDS) for a in sorted(ACTS) for f in ("gemm", "depthwise")
                    if (b, a, f) != ("triton", "silu", "depthwise")]


@pytest.mark.parametrize("backend,activation,family", ACTIVATION_CASES)
def test_activation_epilogue_matches_unfused(backend, activation, family):
    """``GroupConv2d(activation=a)`` == ``F.a(conv(x))``, forward and every gradient (exact backward)."""
    ctx, device, dtype = BACKENDS[backend]
    groups = 1 if family == "gemm" else 2
    torch.manual_seed(0)
    layer = GroupConv2d(2, 4, 3, group="p4", in_group="p4", padding=1, groups=groups, activation=activation)
    ref_layer = GroupConv2d(2, 4, 3, group="p4", in_group="p4", padding=1, groups=groups).double()
    ref_layer.load_state_dict(layer.state_dict())
    layer = layer.to(device, dtype)
    x64 = torch.randn(2, 2, 4, 5, 5, dtype=DT, requires_grad=True)
    x = x64.detach().to(device, dtype).requires_grad_()
    with torch_backend():
        ref = ACTS[activation](ref_layer(x64))
    with ctx():
        out = layer(x)
    grad = torch.randn_like(ref)
    got = _grads(out, [x, layer.weight, layer.bias], grad.to(device, dtype))
    want = _grads(ref, [x64, ref_layer.weight, ref_layer.bias], grad)
    assert_close(out, ref, dtype, f"{activation} forward")
    for name, a, b in zip(("dx", "dw", "db"), got, want):
        assert_close(a, b, dtype, f"{activation} {name}")


def test_activation_rejects_unknown_name():
    with pytest.raises(ValueError, match="activation"):
        GroupConv2d(2, 2, 3, activation="tanh")
    with pytest.raises(TypeError, match="activation"):  # a wrong type, not a wrong name
        GroupConv2d(2, 2, 3, activation=True)


def test_activation_in_repr_and_export_sequential():
    layer = GroupConv2d(2, 2, 3, activation="silu")
    assert "activation='silu'" in repr(layer)
    exported = layer.export()
    assert isinstance(exported, nn.Sequential) and isinstance(exported[1], nn.SiLU)


# ------------------------------------------------------------------------------------------- batch norm
def _manual_bn(x, eps):
    mean = x.mean(dim=(0, 2, 3, 4), keepdim=True)
    var = x.var(dim=(0, 2, 3, 4), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def test_group_batchnorm_statistics_running_stats_and_eval():
    torch.manual_seed(0)
    bn = GroupBatchNorm(3, momentum=0.25, dtype=DT)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 8, 5, 5, dtype=DT) * 2 + 1
    y = bn(x)
    affine = bn.weight.view(1, -1, 1, 1, 1), bn.bias.view(1, -1, 1, 1, 1)
    assert (y - (_manual_bn(x, bn.eps) * affine[0] + affine[1])).abs().max() < EXACT
    n = x.numel() // 3
    torch.testing.assert_close(bn.running_mean, 0.25 * x.mean(dim=(0, 2, 3, 4)), rtol=0, atol=EXACT)
    unbiased = x.var(dim=(0, 2, 3, 4), unbiased=False) * n / (n - 1)
    torch.testing.assert_close(bn.running_var, 0.75 + 0.25 * unbiased, rtol=0, atol=EXACT)
    bn.eval()
    x2 = torch.randn(2, 3, 8, 5, 5, dtype=DT)
    want = (x2 - bn.running_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1, 1) + bn.eps)
    assert (bn(x2) - (want * affine[0] + affine[1])).abs().max() < EXACT


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_group_batchnorm_is_equivariant(train):
    torch.manual_seed(0)
    bn = GroupBatchNorm(3, dtype=DT)
    bn(torch.randn(4, 3, 8, 7, 7, dtype=DT) + 0.5)  # non-trivial running statistics for eval
    assert check_equivariance(bn, torch.randn(2, 3, 8, 7, 7, dtype=DT), "p4m", train=train) < EXACT


def test_group_batchnorm_input_checks_and_sync_conversion():
    bn = GroupBatchNorm(3)
    assert bn(torch.randn(2, 3, 5, 5)).shape == (2, 3, 5, 5)  # plane maps too
    with pytest.raises(ValueError, match="input"):
        bn(torch.randn(2, 3, 5))


def _bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(GroupBatchNorm(3, momentum=0.25, group="p4", dtype=DT), nn.SiLU())
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.5)
        model[0].bias.uniform_(-0.5, 0.5)
    model(torch.randn(4, 3, 4, 5, 5, dtype=DT) * 2 + 1)  # non-trivial running statistics
    return model


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("flat", [False, True], ids=["5d", "flattened"])
def test_sync_batchnorm_conversion_keeps_group_batchnorm(train, flat):
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` converts the ``nn.BatchNorm3d`` a GroupBatchNorm holds and
    leaves the GroupBatchNorm, which still reads flattened (B, C·S, H, W) maps.  On the CPU without a process group
    SyncBatchNorm computes as BatchNorm (batch statistics in training, running ones in eval): the converted model
    gives the same outputs, gradients and running statistics as the original."""
    original, converted = _bn_model(), nn.SyncBatchNorm.convert_sync_batchnorm(_bn_model())
    assert isinstance(converted[0], GroupBatchNorm) and isinstance(converted[0].norm, nn.SyncBatchNorm)
    assert converted[0].group.name == "p4" and original.state_dict().keys() == converted.state_dict().keys()
    x = torch.randn(3, 3, 4, 6, 6, dtype=DT) * 3 - 1
    if flat:
        x = x.flatten(1, 2)
    outputs = []
    for model in (original, converted):
        model.train(train)
        xi = x.clone().requires_grad_()
        y = model(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=DT).view_as(y)).sum().backward()
        outputs.append((y, xi.grad, model[0].weight.grad, model[0].bias.grad, model[0].running_mean,
                        model[0].running_var))
    assert outputs[0][0].shape == x.shape
    for want, got in zip(*outputs):
        assert (got - want).abs().max() < EXACT


def test_group_batchnorm_wrong_channel_count_is_a_value_error():
    bn = GroupBatchNorm(3)
    with pytest.raises(ValueError, match=r"input: expected 3 channels \(num_features\) at dim 1, got shape "
                                         r"\(2, 4, 8, 5, 5\)"):
        bn(torch.randn(2, 4, 8, 5, 5))
    with pytest.raises(ValueError, match=r"input: expected 3 channels \(num_features\) at dim 1; a flattened group "
                                         r"map \(B, C\*S, H, W\) with S = 8 needs GroupBatchNorm\(3, group=\.\.\.\)"):
        bn(torch.randn(2, 24, 5, 5))
    with pytest.raises(ValueError, match=r"input: expected 3 channels \(num_features\) at dim 1 or 24"):
        GroupBatchNorm(3, group="p4m")(torch.randn(2, 12, 5, 5))
    with pytest.raises(ValueError, match=r"input: expected a group axis of 8 elements \(p4m\)"):
        GroupBatchNorm(3, group="p4m")(torch.randn(2, 3, 4, 5, 5))


def test_group_batchnorm_flattened_group_map():
    """Given ``group``, a flattened (B, C·S, H, W) map is normalized per G-channel, as its 5-D form (same output,
    same running statistics), and stays equivariant; plane maps with C channels still work."""
    torch.manual_seed(0)
    flat, full = GroupBatchNorm(3, group="p4m", dtype=DT), GroupBatchNorm(3, dtype=DT)
    x = torch.randn(4, 3, 8, 5, 5, dtype=DT) * 2 + 1
    assert torch.equal(flat(x.flatten(1, 2)), full(x).flatten(1, 2))
    assert torch.equal(flat.running_mean, full.running_mean) and torch.equal(flat.running_var, full.running_var)
    assert flat(torch.randn(2, 3, 5, 5, dtype=DT)).shape == (2, 3, 5, 5)
    assert "group=p4m" in repr(flat)
    flat.eval()
    assert check_equivariance(flat, x.flatten(1, 2), "p4m", in_group="p4m", out_group="p4m") < EXACT


# ------------------------------------------------------------------------------------ transposed conv
TRANSPOSED = [  # (id, group, out_group, stride, padding, output_padding, groups, dilation)
    ("p4-stride2-outpad", "p4", None, 2, 1, 1, 1, 1),
    ("p4m-to-z2-groups", "p4m", "z2", 1, 1, 0, 2, 1),
    ("p4-dilated-groups", "p4", "p4", 2, 0, 0, 2, 2),
]


# The reference path on every case; the Triton kernels (interpreted without a GPU: slow) on the first two.
TRANSPOSED_CASES = [("torch", c) for c in TRANSPOSED] + [("triton", c) for c in TRANSPOSED[:2]]


@pytest.mark.filterwarnings("ignore::gconv_triton.EquivarianceWarning")  # output_padding=1: numerics only
@pytest.mark.parametrize("backend,case", TRANSPOSED_CASES, ids=[f"{c[0]}-{b}" for b, c in TRANSPOSED_CASES])
def test_conv_transpose_matches_filter_bank(backend, case):
    """Forward and gradients == ``F.conv_transpose2d`` of the materialized bank (float64 autograd)."""
    _, group, out_group, stride, padding, out_pad, groups, dilation = case
    ctx, device, dtype = BACKENDS[backend]
    torch.manual_seed(0)
    layer = GroupConvTranspose2d(4, 6, 3, stride=stride, padding=padding, output_padding=out_pad, groups=groups,
                                 dilation=dilation, group=group, out_group=out_group, dtype=DT)
    x64 = torch.randn(2, 4, layer.group.order, 5, 5, dtype=DT, requires_grad=True)
    bank = filter_bank(layer.weight, layer.group, layer.out_group).flatten(0, 1).flatten(1, 2)
    ref = F.conv_transpose2d(x64.flatten(1, 2), bank, layer.bias.repeat_interleave(layer.out_group.order),
                             stride=stride, padding=padding, output_padding=out_pad, groups=groups,
                             dilation=dilation).unflatten(1, (6, layer.out_group.order))
    grad = torch.randn_like(ref)
    want = _grads(ref, [x64, layer.weight, layer.bias], grad)
    layer = layer.to(device, dtype)
    x = x64.detach().to(device, dtype).requires_grad_()
    with ctx():
        out = layer(x)
    got = _grads(out, [x, layer.weight, layer.bias], grad.to(device, dtype))
    assert_close(out, ref, dtype, "forward")
    for name, a, b in zip(("dx", "dw", "db"), got, want):
        assert_close(a, b, dtype, name)


def test_conv_transpose_is_equivariant_and_flat_input():
    torch.manual_seed(0)
    layer = GroupConvTranspose2d(3, 2, 3, padding=1, group="p4m", dtype=DT)
    x = torch.randn(2, 3, 8, 7, 7, dtype=DT)
    assert check_equivariance(layer, x, "p4m") < EXACT
    assert (layer(x.flatten(1, 2)) - layer(x)).abs().max() == 0


def test_conv_transpose_validation():
    with pytest.raises(ValueError, match="padding"):
        GroupConvTranspose2d(2, 2, 3, padding="same")
    with pytest.raises(ValueError, match="output_padding"):
        GroupConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="out_group"):
        GroupConvTranspose2d(2, 2, 3, group="p4", out_group="p4m")
    layer = GroupConvTranspose2d(2, 2, 3, group="p4")
    with pytest.raises(ValueError, match="input"):
        layer(torch.randn(1, 3, 4, 5, 5))


# ----------------------------------------------------------------------------------------------- widths
def test_gcnn_width():
    assert gcnn_width(64, "p4") == 32 and gcnn_width(64, "p4", "compute") == 16
    assert [gcnn_width(n, "p4m") for n in (32, 64, 128)] == [11, 23, 45]  # Cohen & Welling's P4M-ResNet44
    assert gcnn_width(64, "p4m", equal="compute") == 8 and gcnn_width(3, "p4m", "compute") == 1
    with pytest.raises(ValueError, match="equal"):
        gcnn_width(64, "p4", equal="flops")
    with pytest.raises(ValueError, match="cnn_width"):
        gcnn_width(0, "p4")


# ----------------------------------------------------------------------------------------------- models
def test_resnet_builders_match_cnn_parameter_budget():
    """Equal-parameter widths keep the p4m ResNets within 3% of the CNN ResNets' parameter counts."""
    r18, r44 = p4m_resnet18(device="meta"), p4m_resnet44(device="meta")
    assert r18.widths == (23, 45, 91, 181) and r44.widths == (11, 23, 45)
    cnn18 = GroupResNet("z2", (2, 2, 2, 2), (64, 128, 256, 512), equal=None, stem="imagenet", num_classes=1000,
                        device="meta")
    cnn44 = GroupResNet("z2", (7, 7, 7), (32, 64, 128), equal=None, device="meta")
    # torchvision's resnet18 (11 689 512) with the exact 8x8 stem in place of its 7x7 one: 3·64·(64 - 49) more
    assert count_parameters(cnn18) == 11_689_512 + 3 * 64 * (64 - 49)
    for g, c in ((r18, cnn18), (r44, cnn44)):
        assert abs(count_parameters(g) / count_parameters(c) - 1) < 0.03
    assert sum(isinstance(m, GroupBatchNorm) for m in r44.modules()) == 2 * 21 + 1 + 2


@pytest.mark.parametrize("stem,size", [("cifar", 8), ("imagenet", 32)])
def test_resnet_is_invariant_in_eval_and_trains(stem, size):
    """Four stages: exact on multiples of 8 (CIFAR stem) and of 32 (ImageNet stem), without a warning."""
    torch.manual_seed(0)
    model = GroupResNet("p4m", (1, 1, 1, 1), (8, 8, 8, 8), stem=stem, num_classes=3, dtype=DT)
    x = torch.randn(2, 3, size, size, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EquivarianceWarning)
        model(x).square().sum().backward()  # train mode: batch statistics, gradients reach every parameter
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        assert check_equivariance(model, x, "p4m") < EXACT  # evaluated in eval mode


def _strided_layer_reasons(model: GroupResNet, size: int) -> list:
    """Walk the stem and every block, rule-checking each strided layer at the size it sees."""
    from gconv_triton.exactness import inexact_reasons, inexact_reasons_pool

    def out(n, m):
        k, st, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
        return (n + 2 * p - (k - 1) - 1) // st + 1

    reasons = []
    for m in model.stem:
        if isinstance(m, GroupConv2d):
            reasons += inexact_reasons("p4m", (size, size), m.kernel_size, m.stride, m.padding)
            size = out(size, m)
        elif isinstance(m, GroupMaxPool2d):
            reasons += inexact_reasons_pool("p4m", (size, size), m.kernel_size, m.stride, m.padding)
            size = out(size, m)
    for block in (b for stage in model.stages for b in stage):
        shortcut = [m for m in block.shortcut.modules() if isinstance(m, GroupConv2d)]
        for m in [block.conv1] + shortcut:  # both see the block's input
            reasons += inexact_reasons("p4m", (size, size), m.kernel_size, m.stride, m.padding)
        size = out(size, block.conv1)
    return reasons + [f"final size {size}"]


def test_resnet_builders_are_exact_at_the_sizes_they_are_built_for():
    """p4m_resnet44 on CIFAR's 32x32 (-> 33 -> 17 -> 9) and p4m_resnet18 on ImageNet's 224x224 (-> 113 -> 57 ->
    29 -> 15 -> 8): every strided layer exact by the rule (full-width forwards would be slow here)."""
    assert _strided_layer_reasons(p4m_resnet44(device="meta"), 32) == ["final size 9"]
    assert _strided_layer_reasons(p4m_resnet18(device="meta"), 224) == ["final size 8"]
    assert _strided_layer_reasons(p4m_resnet18(device="meta", stem="cifar"), 32) == ["final size 5"]
    assert len(_strided_layer_reasons(p4m_resnet44(device="meta"), 30)) > 1  # 30 is not a multiple of 4


def test_resnet44_architecture_is_invariant_on_cifar_size():
    """p4m_resnet44's stem and strides (one block per stage, narrow) at 32x32 in float64: invariant, no
    warning."""
    torch.manual_seed(0)
    model = GroupResNet("p4m", (1, 1, 1), (4, 4, 4), equal=None, num_classes=3, dtype=DT)
    stem, reference = model.stem[0], p4m_resnet44(device="meta").stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding) == (reference.kernel_size, reference.stride,
                                                              reference.padding)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EquivarianceWarning)
        model(x)  # training-mode statistics
        assert check_equivariance(model, x, "p4m") < EXACT
