"""AMP: under ``torch.autocast`` the group convolutions behave like ``nn.Conv2d``: inputs, weight and bias are cast
to the autocast dtype (bf16 on the CPU, fp16/bf16 on CUDA), the result comes out in that dtype, accumulated in
fp32, and the fp32 parameters get fp32 gradients.  A layer fed the half-precision output of the one before it
casts its own fp32 weight instead of rejecting the mix; outside autocast a mix is still a ``TypeError``.

Oracle: the float64 reference on the inputs as autocast rounded them (one layer), or the same model in float64
(several layers) with its activations, gradients and parameters rounded where autocast rounds them, compared at
the half-precision error bar of 1e-2 relative (measured here about 2e-3 on the reference path, 3e-3 in the Triton
interpreter, whose fp32 -> bf16 store truncates instead of rounding).
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import DEVICE, INTERPRETED, assert_close, clear_caches, torch_backend, triton_backend
from torch import nn

import gconv_triton as gt
from gconv_triton import GroupConv2d
from gconv_triton.functional import gconv2d
from gconv_triton.nn import GroupConvTranspose2d

BACKENDS = {"torch": (torch_backend, torch.device("cpu")), "triton": (triton_backend, DEVICE)}


def _autocast_cases():
    cases = [("torch", "cpu", torch.bfloat16), ("triton", DEVICE.type, torch.bfloat16)]
    if DEVICE.type == "cuda":
        cases.append(("triton", "cuda", torch.float16))
    return cases


@pytest.mark.parametrize("backend,device_type,dtype", _autocast_cases())
def test_conv_under_autocast_like_nn_conv2d(backend, device_type, dtype):
    ctx, device = BACKENDS[backend]
    torch.manual_seed(0)
    layer = GroupConv2d(8, 3, 3, group="p4", in_group="p4", padding=1, activation="relu").to(device)
    x = torch.randn(2, 8, 4, 5, 5, device=device, requires_grad=True)
    plain = nn.Conv2d(32, 12, 3, padding=1).to(device)
    with torch.autocast(device_type, dtype=dtype), ctx():
        y = layer(x)
        expected_dtype = plain(x.flatten(1, 2)).dtype
    assert y.dtype == expected_dtype == dtype
    y.float().square().sum().backward()
    assert layer.weight.grad.dtype == layer.bias.grad.dtype == x.grad.dtype == torch.float32

    # float64 oracle on the inputs as autocast rounded them
    x64 = x.detach().to(dtype).double().requires_grad_()
    w64 = layer.weight.detach().to(dtype).double().requires_grad_()
    b64 = layer.bias.detach().to(dtype).double().requires_grad_()
    with torch_backend():
        ref = gconv2d(x64.cpu(), w64.cpu(), b64.cpu(), group="p4", in_group="p4", padding=1, activation="relu")
    assert_close(y, ref, dtype, "forward")
    ref.square().sum().backward()
    for name, got, want in (("dx", x.grad, x64.grad), ("dw", layer.weight.grad, w64.grad),
                            ("db", layer.bias.grad, b64.grad)):
        assert_close(got, want, dtype, name)


def test_transposed_and_functional_follow_autocast():
    torch.manual_seed(0)
    layer = GroupConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, group="p4m")
    x = torch.randn(2, 3, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        z = gconv2d(torch.randn(2, 3, 5, 5), torch.randn(2, 3, 1, 3, 3), group="p4", in_group="z2")
    assert y.dtype == z.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
    assert layer(x).dtype == torch.float32  # outside autocast: unchanged


# ----------------------------------------------------------------------------------- several layers in a row
def _models():
    """Two layers of each family, the second fed the first's bf16 output: (name, model, input shape)."""
    return {
        "p4": (lambda: nn.Sequential(gt.P4ConvZ2(1, 4, 3, padding=1), nn.ReLU(), gt.P4ConvP4(4, 4, 3, padding=1)),
               (2, 1, 8, 8)),
        "p4m_strided_grouped": (lambda: nn.Sequential(
            gt.P4MConvZ2(2, 4, 3, padding=1, activation="silu"),
            gt.P4MConvP4M(4, 4, 3, stride=2, padding=1, groups=2, dilation=1)), (2, 2, 7, 7)),
        "conv2d": (lambda: nn.Sequential(gt.Conv2d(3, 4, 3, padding=1), nn.ReLU(), gt.Conv2d(4, 2, 3, dilation=2)),
                   (2, 3, 9, 9)),
        "conv1d": (lambda: nn.Sequential(gt.Conv1d(3, 4, 3), gt.Conv1d(4, 2, 3, stride=2)), (2, 3, 12)),
        "shared_kernel": (lambda: nn.Sequential(gt.SharedKernelConv2d(3, 3, padding=1),
                                                gt.SharedKernelConv2d(3, 3)), (2, 3, 8, 8)),
        "transposed": (lambda: nn.Sequential(gt.P4ConvZ2(1, 3, 3, padding=1), nn.ReLU(),
                                             gt.GroupConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1,
                                                                     group="p4")), (2, 1, 6, 6)),
    }


_LAYERS = (GroupConv2d, GroupConvTranspose2d, gt.Conv1d, gt.Conv2d, gt.SharedKernelConv2d)


def _to_half(t: torch.Tensor, dtype: torch.dtype, truncate: bool) -> torch.Tensor:
    """``t`` rounded to ``dtype`` and back to float64: to nearest as torch casts, or toward zero as the Triton
    interpreter stores bf16 (a GPU rounds to nearest)."""
    if truncate and dtype == torch.bfloat16:
        return (t.float().view(torch.int32) & -65536).view(torch.float32).double()
    return t.to(dtype).double()


class _Round(torch.autograd.Function):
    """Identity rounded to half precision both ways: ``forward_truncates`` / ``backward_truncates`` say whether
    the value (the gradient) comes out of a kernel that truncates."""

    @staticmethod
    def forward(ctx, t, dtype, forward_truncates, backward_truncates):
        ctx.dtype, ctx.truncate = dtype, backward_truncates
        return _to_half(t, dtype, forward_truncates)

    @staticmethod
    def backward(ctx, g):
        return _to_half(g, ctx.dtype, ctx.truncate), None, None, None


def _autocast_rounding_reference(model: nn.Module, dtype: torch.dtype, kernel_truncates: bool = False):
    """``model`` in float64, rounded where autocast rounds: its parameters, each conv's input (torch's cast) and
    the input gradient the conv's backward writes, each conv's output (written by the conv) and the gradient that
    arrives at it (a half-precision ``dy``).  What remains between it and the autocast run is the accumulation
    order, not the half-precision format."""
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype))
    k = kernel_truncates
    for m in ref.modules():
        if isinstance(m, _LAYERS):
            m.register_forward_pre_hook(lambda _, args: tuple(_Round.apply(a, dtype, False, k) for a in args))
            m.register_forward_hook(lambda _, __, out: _Round.apply(out, dtype, k, False))
    return ref


def _train_step(model, x):
    x = x.detach().requires_grad_()
    y = model(x)
    y.float().square().sum().backward()
    grads = [x.grad] + [p.grad for p in model.parameters()]
    return y, grads


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", list(_models()))
def test_multi_layer_model_under_cpu_autocast(name, compiled):
    """Forward and backward of a two-layer model under CPU bf16 autocast, eager and compiled, against the same
    model in float64 rounded where autocast rounds (every gradient too)."""
    build, shape = _models()[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(shape)
    ref_model = _autocast_rounding_reference(model, torch.bfloat16)  # a copy; runs after
    with torch_backend():
        run = model
        if compiled:  # cold, as a model built, compiled and trained meets it: the reference runs after
            clear_caches()
            run = torch.compile(model, backend="aot_eager", fullgraph=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, grads = _train_step(run, x)
        ref_y, ref_grads = _train_step(ref_model, x.double())
    assert y.dtype == torch.bfloat16
    assert_close(y, ref_y, torch.bfloat16, "forward")
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert got.dtype == torch.float32, f"gradient {i}: {got.dtype}"
        assert_close(got, want, torch.bfloat16, f"gradient {i}")


def test_multi_layer_model_under_autocast_on_triton_kernels():
    """The same on the Triton kernels (interpreted on the CPU, or compiled on a GPU, where fp16 is checked too)."""
    build, shape = _models()["p4"]
    torch.manual_seed(0)
    model = build().to(DEVICE)
    x = torch.randn(shape, device=DEVICE)
    dtypes = (torch.bfloat16,) + ((torch.float16,) if DEVICE.type == "cuda" else ())
    with torch_backend():
        refs = {dtype: _train_step(_autocast_rounding_reference(model.cpu(), dtype, INTERPRETED), x.cpu().double())
                for dtype in dtypes}
    model.to(DEVICE)
    for dtype in dtypes:
        ref_y, ref_grads = refs[dtype]
        model.zero_grad(set_to_none=True)
        with triton_backend(), torch.autocast(DEVICE.type, dtype=dtype):
            y, grads = _train_step(model, x)
        assert y.dtype == dtype
        assert_close(y, ref_y, dtype, "forward")
        for i, (got, want) in enumerate(zip(grads, ref_grads)):
            assert_close(got, want, dtype, f"gradient {i}")


def test_float64_is_left_alone_under_autocast_like_nn_conv2d():
    """Autocast never casts float64 tensors (nor does it for ``nn.Conv2d``): a float64 layer stays float64."""
    layer = gt.P4ConvP4(2, 2, 3, dtype=torch.float64)
    x = torch.randn(1, 2, 4, 5, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.float64
        assert nn.Conv2d(2, 2, 3, dtype=torch.float64)(x[:, :, 0]).dtype == torch.float64


@pytest.mark.parametrize("call", ["gconv2d", "layer", "conv2d", "shared_kernel"])
def test_dtype_mismatch_outside_autocast_still_raises(call):
    """Without autocast a bf16 input and an fp32 weight are a clear TypeError naming both dtypes."""
    x = torch.randn(1, 2, 4, 5, 5, dtype=torch.bfloat16)
    calls = {
        "gconv2d": lambda: gconv2d(x, torch.randn(2, 2, 4, 3, 3), group="p4", in_group="p4"),
        "layer": lambda: gt.P4ConvP4(2, 2, 3)(x),
        "conv2d": lambda: gt.Conv2d(2, 2, 3)(x[:, :, 0]),
        "shared_kernel": lambda: gt.SharedKernelConv2d(3, 2)(x[:, :, 0]),
    }
    with pytest.raises(TypeError, match=r"weight: dtype torch.float32 does not match input's dtype torch.bfloat16"):
        calls[call]()
