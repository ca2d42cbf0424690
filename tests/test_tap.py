"""Tap convolutions against a float64 reference written here: forward and every gradient, for every built-in tap
and reduction, AdderNet's surrogate gradients, a user tap (Π tan(x + w)), on the PyTorch path and through the
Triton kernels (interpreted on the CPU, outputs NaN-poisoned), in 1-D and 2-D, on z2, p4 and p4m.

The reference slices the padded input once per (group element, weight slice, tap), with the group's own tables,
stacks the slices in (i, u, t) order and lets autograd differentiate ``torch.max(dim)`` (first index on ties),
``torch.prod`` (exact at zero factors) and the sums: no unfold, no shared code with the package's paths.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from helpers import DEVICE, clear_caches, rel_error, torch_backend, triton_backend
from perf.memory import AllocationRecorder
from usertap import TAN, tan_d, tan_fn, torch_tan

import gconv_triton
from gconv_triton import TapConv1d, TapConv2d, TapFunction, check_tap
from gconv_triton.functional import tap_conv1d, tap_conv2d
from gconv_triton.groups import get_group


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)




class _AdderNetTap(torch.autograd.Function):
    """−|x − w| with AdderNet's gradients: HardTanh(w − x) for x, x − w for w (the reference's own copy)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return -(x - w).abs()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx, gw = g * (w - x).clamp(-1, 1), g * (x - w)
        return gx.sum_to_size(x.shape), gw.sum_to_size(w.shape)


REF_TAPS = {
    "mul": lambda x, w: x * w,
    "adder": lambda x, w: -(x - w).abs(),
    "addernet": _AdderNetTap.apply,
    "l2": lambda x, w: -(x - w) ** 2,
    "add": lambda x, w: x + w,
    "sub": lambda x, w: x - w,
    "tan": lambda x, w: torch.tan(x + w),
}


# ------------------------------------------------------------------------------------------- the reference
def reference(x, w, bias, *, tap, reduce, stride, padding, dilation, groups, group, in_group, ignore):
    """``x (B, C, S_in, H, W)``, ``w (C_out, C/groups, S_in, kh, kw)`` float64 -> ``(B, C_out, S_out, Ho, Wo)``."""
    group, in_group = get_group(group), get_group(in_group)
    fn = REF_TAPS[tap]
    b, c, s_in, h, wd = x.shape
    c_out, c_g, _, kh, kw = w.shape
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    inside = F.pad(torch.ones(h, wd, dtype=torch.bool), (pw, pw, ph, ph))
    in_index = group.input_index(in_group)
    dest = group.position_destinations((kh, kw))
    outs = []
    for g in range(group.order):
        slices, masks = [], []
        for u in range(s_in):
            for t in range(kh * kw):
                r, q = divmod(int(dest[g, t]), kw)
                rows = slice(r * dh, r * dh + (ho - 1) * sh + 1, sh)
                cols = slice(q * dw, q * dw + (wo - 1) * sw + 1, sw)
                slices.append(xp[:, :, int(in_index[g, u]), rows, cols])
                masks.append(inside[rows, cols])
        xs = torch.stack(slices, 2).unflatten(1, (groups, c_g)).flatten(2, 3)      # (B, groups, K, Ho, Wo)
        valid = torch.stack(masks, 0).repeat(c_g, 1, 1)                            # (K, Ho, Wo)
        if not ignore:
            valid = torch.ones_like(valid)
        ys = []
        for grp in range(groups):
            wg = w.unflatten(0, (groups, -1))[grp].flatten(1)[None, :, :, None, None]  # (1, Co_g, K, 1, 1)
            f = fn(xs[:, grp, None], wg)                                           # (B, Co_g, K, Ho, Wo)
            if reduce == "sum":
                y = torch.where(valid, f, 0).sum(2)
            elif reduce == "max":
                y = torch.where(valid, f, float("-inf")).max(2).values
            elif reduce == "min":
                y = torch.where(valid, f, float("inf")).min(2).values
            else:
                y = torch.where(valid, f, 1).prod(2)
            ys.append(torch.where(valid.any(0), y, 0))
        outs.append(torch.cat(ys, 1))
    y = torch.stack(outs, 2)
    return y if bias is None else y + bias[None, :, None, None, None]


# ------------------------------------------------------------------------------------------------ the cases
@dataclasses.dataclass(frozen=True)
class Case:
    tap: str
    reduce: str = "sum"
    size: tuple = (2, 5, 7)                 # (B, H, W)
    channels: tuple = (2, 3)                # (C_in, C_out)
    k: tuple = (3, 3)
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)
    dilation: tuple = (1, 1)
    groups: int = 1
    group: str = "z2"
    in_group: str = "z2"
    padding_mode: str = "zeros"
    quantized: bool = False                 # values on a 0.5 grid: exact zero factors for prod, ties for max/min
    scale: float = 1.0

    def __str__(self):
        b, h, w = self.size
        return (f"{self.tap}-{self.reduce}-{self.group}{self.in_group}-{b}x{h}x{w}-c{self.channels}-k{self.k}-"
                f"s{self.stride}-p{self.padding}-d{self.dilation}-g{self.groups}-{self.padding_mode}"
                f"{'-q' if self.quantized else ''}").replace(" ", "")


CASES = [
    Case("mul"),
    Case("mul", "max", size=(1, 6, 5), padding_mode="ignore"),
    Case("adder", size=(2, 7, 5), stride=(2, 2), channels=(4, 2), groups=2),
    Case("adder", "max", size=(1, 5, 5), k=(2, 3), padding=(0, 1)),
    Case("addernet", size=(1, 7, 6), padding=(0, 0)),
    Case("l2", size=(2, 7, 6), dilation=(2, 2), padding=(2, 1)),
    Case("l2", "min", size=(1, 5, 7), padding_mode="ignore", stride=(1, 2)),
    Case("add", "max", size=(2, 5, 7), stride=(2, 1), padding_mode="ignore"),
    Case("add", "max", size=(1, 6, 6), channels=(3, 3), groups=3),
    Case("add", "min", size=(1, 7, 5), dilation=(1, 2), padding=(1, 2)),
    Case("sub", "min", size=(2, 5, 5), padding=(3, 3), padding_mode="ignore"),   # windows with no tap inside
    Case("sub", "max", size=(1, 5, 7), padding=(2, 2), k=(1, 3)),
    Case("add", "max", size=(1, 5, 6), channels=(3, 2), quantized=True),                # ties: first k wins
    Case("sub", "min", size=(1, 5, 5), channels=(2, 2), group="p4", in_group="p4", quantized=True),
    Case("add", "prod", size=(2, 5, 6), channels=(2, 2), k=(2, 2), quantized=True),
    Case("sub", "prod", size=(1, 5, 5), channels=(1, 2), padding_mode="ignore", quantized=True, stride=(2, 2)),
    Case("tan", "prod", size=(1, 5, 5), channels=(2, 2), k=(2, 2), padding=(0, 0), scale=0.3),
    Case("tan", "sum", size=(1, 5, 6), channels=(2, 3), scale=0.3),
    Case("adder", size=(1, 5, 5), group="p4", in_group="z2"),
    Case("add", "max", size=(1, 5, 5), channels=(2, 2), group="p4", in_group="p4", padding_mode="ignore"),
    Case("adder", size=(1, 5, 5), channels=(1, 2), k=(2, 2), group="p4m", in_group="p4m", padding=(0, 0)),
    Case("sub", "min", size=(1, 7, 7), channels=(2, 2), group="p4m", in_group="z2", stride=(2, 2)),
]


def random(shape, case: Case, dtype=torch.float64):
    t = torch.randn(shape, dtype=torch.float64) * case.scale
    if case.quantized:  # values in {-1.5, -1, ..., 1.5}: exact zero factors of x ± w, once and more per window
        t = (t * 2).round().clamp(-3, 3) / 2
    return t.to(DEVICE, dtype)


def make_inputs(case: Case, dtype):
    b, h, w = case.size
    c_in, c_out = case.channels
    s_in = get_group(case.in_group).order
    x = random((b, c_in, s_in, h, w), case, dtype)
    weight = random((c_out, c_in // case.groups, s_in, *case.k), case, dtype)
    bias = random((c_out,), case, dtype)
    return x, weight, bias


def run(case: Case, x, weight, bias, dy, backend):
    """Output and the three gradients of ``tap_conv2d`` on ``backend`` (``"standard"``: ``standard_ops=True``, the
    export form, differentiated by autograd)."""
    tap = TAN if case.tap == "tan" else case.tap
    inputs = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    with gconv_triton.backend("torch" if backend == "standard" else backend):
        y = tap_conv2d(*inputs, tap=tap, reduce=case.reduce, stride=case.stride, padding=case.padding,
                       dilation=case.dilation, groups=case.groups, group=case.group, in_group=case.in_group,
                       padding_mode=case.padding_mode, standard_ops=backend == "standard")
        grads = torch.autograd.grad(y, inputs, dy)
    return (y, *grads)


def check_case(case: Case, backend: str, dtype: torch.dtype, tol: float):
    x, weight, bias = make_inputs(case, dtype)
    inputs = [t.detach().cpu().double().requires_grad_() for t in (x, weight, bias)]
    y_ref = reference(*inputs, tap=case.tap, reduce=case.reduce, stride=case.stride, padding=case.padding,
                      dilation=case.dilation, groups=case.groups, group=case.group, in_group=case.in_group,
                      ignore=case.padding_mode == "ignore")
    dy = torch.randn(y_ref.shape, dtype=torch.float64)
    refs = (y_ref, *torch.autograd.grad(y_ref, inputs, dy))
    outs = run(case, x, weight, bias, dy.to(DEVICE, dtype), backend)
    errors = {}
    for name, out, ref in zip(("output", "input grad", "weight grad", "bias grad"), outs, refs):
        assert out.shape == ref.shape and out.dtype == dtype, f"{name}: {out.shape} {out.dtype}"
        assert torch.count_nonzero(ref) > 0, f"{name}: the reference is all zeros, the case tests nothing"
        errors[name] = rel_error(out, ref)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"{case} on {backend} in {dtype}: relative errors {bad} >= {tol:.0e}"
    return errors


@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_path_float64(case):
    check_case(case, "torch", torch.float64, 1e-12)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_standard_ops_float64(case):
    """The standard-operator form (what ONNX export, ``export_model`` and the double backward run)."""
    check_case(case, "standard", torch.float64, 1e-12)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernels(case):
    """fp32 through the kernels (fp32 accumulation) against the fp64 reference; fp64 for the first cases too."""
    check_case(case, "triton", torch.float32, 1e-5)


@pytest.mark.parametrize("case", CASES[:: 4], ids=str)
def test_kernels_float64(case):
    check_case(case, "triton", torch.float64, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernels_half(dtype):
    """Half inputs, fp32 accumulation: error of the rounding of the output and gradients only."""
    for case in (CASES[2], CASES[7]):
        check_case(case, "triton", dtype, 1e-2)


def test_empty_batch():
    for backend in ("torch", "triton"):
        for reduce in ("sum", "max", "prod"):
            x, w = torch.randn(0, 2, 5, 5, requires_grad=True), torch.randn(3, 2, 3, 3, requires_grad=True)
            with gconv_triton.backend(backend):
                y = tap_conv2d(x, w, tap="add", reduce=reduce, padding=1)
                dx, dw = torch.autograd.grad(y.sum(), (x, w))
            assert y.shape == (0, 3, 5, 5) and dx.shape == x.shape and torch.equal(dw, torch.zeros_like(w))


def test_mul_sum_is_conv2d():
    x, w, b = torch.randn(2, 4, 7, 5), torch.randn(6, 2, 3, 3), torch.randn(6)
    for backend in ("torch", "triton"):
        with gconv_triton.backend(backend):
            y = tap_conv2d(x, w, b, tap="mul", stride=2, padding=1, groups=2)
        assert rel_error(y, F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=1, groups=2)) < 1e-6


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_as_torch(mode):
    """``F.pad(mode)`` then an unpadded tap convolution, on both backends."""
    x, w = torch.randn(1, 2, 5, 6, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    ref = reference(F.pad(x, (2, 2, 1, 1), mode=mode)[:, :, None], w[:, :, None], None, tap="add", reduce="max",
                    stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, group="z2", in_group="z2",
                    ignore=False).flatten(1, 2)
    for backend in ("torch", "triton"):
        with gconv_triton.backend(backend):
            y = tap_conv2d(x, w, tap="add", reduce="max", padding=(1, 2), padding_mode=mode)
        assert rel_error(y, ref) < 1e-12, backend


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_conv1d(backend):
    """1-D: stride, dilation, groups, reflect padding, against the 2-D reference on a height-1 image."""
    x, w, b = torch.randn(2, 4, 11, dtype=torch.float64), torch.randn(6, 2, 3, dtype=torch.float64), \
        torch.randn(6, dtype=torch.float64)
    for tap, reduce, mode in (("adder", "sum", "reflect"), ("add", "max", "ignore")):
        inputs = [t.clone().requires_grad_() for t in (x, w, b)]
        with gconv_triton.backend(backend):
            y = tap_conv1d(*inputs, tap=tap, reduce=reduce, stride=2, padding=2, dilation=2, groups=2,
                           padding_mode=mode)
        xr = [t.clone().requires_grad_() for t in (x, w, b)]
        xin = F.pad(xr[0], (2, 2), mode="reflect") if mode == "reflect" else xr[0]
        ref = reference(xin[:, :, None, None], xr[1][:, :, None, None], xr[2], tap=tap, reduce=reduce,
                        stride=(1, 2), padding=(0, 0 if mode == "reflect" else 2), dilation=(1, 2), groups=2,
                        group="z2", in_group="z2", ignore=mode == "ignore").flatten(1, 3)
        dy = torch.randn(ref.shape, dtype=torch.float64)
        for out, r in zip((y, *torch.autograd.grad(y, inputs, dy)), (ref, *torch.autograd.grad(ref, xr, dy))):
            assert out.shape == r.shape and rel_error(out, r) < 1e-12, (tap, reduce)


def test_module_conv1d_and_conv2d():
    for cls, x in ((TapConv1d, torch.randn(2, 3, 9)), (TapConv2d, torch.randn(2, 3, 6, 7))):
        layer = cls(3, 4, 3, "sub", reduce="min", padding=1, padding_mode="ignore")
        assert layer(x).shape == (2, 4) + x.shape[2:]
        assert "tap='sub', reduce='min'" in repr(layer) and "padding_mode='ignore'" in repr(layer)
        assert layer.weight.abs().max() <= 0.01 and torch.equal(layer.bias, torch.zeros(4))
    layer = TapConv2d(3, 4, 3, "adder", group="p4", in_group="p4")
    assert layer.weight.shape == (4, 3, 4, 3, 3) and abs(float(layer.weight.detach().std()) - 1) < 0.2
    assert layer(torch.randn(1, 3, 4, 5, 5)).shape == (1, 4, 4, 3, 3)


# ---------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("backend,tap,reduce", [("torch", "adder", "sum"), ("torch", "add", "max"),
                                                ("torch", "sub", "min"), ("torch", "tan", "prod"),
                                                ("triton", "add", "max"), ("triton", "tan", "prod")])
def test_gradcheck(backend, tap, reduce):
    channels = 2 if backend == "torch" else 1  # the interpreter runs tl.reduce's product slowly
    x = torch.randn(1, channels, 4, 4, dtype=torch.float64) * 0.3
    w = torch.randn(2, channels, 2, 2, dtype=torch.float64) * 0.3
    b = torch.randn(2, dtype=torch.float64)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    fn = TAN if tap == "tan" else tap

    def layer(x, w, b):
        with gconv_triton.backend(backend):
            return tap_conv2d(x, w, b, tap=fn, reduce=reduce, padding=1, padding_mode="ignore")

    assert torch.autograd.gradcheck(layer, (x, w, b), eps=1e-6, atol=1e-7, fast_mode=True)


# ------------------------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("tap,reduce,mode", [("adder", "sum", "zeros"), ("add", "max", "ignore")])
def test_equivariance(group, tap, reduce, mode):
    """A lifting and a group tap layer commute with every element of the group (float64: round-off only), on
    the PyTorch path, and through the kernels for one tap per group (the kernels match the reference for every
    tap on both groups above; the interpreter is slow)."""
    torch.manual_seed(1)
    kernels = (group, tap) in (("p4", "adder"), ("p4m", "add"))
    net = torch.nn.Sequential(TapConv2d(1, 2, 3, tap, reduce=reduce, padding=1, group=group, in_group="z2",
                                        padding_mode=mode),
                              TapConv2d(2, 1, 3, tap, reduce=reduce, padding=1, group=group, in_group=group,
                                        padding_mode=mode)).double()
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    if kernels:  # the interpreter is slow: the lifting layer only (group to group runs on the PyTorch path)
        net = net[0]
    for backend in ("torch", "triton") if kernels else ("torch",):
        with gconv_triton.backend(backend):
            err = gconv_triton.check_equivariance(net, x, group)
        assert err < 1e-13, (backend, err)


# ------------------------------------------------------------------------------------------ user taps
def test_check_tap_accepts_a_right_tap_and_names_a_wrong_derivative():
    check_tap(TAN)
    for name in ("mul", "adder", "l2", "add", "sub"):
        check_tap(name)

    @triton.jit
    def wrong_dw(x, w):
        return tl.cos(x + w)

    with pytest.raises(ValueError, match="triton_dw"):
        check_tap(TapFunction("tan_wrong", lambda x, w: torch.tan(x + w), tan_fn, tan_d, wrong_dw))
    with pytest.raises(ValueError, match="^(torch|triton)_dx:"):  # the surrogate gradients are not the derivative
        check_tap("addernet")


CHECK_TAP_WITHOUT_TRITON = '''
import warnings
import torch
import gconv_triton as gt
from usertap import TAN, tan_fn, tan_d

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    gt.check_tap("adder")
(warning,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
print("WARNING", warning.message)
wrong = gt.TapFunction("tan_wrong", TAN.torch_fn, tan_fn, tan_d, tan_d,
                       torch_dx=lambda x, w: 1 / torch.cos(x + w) ** 2, torch_dw=lambda x, w: torch.cos(x + w))
try:
    gt.check_tap(wrong)
except ValueError as e:
    print("ERROR", e)
'''


def test_check_tap_without_a_gpu_or_the_interpreter(tmp_path):
    """Where the Triton functions cannot run (no GPU, no TRITON_INTERPRET), ``check_tap`` still checks the
    PyTorch derivatives (a wrong ``torch_dw`` is named) and warns what it could not check and what to set."""
    out = _run_fresh(tmp_path, CHECK_TAP_WITHOUT_TRITON, interpret=False)
    assert "WARNING check_tap: tap 'adder': checked torch_dx, torch_dw against autograd of torch_fn, but not " \
           "triton_fn, triton_dx, triton_dw" in out and "set TRITON_INTERPRET=1" in out, out
    assert "ERROR torch_dw: tap 'tan_wrong' disagrees with autograd of torch_fn" in out, out


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    cases = [
        (dict(tap="conv"), "tap"),
        (dict(tap=lambda x, w: x * w), "tap"),
        (dict(tap="adder", reduce="mean"), "reduce"),
        (dict(tap="adder", reduce="prod"), "reduce"),
        (dict(tap="mul", reduce="prod"), "reduce"),
        (dict(tap="add", padding_mode="edge"), "padding_mode"),
        (dict(tap="add", group="p4"), "weight"),
        (dict(tap="add", stride=0), "stride"),
    ]
    for kwargs, arg in cases:
        with pytest.raises(ValueError, match=f"^{arg}:"):
            tap_conv2d(x, w, **kwargs)
    with pytest.raises(ValueError, match="^triton_dw:"):
        TapFunction("half", lambda x, w: x * w, tan_fn, tan_d, None)
    with pytest.raises(ValueError, match="^triton_fn:"):
        TapFunction("notjit", lambda x, w: x * w, lambda x, w: x, tan_d, tan_d)
    with pytest.raises(ValueError, match="^torch_fn:"):
        TapFunction("nofn", None, tan_fn, tan_d, tan_d)
    with pytest.raises(ValueError, match="^reduce:"):
        TapConv2d(2, 3, 3, "l2", reduce="prod")
    with pytest.raises(ValueError, match="^group:"):
        tap_conv1d(torch.randn(1, 2, 5), torch.randn(3, 2, 3), tap="add", group="p4")
    # 1-D arguments: the message shows what was passed, not the height-1 2-D form they run as
    with pytest.raises(ValueError, match=r"^stride: expected values >= 1, got 0$"):
        TapConv1d(3, 4, 3, tap="adder", stride=0)
    with pytest.raises(ValueError, match=r"^dilation: expected values >= 1, got \(0,\)$"):
        tap_conv1d(torch.randn(1, 2, 5), torch.randn(3, 2, 3), tap="add", dilation=(0,))
    with pytest.raises(ValueError, match=r"^padding: expected values >= 0, got -1$"):
        TapConv1d(3, 4, 3, tap="adder", padding=-1)


# ------------------------------------------------------------------------------------- memory, determinism
def test_kernels_allocate_no_receptive_field_buffer():
    """Forward + backward through the kernels: nothing larger than the input or output (the unfold of this
    input would be 9 times the input, the tap broadcast over the output channels 36 times)."""
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    for tap, reduce in (("add", "max"), ("add", "prod")):
        recorder = AllocationRecorder()
        with triton_backend(), recorder:
            y = tap_conv2d(x, w * 0.1, tap=tap, reduce=reduce, padding=1)
            y.backward(torch.randn_like(y))
        biggest = max(x.numel(), y.numel()) * 8  # at most a fp64-sized output-like buffer (prod's statistics)
        assert recorder.largest <= biggest, (tap, recorder.largest, recorder.largest_op)


def test_weight_grad_is_deterministic():
    x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
    grads = []
    for _ in range(2):
        wr = w.clone().requires_grad_()
        with triton_backend():
            y = tap_conv2d(x, wr, tap="adder", padding=1)
        grads.append(torch.autograd.grad(y, wr, torch.ones_like(y))[0])
    assert torch.equal(grads[0], grads[1])


# ---------------------------------------------------------------------------------------- compile, autocast
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_and_autocast(backend):
    layer = TapConv2d(2, 3, 3, "adder", padding=1).double()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    with gconv_triton.backend(backend):
        clear_caches()  # compiled first, on cold caches; the eager run after
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
        eager = layer(x)
    assert rel_error(compiled, eager) < 1e-14
    (gx,) = torch.autograd.grad(compiled.sum(), x)
    (gx_eager,) = torch.autograd.grad(eager.sum(), x)
    assert rel_error(gx, gx_eager) < 1e-14
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = TapConv2d(2, 3, 3, "add", reduce="max")(torch.randn(1, 2, 5, 5))
    assert y.dtype == torch.bfloat16


def test_autocast_across_layers():
    """Under autocast the second layer is fed the first's bf16 output with an fp32 weight: the inputs are cast
    before the argument checks, as ``nn.Conv2d`` does."""
    model = torch.nn.Sequential(TapConv2d(2, 3, 3, "adder", padding=1), TapConv2d(3, 2, 3, "add", reduce="max"))
    x = torch.randn(1, 2, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16 and y.shape == (1, 2, 4, 4)

    def rounded(t):   # what autocast hands the op
        return t.detach().to(torch.bfloat16).double()

    h = tap_conv2d(rounded(x), rounded(model[0].weight), rounded(model[0].bias), tap="adder", padding=1)
    ref = tap_conv2d(rounded(h), rounded(model[1].weight), rounded(model[1].bias), tap="add", reduce="max")
    assert rel_error(y.double(), ref) < 1e-2


def test_opcheck():
    from gconv_triton.ops import tap_conv as tap_ops
    from gconv_triton._support import TAP_FUNCTIONS
    from gconv_triton.tap_functions import get_tap

    x, w, b = torch.randn(1, 2, 1, 5, 5), torch.randn(3, 2, 1, 3, 3), torch.randn(3)
    args = (x.requires_grad_(), w.requires_grad_(), b, TAP_FUNCTIONS.key(get_tap("add")), "max", False,
            "z2", "z2", [1, 1], [1, 1, 1, 1], [1, 1], 1, "torch")
    torch.library.opcheck(tap_ops._tap_op, args)


def test_torch_path_memory_is_bounded(monkeypatch):
    """The PyTorch path's intermediates stay under its chunk size (here lowered to 4096 elements), forward and
    backward: the unfold of this batch would hold 9216 values and the tap broadcast 36864."""
    from gconv_triton import reference

    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 4096)
    x = torch.randn(4, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    recorder = AllocationRecorder()
    with torch_backend(), recorder:
        y = tap_conv2d(x, w, tap="adder", padding=1)
        y.backward(torch.randn_like(y))
    assert recorder.largest <= 4096 * 4, (recorder.largest, recorder.largest_op)


# ------------------------------------------------------------------------- cold compile, copies, pickles
# A user tap in a module of its own, so that a fresh process can import it (and unpickle a layer that holds it).

COLD_COMPILE = '''
import torch
import gconv_triton as gt
from usertap import TAN

torch.manual_seed(0)
for compiler in ("aot_eager", "inductor"):
    for tap, reduce in (("adder", "sum"), ("add", "max"), (TAN, "prod")):
        layer = gt.TapConv2d(3, 4, 3, tap=tap, reduce=reduce, padding=1).double()
        with torch.no_grad():
            layer.weight.mul_(0.2)
        x = (torch.randn(2, 3, 6, 6, dtype=torch.float64) * 0.3).requires_grad_()
        torch._dynamo.reset()
        y = torch.compile(layer, backend=compiler, fullgraph=True)(x)   # the first call ever of this layer
        grads = torch.autograd.grad(y.square().sum(), (x, layer.weight, layer.bias))
        y_eager = layer(x)
        grads_eager = torch.autograd.grad(y_eager.square().sum(), (x, layer.weight, layer.bias))
        for what, out, ref in zip(("y", "dx", "dw", "db"), (y,) + grads, (y_eager,) + grads_eager):
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=f"{compiler} {tap} {what}")
print("ok")
'''


def _run_fresh(tmp_path, script: str, interpret: bool = True) -> str:
    """Run ``script`` in a fresh Python process (cold caches) that can import ``usertap``; its stdout.  Without
    ``interpret`` the process runs without ``TRITON_INTERPRET``: its ``@triton.jit`` functions are compiled
    ``JITFunction`` objects (which hold a lock), as on a GPU machine."""
    (tmp_path / "script.py").write_text(script)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, os.path.dirname(tests)]),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TRITON_CACHE_DIR=str(tmp_path / "triton"))
    if not interpret:
        env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, str(tmp_path / "script.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_torch_compile_from_a_cold_start(tmp_path):
    """``torch.compile`` of a tap layer that never ran eagerly, in a fresh process: a built-in tap and a user
    ``TapFunction``, ``aot_eager`` and ``inductor``; forward and every gradient equal the eager ones computed
    after the compiled call."""
    assert _run_fresh(tmp_path, COLD_COMPILE).strip().endswith("ok")


LOAD_AND_COMPARE = '''
import copy
import torch
from torch.optim.swa_utils import AveragedModel

saved = torch.load("models.pt", weights_only=False)   # a fresh process: the taps come back from the pickle
for name, (model, x, y) in saved.items():
    with torch.no_grad():
        for copied in (model, copy.deepcopy(model), AveragedModel(model)):
            torch.testing.assert_close(copied(x), y, rtol=0, atol=0, msg=name)
print("ok", sorted(saved))
'''


def test_copies_and_pickles_of_tap_layers(tmp_path):
    """A built-in and a user tap layer survive ``copy.deepcopy``, ``AveragedModel`` (EMA/SWA) and ``torch.save``
    of the whole module, loaded back in a fresh process (compiled ``JITFunction`` objects there, copied again); every
    copy computes the same numbers.  A tap whose
    functions cannot be pickled says which function and why."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(TapConv2d(3, 4, 3, tap="adder", padding=1),
                                TapConv2d(4, 2, 3, tap=TAN, reduce="prod")).double()
    with torch.no_grad():
        model[1].weight.mul_(0.1)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 0.2
    with torch.no_grad():
        y = model(x)

    clone = copy.deepcopy(model)
    assert clone[1].weight.data_ptr() != model[1].weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(clone(x), y)

    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    swa = torch.optim.swa_utils.AveragedModel(model)
    for averaged in (ema, swa):
        averaged.update_parameters(model)
        averaged.update_parameters(model)   # the average of equal models is the model
        with torch.no_grad():
            torch.testing.assert_close(averaged(x), y, rtol=1e-14, atol=0)

    saved = {"adder + user tap": (model, x, y), "adder alone": (model[0], x, model[0](x).detach())}
    torch.save(saved, tmp_path / "models.pt")
    assert _run_fresh(tmp_path, LOAD_AND_COMPARE, interpret=False).startswith("ok")

    @triton.jit
    def local_fn(x, w):
        return x + w

    lam = TapFunction("lam", lambda x, w: x + w, tan_fn, tan_d, tan_d)
    local = TapFunction("local", torch_tan, local_fn, tan_d, tan_d)
    for tap, arg in ((lam, "torch_fn"), (local, "triton_fn")):
        layer = TapConv2d(1, 1, 3, tap=tap)
        copy.deepcopy(layer)   # shares the tap: no pickling needed
        with pytest.raises(pickle.PicklingError, match=f"^{arg}: TapFunction '{tap.name}' cannot be pickled"):
            torch.save(layer, tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------------- second order
@pytest.mark.parametrize("backend,tap,reduce,mode", [
    ("torch", "l2", "sum", "zeros"), ("torch", "adder", "sum", "zeros"), ("torch", "addernet", "sum", "zeros"),
    ("torch", "add", "max", "ignore"), ("torch", "sub", "min", "zeros"), ("torch", "tan", "prod", "ignore"),
    ("torch", "mul", "max", "zeros"), ("triton", "l2", "sum", "zeros"), ("triton", "add", "max", "ignore"),
    ("triton", "tan", "sum", "zeros")])
def test_gradgradcheck(backend, tap, reduce, mode):
    """Second-order gradients through input, weight and bias (float64): the double backward against finite
    differences of the backward, on both paths.  l2 and tan have non-zero second derivatives; adder, max-plus and
    max/min are piecewise linear (zero a.e.), addernet's second derivatives are those of its surrogates."""
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64) * 0.3
    w = torch.randn(2, 2, 2, 2, dtype=torch.float64) * 0.3
    b = torch.randn(2, dtype=torch.float64)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    fn = TAN if tap == "tan" else tap

    def layer(x, w, b):
        with gconv_triton.backend(backend):
            return tap_conv2d(x, w, b, tap=fn, reduce=reduce, padding=1, padding_mode=mode)

    assert torch.autograd.gradgradcheck(layer, (x, w, b), eps=1e-6, atol=1e-6, fast_mode=True)


def test_second_order_on_a_group():
    """A p4 lifting adder and a p4 max-plus layer: Hessian-vector products (double backward) equal those of the
    float64 reference, whose max is torch.max's (autograd)."""
    torch.manual_seed(2)
    x = torch.randn(1, 1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(2, 1, 1, 3, 3, dtype=torch.float64, requires_grad=True),
               torch.randn(1, 2, 4, 3, 3, dtype=torch.float64, requires_grad=True)]
    geometry = [dict(tap="l2", reduce="sum", group="p4", in_group="z2"),
                dict(tap="add", reduce="max", group="p4", in_group="p4")]
    common = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, ignore=False)

    def run(fn):
        y = x
        for w, g in zip(weights, geometry):
            y = fn(y, w, g)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.sin().sum(), [x] + weights)

    got = run(lambda y, w, g: tap_conv2d(y, w, tap=g["tap"], reduce=g["reduce"], padding=1, group=g["group"],
                                         in_group=g["in_group"]))
    ref = run(lambda y, w, g: reference(y, w, None, **g, **common))
    for out, want in zip(got, ref):
        assert rel_error(out, want) < 1e-12


def test_third_order():
    """``create_graph=True`` in the double backward too: a third derivative through an l2 and a tan layer (whose
    third derivatives are not zero) equals the reference's."""
    torch.manual_seed(3)
    x = (torch.randn(1, 2, 1, 4, 4, dtype=torch.float64) * 0.3).requires_grad_()
    w = (torch.randn(2, 2, 1, 2, 2, dtype=torch.float64) * 0.3).requires_grad_()
    common = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, group="z2", in_group="z2",
                  ignore=False)

    def third(fn):
        y = fn(x, w, "tan").square().sum() + fn(x, w, "l2").pow(3).sum()
        (gx,) = torch.autograd.grad(y, x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), w, create_graph=True)
        return torch.autograd.grad(gw.sum(), (x, w))

    got = third(lambda x, w, tap: tap_conv2d(x, w, tap=TAN if tap == "tan" else tap, padding=1))
    ref = third(lambda x, w, tap: reference(x, w, None, tap=tap, reduce="sum", **common))
    for out, want in zip(got, ref):
        assert rel_error(out, want) < 1e-12


# ------------------------------------------------------------------------------------------------- NaN
@pytest.mark.parametrize("tap,reduce", [("add", "max"), ("sub", "min"), ("adder", "max"), ("addernet", "min")])
@pytest.mark.parametrize("planted", ["input", "weight"])
def test_nan_propagates_under_max_and_min_on_both_paths(tap, reduce, planted):
    """One NaN in ``x`` or in the weight: every output whose window meets it is NaN (``torch.amax`` of the taps,
    as ``F.max_pool2d`` does), on the PyTorch path, through the kernels and in the export form alike, and the
    gradient of such an output goes to the NaN tap (its first in reduction order), the same on every path."""
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    if planted == "input":
        x[0, 1, 2, 3] = float("nan")
    else:
        w[1, 0, 2, 1] = float("nan")
    dy = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    # the rule, from torch.amax/amin over the unfolded windows
    cols = F.unfold(x, 3, padding=1)                                                   # (1, 18, 25)
    taps = REF_TAPS[tap](cols[:, None], w.flatten(1)[None, :, :, None])               # (1, 3, 18, 25)
    want = getattr(torch, "a" + reduce)(taps, dim=2).view(1, 3, 5, 5)
    assert 0 < int(want.isnan().sum()) < want.numel()
    results = {}
    for backend in ("torch", "triton", "standard"):   # standard: the export form
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        with gconv_triton.backend("torch" if backend == "standard" else backend):
            y = tap_conv2d(xr, wr, tap=tap, reduce=reduce, padding=1, standard_ops=backend == "standard")
            y.backward(dy)
        torch.testing.assert_close(y, want, rtol=0, atol=0, equal_nan=True, msg=f"{backend} forward")
        results[backend] = (xr.grad, wr.grad)
    for backend in ("triton", "standard"):
        for name, out, ref in zip(("dx", "dw"), results[backend], results["torch"]):
            torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14, equal_nan=True, msg=f"{backend} {name}")
    if tap == "add":  # ∂f/∂x = ∂f/∂w = 1: the NaN tap receives the dy of every NaN output
        grad = results["torch"][0][0, 1, 2, 3] if planted == "input" else results["torch"][1][1, 0, 2, 1]
        torch.testing.assert_close(grad, dy[want.isnan()].sum(), rtol=1e-14, atol=0)
