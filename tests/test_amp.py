"""AMP (issue 6.3): under ``torch.autocast`` the group convolutions behave like ``nn.Conv2d``: inputs, weight and
bias are cast to the autocast dtype (bf16 on the CPU, fp16/bf16 on CUDA), the result comes out in that dtype,
accumulated in fp32, and the fp32 parameters get fp32 gradients.

Oracle: the float64 reference on the inputs as autocast rounded them, compared at DESIGN.md's half-precision error
bar (1e-2 relative; measured here about 2e-3 on the reference path, 3e-3 in the Triton interpreter, whose fp32 ->
bf16 store truncates instead of rounding).
"""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, torch_backend, triton_backend
from torch import nn

from gconv_triton import GroupConv2d
from gconv_triton.functional import gconv2d
from gconv_triton.layers import GroupConvTranspose2d

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
