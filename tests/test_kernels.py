"""The fused Triton kernels (``backend("triton")``) against the float64 reference path: forward and every gradient.

Each check runs one layer on the kernels (on a GPU, or in Triton's CPU interpreter, with outputs NaN-poisoned
before every launch) and the same layer on the filter-bank reference in float64, then compares the output and
the input, weight and bias gradients by relative error (``helpers.tolerance``), and checks that the output keeps
the input's memory layout (the input gradient's layout has its own tests, near the end).

The interpreter costs about a second per forward+backward, so the parameter grid is a covering design, not the
Cartesian product: ``GRID`` is an orthogonal array over (group pair, k, padding, stride x dilation, bias x
layout), so every pair of values of those axes runs at least once (``test_grid_covers_every_pair`` checks it),
plus rows for the three-way cases that matter most (p4m G->G with stride 2 and even k, unequal stride and
dilation per axis).  Channel-group, depthwise, shared-kernel, dtype, determinism, memory and empty-batch tests
follow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, INTERPRETED, assert_close, rel_error, torch_backend, triton_backend

from gconv_triton import functional, kernels
from gconv_triton._support import dim_order
from gconv_triton._spec import make_spec
from gconv_triton.groups import get_group
from gconv_triton.reference import bank_conv_input_grad, bank_conv_weight_grad
from gconv_triton.kernels import _common, group_conv as gconv, group_conv_weight_grad as wgrad
from gconv_triton.kernels.group_conv_layouts import relayout_dy
from perf.memory import AllocationRecorder
from test_user_groups import USER_GROUPS as _USER_GROUPS, ring_rotations

CONTIG, CL = "contig", "cl"  # (B, C, S, H, W) stored as is, or in memory order (B, H, W, C, S)
HALF_DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------------- helpers
def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` (5-D) stored contiguously or in memory order ``(B, H, W, C, S)``."""
    if layout == CL:
        return t.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    return t.contiguous()


def assert_layout(t: torch.Tensor, layout: str, what: str) -> None:
    """``t`` (5-D) is dense in ``layout``'s memory order."""
    order = (0, 3, 4, 1, 2) if layout == CL else (0, 1, 2, 3, 4)
    assert t.permute(order).is_contiguous(), f"{what}: strides {t.stride()} for shape {tuple(t.shape)} are not " \
                                             f"the {layout} layout"


def randn(shape, dtype=torch.float32, layout=CONTIG) -> torch.Tensor:
    """Fresh N(0, 1) values, rounded to ``dtype``, on the test device (5-D tensors in ``layout``)."""
    t = torch.randn(shape, device=DEVICE).to(dtype)
    return to_layout(t, layout) if t.dim() == 5 else t


def check_against_reference(layer, x, weight, bias=None, dy_layout=None):
    """Run ``layer(x, weight, bias)`` and its backward on the kernels and on the float64 reference path; assert that
    the output and every gradient match.  Returns ``(y, dx)`` from the kernels for layout checks.

    ``dy`` is fresh noise in ``dy_layout`` (default: the output's own strides).
    """
    dtype = x.dtype
    inputs = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    with triton_backend():
        y = layer(x, weight, bias)
    assert y.dtype == dtype and y.device == x.device
    dy = torch.randn(y.shape, device=DEVICE).to(dtype)
    dy = to_layout(dy, dy_layout) if dy_layout else torch.empty_like(y).copy_(dy)
    # autograd.grad hands back what the backward returned (x.grad would be restrided to x's layout by autograd)
    grads = torch.autograd.grad(y, inputs, dy)

    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in inputs]
    ref_bias = ref_inputs[2] if bias is not None else None
    with torch_backend():
        y_ref = layer(ref_inputs[0], ref_inputs[1], ref_bias)
    ref_grads = torch.autograd.grad(y_ref, ref_inputs, dy.cpu().double())

    assert_close(y, y_ref, dtype, "output")
    for name, grad, ref in zip(("input grad", "weight grad", "bias grad"), grads, ref_grads):
        assert grad.dtype == dtype, f"{name}: dtype {grad.dtype}, expected {dtype}"
        assert_close(grad, ref, dtype, name)
    return y, grads[0]


def gconv_layer(group, in_group, **kwargs):
    """``(x, weight, bias) -> functional.gconv2d(...)`` with the geometry fixed."""
    return functools.partial(functional.gconv2d, group=group, in_group=in_group, **kwargs)


USER_GROUPS = {"ring8": ring_rotations(), "p2mm_shuffled": _USER_GROUPS["p2mm_shuffled"]}


def order_of(name: str) -> int:
    return get_group(name).order


def short(value) -> str:
    """A test-id fragment without spaces: ``(1, 2)`` -> ``(1,2)``."""
    return str(value).replace(" ", "")


# ------------------------------------------------------------------------------------------ the main grid
@dataclasses.dataclass(frozen=True)
class Case:
    """One dense (GEMM-path) layer: input ``(B, C_in, S_in, H, W)``, weight ``(C_out, C_in, S_in, k, k)``."""
    group: str
    in_group: str
    k: int
    padding: object
    stride: object
    dilation: object
    bias: bool
    layout: str
    size: tuple  # (B, H, W)
    channels: tuple = (2, 3)  # (C_in, C_out); C_in >= 2 keeps the GEMM path (C_in == 1 is depthwise)
    dy_layout: str = None

    @property
    def pair(self) -> str:
        return f"{self.group}/{self.in_group}"

    def __str__(self) -> str:
        b, h, w = self.size
        c_in, c_out = self.channels
        return (f"{self.pair}-k{self.k}-p{short(self.padding)}-s{short(self.stride)}-d{short(self.dilation)}-"
                f"{'bias' if self.bias else 'nobias'}-{self.layout}-{b}x{h}x{w}-c{c_in}to{c_out}")


# Rows 1-16: an orthogonal array OA(16, 5, 4, 2) over GF(4) (row (a, b) -> columns a, b, a+b, a+2b, a+3b) read as
# (group pair, k, padding, (stride, dilation), (bias, layout)); in the rows where padding is 'same' the stride is
# 1 (PyTorch rejects 'same' with stride 2), which keeps every pair covered.  Sizes are odd or prime with H != W
# where they can be, and big enough that pixel tiles and reduction blocks have ragged, masked ends.
GRID = [
    Case("p4", "z2", 1, 0, 1, 1, False, CONTIG, (2, 7, 5), channels=(17, 17)),  # two channel tiles each way
    Case("p4", "z2", 2, 1, 2, 1, True, CL, (2, 7, 9), channels=(3, 4), dy_layout=CONTIG),
    Case("p4", "z2", 3, (1, 2), 2, 2, True, CONTIG, (1, 11, 7), channels=(3, 4)),
    Case("p4", "z2", 5, "same", 1, 2, False, CL, (1, 7, 5), channels=(3, 4)),
    Case("p4", "p4", 1, 1, 1, 2, True, CONTIG, (3, 5, 7)),
    Case("p4", "p4", 2, 0, 2, 2, False, CL, (1, 9, 7)),
    Case("p4", "p4", 3, "same", 1, 1, False, CONTIG, (2, 5, 7), dy_layout=CL),
    Case("p4", "p4", 5, (1, 2), 1, 1, True, CL, (1, 7, 5)),
    Case("p4m", "z2", 1, (1, 2), 2, 1, False, CL, (2, 7, 5), channels=(3, 3)),
    Case("p4m", "z2", 2, "same", 1, 1, True, CONTIG, (1, 5, 7), channels=(3, 3)),
    Case("p4m", "z2", 3, 0, 1, 2, True, CL, (1, 7, 11), channels=(3, 3)),
    Case("p4m", "z2", 5, 1, 2, 2, False, CONTIG, (1, 11, 9), channels=(3, 3)),
    Case("p4m", "p4m", 1, "same", 1, 2, True, CL, (1, 5, 7), channels=(2, 2)),
    Case("p4m", "p4m", 2, (1, 2), 1, 2, False, CONTIG, (1, 5, 3), channels=(2, 2)),
    Case("p4m", "p4m", 3, 1, 1, 1, False, CL, (1, 5, 7), channels=(2, 2), dy_layout=CONTIG),
    Case("p4m", "p4m", 5, 0, 2, 1, True, CONTIG, (1, 7, 9), channels=(2, 2)),
    # three-way interactions: p4m G->G x stride 2 x even k in the channels-last-like layout; and per-axis
    # stride / dilation / padding that differ, so an h/w mix-up in any of them shows
    Case("p4m", "p4m", 2, 1, 2, 1, True, CL, (1, 7, 5), channels=(2, 2)),
    Case("p4", "p4", 3, (2, 1), (2, 1), (1, 2), False, CL, (2, 7, 5)),
]


def test_grid_covers_every_pair():
    """Every value of every axis, and every pair of values of two axes, appears in ``GRID`` (except the pairs
    PyTorch forbids: 'same' padding with stride 2); the interactions that matter (stride with padding, dilation,
    even kernels) are there."""
    axes = {
        "pair": ["p4/z2", "p4/p4", "p4m/z2", "p4m/p4m"],
        "k": [1, 2, 3, 5],
        "padding": [0, 1, (1, 2), "same"],
        "stride": [1, 2],
        "dilation": [1, 2],
        "bias": [False, True],
        "layout": [CONTIG, CL],
    }
    rows = [{name: getattr(case, name) for name in axes} for case in GRID]
    missing = []
    for (a, values_a), (b, values_b) in itertools.combinations(axes.items(), 2):
        for va, vb in itertools.product(values_a, values_b):
            if {(a, va), (b, vb)} == {("padding", "same"), ("stride", 2)}:
                continue
            if not any(row[a] == va and row[b] == vb for row in rows):
                missing.append(f"{a}={va!r} x {b}={vb!r}")
    assert not missing, f"pairs not covered: {missing}"
    assert any(c.pair == "p4m/p4m" and c.stride == 2 and c.k % 2 == 0 and c.layout == CL for c in GRID)


@pytest.mark.parametrize("case", GRID, ids=str)
def test_gconv_matches_reference(case: Case):
    b, h, w = case.size
    c_in, c_out = case.channels
    s_in = order_of(case.in_group)
    x = randn((b, c_in, s_in, h, w), layout=case.layout)
    weight = randn((c_out, c_in, s_in, case.k, case.k))
    bias = randn((c_out,)) if case.bias else None
    layer = gconv_layer(case.group, case.in_group, stride=case.stride, padding=case.padding,
                        dilation=case.dilation)
    y, dx = check_against_reference(layer, x, weight, bias, dy_layout=case.dy_layout)
    assert y.shape[:3] == (b, c_out, order_of(case.group))
    assert_layout(y, CL, "output")   # the layers' layout, whatever the input's
    assert_layout(dx, case.layout, "input grad")


# ------------------------------------------------------------------------- flattened 4-D input (GrouPy's)
@pytest.mark.parametrize("group, in_group, memory_format", [
    ("p4", "p4", torch.channels_last),
    ("p4m", "z2", torch.contiguous_format),
], ids=["p4-p4-channels_last", "p4m-z2-contiguous"])
def test_flattened_4d_input(group, in_group, memory_format):
    """``(B, C_in·S_in, H, W)`` input (channel index ``c·S_in + s``): same numbers as 5-D, a 5-D output; a
    channels_last input is the (B, H, W, C, S) layout seen through ``as_5d``; the output is in that layout either
    way, the input gradient in the input's."""
    s_in = order_of(in_group)
    x = torch.randn(2, 3 * s_in, 7, 5, device=DEVICE).contiguous(memory_format=memory_format)
    weight = randn((2, 3, s_in, 3, 3))
    y, dx = check_against_reference(gconv_layer(group, in_group, padding=1), x, weight, randn((2,)))
    assert y.shape == (2, 2, order_of(group), 7, 5)
    assert dx.shape == x.shape
    assert_layout(y, CL, "output")
    assert dx.is_contiguous(memory_format=memory_format)


# ------------------------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("group, in_group, groups, cig, k, stride, padding, layout", [
    ("p4", "p4", 1, 2, 3, 2, 1, CL),            # GEMM path, strided, channels-last-like
    ("p4m", "z2", 1, 3, 2, 1, "same", CONTIG),  # GEMM path, even k, asymmetric 'same' padding
    ("p4m", "p4m", 1, 2, 2, 2, (1, 2), CL),     # GEMM path, p4m G->G, even k, strided
    ("p4", "p4", 2, 1, 3, 1, 1, CL),            # depthwise path
], ids=["gemm-p4", "gemm-p4m-lifting", "gemm-p4m", "depthwise-p4"])
def test_half_precision(dtype, group, in_group, groups, cig, k, stride, padding, layout):
    """fp16 / bf16 in, fp32 accumulation, output and gradients in the input dtype within 1e-2."""
    s_in = order_of(in_group)
    x = randn((2, groups * cig, s_in, 5, 7), dtype, layout)
    weight = randn((groups * 3, cig, s_in, k, k), dtype)
    layer = gconv_layer(group, in_group, stride=stride, padding=padding, groups=groups)
    y, dx = check_against_reference(layer, x, weight, randn((groups * 3,), dtype))
    assert_layout(y, CL, "output")
    assert_layout(dx, layout, "input grad")


# -------------------------------------------------------------------------- channel groups and depthwise
# (group, in_group, groups, C_in per group, C_out per group, k, stride, padding, dilation, bias, layout, (B, H, W))
GROUPED = [
    # GEMM path with channel groups
    ("p4", "p4", 2, 2, 3, 3, 1, 1, 1, True, CL, (2, 5, 7)),
    ("p4m", "z2", 3, 2, 2, 2, 2, 0, 2, False, CONTIG, (1, 7, 9)),
    # depthwise (C_in per group == 1): multiplier 1 and > 1, lifting and G->G, k in {1, 2, 3, 5}
    ("p4", "z2", 1, 1, 3, 3, 2, 1, 1, True, CONTIG, (2, 7, 9)),    # one grey channel lifted: depthwise too
    ("p4", "p4", 3, 1, 1, 2, 1, (1, 2), 2, False, CL, (2, 5, 7)),
    ("p4m", "p4m", 2, 1, 2, 3, 1, "same", 1, True, CONTIG, (1, 5, 7)),
    ("p4m", "z2", 3, 1, 2, 5, 2, 0, 1, False, CL, (1, 9, 7)),
    ("p4", "p4", 2, 1, 3, 1, 2, 1, 1, True, CL, (3, 5, 3)),
    ("p4", "z2", 17, 1, 2, 3, 1, 1, 1, True, CONTIG, (1, 5, 7)),  # more channels than one channel tile
]


def _grouped_id(row):
    group, in_group, groups, cig, cog, k, stride, padding, dilation, bias, layout, size = row
    path = "depthwise" if cig == 1 else "gemm"
    return (f"{path}-{group}/{in_group}-g{groups}-{cig}to{cog}-k{k}-s{stride}-p{short(padding)}-d{dilation}-"
            f"{'bias' if bias else 'nobias'}-{layout}")


@pytest.mark.parametrize("row", GROUPED, ids=_grouped_id)
def test_grouped_and_depthwise(row):
    """``groups > 1`` on the GEMM kernels, and one input G-channel per group on the depthwise kernels."""
    group, in_group, groups, cig, cog, k, stride, padding, dilation, bias, layout, (b, h, w) = row
    s_in = order_of(in_group)
    x = randn((b, groups * cig, s_in, h, w), layout=layout)
    weight = randn((groups * cog, cig, s_in, k, k))
    layer = gconv_layer(group, in_group, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y, dx = check_against_reference(layer, x, weight, randn((groups * cog,)) if bias else None)
    assert_layout(y, CL, "output")
    assert_layout(dx, layout, "input grad")


@pytest.mark.parametrize("stride, padding, dilation, bias, memory_format", [
    (1, 1, 1, True, torch.contiguous_format),
    (2, (1, 2), 2, False, torch.channels_last),
], ids=["s1-p1-bias", "s2-p(1,2)-d2-channels_last"])
def test_shared_kernel_matches_repeated_depthwise_conv(stride, padding, dilation, bias, memory_format):
    """One ``(1, 1, 3, 3)`` kernel on every channel == depthwise ``F.conv2d`` with the kernel repeated; its weight
    (and bias) gradient is the sum over channels (autograd sums through ``repeat`` on the reference side)."""
    channels = 5
    x = torch.randn(2, channels, 7, 9, device=DEVICE).contiguous(memory_format=memory_format).requires_grad_()
    weight = randn((1, 1, 3, 3)).requires_grad_()
    b = randn((1,)).requires_grad_() if bias else None
    with triton_backend():
        y = functional.shared_kernel_conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation)
    dy = torch.randn(y.shape, device=DEVICE)
    inputs = [t for t in (x, weight, b) if t is not None]
    grads = torch.autograd.grad(y, inputs, dy)

    ref = [t.detach().cpu().double().requires_grad_() for t in inputs]
    y_ref = F.conv2d(ref[0], ref[1].repeat(channels, 1, 1, 1), ref[2].repeat(channels) if bias else None,
                     stride=stride, padding=padding, dilation=dilation, groups=channels)
    ref_grads = torch.autograd.grad(y_ref, ref, dy.cpu().double())
    assert_close(y, y_ref, torch.float32, "output")
    for name, grad, want in zip(("input grad", "weight grad", "bias grad"), grads, ref_grads):
        assert_close(grad, want, torch.float32, name)
    assert y.is_contiguous(memory_format=torch.channels_last)   # the layers' layout, whatever the input's
    assert grads[0].is_contiguous(memory_format=memory_format)


# ----------------------------------------------------------------------------------------------- poisoning
def test_outputs_are_poisoned_and_poison_fails():
    """The launchers NaN-fill every output before a launch (conftest sets GCONV_TRITON_POISON), and a NaN left
    in an output can never pass a comparison: an element a kernel forgets to write fails the tests above."""
    assert os.environ.get("GCONV_TRITON_POISON") == "1" and _common.poison_outputs()
    like = to_layout(torch.randn(2, 3, 4, 5, 7, device=DEVICE), CL)
    fresh = _common.empty_like_layout(like.shape, like)
    assert torch.isnan(fresh).all()
    assert_layout(fresh, CL, "empty_like_layout")

    ref = torch.randn(2, 3, 4, 5, 7, dtype=torch.float64)
    out = ref.float().clone()
    out[1, 2, 3, 4, 6] = float("nan")  # one element a kernel did not write
    assert rel_error(out, ref) == float("inf")
    with pytest.raises(AssertionError, match="relative error inf"):
        assert_close(out, ref, torch.float32, "poisoned")


# ----------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("group, in_group, groups, cig, cog, k", [
    ("p4", "p4", 1, 3, 4, 3),    # GEMM weight-gradient kernel
    ("p4", "p4", 3, 1, 2, 3),    # depthwise weight-gradient kernel
], ids=["gemm", "depthwise"])
def test_weight_grad_bitwise_deterministic(monkeypatch, group, in_group, groups, cig, cog, k):
    """Three backward passes give bitwise equal weight gradients, with the reduction split over pixel ranges
    (the partial sums are added in a fixed order: no atomics)."""
    splits = []
    real_split = _common.weight_split

    def spy(*args, **kwargs):
        splits.append(real_split(*args, **kwargs))
        return splits[-1]

    monkeypatch.setattr(_common, "weight_split", spy)  # both families look it up in _common at call time
    s_in = order_of(in_group)
    h, w = (7, 9) if INTERPRETED else (64, 64)  # a GPU splits only reductions over 4096 pixels
    x = randn((2, groups * cig, s_in, h, w))
    weight = randn((groups * cog, cig, s_in, k, k)).requires_grad_()
    with triton_backend():
        y = functional.gconv2d(x, weight, group=group, in_group=in_group, padding=1, groups=groups)
    dy = torch.randn_like(y)
    runs = [torch.autograd.grad(y, weight, dy, retain_graph=True)[0] for _ in range(3)]
    assert splits and min(splits) > 1, f"weight-gradient split {splits}: the split path did not run"
    assert all(torch.equal(runs[0], run) for run in runs[1:])
    assert torch.isfinite(runs[0]).all()


# ------------------------------------------------------------------------------- narrow forward: folded positions
class LaunchSpy:
    """Stands in for a kernel: records each launch's keyword arguments, then launches the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


# (group, in_group, C_in, k, stride, padding, dilation, layout): lifting layers whose forward folds neighbouring
# window positions of a kernel row into one K block; odd k leaves a ragged last block, dilation along H only keeps
# the fold
FOLDED = [
    ("p4", "z2", 3, 3, 1, 1, 1, CONTIG),
    ("p4m", "z2", 2, 5, 2, 2, (2, 1), CL),
    ("p4", "z2", 4, 3, (1, 2), (0, 2), 1, CONTIG),
    ("p4m", "z2", 3, 2, 1, "same", 1, CONTIG),
]


@pytest.mark.parametrize("group, in_group, c_in, k, stride, padding, dilation, layout", FOLDED,
                         ids=["p4-k3", "p4m-k5-s2-dil-h", "p4-c4-k3-stride-w", "p4m-k2-same"])
def test_narrow_forward_folds_kernel_rows(monkeypatch, group, in_group, c_in, k, stride, padding, dilation,
                                          layout):
    spy = LaunchSpy(gconv._conv_gemm_kernel)
    monkeypatch.setattr(gconv, "_conv_gemm_kernel", spy)
    x = randn((2, c_in, 1, 7, 9), layout=layout)
    weight = randn((5, c_in, 1, k, k))
    layer = gconv_layer(group, in_group, stride=stride, padding=padding, dilation=dilation)
    check_against_reference(layer, x, weight, randn((5,)))
    forward = spy.launches[0]
    assert forward["GROUP_ON_N"] and forward["K_RUN"] == k * forward["A_CH"] > forward["A_CH"], forward
    if INTERPRETED:  # the interpreter's fixed K block is what folds
        assert gconv.INTERPRETER_CONFIG["BLOCK_K"] % forward["A_CH"] == 0


@pytest.mark.parametrize("group, in_group, c_in, k, stride, padding", [
    ("p4", "p4", 3, 3, 2, 1),     # G -> G: the per-position loop, stride phases in the input gradient
    ("p4m", "z2", 3, 3, 1, 1),    # lifting: the folded forward
], ids=["p4-s2", "lift-p4m"])
def test_gemm_int64_offsets(monkeypatch, group, in_group, c_in, k, stride, padding):
    """The int64 index math that tensors past 2³¹ elements take (``WIDE``, derived at launch), forced on small ones:
    forward, input gradient and weight gradient against the float64 reference."""
    spy = LaunchSpy(gconv._conv_gemm_kernel)
    monkeypatch.setattr(gconv, "_conv_gemm_kernel", spy)
    monkeypatch.setattr(gconv, "needs_int64", lambda *tensors: True)
    monkeypatch.setattr(wgrad, "needs_int64", lambda *tensors: True)
    x = randn((2, c_in, order_of(in_group), 7, 9))
    weight = randn((5, c_in, order_of(in_group), k, k))
    check_against_reference(gconv_layer(group, in_group, stride=stride, padding=padding), x, weight, randn((5,)))
    assert len(spy.launches) == 2


def test_position_steps_are_affine_along_rows():
    """A rotation or reflection moves each kernel row onto a row or column of the base filter: the base position under
    window position (th, tw) is the one under (th, 0) plus tw steps, for every element of p4 and p4m."""
    for group in ("p4", "p4m"):
        for kernel in ((3, 3), (2, 2), (5, 5)):
            steps = gconv.position_steps(get_group(group), get_group("z2"), kernel, torch.device("cpu"))
            _, source = _common.gather_tables(get_group(group), get_group("z2"), kernel, torch.device("cpu"))
            src = source.reshape(-1, *kernel).long()
            expected = src[:, :, :1] + torch.arange(kernel[1]) * steps.long()[:, None, None]
            assert torch.equal(src, expected)
            assert set(steps.abs().tolist()) == {1, kernel[1]}  # rows onto rows and onto columns
    assert gconv.position_steps(get_group("p4"), get_group("z2"), (3, 1), torch.device("cpu")) is None



# (group, in_group, C_in, C_out, k, stride, padding, K-major under tf32 (forward, input gradient)): a folded lifting
# layer, a lifting layer whose channels fill whole K blocks, a plain convolution (K-major both ways: no stabilizer
# and no group copies along K), and G -> G layers whose stabilizer permutes each K run (N-major, the MMA transposed;
# their input gradients split into stride phases)
WEIGHT_LAYOUTS = [
    ("p4m", "z2", 3, 5, 3, 1, 1, (True, False)),
    ("p4", "z2", 16, 3, 3, 2, 1, (True, False)),
    ("z2", "z2", 3, 5, 3, 2, 1, (True, True)),
    ("p4", "p4", 3, 5, 3, 2, 1, (False, False)),
    ("p4m", "p4m", 2, 3, 2, 1, "same", (False, False)),
]


@pytest.mark.parametrize("tf32", [True, False], ids=["tf32", "ieee"])
@pytest.mark.parametrize("group, in_group, c_in, c_out, k, stride, padding, k_major", WEIGHT_LAYOUTS,
                         ids=["lift-p4m-folded", "lift-p4-c16", "plain", "p4-s2", "p4m-same"])
def test_weight_layouts_match_reference(monkeypatch, tf32, group, in_group, c_in, c_out, k, stride, padding,
                                        k_major):
    """fp32 with tf32 allowed lays the rotated filter out K-major where its K runs are contiguous (tf32 MMAs read
    both operands K-major), else N-major with the MMA transposed; without tf32, N-major.  Every combination,
    forward and input gradient, against the float64 reference."""
    spy = LaunchSpy(gconv._conv_gemm_kernel)
    monkeypatch.setattr(gconv, "_conv_gemm_kernel", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    x = randn((2, c_in, order_of(in_group), 7, 9))
    weight = randn((c_out, c_in, order_of(in_group), k, k))
    check_against_reference(gconv_layer(group, in_group, stride=stride, padding=padding), x, weight, randn((c_out,)))
    assert [launch["PRECISION"] for launch in spy.launches] == ["tf32" if tf32 else "ieee"] * 2
    assert tuple(launch["K_MAJOR"] for launch in spy.launches) == (k_major if tf32 else (False, False))

# ------------------------------------------------------------------------------------- no filter bank
# (group, in_group, groups, C_in per group, C_out per group, k): the bank C_out·S·C_in·S·k² dwarfs x, y and w
NO_BANK = [
    ("p4", "p4", 1, 4, 4, 5),     # bank 6400; x, y 400; weight 1600
    ("p4m", "p4m", 1, 3, 3, 3),   # bank 5184; x, y 600; weight 648
    ("p4m", "p4m", 4, 1, 1, 3),   # depthwise: bank 2304; x, y 288 (3x3 images); weight 288
]


@pytest.mark.parametrize("group, in_group, groups, cig, cog, k", NO_BANK,
                         ids=["p4-gemm", "p4m-gemm", "p4m-depthwise"])
def test_no_filter_bank_is_allocated(group, in_group, groups, cig, cog, k):
    """No aten op makes a tensor of filter-bank size in forward or backward through the kernels; the reference
    path does (so the recorder would catch one)."""
    s = order_of(in_group)
    size = 3 if cig == 1 else 5
    x = randn((1, groups * cig, s, size, size)).requires_grad_()
    weight = randn((groups * cog, cig, s, k, k)).requires_grad_()
    bias = randn((groups * cog,)).requires_grad_()
    layer = gconv_layer(group, in_group, padding=k // 2, groups=groups)
    spec = make_spec(x, weight, bias, group=group, in_group=in_group, stride=1, padding=k // 2, dilation=1,
                     groups=groups)
    bank = spec.bank_numel() * x.element_size()  # bytes

    def forward_backward(backend, recorder):
        with backend(), recorder:
            y = layer(x, weight, bias)
            torch.autograd.grad(y, (x, weight, bias), torch.randn_like(y))
        return recorder, y

    if not INTERPRETED:  # compile and autotune first: do_bench's L2-flush buffer is not the conv's memory
        forward_backward(triton_backend, contextlib.nullcontext())
    recorder, y = forward_backward(triton_backend, AllocationRecorder())
    largest_operand = max(x.numel(), y.numel(), weight.numel()) * x.element_size()
    assert 4 * largest_operand <= bank  # the shapes make the check meaningful
    assert recorder.largest < bank, f"{recorder.largest_op} made a tensor of {recorder.largest} bytes " \
                                    f"(filter bank: {bank} bytes)"
    reference, _ = forward_backward(torch_backend, AllocationRecorder())
    assert reference.largest >= bank, f"the reference path's largest tensor is {reference.largest} bytes, " \
                                      f"not the bank's {bank}: the recorder does not see inside the ops"


# -------------------------------------------------------------------------------------------- memory layout
LAYOUT_CASES = [  # (group, in_group, groups, C_in per group): the GEMM and the depthwise input-gradient kernels
    ("p4", "z2", 1, 2),
    ("p4", "p4", 2, 1),
]


@pytest.mark.parametrize("group, in_group, groups, cig", LAYOUT_CASES, ids=["gemm", "depthwise"])
@pytest.mark.parametrize("layout", [CONTIG, CL])
def test_input_grad_launcher_keeps_layout(group, in_group, groups, cig, layout):
    """``kernels.input_grad(dy, w, spec, dim_order(x))`` writes ``dx`` in ``x``'s memory layout, whatever ``dy``'s."""
    s_in = order_of(in_group)
    x = randn((2, groups * cig, s_in, 5, 7), layout=layout)
    weight = randn((groups * 3, cig, s_in, 1, 1))
    spec = make_spec(x, weight, None, group=group, in_group=in_group, stride=2, padding=1, dilation=1,
                     groups=groups)
    dy = randn((2, groups * 3, order_of(group), spec.out_height, spec.out_width), layout=CONTIG if layout == CL else CL)
    dx = kernels.input_grad(dy, weight, spec, dim_order(x))
    assert dx.shape == x.shape and torch.isfinite(dx).all()
    assert_layout(dx, layout, "input grad")


# (group, in_group, C_in, C_out, k, stride, padding, dilation, groups, (B, H, W), dtype, tf32, x's layout, int64
# offsets, read in place): a channels-first dy is read in place where each image's phase grid is as wide as dy and
# a whole number of pixel tiles (128 pixels), else copied channels-last
CHANNELS_FIRST_DY = [
    ("p4", "p4", 2, 3, 3, 1, 1, 1, 1, (2, 16, 8), torch.float32, True, CONTIG, False, True),   # tf32: element-major
    ("p4", "p4", 2, 16, 3, 2, 1, 1, 1, (1, 32, 16), torch.float32, True, CL, False, True),     # whole blocks, stride 2
    ("ring8", "ring8", 2, 16, 3, 1, 1, 1, 1, (1, 16, 8), torch.float32, True, CL, True, True),  # int64, user group
    ("p4m", "p4m", 16, 2, 3, 1, 1, 1, 1, (1, 16, 8), torch.float32, True, CL, False, True),    # a tile, one s_in
    ("p4m", "p4m", 2, 2, 5, 1, 2, 1, 1, (1, 16, 8), torch.float64, False, CL, False, True),    # 5x5
    ("p4", "p4", 2, 3, 3, 2, 1, 1, 1, (1, 32, 16), torch.float32, False, CL, False, True),     # stride 2: 4 phases
    ("p4m", "p4m", 2, 2, 4, 2, 1, 1, 2, (1, 32, 16), torch.float32, True, CONTIG, False, True),  # groups 2, even k
    ("ring8", "ring8", 2, 2, 3, 1, 1, 1, 1, (1, 16, 8), torch.float64, False, CL, False, True),  # a user group
    ("p4", "z2", 3, 4, 3, 1, 1, 1, 1, (2, 16, 8), torch.float32, True, CONTIG, False, True),   # lifting: S_in 1
    ("z2", "z2", 3, 4, 3, 1, 1, 1, 1, (1, 16, 8), torch.float32, True, CL, False, True),       # tf32 K-major weight
    ("p4", "p4", 2, 3, 3, 1, (0, 2), 2, 1, (1, 16, 8), torch.float32, False, CONTIG, False, True),  # H_out < H, dilated
    ("p4", "p4", 2, 3, 3, 2, 1, 1, 1, (2, 32, 16), torch.float64, False, CL, True, True),      # int64 offsets
    ("p4", "p4", 2, 3, 3, 1, 0, 1, 1, (1, 16, 8), torch.float32, False, CONTIG, False, False),  # W_out < W: copied
    ("p4", "p4", 2, 3, 3, 1, 1, 1, 1, (2, 8, 8), torch.float32, True, CL, False, False),       # 64 pixels per image
    ("p4m", "p4m", 2, 2, 3, 1, 1, 1, 1, (1, 16, 8), torch.bfloat16, False, CL, False, False),  # 16-bit: copied
    ("p4", "p4", 2, 3, 3, 2, 1, 1, 1, (1, 32, 16), torch.float16, False, CONTIG, False, False),
    ("z2", "z2", 3, 3, 3, 1, 1, 1, 1, (1, 16, 8), torch.float32, False, CONTIG, False, False),  # 3 channels padded
]


@pytest.mark.parametrize("group, in_group, c_in, c_out, k, stride, padding, dilation, groups, size, dtype, tf32, "
                         "x_layout, wide, in_place", CHANNELS_FIRST_DY,
                         ids=lambda v: short(v) if not isinstance(v, torch.dtype) else str(v).split(".")[-1])
def test_input_grad_reads_channels_first_dy_in_place(monkeypatch, group, in_group, c_in, c_out, k, stride, padding,
                                                     dilation, groups, size, dtype, tf32, x_layout, wide, in_place):
    """A contiguous ``dy`` (the loss's) is read in place by the input gradient (no channels-last copy) where
    :func:`~gconv_triton.kernels.group_conv.reads_channels_first_dy` says so, and copied elsewhere; in tf32 it then
    reads its weight K-major, element-major (``_element_major_loop``); ``dx``, in ``x``'s layout, is the float64
    reference's either way."""
    copies = []
    launches = LaunchSpy(gconv._conv_gemm_kernel)
    monkeypatch.setattr(gconv, "_conv_gemm_kernel", launches)

    def spy(t, *args, **kwargs):
        copies.append(tuple(t.shape))
        return channels_last(t, *args, **kwargs)
    channels_last = gconv.channels_last
    monkeypatch.setattr(gconv, "channels_last", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    if wide:
        monkeypatch.setattr(gconv, "needs_int64", lambda *tensors: True)
    b, h, w = size
    group, in_group = USER_GROUPS.get(group, group), USER_GROUPS.get(in_group, in_group)
    s_in, s_out = order_of(in_group), order_of(group)
    x = randn((b, groups * c_in, s_in, h, w), dtype, x_layout)
    weight = randn((groups * c_out, c_in, s_in, k, k), dtype)
    spec = make_spec(x, weight, None, group=group, in_group=in_group, stride=stride, padding=padding,
                     dilation=dilation, groups=groups)
    dy = randn((b, groups * c_out, s_out, spec.out_height, spec.out_width), dtype)
    assert gconv.reads_channels_first_dy(dy, spec) == in_place
    with triton_backend():
        dx = kernels.input_grad(dy, weight, spec, dim_order(x))
    assert copies == ([] if in_place else [tuple(dy.shape)]), copies
    assert launches.launches[0]["K_MAJOR"] == (tf32 and (in_place or s_in == s_out == 1))
    want = bank_conv_input_grad(dy.cpu().double(), weight.cpu().double(), spec, tuple(x.shape))
    assert_close(dx, want, dtype, "input grad")
    assert_layout(dx, x_layout, "input grad")


@pytest.mark.parametrize("x_layout, dy_layout", [(CL, CONTIG), (CONTIG, CL), (CONTIG, CONTIG)],
                         ids=["x-cl-dy-first", "x-first-dy-cl", "both-first"])
def test_input_grad_takes_the_forwards_weight_in_either_layout(monkeypatch, x_layout, dy_layout):
    """The forward lays the input gradient's weight out for the ``dy`` that ``x``'s layout suggests (element-major
    in tf32 after a channels-first ``x``, else N-major); the input gradient reads it with either ``dy`` (no second
    re-layout), and ``dx`` and every other gradient are the float64 reference's."""
    relaid = []
    permuted_weight = gconv.permuted_weight

    def spy(*args, **kwargs):
        relaid.append(args[2])   # group_on_n
        return permuted_weight(*args, **kwargs)
    monkeypatch.setattr(gconv, "permuted_weight", spy)
    launches = LaunchSpy(gconv._conv_gemm_kernel)
    monkeypatch.setattr(gconv, "_conv_gemm_kernel", launches)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    x = randn((1, 2, 4, 16, 8), torch.float32, x_layout)
    weight = randn((16, 2, 4, 3, 3))
    check_against_reference(gconv_layer("p4", "p4", padding=1), x, weight, randn((16,)), dy_layout=dy_layout)
    assert relaid == []
    forward, input_grad = launches.launches[:2]
    assert not input_grad["GROUP_ON_N"] and input_grad["K_MAJOR"] == (x_layout == CONTIG)


# (group, in_group, C_in, k, stride, padding, dilation, groups, (B, H, W), dtype, tf32, int64 offsets, read in
# place, read in place by the backward too): a channels-first x is read in place by a stride-1 forward whose output
# is as wide as x and a whole number of pixel tiles (128 pixels) per image, else copied into the zero-halo
# channels-last buffer; the orbit weight gradient reads it in place too where it runs (an MMA: not fp32 without tf32)
CHANNELS_FIRST_X = [
    ("p4", "p4", 2, 3, 1, 1, 1, 1, (2, 16, 8), torch.float32, True, False, True, True),       # tf32: transposed MMA
    ("p4m", "p4m", 2, 5, 1, 2, 1, 1, (1, 16, 8), torch.float64, False, False, True, True),    # 5x5
    ("p4", "p4", 2, 3, 1, (0, 2), 2, 1, (1, 20, 8), torch.float32, False, False, True, False),  # H_out < H, dilated
    ("p4m", "p4m", 2, 3, 1, 1, 1, 2, (1, 16, 8), torch.float32, True, False, True, True),     # groups 2
    ("ring8", "ring8", 2, 3, 1, 1, 1, 1, (1, 16, 8), torch.float64, False, False, True, True),  # a user group
    ("p4", "z2", 8, 3, 1, 1, 1, 1, (2, 16, 8), torch.float32, True, False, True, True),       # lifting, K-major weight
    ("p4", "p4", 2, 3, 1, 1, 1, 1, (2, 16, 8), torch.float64, False, True, True, True),       # int64 offsets
    ("p4", "p4", 2, 3, 2, 1, 1, 1, (1, 32, 16), torch.float32, False, False, False, False),   # stride 2: copied
    ("p4", "p4", 2, 3, 1, 0, 1, 1, (1, 16, 8), torch.float32, False, False, False, False),    # W_out < W
    ("p4", "p4", 2, 3, 1, 1, 1, 1, (2, 8, 8), torch.float32, True, False, False, False),      # 64 pixels per image
    ("p4m", "p4m", 2, 3, 1, 1, 1, 1, (1, 16, 8), torch.bfloat16, False, False, False, False),  # 16-bit
    ("p4", "z2", 3, 3, 1, 1, 1, 1, (1, 16, 8), torch.float32, False, False, False, False),    # 3 channels padded
]


@pytest.mark.parametrize("group, in_group, c_in, k, stride, padding, dilation, groups, size, dtype, tf32, wide, "
                         "in_place, backward_in_place", CHANNELS_FIRST_X,
                         ids=lambda v: short(v) if not isinstance(v, torch.dtype) else str(v).split(".")[-1])
def test_forward_reads_channels_first_x_in_place(monkeypatch, group, in_group, c_in, k, stride, padding, dilation,
                                                 groups, size, dtype, tf32, wide, in_place, backward_in_place):
    """A contiguous ``x`` (a first layer's) is read in place by the forward (no zero-halo copy, none saved) where
    :func:`~gconv_triton.kernels.group_conv.reads_channels_first_x` says so, and copied elsewhere; where the orbit
    weight gradient reads it in place too, the step makes no copy of ``x`` at all.  The output and every gradient
    are the float64 reference's either way."""
    copies = _spy_on_halo_copies(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    if wide:
        monkeypatch.setattr(gconv, "needs_int64", lambda *tensors: True)
        monkeypatch.setattr(wgrad, "needs_int64", lambda *tensors: True)
    b, h, w = size
    group, in_group = USER_GROUPS.get(group, group), USER_GROUPS.get(in_group, in_group)
    s_in = order_of(in_group)
    x = randn((b, groups * c_in, s_in, h, w), dtype, CONTIG)
    weight = randn((groups * 3, c_in, s_in, k, k), dtype)
    spec = make_spec(x, weight, None, group=group, in_group=in_group, stride=stride, padding=padding,
                     dilation=dilation, groups=groups)
    assert gconv.reads_channels_first_x(x, spec) == in_place
    assert (gconv.input_copy_shape(x, spec) is None) == in_place
    layer = gconv_layer(group, in_group, stride=stride, padding=padding, dilation=dilation, groups=groups)
    check_against_reference(layer, x, weight, randn((groups * 3,), dtype))
    # the forward's copy (the backward reads it), or the weight gradient's where only the forward reads x in place
    assert copies == ([] if backward_in_place else [tuple(x.shape)]), copies


def _spy_on_halo_copies(monkeypatch) -> list:
    """The shapes of the inputs that the forward and the weight gradient copy into zero-halo channels-last
    buffers (:func:`~gconv_triton.kernels.group_conv.halo_channels_last`), as they are made."""
    copies = []
    halo_channels_last = gconv.halo_channels_last

    def spy(t, *args, **kwargs):
        copies.append(tuple(t.shape))
        return halo_channels_last(t, *args, **kwargs)
    monkeypatch.setattr(gconv, "halo_channels_last", spy)
    monkeypatch.setattr(wgrad, "halo_channels_last", spy)
    return copies


# (group, in_group, C_out, groups, BLOCK_N, K-major, slot order): a tf32 forward that reads a channels-first x of
# a group input lays its weight out K-major where C_out is a multiple of 32; a tile whose columns share one group
# element then reads x in that element's slot order, one over several elements gathers the weight in stabilizer
# order
SLOT_ORDER = [
    ("p4m", "p4m", 32, 1, 16, True, True),
    ("p4", "p4", 32, 2, 16, True, True),         # groups 2
    ("ring8", "ring8", 32, 1, 16, True, True),   # a user group
    ("p4", "p4", 32, 1, 64, True, False),        # tiles across two elements
    ("p4m", "p4m", 24, 1, 16, False, False),     # N-major, the MMA transposed
]


@pytest.mark.parametrize("group, in_group, c_out, groups, block_n, k_major, slot_order", SLOT_ORDER,
                         ids=lambda v: short(v) if not isinstance(v, bool) else str(v))
def test_tf32_forward_of_channels_first_group_input_reads_k_major_weight(monkeypatch, group, in_group, c_out, groups,
                                                                        block_n, k_major, slot_order):
    """A tf32 forward that reads a group input channels-first in place lays its rotated filter out K-major where
    tiles keep one group element (16-byte runs along K once the lanes read the input in slot order: ``SLOT_ORDER``
    in ``_conv_gemm_kernel``); output and every gradient match the float64 reference whichever way it runs."""
    spy = LaunchSpy(gconv._conv_gemm_kernel)
    monkeypatch.setattr(gconv, "_conv_gemm_kernel", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setitem(gconv.INTERPRETER_CONFIG, "BLOCK_N", block_n)
    group, in_group = USER_GROUPS.get(group, group), USER_GROUPS.get(in_group, in_group)
    s_in, c_in = order_of(in_group), 3
    x = randn((1, groups * c_in, s_in, 16, 8), torch.float32, CONTIG)
    weight = randn((groups * c_out, c_in, s_in, 3, 3))
    spec = make_spec(x, weight, None, group=group, in_group=in_group, stride=1, padding=1, dilation=1, groups=groups)
    assert gconv.reads_channels_first_x(x, spec)
    check_against_reference(gconv_layer(group, in_group, padding=1, groups=groups), x, weight,
                            randn((groups * c_out,)))
    forward, input_grad = spy.launches[:2]
    assert forward["GROUP_ON_N"] and forward["PRECISION"] == "tf32" and forward["K_MAJOR"] == k_major
    assert (k_major and forward["R_PAD"] % block_n == 0) == slot_order
    # the input gradient's weight, built by the forward's launch: element-major for the channels-first dy that a
    # channels-first x suggests, read here with the layer's own channels-last dy
    assert not input_grad["GROUP_ON_N"] and input_grad["K_MAJOR"]


@pytest.mark.parametrize("group, in_group, c_in, k, padding, dilation, groups, size, dtype, tf32, wide, dy_layout, "
                         "in_place", [
    ("p4", "p4", 2, 3, 1, 1, 1, (3, 16, 8), torch.float32, True, False, CONTIG, True),      # tf32, a split: 1.5 maps
    ("p4m", "p4m", 2, 5, 2, 1, 1, (1, 16, 8), torch.float64, False, False, CONTIG, True),   # 5x5, 16-pixel blocks
    ("p4", "p4", 2, 3, (0, 2), 2, 1, (1, 20, 8), torch.float32, True, False, CONTIG, True),  # H_out < H, dilated
    ("p4m", "p4m", 2, 3, 1, 1, 2, (1, 16, 8), torch.float32, True, False, CONTIG, True),    # groups 2
    ("ring8", "ring8", 2, 3, 1, 1, 1, (1, 16, 8), torch.float64, False, False, CONTIG, True),  # a user group
    ("p4", "z2", 8, 3, 1, 1, 1, (2, 16, 8), torch.float32, True, False, CONTIG, True),      # lifting: S_in 1
    ("p4", "p4", 2, 3, 1, 1, 1, (3, 16, 8), torch.float64, False, True, CONTIG, True),      # int64 offsets
    ("p4", "p4", 2, 3, 1, 1, 1, (1, 16, 8), torch.float32, False, False, CONTIG, False),    # fp32: re-laid, copy
    ("p4", "p4", 2, 3, 1, 1, 1, (3, 16, 8), torch.float32, True, False, CL, True),          # dy channels-last
    ("p4m", "p4m", 2, 5, 2, 1, 2, (2, 16, 8), torch.float64, False, False, CL, True),       # and 5x5, groups 2
], ids=lambda v: short(v) if not isinstance(v, torch.dtype) else str(v).split(".")[-1])
def test_weight_grad_reads_channels_first_x_in_place(monkeypatch, group, in_group, c_in, k, padding, dilation, groups,
                                                     size, dtype, tf32, wide, dy_layout, in_place):
    """A contiguous ``x`` that the forward reads in place (:func:`~gconv_triton.kernels.group_conv.
    reads_channels_first_x`) is read in place by the orbit weight gradient too, ``dy`` channels-first or
    channels-last (the padding masked per row and window position), with no zero-halo copy; else (fp32 without
    tf32: the re-laid loop) copied.
    ``dw`` and ``db`` are the float64 reference's either way."""
    copies = _spy_on_halo_copies(monkeypatch)
    if wide:
        monkeypatch.setattr(wgrad, "needs_int64", lambda *tensors: True)
    relaid = _check_weight_grad_and_bias(monkeypatch, group, in_group, c_in, 3, k, 1, padding, dilation, groups,
                                         False, CONTIG, size, dtype, dy_layout=dy_layout, tf32=tf32)
    assert copies == ([] if in_place else [(size[0], groups * c_in, order_of(in_group), *size[1:])]), copies
    assert relaid == (0 if in_place else 1), f"dy re-laid {relaid} times"


@pytest.mark.parametrize("group, in_group, groups, cig", LAYOUT_CASES, ids=["gemm", "depthwise"])
def test_input_grad_keeps_input_layout(group, in_group, groups, cig):
    """Through autograd, the input gradient of a channels-last-like input keeps that layout (as the output does)."""
    s_in = order_of(in_group)
    x = randn((2, groups * cig, s_in, 5, 7), layout=CL).requires_grad_()
    weight = randn((groups * 3, cig, s_in, 1, 1))
    with triton_backend():
        y = functional.gconv2d(x, weight, group=group, in_group=in_group, groups=groups)
    (dx,) = torch.autograd.grad(y, x, torch.randn_like(y))  # raw, as the backward returned it
    assert_layout(y, CL, "output")
    assert_layout(dx, CL, "input grad")


@pytest.mark.parametrize("shape, in_group, make_layout", [
    ((2, 3, 5, 7), "z2", lambda t: t.contiguous(memory_format=torch.channels_last)),  # (B, C·S, H, W), S_in = 1
    ((2, 1, 4, 5, 7), "p4", lambda t: to_layout(t, CL)),                               # C_in = 1
], ids=["lifting-4d-channels_last", "one-channel-cl"])
def test_output_layout_ignores_size_one_dims(shape, in_group, make_layout):
    """A (B, H, W, C, S)-ordered input whose C or S is 1 (so that dim's stride says nothing) still gives a
    (B, H, W, C, S)-ordered output."""
    x = make_layout(torch.randn(shape, device=DEVICE))
    c_in = shape[1] // order_of(in_group) if len(shape) == 4 else shape[1]
    weight = randn((3, c_in, order_of(in_group), 1, 1))
    with triton_backend():
        y = functional.gconv2d(x, weight, group="p4", in_group=in_group)
    assert_layout(y, CL, "output")


# ------------------------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("cig", [
    2,
    1,
], ids=["gemm", "depthwise"])
def test_empty_batch(cig):
    """B = 0: an empty output of the right shape, an empty input gradient, zero weight and bias gradients."""
    groups = 2
    x = randn((0, groups * cig, 4, 5, 7), layout=CL).requires_grad_()
    weight = randn((groups * 3, cig, 4, 3, 3)).requires_grad_()
    bias = randn((groups * 3,)).requires_grad_()
    with triton_backend():
        y = functional.gconv2d(x, weight, bias, group="p4", in_group="p4", padding=1, groups=groups)
        dx, dw, db = torch.autograd.grad(y, (x, weight, bias), torch.empty_like(y))
    assert y.shape == (0, groups * 3, 4, 5, 7)
    assert dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(weight)) and torch.equal(db, torch.zeros_like(bias))


@pytest.mark.skipif(not INTERPRETED, reason="the interpreter-only fixed config is what this checks")
def test_interpreter_config_is_exercised():
    """The grid above reaches ragged tiles: some case has more pixels than one BLOCK_M tile and a reduction longer
    than one BLOCK_K block (else masking bugs could hide)."""
    cfg = gconv.INTERPRETER_CONFIG
    pixels = [c.size[0] * c.size[1] * c.size[2] for c in GRID]
    reduction = [c.channels[0] * order_of(c.in_group) * c.k * c.k for c in GRID]
    assert max(pixels) > cfg["BLOCK_M"] and max(reduction) > cfg["BLOCK_K"]
    assert max(c.channels[1] for c in GRID) > cfg["BLOCK_N"]


# ------------------------------------------------------------------------------- nothing done twice in a step
@pytest.mark.parametrize("group, in_group, groups, cig, padding, layout", [
    ("p4", "p4", 1, 3, 1, CONTIG),     # GEMM path: the forward's zero-halo copy
    ("p4m", "z2", 1, 3, 2, CL),        # a narrow lifting input: padded to 8 channels even when channels-last
    ("p4", "p4", 3, 1, 1, CONTIG),     # depthwise: the forward's channels-last copy
], ids=["gemm-halo", "gemm-lifting-channels", "depthwise"])
def test_weight_grad_reads_the_forwards_copy_of_x(monkeypatch, group, in_group, groups, cig, padding, layout):
    """The forward's channels-last copy of ``x`` is saved and the weight gradient reads it: ``x`` is copied once
    per step (not again in the backward), and every gradient still matches the float64 reference."""
    copies = []
    for module, name in ((wgrad, "halo_channels_last"), (gconv, "halo_channels_last"), (gconv, "channels_last")):
        real = getattr(module, name)

        def spy(t, *args, _real=real, _name=name, **kwargs):
            if t.dim() == 5 and t.shape[1] == groups * cig:   # x's copies, not dy's
                copies.append(_name)
            return _real(t, *args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(kernels.group_conv_depthwise, "channels_last", gconv.channels_last)
    s_in = order_of(in_group)
    x = randn((2, groups * cig, s_in, 5, 7), layout=layout)
    weight = randn((groups * 2, cig, s_in, 3, 3))
    layer = gconv_layer(group, in_group, padding=padding, groups=groups)
    check_against_reference(layer, x, weight, randn((groups * 2,)))
    # the forward's copy only (depthwise makes it inline, without the helpers)
    assert copies == ([] if cig == 1 else ["halo_channels_last"]), copies


def test_window_offsets_are_built_once_per_geometry_and_never_fake():
    """The weight gradient's per-pixel window offsets are cached per geometry and device: the same tensor on the
    second call, a fresh one for another stride; a first call under fake-tensor tracing caches a real tensor."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    def spec_for(stride, batch=2):
        x = torch.empty(batch, 3, 4, 9, 7)
        return make_spec(x, torch.empty(2, 3, 4, 3, 3), None, group="p4", in_group="p4", stride=stride,
                         padding=1, dilation=1, groups=1)

    x_cl = torch.empty(2, 11, 9, 12)
    first = wgrad._window_offsets(x_cl, spec_for(1), 128, False)
    assert wgrad._window_offsets(x_cl, spec_for(1), 128, False) is first
    other = wgrad._window_offsets(x_cl, spec_for(2), 128, False)
    assert other is not first and not torch.equal(other, first)
    # 2·9·7 = 126 pixels, then zeros
    assert first[:3].tolist() == [0, 12, 24] and first[126:].eq(0).all() and first[125] != 0
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.empty(5, 11, 9, 12))
        traced = wgrad._window_offsets(fake, spec_for(1, batch=5), 320, False)
    assert not isinstance(traced, FakeTensor)
    assert wgrad._window_offsets(torch.empty(5, 11, 9, 12), spec_for(1, batch=5), 320, False) is traced


@pytest.mark.parametrize("dy_layout", [CL, CONTIG])
@pytest.mark.parametrize("groups, c_out, size", [(1, 3, (2, 5, 7)), (2, 8, (1, 8, 8))],
                         ids=["ragged-pixels-padded-channels", "whole-blocks-groups2"])
def test_weight_grad_takes_dy_in_either_layout(dy_layout, groups, c_out, size):
    """The weight gradient takes ``dy`` in either layout (the layers' ``(B, H, W, C, S)`` or contiguous; read in
    place or re-laid in one copy), with pixels past the last whole block and channels past ``C_out``: the float64
    reference's ``dw``."""
    b, h, w = size
    x = randn((b, groups * 2, 4, h, w), layout=CL)
    weight = randn((groups * c_out, 2, 4, 3, 3))
    dy = randn((b, groups * c_out, 4, h, w), layout=dy_layout)
    spec = make_spec(x, weight, None, group="p4", in_group="p4", stride=1, padding=1, dilation=1, groups=groups)
    with triton_backend():
        dw = kernels.weight_grad(dy, x, spec, tuple(weight.shape))
    want = bank_conv_weight_grad(dy.cpu().double(), x.cpu().double(), spec, tuple(weight.shape))
    assert_close(dw, want, torch.float32, "weight grad")


@pytest.mark.parametrize("group, in_group, c_in, c_out, k, stride, padding, dilation, groups, shared, x_layout, size, "
                         "dtype", [
    ("p4", "p4", 3, 5, 3, 1, 1, 1, 1, False, CL, (2, 5, 7), torch.float32),      # x in place too: the zero page
    ("p4", "p4", 2, 7, 3, 1, 0, 1, 1, False, CONTIG, (2, 6, 5), torch.bfloat16),  # no padding: the corner table
    ("p4m", "p4m", 2, 3, 3, 2, 2, 1, 1, False, CL, (1, 9, 7), torch.float64),     # stride 2, padding 2, S_out 8
    ("p4m", "p4m", 3, 2, 3, 1, 1, 2, 1, False, CONTIG, (1, 7, 9), torch.float32), # dilation 2, a halo copy of x
    ("p4", "z2", 3, 11, 3, 1, 1, 1, 1, False, CONTIG, (2, 5, 6), torch.float32),  # lifting: 3 channels padded to 8
    ("p4m", "z2", 16, 3, 3, 1, 1, 1, 1, False, CL, (1, 6, 5), torch.bfloat16),    # lifting read in place
    ("p4", "p4", 2, 3, 3, 1, 1, 1, 3, False, CL, (2, 5, 7), torch.float32),       # groups 3
    ("p4", "p4", 4, 13, 1, 1, 0, 1, 2, True, CONTIG, (1, 5, 5), torch.float64),   # 1x1, a slice shared by 2 groups
    ("p4m", "p4m", 2, 17, 3, 1, 1, 1, 1, False, CL, (3, 7, 11), torch.bfloat16),  # 231 pixels: ragged, prime C_out
    ("p4", "p4", 2, 32, 3, 1, 1, 1, 1, False, CL, (2, 5, 7), torch.bfloat16),     # p4, 32 output channels
    ("p4m", "p4m", 2, 3, 5, 1, 2, 1, 1, False, CONTIG, (2, 6, 7), torch.float64), # 5x5: an orbit of 8 positions
    ("p4m", "p4m", 3, 5, 3, 2, 1, 1, 2, False, CL, (2, 15, 9), torch.float64),    # stride 2, groups 2, split 2
    ("ring8", "ring8", 2, 3, 3, 1, 1, 1, 1, False, CL, (2, 5, 7), torch.float32), # a user group: an orbit of 8
    ("p2mm_shuffled", "p2mm_shuffled", 2, 6, 3, 1, 1, 2, 1, False, CL, (1, 9, 8), torch.float64),  # orbits of 2
    ("z2", "z2", 5, 7, 3, 1, 1, 1, 1, False, CL, (2, 5, 7), torch.float32),       # S_out 1: one position each
], ids=lambda v: short(v) if not isinstance(v, torch.dtype) else str(v).split(".")[-1])
def test_weight_grad_reads_dy_in_place(monkeypatch, group, in_group, c_in, c_out, k, stride, padding, dilation,
                                       groups, shared, x_layout, size, dtype):
    """``dy`` stored ``(B, H, W, C, S)``, as every layer of the package hands it on, is read in place by the
    weight-gradient launch (no re-layout of ``dy``), which also writes the bias gradient's partial sums: ``dw`` and
    ``db`` are the float64 reference's: the orbit loop (``_orbit_weight_grad_kernel``) over 3x3 and 5x5 windows,
    built-in and user groups, ``S_out`` from 1 to 8, strides, dilation, splits, channel groups."""
    relaid = _check_weight_grad_and_bias(monkeypatch, group, in_group, c_in, c_out, k, stride, padding, dilation,
                                         groups, shared, x_layout, size, dtype, dy_layout=CL)
    assert relaid == 0, "dy was re-laid"


@pytest.mark.parametrize("group, in_group, c_in, c_out, k, stride, padding, dilation, groups, shared, x_layout, size, "
                         "dtype, in_place", [
    ("p4", "p4", 3, 5, 3, 1, 1, 1, 1, False, CL, (3, 8, 16), torch.bfloat16, True),  # a split starts mid-image
    ("p4", "z2", 3, 11, 3, 1, 1, 1, 1, False, CONTIG, (1, 8, 8), torch.float16, True),   # lifting, a halo copy
    ("p4m", "p4m", 2, 3, 5, 1, 2, 1, 1, False, CONTIG, (1, 8, 8), torch.float32, True),  # 5x5: an orbit of 8, tf32
    ("p4m", "p4m", 3, 5, 3, 2, 1, 1, 2, False, CL, (2, 16, 16), torch.float64, True),    # stride 2, groups 2, split
    ("p4", "p4", 4, 13, 1, 1, 0, 1, 2, True, CONTIG, (1, 8, 8), torch.bfloat16, True),   # a slice shared by 2 groups
    ("ring8", "ring8", 2, 3, 3, 1, 1, 1, 1, False, CL, (1, 8, 8), torch.float32, True),  # a user group
    ("z2", "z2", 5, 7, 3, 1, 1, 1, 1, False, CL, (2, 8, 8), torch.bfloat16, True),       # S_out 1
    ("p4m", "p4m", 2, 3, 3, 1, 1, 1, 1, False, CL, (2, 4, 4), torch.float64, True),      # fp64: 16-pixel blocks
    ("p4", "p4", 3, 5, 3, 1, 1, 1, 1, False, CL, (3, 4, 4), torch.bfloat16, True),       # 16 pixels a map: blocks
    ("p4m", "p4m", 2, 3, 5, 1, 2, 1, 2, False, CONTIG, (2, 4, 12), torch.float32, True), # cross images (48 a map)
    ("z2", "z2", 5, 7, 3, 1, 1, 1, 1, False, CL, (5, 4, 4), torch.float16, True),        # the masked last block
    ("p4", "p4", 3, 5, 3, 1, 1, 1, 1, False, CL, (2, 5, 7), torch.bfloat16, False),      # 35 pixels a map: re-laid
    ("p4m", "p4m", 2, 3, 5, 1, 2, 1, 1, False, CONTIG, (1, 6, 6), torch.float32, False), # 36: re-laid
], ids=lambda v: short(v) if not isinstance(v, torch.dtype) else str(v).split(".")[-1])
def test_weight_grad_reads_channels_first_dy_in_place_where_maps_are_multiples_of_16(
        monkeypatch, group, in_group, c_in, c_out, k, stride, padding, dilation, groups, shared, x_layout, size, dtype,
        in_place):
    """A contiguous (channels-first) ``dy``, as a loss hands the last layer, is read in place by the orbit loop
    where every map holds a multiple of 16 pixels (whole pixel blocks where a multiple of 64, of 16 in fp64, else
    blocks across images, the last one masked), else re-laid by one launch: ``dw`` and ``db`` are the float64
    reference's either way (3x3 and 5x5 windows, p4, p4m, a user group, ``S_out`` 1, stride 2, channel groups, a
    split reduction, bf16, fp16, tf32, fp64)."""
    relaid = _check_weight_grad_and_bias(monkeypatch, group, in_group, c_in, c_out, k, stride, padding, dilation,
                                         groups, shared, x_layout, size, dtype, dy_layout=CONTIG)
    assert relaid == (0 if in_place else 1), f"dy re-laid {relaid} times"


def _check_weight_grad_and_bias(monkeypatch, group, in_group, c_in, c_out, k, stride, padding, dilation, groups,
                                shared, x_layout, size, dtype, dy_layout, tf32=True) -> int:
    """Run the weight gradient with the bias gradient on random ``x`` and ``dy`` (stored in ``dy_layout``), assert
    both are the float64 reference's, and return how many times ``dy`` was re-laid."""
    from gconv_triton.ops.group_conv import bias_grad

    relaid = []

    def counted_relayout(*args, **kwargs):
        relaid.append(1)
        return relayout_dy(*args, **kwargs)
    monkeypatch.setattr(wgrad, "relayout_dy", counted_relayout)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    b, h, w = size
    group, in_group = USER_GROUPS.get(group, group), USER_GROUPS.get(in_group, in_group)
    s_in, s_out = order_of(in_group), order_of(group)
    x = randn((b, groups * c_in, s_in, h, w), dtype, x_layout)
    weight_groups = 1 if shared else groups
    weight = randn((weight_groups * c_out, c_in, s_in, k, k), dtype)
    spec = make_spec(x, weight, None, group=group, in_group=in_group, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, shared_weight=shared)
    dy = randn((b, groups * c_out, s_out, spec.out_height, spec.out_width), dtype, dy_layout)
    with triton_backend():
        dw, db = kernels.weight_grad(dy, x, spec, tuple(weight.shape), with_bias=True)
    want = bank_conv_weight_grad(dy.cpu().double(), x.cpu().double(), spec, tuple(weight.shape))
    assert_close(dw, want, dtype, "weight grad")
    assert_close(db, bias_grad(dy.cpu().double(), groups, weight_groups), dtype, "bias grad")
    return len(relaid)


@pytest.mark.parametrize("group, kernel, orbits", [
    ("p4", (3, 3), [[0, 2, 6, 8], [1, 3, 5, 7], [4]]),
    ("p4m", (5, 5), [[0, 4, 20, 24], [1, 3, 5, 9, 15, 19, 21, 23], [2, 10, 14, 22], [6, 8, 16, 18],
                     [7, 11, 13, 17], [12]]),
    ("p2mm_shuffled", (3, 3), [[0, 2, 6, 8], [1, 7], [3, 5], [4]]),
    ("z2", (1, 3), [[0], [1], [2]]),
])
def test_position_orbits_hold_every_position_once_and_where_each_element_moves_it(group, kernel, orbits):
    """The orbit weight gradient's table: the orbits of the window positions, and ``slot[k, g]``, the member
    that ``g`` moves onto member ``k`` (``dest[g, members[slot[k, g]]] == members[k]``)."""
    group = get_group(USER_GROUPS.get(group, group))
    table, orbit_max = _common.position_orbits(group, kernel, torch.device("cpu"))
    dest = group.position_destinations(kernel)
    assert orbit_max == max(map(len, orbits)) and table.shape == (len(orbits), 1 + orbit_max * (1 + group.order))
    for row, want in zip(table.tolist(), orbits):
        length, members = row[0], row[1:1 + row[0]]
        slots = torch.tensor(row[1 + orbit_max:]).reshape(orbit_max, group.order)[:length]
        assert members == want
        for k, p in enumerate(members):
            assert [dest[g, members[slots[k, g]]].item() for g in range(group.order)] == [p] * group.order


def test_weight_grad_re_lays_dy_only_where_it_cannot_read_it_in_place(monkeypatch):
    """A layer's ``dy`` (p4, p4m, any output channels) is read in place, and so is a channels-first one (the
    loss's) whose maps hold a multiple of 16 pixels; a channels-first one with other maps, a strided view, a
    group whose ``S_out`` is not a power of two and fp32 without tf32 (no MMA) are re-laid first."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    dy = randn((2, 12, 4, 5, 7), layout=CL)
    assert wgrad.in_place_dy_layout(dy) == "channels_last"
    for c_out, s_out in ((16, 4), (17, 4), (45, 8), (1, 1)):   # (1, 1): dense both ways, read channels-last
        assert wgrad.in_place_dy_layout(randn((2, c_out, s_out, 5, 7), layout=CL)) == "channels_last"
    assert wgrad.in_place_dy_layout(randn((2, 6, 4, 8, 8), torch.bfloat16)) == "channels_first"
    assert wgrad.in_place_dy_layout(randn((2, 6, 8, 4, 32))) == "channels_first"
    assert wgrad.in_place_dy_layout(randn((2, 6, 4, 4, 4), torch.float64)) == "channels_first"  # 16-pixel blocks
    assert wgrad.in_place_dy_layout(randn((2, 6, 4, 4, 12), torch.bfloat16)) == "channels_first"  # 48: runs of 16
    assert not wgrad.reads_dy_in_place(randn((2, 6, 4, 6, 6), torch.bfloat16))   # 36: 16 pixels may cross images
    assert not wgrad.reads_dy_in_place(randn((2, 6, 4, 5, 7)))
    assert not wgrad.reads_dy_in_place(randn((2, 12, 4, 8, 8))[:, :6])   # channels-first, not contiguous
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)   # fp32 without tf32: no MMA, re-laid
    assert not wgrad.reads_dy_in_place(dy) and wgrad.reads_dy_in_place(dy.double())
    assert not wgrad.reads_dy_in_place(randn((2, 6, 4, 8, 8)))
    assert not wgrad.reads_dy_in_place(dy[:, :6])           # every pixel's channels no longer dense
    assert not wgrad.reads_dy_in_place(randn((2, 6, 3, 5, 7), layout=CL))       # c3: S_out not a power of two
    assert not wgrad.reads_dy_in_place(randn((2, 6, 3, 8, 8), torch.bfloat16))


def _spy_on_halo_copies(monkeypatch) -> list:
    """The shapes of the inputs :func:`halo_channels_last` copies from now on (not those it returns as views)."""
    copies = []
    for module in (gconv, wgrad):
        real = module.halo_channels_last

        def spy(t, *args, _real=real, **kwargs):
            out = _real(t, *args, **kwargs)
            if out.data_ptr() != t.data_ptr():   # a copy, not the view of an unpadded input
                copies.append(tuple(t.shape))
            return out
        monkeypatch.setattr(module, "halo_channels_last", spy)
    return copies


def _check_read_in_place(group, in_group, c_in, k, stride, padding, dilation, size, dtype):
    """``x`` stored ``(B, H, W, C, S)``: the forward returns no copy of it for the backward, and the output and
    every gradient are the float64 reference's."""
    b, h, w = size
    s_in = order_of(in_group)
    x = randn((b, c_in, s_in, h, w), dtype, CL)
    weight = randn((3, c_in, s_in, k, k), dtype)
    spec = make_spec(x, weight, None, group=group, in_group=in_group, stride=stride, padding=padding,
                     dilation=dilation, groups=1)
    with triton_backend():
        _, copy = kernels.forward(x, weight, None, spec, return_input_copy=True)
    assert copy is None and kernels.input_copy_shape(x, spec) is None
    layer = gconv_layer(group, in_group, stride=stride, padding=padding, dilation=dilation)
    check_against_reference(layer, x, weight, randn((3,), dtype))


@pytest.mark.parametrize("group, in_group, c_in, k, stride, padding, dilation, size, dtype", [
    ("p4", "p4", 3, 3, 1, 1, 1, (2, 5, 7), torch.float32),            # 12 channels: a ragged K block
    ("p4", "p4", 3, 3, 2, 2, 1, (1, 7, 9), torch.bfloat16),
    ("p4m", "p4m", 2, 3, 1, (1, 2), 2, (1, 7, 5), torch.float64),     # 16 channels: whole K blocks
    ("p4m", "p4m", 2, 2, 2, 1, 2, (1, 9, 7), torch.float32),
    ("p4", "z2", 16, 3, 1, 1, 1, (1, 6, 5), torch.float32),           # lifting
    ("p4", "p4", 3, 3, 1, 0, 1, (2, 5, 7), torch.bfloat16),           # no padding: its own zero halo
], ids=lambda v: short(v) if not isinstance(v, torch.dtype) else str(v).split(".")[-1])
def test_channels_last_input_is_read_in_place(monkeypatch, group, in_group, c_in, k, stride, padding, dilation,
                                              size, dtype):
    """A ``(B, H, W, C, S)`` input (another layer's output) whose channels load as vectors is read in place by the
    forward and the weight gradient, padding or not: no zero-halo copy is made (the forward tests each pixel's
    bounds per window position, the weight gradient reads the padding from a zero page), none is returned for the
    backward, and the output and every gradient are the float64 reference's."""
    copies = _spy_on_halo_copies(monkeypatch)
    _check_read_in_place(group, in_group, c_in, k, stride, padding, dilation, size, dtype)
    assert copies == [], copies


@pytest.mark.parametrize("group, in_group, c_in, k, stride, padding, dilation, size, dtype", [
    ("p4", "z2", 4, 3, 1, 1, 1, (2, 6, 5), torch.float32),            # window positions folded per K block
    ("p4", "z2", 4, 3, 2, 2, 2, (1, 9, 9), torch.bfloat16),
    ("p4", "p4", 1, 7, 1, 3, 1, (1, 8, 7), torch.float32),            # 49 window positions: 64-bit row bits
    ("p4", "p4", 1, 9, 1, 4, 1, (1, 5, 6), torch.float64),            # 81: the bounds computed per position
], ids=lambda v: short(v) if not isinstance(v, torch.dtype) else str(v).split(".")[-1])
def test_in_place_loops_where_the_copy_is_cheaper(monkeypatch, group, in_group, c_in, k, stride, padding, dilation,
                                                  size, dtype):
    """The in-place loops that the launchers leave to the copy (the weight gradient's table would outweigh it: few
    channels, many window positions), forced: the folded forward's masks, 64-bit row bits, the bounds per
    position, and the weight gradient's zero page; each against the float64 reference."""
    copies = _spy_on_halo_copies(monkeypatch)
    assert not gconv.reads_in_place(randn((size[0], c_in, order_of(in_group), *size[1:]), dtype, CL), make_spec(
        torch.empty(size[0], c_in, order_of(in_group), *size[1:]), torch.empty(3, c_in, order_of(in_group), k, k),
        None, group=group, in_group=in_group, stride=stride, padding=padding, dilation=dilation, groups=1))
    for module in (gconv, wgrad):
        monkeypatch.setattr(module, "reads_in_place", lambda x, spec: _common.is_channels_last(x))
    _check_read_in_place(group, in_group, c_in, k, stride, padding, dilation, size, dtype)
    assert copies == [], copies


def test_in_place_offsets_point_the_padding_at_a_zero_page():
    """The in-place weight gradient's table: per window position, each output pixel's row of ``x``, or the zero
    page's offset from ``x`` where the position lies in the padding (and past the last pixel); the geometry part is
    cached, the zero page all zeros."""
    x = torch.randn(2, 3, 4, 5, 6).permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    spec = make_spec(x, torch.empty(2, 3, 4, 3, 3), None, group="p4", in_group="p4", stride=1, padding=1,
                     dilation=1, groups=1)
    x_cl = _common.channels_last(x)
    geometry, delta = wgrad._in_place_offsets(x_cl, spec, 64)
    assert geometry.shape == (9, 64) and geometry.dtype == torch.int64
    assert wgrad._in_place_offsets(x_cl, spec, 64)[0] is geometry   # cached per geometry
    # -1 in the padding: resolved against this call's zero page by the launch that re-lays a channels-first dy
    dy = torch.randn(2, 2, 4, 5, 6)
    table = relayout_dy(dy, spec, 64, 8, False, (geometry, delta))[2]
    assert table.equal(torch.where(geometry < 0, delta, geometry)) and geometry[:, 60:].eq(-1).all()
    zeros = wgrad.zero_page(12, x.dtype, x.device)
    assert zeros.data_ptr() - x_cl.data_ptr() == delta * x.element_size() and zeros.eq(0).all()
    # position (0, 0) of output pixel (b=0, 0, 0) lies in the padding; position (1, 1) is pixel (0, 0) itself
    assert table[0, 0] == delta and table[4, 0] == 0
    # pixel (b=1, 2, 3) under position (2, 0): input pixel (3, 2); 2·5·6 = 60 pixels, then the zero page
    assert table[6, 1 * 30 + 2 * 6 + 3] == x_cl.stride(0) + 3 * x_cl.stride(1) + 2 * x_cl.stride(2)
    assert table[:, 60:].eq(delta).all()
