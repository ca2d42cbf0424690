"""One memory layout through a network (docs/conventions.md, "Memory layout"): on the kernel path every layer of the
package hands the next one a group map stored ``(B, H, W, C, S)``, whatever the layout of the network's input, and
the gradients flowing back keep it; the values are the float64 reference's."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import DEVICE, assert_close, torch_backend, triton_backend
from torch import nn

from gconv_triton import GroupConv2d, GroupMaxPool2d
from gconv_triton.nn import GroupAvgPool2d, GroupBatchNorm, GroupConvTranspose2d, GroupPool

CL_ORDER = (0, 3, 4, 1, 2)


def stored_channels_last(t: torch.Tensor) -> bool:
    """Whether the 5-D ``t`` is dense in memory order ``(B, H, W, C, S)``."""
    return t.permute(CL_ORDER).is_contiguous()


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.permute(CL_ORDER).contiguous().permute(0, 3, 4, 1, 2) if layout == "channels_last" else t.contiguous()


def _network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        GroupConv2d(3, 4, 3, group="p4", in_group="p4", padding=1, bias=False),   # a bias before BN: no gradient
        GroupBatchNorm(4),
        nn.ReLU(),
        GroupMaxPool2d(2),
        GroupConv2d(4, 4, 3, group="p4", in_group="p4", padding=1, activation="relu"),
        GroupAvgPool2d(2),
        GroupConvTranspose2d(4, 2, 2, stride=2, group="p4"),
    )


def _run(net: nn.Module, x: torch.Tensor):
    """The output, the gradients of the input and of every parameter, and every layer's output and output
    gradient (``dy = 1 + y``, so no gradient is a constant an expand could give)."""
    outputs, grads = [], []

    def keep(module, args, out):
        outputs.append(out)
        out.register_hook(grads.append)

    handles = [m.register_forward_hook(keep) for m in net]
    try:
        y = net(x)
        params = list(net.parameters())
        dx, *dparams = torch.autograd.grad(y, [x, *params], y.detach() + 1)
    finally:
        for h in handles:
            h.remove()
    return y, dx, dparams, outputs, grads


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_channels_last_group_map_flows_through_the_layers(layout):
    """conv -> BN -> ReLU -> max pool -> conv (fused ReLU) -> avg pool -> transposed conv: every layer's output
    and output gradient is stored ``(B, H, W, C, S)`` whatever the input's layout, the input gradient comes back
    in the input's layout, and the output and every gradient equal the float64 reference on a contiguous input."""
    net = _network().to(DEVICE)
    reference = copy.deepcopy(net).cpu().double()
    x = in_layout(torch.randn(2, 3, 4, 8, 8, device=DEVICE), layout).requires_grad_()
    with triton_backend():
        y, dx, dparams, outputs, grads = _run(net, x)
    x_ref = x.detach().cpu().double().contiguous().requires_grad_()
    with torch_backend():
        y_ref, dx_ref, dparams_ref, _, _ = _run(reference, x_ref)

    for i, (out, grad) in enumerate(zip(outputs, reversed(grads))):
        assert stored_channels_last(out), f"layer {i} ({type(net[i]).__name__}) output strides {out.stride()}"
        assert stored_channels_last(grad), f"layer {i} ({type(net[i]).__name__}) output grad strides {grad.stride()}"
    assert (stored_channels_last(dx) if layout == "channels_last" else dx.is_contiguous()), dx.stride()
    assert_close(y, y_ref, torch.float32, "output")
    assert_close(dx, dx_ref, torch.float32, "input grad")
    for (name, _), grad, ref in zip(net.named_parameters(), dparams, dparams_ref):
        assert_close(grad, ref, torch.float32, name)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_layers_take_both_layouts(layout):
    """Each layer on its own, on either layout of its input: the reference's values; the group pooling and the
    batch norm keep the input's layout, the convolutions give ``(B, H, W, C, S)``."""
    x = in_layout(torch.randn(2, 3, 4, 6, 6, device=DEVICE), layout)
    for layer, keeps_input_layout in ((GroupBatchNorm(3), True), (GroupMaxPool2d(2), True),
                                      (GroupAvgPool2d(2), True), (GroupPool("max"), None),
                                      (GroupConv2d(3, 2, 3, group="p4", in_group="p4", padding=1), False),
                                      (GroupConvTranspose2d(3, 2, 3, group="p4", padding=1), False)):
        layer = layer.to(DEVICE)
        reference = copy.deepcopy(layer).cpu().double()
        with triton_backend():
            y = layer(x)
        with torch_backend():
            y_ref = reference(x.detach().cpu().double().contiguous())
        assert_close(y, y_ref, torch.float32, type(layer).__name__)
        if keeps_input_layout is not None:
            stored = stored_channels_last(y) if layout == "channels_last" or not keeps_input_layout \
                else y.is_contiguous()
            assert stored, f"{type(layer).__name__}: {layout} input gave strides {y.stride()}"
