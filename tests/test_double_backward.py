"""Second-order gradients: ``create_graph=True`` through the input, the weight and the bias of every convolution
(gradient penalties, MAML, Hessian-vector products).  The weight-gradient op is linear in ``dy`` and in ``x``, so
its own backward is the forward conv and the input-gradient op; the fused activations' backward is differentiable.

Checked with ``torch.autograd.gradgradcheck`` in float64 (finite differences of the first-order gradients, in
fast mode: along random directions, as the full Jacobian takes minutes in the interpreter), on the reference path
and on the Triton kernels (interpreted on the CPU), and a MAML meta-gradient against autograd through the float64
filter-bank reference.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, torch_backend, triton_backend
from torch.autograd import gradgradcheck

from gconv_triton import _spec
from gconv_triton.functional import gconv2d, gconv_transpose2d, shared_kernel_conv1d, shared_kernel_conv2d
from gconv_triton.reference import gconv2d_reference

DT = torch.float64
BACKENDS = {"torch": (torch_backend, torch.device("cpu")), "triton": (triton_backend, DEVICE)}

# (group, in_group, C_in, C_out, geometry): plain, strided + dilated + grouped, lifting
CASES = {
    "p4": ("p4", "p4", 2, 2, dict(padding=1)),
    "p4_stride_dilation_groups": ("p4", "p4", 2, 4, dict(stride=2, padding=2, dilation=2, groups=2)),
    "p4m": ("p4m", "p4m", 2, 2, dict(padding=1)),
    "p4m_lifting_stride_groups": ("p4m", "z2", 2, 2, dict(stride=2, padding=1, groups=2)),
}


def _tensors(group, in_group, c_in, c_out, geometry, device, size=5):
    s_in = 1 if in_group == "z2" else (4 if in_group == "p4" else 8)
    groups = geometry.get("groups", 1)
    x = torch.randn(1, c_in, s_in, size, size, dtype=DT, device=device, requires_grad=True)
    w = torch.randn(c_out, c_in // groups, s_in, 3, 3, dtype=DT, device=device, requires_grad=True)
    b = torch.randn(c_out, dtype=DT, device=device, requires_grad=True)
    return x, w, b


@pytest.mark.parametrize("activation", [None, "relu", "silu", "gelu"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_gconv2d_gradgradcheck(backend, case, activation):
    if backend == "triton" and (activation not in (None, "silu") or (activation == "silu" and case != "p4")
                                 or case == "p4m_lifting_stride_groups"):
        pytest.skip("interpreted cases take a minute each: the kernels run p4 with silu and p4, p4m and the "
                    "strided, dilated, grouped p4 without activation (the activations' backward is PyTorch's)")
    ctx, device = BACKENDS[backend]
    group, in_group, c_in, c_out, geometry = CASES[case]
    torch.manual_seed(0)
    x, w, b = _tensors(group, in_group, c_in, c_out, geometry, device)
    if activation == "relu":  # keep the pre-activation away from the kink, where finite differences break
        with torch.no_grad():
            b += 3 * torch.sign(b)

    def f(x, w, b):
        return gconv2d(x, w, b, group=group, in_group=in_group, activation=activation, **geometry)

    with ctx():
        assert gradgradcheck(f, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_maml_meta_gradient_through_the_weight(backend):
    """One inner SGD step with ``create_graph=True``, then the outer loss's gradient with respect to the initial
    weight, bias and input: against autograd through the float64 filter bank + ``F.conv2d``."""
    ctx, device = BACKENDS[backend]
    group, in_group, c_in, c_out, geometry = CASES["p4_stride_dilation_groups"]
    torch.manual_seed(0)
    x, w, b = _tensors(group, in_group, c_in, c_out, geometry, device, size=6)
    target = torch.randn_like(gconv2d(x.detach(), w.detach(), group=group, in_group=in_group, **geometry).cpu())

    def conv_ours(x, w, b):
        with ctx():
            return gconv2d(x, w, b, group=group, in_group=in_group, activation="silu", **geometry).cpu()

    def conv_ref(x, w, b):
        spec = _spec.make_spec(x, w, b, group=group, in_group=in_group, **geometry)
        return torch.nn.functional.silu(gconv2d_reference(x, w, b, spec))

    def meta_grads(conv, x, w, b):
        inner = (conv(x, w, b) - target).square().mean()
        gw, gb = torch.autograd.grad(inner, (w, b), create_graph=True)
        outer = (conv(x, w - 0.1 * gw, b - 0.1 * gb) + target).square().mean()
        return torch.autograd.grad(outer, (x, w, b))

    got = meta_grads(conv_ours, x, w, b)
    x64, w64, b64 = (t.detach().cpu().requires_grad_() for t in (x, w, b))
    want = meta_grads(conv_ref, x64, w64, b64)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert_close(g, r, DT, name)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_plain_and_shared_kernel_convs_gradgradcheck(backend):
    """``gt.Conv1d`` / ``gt.Conv2d`` (the z2 group conv) and the shared-kernel convs run on the same ops."""
    ctx, device = BACKENDS[backend]
    torch.manual_seed(0)
    t = dict(dtype=DT, device=device, requires_grad=True)
    x2, x1 = torch.randn(1, 2, 5, 5, **t), torch.randn(2, 3, 7, **t)
    with ctx():
        assert gradgradcheck(lambda x, w: gconv2d(x, w, group="z2", in_group="z2", stride=2, padding=1),
                             (x2, torch.randn(3, 2, 1, 3, 3, **t)), fast_mode=True)
        assert gradgradcheck(lambda x, w, b: shared_kernel_conv2d(x, w, b, padding=1, dilation=2),
                             (x2, torch.randn(1, 1, 3, 3, **t), torch.randn(1, **t)), fast_mode=True)
        assert gradgradcheck(lambda x, w, b: shared_kernel_conv1d(x, w, b, stride=2, padding=1),
                             (x1, torch.randn(1, 1, 3, **t), torch.randn(1, **t)), fast_mode=True)


def test_conv_layers_gradgradcheck():
    """The ``nn.Conv1d`` / ``nn.Conv2d`` drop-ins, through ``torch.func.functional_call`` on their parameters (on
    the reference path: on the kernels they are the z2 ``gconv2d`` checked above)."""
    import gconv_triton as gt

    ctx, device = BACKENDS["torch"]
    torch.manual_seed(0)
    for layer, shape in ((gt.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2), (1, 2, 6, 6)),
                         (gt.Conv1d(2, 2, 3, padding=1), (2, 2, 6))):
        layer = layer.to(device, DT)
        x = torch.randn(shape, dtype=DT, device=device, requires_grad=True)
        params = tuple(p.detach().requires_grad_() for p in (layer.weight, layer.bias))

        def f(x, w, b, layer=layer):
            return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

        with ctx():
            assert gradgradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_transposed_conv_gradgradcheck(group):
    """The transposed conv, on the reference path (on the kernels it is the input-gradient op, whose double
    backward the conv's checks above run, and several minutes in the interpreter)."""
    ctx, device = BACKENDS["torch"]
    s = 4 if group == "p4" else 8
    torch.manual_seed(0)
    t = dict(dtype=DT, device=device, requires_grad=True)
    x = torch.randn(1, 2, s, 3, 3, **t)
    w = torch.randn(2, 1, s, 3, 3, **t)
    b = torch.randn(2, **t)
    with ctx():
        assert gradgradcheck(lambda x, w, b: gconv_transpose2d(x, w, b, group=group, stride=2, padding=1,
                                                               output_padding=1, groups=2),
                             (x, w, b), fast_mode=True)


@pytest.mark.parametrize("activation", ["none", "silu"])
def test_registered_ops_gradgradcheck_on_the_reference_path(activation):
    """The custom ops themselves (what a compiled model runs on the CPU; eager CPU calls use standard ops), on
    their reference branch: the conv op's backward, and the registered backward of the input- and
    weight-gradient ops it calls."""
    from gconv_triton.ops import group_conv as ops

    torch.manual_seed(0)
    x, w, b = _tensors("p4m", "p4m", 2, 2, dict(groups=2), "cpu")
    geometry = ("p4m", "p4m", [2, 2], [1, 1, 1, 1], [1, 1], 2, 2)
    assert gradgradcheck(lambda x, w, b: ops._conv_op(x, w, b, *geometry, activation, "torch")[0], (x, w, b),
                         fast_mode=True)
    dy = torch.randn(1, 2, 8, 3, 3, dtype=DT, requires_grad=True)
    assert gradgradcheck(lambda dy, w: ops._input_grad_op(dy, w, list(x.shape), [0, 1, 2, 3, 4], *geometry, "torch"),
                         (dy, w), fast_mode=True)
