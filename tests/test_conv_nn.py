"""``gconv_triton.Conv1d`` / ``Conv2d`` against ``torch.nn.Conv1d`` / ``Conv2d``, and the shared-kernel layers
against a depthwise convolution with the kernel repeated.

Every check runs our layer in float32 on the Triton kernels (the interpreter without a GPU) and on the reference
path, and compares the output and the input, weight and bias gradients with torch's own layer in float64 on the
CPU (the oracle), loaded with the same parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gconv_triton
from gconv_triton import Conv1d, Conv2d, SharedKernelConv1d, SharedKernelConv2d, functional
from helpers import DEVICE, assert_close

# torch's own layer (the oracle) warns that it pads a copy for 'same' with an even kernel
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")

BACKENDS = ["triton", "torch"]
DTYPE = torch.float32

# (id, in_channels, out_channels, kernel_size, kwargs, input shape)
CONV2D_CASES = [
    ("plain", 3, 5, 3, {}, (2, 3, 7, 9)),
    ("groups2-stride2-rect", 4, 6, (2, 3), dict(groups=2, stride=2, padding=(1, 0)), (2, 4, 9, 8)),
    ("stride3-ragged-dilated", 2, 3, 3, dict(stride=(3, 2), padding=1, dilation=(1, 2)), (2, 2, 10, 11)),
    ("depthwise-same-dilated", 4, 4, 3, dict(groups=4, padding="same", dilation=2, bias=False), (2, 4, 9, 7)),
    ("depthwise-x2-same-even-k", 3, 6, 4, dict(groups=3, padding="same"), (2, 3, 7, 8)),
    ("valid-even-k", 2, 3, 2, dict(padding="valid"), (3, 2, 6, 5)),
    ("1x1-groups", 6, 4, 1, dict(groups=2), (2, 6, 5, 5)),
    ("reflect", 2, 4, 3, dict(padding=(1, 2), stride=(1, 2), padding_mode="reflect"), (2, 2, 7, 8)),
    ("replicate-groups", 4, 2, 3, dict(groups=2, padding=2, dilation=2, padding_mode="replicate"), (2, 4, 7, 7)),
    ("circular-same-even-k", 2, 2, (2, 4), dict(padding="same", padding_mode="circular"), (2, 2, 6, 7)),
]

CONV1D_CASES = [
    ("9-3-1-groups3", 9, 3, 1, dict(groups=3), (2, 9, 7)),
    ("groups-stride-dilation", 4, 6, 3, dict(groups=2, stride=2, padding=1, dilation=2), (3, 4, 11)),
    ("valid-stride3", 3, 2, 3, dict(padding="valid", stride=3), (2, 3, 11)),
    ("depthwise-same-even-k-reflect", 3, 3, 4, dict(groups=3, padding="same", padding_mode="reflect"), (2, 3, 10)),
    ("circular-no-bias", 2, 5, 5, dict(padding=2, padding_mode="circular", bias=False), (2, 2, 9)),
    ("replicate-same-dilated", 4, 4, 2, dict(padding="same", dilation=3, padding_mode="replicate", groups=2),
     (2, 4, 8)),
]


def _forward_backward(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """``(y, dx, dweight, dbias)`` of ``module`` at ``x`` for the upstream gradient ``dy``."""
    x = x.detach().requires_grad_()
    y = module(x)
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    grads = torch.autograd.grad(y, [x, *params], dy)
    return (y, *grads)


def _check_parity(ours: nn.Module, oracle: nn.Module, x: torch.Tensor, backend: str) -> None:
    """Run ``oracle`` (float64, CPU) and ``ours`` (float32, DEVICE, on ``backend``) on ``x``; compare the output
    and every gradient for a random upstream gradient."""
    with torch.no_grad():
        dy = torch.randn_like(oracle(x))
    expected = _forward_backward(oracle, x, dy)
    with gconv_triton.backend(backend):
        got = _forward_backward(ours, x.to(DEVICE, DTYPE), dy.to(DEVICE, DTYPE))
    assert len(got) == len(expected)
    for name, out, ref in zip(("output", "dx", "dweight", "dbias"), got, expected):
        assert_close(out, ref, DTYPE, f"{type(ours).__name__} {name} ({backend})")


def _pair_of_layers(ours_cls, torch_cls, args, kwargs):
    """Torch's layer in float64 on the CPU, and ours in float32 on DEVICE with the same parameters."""
    oracle = torch_cls(*args, **kwargs, dtype=torch.float64)
    ours = ours_cls(*args, **kwargs, device=DEVICE, dtype=DTYPE)
    ours.load_state_dict(oracle.state_dict())
    return ours, oracle


# ----------------------------------------------------------------------------------------- parity with torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV2D_CASES, ids=[c[0] for c in CONV2D_CASES])
def test_conv2d_matches_torch(case, backend):
    _, c_in, c_out, k, kwargs, shape = case
    ours, oracle = _pair_of_layers(Conv2d, nn.Conv2d, (c_in, c_out, k), kwargs)
    _check_parity(ours, oracle, torch.randn(shape, dtype=torch.float64), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV1D_CASES, ids=[c[0] for c in CONV1D_CASES])
def test_conv1d_matches_torch(case, backend):
    _, c_in, c_out, k, kwargs, shape = case
    ours, oracle = _pair_of_layers(Conv1d, nn.Conv1d, (c_in, c_out, k), kwargs)
    _check_parity(ours, oracle, torch.randn(shape, dtype=torch.float64), backend)


@pytest.mark.parametrize("ours_cls, torch_cls, shape", [(Conv1d, nn.Conv1d, (4, 9)), (Conv2d, nn.Conv2d, (4, 7, 6))],
                         ids=["1d", "2d"])
def test_unbatched_input(ours_cls, torch_cls, shape):
    ours, oracle = _pair_of_layers(ours_cls, torch_cls, (4, 6, 3), dict(groups=2, padding=1))
    _check_parity(ours, oracle, torch.randn(shape, dtype=torch.float64), "triton")


def test_channels_last_input():
    """Like torch, a channels-last input gives a channels-last output (the kernels follow the input's layout)."""
    ours, oracle = _pair_of_layers(Conv2d, nn.Conv2d, (4, 6, 3), dict(groups=2, padding=1))
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    with gconv_triton.backend("triton"), torch.no_grad():
        y = ours(x.to(DEVICE, DTYPE).to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, oracle(x), DTYPE, "channels-last output")


def test_runs_on_the_fused_kernels(monkeypatch):
    """The triton backend reaches the kernels with the trivial group and the weight as a (C_out, C_in/g, 1, kh, kw)
    view: no fallback to ``F.conv2d``."""
    from gconv_triton import kernels

    calls = []
    for name in ("forward", "input_grad", "weight_grad"):
        def spy(*args, _name=name, _fn=getattr(kernels, name), **kwargs):
            calls.append((_name, args))
            return _fn(*args, **kwargs)
        monkeypatch.setattr(kernels, name, spy)
    conv = Conv1d(4, 4, 3, groups=4, padding=1, device=DEVICE)
    with gconv_triton.backend("triton"):
        conv(torch.randn(2, 4, 9, device=DEVICE, requires_grad=True)).sum().backward()
    assert [c[0] for c in calls] == ["forward", "input_grad", "weight_grad"]
    _, (x, weight, bias, spec, *_) = calls[0]
    assert x.shape == (2, 4, 1, 1, 9) and weight.shape == (4, 1, 1, 1, 3) and spec.group.is_trivial
    assert spec.depthwise and spec.groups == 4 and spec.kernel == (1, 3)


# ------------------------------------------------------------------------------- drop-in: parameters, repr
@pytest.mark.parametrize("ours_cls, torch_cls, kwargs", [
    (Conv1d, nn.Conv1d, dict(stride=2, padding=1, groups=2, padding_mode="reflect")),
    (Conv2d, nn.Conv2d, dict(padding="same", dilation=2, groups=2, bias=False, padding_mode="circular")),
    (Conv2d, nn.Conv2d, {}),
], ids=["1d", "2d-same", "2d-defaults"])
def test_drop_in_module_contract(ours_cls, torch_cls, kwargs):
    torch.manual_seed(0)
    theirs = torch_cls(4, 6, 3, **kwargs)
    torch.manual_seed(0)
    ours = ours_cls(4, 6, 3, **kwargs)
    assert isinstance(ours, torch_cls)
    assert repr(ours) == repr(theirs)
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(their_state)
    for key in their_state:  # same initialisation, same names and shapes
        assert torch.equal(ours_state[key], their_state[key]), key
    # state dicts load both ways, strictly
    fresh_theirs, fresh_ours = torch_cls(4, 6, 3, **kwargs), ours_cls(4, 6, 3, **kwargs)
    fresh_theirs.load_state_dict(ours.state_dict())
    fresh_ours.load_state_dict(theirs.state_dict())
    for key in their_state:
        assert torch.equal(fresh_theirs.state_dict()[key], ours_state[key])
        assert torch.equal(fresh_ours.state_dict()[key], their_state[key])


def test_rejects_bad_inputs():
    conv2d, conv1d = Conv2d(3, 4, 3), Conv1d(3, 4, 3)
    with pytest.raises(ValueError, match=r"input: Conv2d expects a 4-D .* got shape \(1, 3, 1, 5, 5\)"):
        conv2d(torch.randn(1, 3, 1, 5, 5))
    with pytest.raises(ValueError, match=r"input: Conv2d expects a 4-D"):
        conv2d(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"input: Conv1d expects a 3-D .* got shape \(1, 3, 5, 5\)"):
        conv1d(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"input: Conv2d expects 3 channels .* got 2"):
        conv2d(torch.randn(1, 2, 5, 5))
    with pytest.raises(TypeError, match="input"):
        conv1d([[1.0]])
    with pytest.raises(ValueError, match="padding_mode"):  # torch's own argument checks are inherited
        Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="strided"):
        Conv1d(3, 4, 3, stride=2, padding="same")


# ------------------------------------------------------------------------------------------ shared kernel
# (id, layer, groups, kernel_size, kwargs, input shape)
SHARED_CASES = [
    ("2d-plain", SharedKernelConv2d, 5, 3, {}, (2, 5, 7, 9)),
    ("2d-rect-stride-dilated", SharedKernelConv2d, 3, (2, 3), dict(stride=2, padding=(1, 0), dilation=(1, 2)),
     (2, 3, 9, 10)),
    ("2d-same-even-k-no-bias", SharedKernelConv2d, 4, 4, dict(padding="same", bias=False), (2, 4, 7, 8)),
    ("1d-stride", SharedKernelConv1d, 6, 3, dict(padding=1, stride=2), (2, 6, 11)),
    ("1d-same-dilated", SharedKernelConv1d, 3, 4, dict(padding="same", dilation=2), (3, 3, 9)),
]


class _Tied(nn.Module):
    """The oracle: torch's depthwise convolution with the shared kernel repeated ``groups`` times.  Its
    parameters are the shared ``(1, 1, k...)`` kernel and ``(1,)`` bias, so autograd sums their gradients over
    the copies (what ``conv.weight.grad.sum(0, keepdim=True)`` gives on an untied depthwise conv)."""

    def __init__(self, shared: nn.Module):
        super().__init__()
        self.shared = shared
        self.weight, self.bias = shared.weight, shared.bias

    def forward(self, x):
        s = self.shared
        conv = F.conv1d if x.dim() == 3 else F.conv2d
        bias = None if self.bias is None else self.bias.repeat(s.groups)
        return conv(x, self.weight.repeat(s.groups, *(1,) * (self.weight.dim() - 1)), bias, s.stride, s.padding,
                    s.dilation, s.groups)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SHARED_CASES, ids=[c[0] for c in SHARED_CASES])
def test_shared_kernel_matches_repeated_kernel(case, backend):
    _, layer, groups, k, kwargs, shape = case
    oracle = _Tied(layer(k, groups, **kwargs, dtype=torch.float64))
    ours = layer(k, groups, **kwargs, device=DEVICE, dtype=DTYPE)
    ours.load_state_dict(oracle.shared.state_dict())
    _check_parity(ours, oracle, torch.randn(shape, dtype=torch.float64), backend)


def test_shared_kernel_gradient_equals_sum_over_untied_copies():
    """The defining property: grad of the shared kernel == ``weight.grad.sum(0, keepdim=True)`` of a depthwise
    ``nn.Conv2d`` holding ``groups`` copies of it."""
    groups = 4
    untied = nn.Conv2d(groups, groups, 3, padding=1, groups=groups, dtype=torch.float64)
    shared = SharedKernelConv2d(3, groups, padding=1, device=DEVICE)
    with torch.no_grad():
        untied.weight.copy_(shared.weight.double().cpu().expand_as(untied.weight))
        untied.bias.copy_(shared.bias.double().cpu().expand_as(untied.bias))
    x = torch.randn(2, groups, 7, 6, dtype=torch.float64)
    dy = torch.randn(2, groups, 7, 6, dtype=torch.float64)
    untied(x).backward(dy)
    with gconv_triton.backend("triton"):
        shared(x.to(DEVICE, DTYPE)).backward(dy.to(DEVICE, DTYPE))
    assert_close(shared.weight.grad, untied.weight.grad.sum(0, keepdim=True), DTYPE, "dweight")
    assert_close(shared.bias.grad, untied.bias.grad.sum(0, keepdim=True), DTYPE, "dbias")


def test_shared_kernel_is_never_repeated(monkeypatch):
    """The kernels get the (1, 1, 1, kh, kw) weight and reduce its gradient themselves (weight_groups = 1)."""
    from gconv_triton import kernels

    seen = {}
    forward, weight_grad = kernels.forward, kernels.weight_grad

    def spy_forward(x, weight, bias, spec, *args, **kwargs):
        seen["forward"] = (weight.shape, bias.shape, spec)
        return forward(x, weight, bias, spec, *args, **kwargs)

    def spy_weight_grad(dy, x, spec, weight_shape, *args, **kwargs):
        seen["weight_grad"] = tuple(weight_shape)
        return weight_grad(dy, x, spec, weight_shape, *args, **kwargs)

    monkeypatch.setattr(kernels, "forward", spy_forward)
    monkeypatch.setattr(kernels, "weight_grad", spy_weight_grad)
    layer = SharedKernelConv2d((3, 2), groups=5, device=DEVICE)
    with gconv_triton.backend("triton"):
        layer(torch.randn(2, 5, 6, 7, device=DEVICE)).sum().backward()
    weight_shape, bias_shape, spec = seen["forward"]
    assert weight_shape == (1, 1, 1, 3, 2) and bias_shape == (1,)
    assert spec.groups == 5 and spec.weight_groups == 1
    assert seen["weight_grad"] == (1, 1, 1, 3, 2)
    assert layer.weight.grad.shape == (1, 1, 3, 2) and layer.bias.grad.shape == (1,)


def test_shared_kernel_module_contract():
    torch.manual_seed(0)
    theirs = nn.Conv2d(1, 1, 3)  # fan-in kh·kw, as a depthwise conv
    torch.manual_seed(0)
    ours = SharedKernelConv2d(3, groups=5)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [("weight", (1, 1, 3, 3)), ("bias", (1,))]
    assert repr(ours) == "SharedKernelConv2d(5, kernel_size=(3, 3), stride=(1, 1))"
    assert repr(SharedKernelConv1d(4, 2, padding="same", dilation=2, bias=False)) == (
        "SharedKernelConv1d(2, kernel_size=(4,), stride=(1,), padding='same', dilation=(2,), bias=False)")
    assert SharedKernelConv1d(3, 2).weight.shape == (1, 1, 3)
    with pytest.raises(ValueError, match=r"input: SharedKernelConv2d expects 5 channels .* got 4"):
        ours(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match="groups"):
        SharedKernelConv2d(3, groups=0)
    with pytest.raises(TypeError, match="kernel_size"):
        SharedKernelConv1d((3, 3), groups=2)
    with pytest.raises(ValueError, match="padding"):
        SharedKernelConv2d(3, groups=2, padding="full")
    with pytest.raises(ValueError, match="strided"):
        SharedKernelConv2d(3, groups=2, stride=2, padding="same")


def test_shared_kernel_functional_1d():
    x, w, b = (torch.randn(shape, dtype=torch.float64) for shape in [(2, 3, 9), (1, 1, 3), (1,)])
    out = gconv_triton.functional.shared_kernel_conv1d(x, w, b, stride=(2,), padding=1)
    assert_close(out, F.conv1d(x, w.repeat(3, 1, 1), b.repeat(3), stride=2, padding=1, groups=3), torch.float64,
                 "shared_kernel_conv1d")
    with pytest.raises(ValueError, match=r"weight: expected shape \(1, 1, k\)"):
        gconv_triton.functional.shared_kernel_conv1d(x, w.repeat(3, 1, 1))
    with pytest.raises(ValueError, match="input: expected a 3-D"):
        gconv_triton.functional.shared_kernel_conv1d(x[None], w)
    with pytest.raises(TypeError, match="stride"):
        gconv_triton.functional.shared_kernel_conv1d(x, w, stride=(1, 2))


@pytest.mark.parametrize("fn, shapes", [
    (functional.shared_kernel_conv2d, ((2, 3, 5, 5), (1, 1, 3, 3))),
    (functional.shared_kernel_conv1d, ((2, 3, 7), (1, 1, 3))),
], ids=["2d", "1d"])
def test_shared_kernel_functional_rejects_bad_arguments(fn, shapes):
    """Each argument is named, with what was given and what was expected: TypeError for a non-tensor, ValueError
    for a wrong shape."""
    x, w = (torch.randn(s) for s in shapes)
    with pytest.raises(TypeError, match=r"^input: expected a torch.Tensor .* got list"):
        fn(x.tolist(), w)
    with pytest.raises(ValueError, match=r"^input: expected a \d-D tensor .* got shape"):
        fn(x[0], w)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(1, 1, .* got shape \(2, 1,"):
        fn(x, w.expand(2, *w.shape[1:]))
    with pytest.raises(ValueError, match=r"^bias: expected shape \(1,\), got shape \(2,\)"):
        fn(x, w, torch.zeros(2))
