"""Randomized tests (hypothesis): random shapes and configurations against the float64 reference, on both backends.

* forward and every gradient (input, weight, bias) of ``gconv2d``, any group, lifting or not, channel groups
  (depthwise included), stride, dilation, padding (ints, pairs, ``'same'``, ``'valid'``), bias, activation, dtype
  and memory layout (contiguous, channels-last, flattened 4-D);
* equivariance of the layer on configurations the exactness rule calls exact;
* the exactness rule itself (``gconv_triton.exactness``) against measured equivariance, on the reference path.

Profiles: ``ci`` (the default) is derandomized (a fixed sequence of examples, no example database) with a few
examples per test, sized for the interpreter.  ``GCONV_TRITON_FUZZ_EXAMPLES=500`` selects the ``long`` profile:
that many random examples per test, new ones each run, failures saved to hypothesis' database and printed with
a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from helpers import DEVICE, INTERPRETED, assert_close, tolerance
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gconv_triton
from gconv_triton.exactness import inexact_reasons
from gconv_triton.functional import gconv2d
from gconv_triton.groups import get_group

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_OK)
settings.register_profile("long", deadline=None, print_blob=True, suppress_health_check=_SLOW_OK)
LONG_EXAMPLES = int(os.environ.get("GCONV_TRITON_FUZZ_EXAMPLES", "0") or 0)
_PROFILE = settings.get_profile("long" if LONG_EXAMPLES else "ci")


def fuzz(ci_examples: int):
    """The settings of one test: ``ci_examples`` under the ``ci`` profile, else ``GCONV_TRITON_FUZZ_EXAMPLES``."""
    return settings(_PROFILE, max_examples=LONG_EXAMPLES or ci_examples)


# (output group, input group): lifting layers and group-to-group layers of every built-in group
GROUP_PAIRS = [("z2", "z2"), ("p2", "p2"), ("pm", "z2"), ("p4", "z2"), ("p4", "p4"), ("p2mm", "p2mm"),
               ("p4m", "z2"), ("p4m", "p4m")]
ACTIVATIONS = {None: None, "relu": F.relu, "silu": F.silu, "gelu": F.gelu}


def _rotates(group) -> bool:
    return any(m[0][1] != 0 for m in get_group(group).matrices)


def _max_kernel(group, in_group, c_in_g, c_out_g, budget) -> int:
    """The largest kernel (<= 4) whose interpreter cost stays in ``budget`` (None: no limit).  The work of a
    launch grows with S_out·S_in·k², and the depthwise kernels loop over every window position and output channel."""
    if budget is None:
        return 4
    unit = get_group(group).order * get_group(in_group).order * (4 * c_out_g if c_in_g == 1 else 1)
    return max(1, min(4, int((budget / unit) ** 0.5)))


@st.composite
def configs(draw, max_hw: int = 7, budget=None):
    """One valid ``gconv2d`` call: shapes, geometry and options (tensors are made from ``seed``)."""
    group, in_group = draw(st.sampled_from(GROUP_PAIRS))
    groups = draw(st.integers(1, 2))
    c_in_g, c_out_g = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k_max = _max_kernel(group, in_group, c_in_g, c_out_g, budget)
    k = draw(st.integers(1, k_max))
    kernel = (k, k) if _rotates(group) else (k, draw(st.integers(1, k_max)))
    stride = draw(st.integers(1, 3) | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    dilation = draw(st.integers(1, 2) | st.tuples(st.integers(1, 2), st.integers(1, 2)))
    paddings = st.integers(0, 2) | st.tuples(st.integers(0, 2), st.integers(0, 2)) | st.just("valid")
    if stride in (1, (1, 1)):
        paddings = paddings | st.just("same")
    padding = draw(paddings)
    sizes = []
    for axis in range(2):
        d = dilation if isinstance(dilation, int) else dilation[axis]
        span = d * (kernel[axis] - 1) + 1
        if isinstance(padding, str):
            total_pad = span - 1 if padding == "same" else 0
        else:
            total_pad = 2 * (padding if isinstance(padding, int) else padding[axis])
        smallest = max(1, span - total_pad)  # one output pixel
        sizes.append(draw(st.integers(smallest, max(max_hw, smallest))))
    return dict(group=group, in_group=in_group, groups=groups, c_in_g=c_in_g, c_out_g=c_out_g, kernel=kernel,
                stride=stride, dilation=dilation, padding=padding, size=tuple(sizes), batch=draw(st.integers(1, 2)),
                bias=draw(st.booleans()), activation=draw(st.sampled_from(list(ACTIVATIONS))),
                layout=draw(st.sampled_from(["contiguous", "channels-last", "flat"])),
                seed=draw(st.integers(0, 2**31 - 1)))


def _tensors(cfg, dtype):
    s_in = get_group(cfg["in_group"]).order
    gen = torch.Generator().manual_seed(cfg["seed"])
    x = torch.randn(cfg["batch"], cfg["groups"] * cfg["c_in_g"], s_in, *cfg["size"], generator=gen, dtype=dtype)
    w = torch.randn(cfg["groups"] * cfg["c_out_g"], cfg["c_in_g"], s_in, *cfg["kernel"], generator=gen, dtype=dtype)
    b = torch.randn(w.shape[0], generator=gen, dtype=dtype) if cfg["bias"] else None
    return x, w, b


def _layout(x, layout):
    if layout == "channels-last":
        return x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    return x.flatten(1, 2) if layout == "flat" else x


def _forward_and_grads(cfg, backend, dtype, device, dy=None, values=None):
    """``[y, dx, dw, (db)]`` of one configuration in ``dtype``, with inputs rounded to ``values`` (default
    ``dtype``) first; the activation is fused by ``gconv2d`` on ``backend`` and applied by ``F`` on the oracle."""
    x, w, b = (None if t is None else t.to(values or dtype).to(device, dtype).requires_grad_()
               for t in _tensors(cfg, torch.float64))
    conv = dict(group=cfg["group"], in_group=cfg["in_group"], stride=cfg["stride"], padding=cfg["padding"],
                dilation=cfg["dilation"], groups=cfg["groups"])
    with gconv_triton.backend(backend):
        if backend == "torch" and dtype == torch.float64:  # the oracle: plain conv, then torch's activation
            y = gconv2d(_layout(x, cfg["layout"]), w, b, **conv)
            act = ACTIVATIONS[cfg["activation"]]
            y = y if act is None else act(y)
        else:
            y = gconv2d(_layout(x, cfg["layout"]), w, b, activation=cfg["activation"], **conv)
    if dy is None:
        # positive: the bias gradient is a plain sum of dy, which random signs would make ill-conditioned (a
        # cancelling sum carries a relative error far above fp32's 1e-5 in any order); dx and dw still mix signs
        dy = torch.rand(y.shape, generator=torch.Generator().manual_seed(cfg["seed"] + 1), dtype=torch.float64) + 0.5
    inputs = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(y, inputs, dy.to(device, dtype))
    return [y.detach(), *grads], dy


def _check_against_reference(cfg, backend, dtype):
    ref, dy = _forward_and_grads(cfg, "torch", torch.float64, "cpu", values=dtype)  # exact on the same inputs
    ours, _ = _forward_and_grads(cfg, backend, dtype, DEVICE, dy)
    for name, out, expected in zip(("y", "dx", "dw", "db"), ours, ref):
        assert out.dtype == dtype, f"{name}: dtype {out.dtype}, expected {dtype}"
        assert_close(out, expected, dtype, f"{name} ({cfg})")


@fuzz(ci_examples=40)
@given(cfg=configs(max_hw=9))
def test_fuzz_reference_path(cfg):
    """The reference path in float32 on the CPU against itself in float64: shapes, layouts, options."""
    _check_against_reference(cfg, "torch", torch.float32)


# Under the interpreter the CI profile keeps each example to a few seconds (p4m -> p4m up to 3x3 kernels, depthwise
# p4m -> p4m 1x1); on a GPU, or in the long profile, every kernel size runs.
KERNEL_BUDGET = 576 if INTERPRETED and not LONG_EXAMPLES else None


# The interpreter casts fp32 -> bf16 by truncation (a GPU rounds to nearest even): on a few-element tensor two
# truncations in a row (pre-activation, then gradient) can pass bf16's 1e-2, so bf16 is fuzzed on a GPU only.
DTYPES = [torch.float32, torch.float32, torch.float16] + ([] if INTERPRETED else [torch.bfloat16])


@fuzz(ci_examples=20)
@given(cfg=configs(budget=KERNEL_BUDGET), dtype=st.sampled_from(DTYPES))
def test_fuzz_triton_kernels(cfg, dtype):
    """The fused kernels (the interpreter without a GPU) against the float64 reference: forward and every
    gradient, any configuration, fp32 and half types."""
    _check_against_reference(cfg, "triton", dtype)


# ------------------------------------------------------------------------------------------- equivariance
@st.composite
def exact_configs(draw, max_hw: int = 9):
    """A layer configuration that is exactly equivariant by construction: a square input with
    ``(H + 2p - d(k-1) - 1) % s == 0`` and symmetric padding (or 'same' with an odd effective kernel)."""
    group, in_group = draw(st.sampled_from(GROUP_PAIRS[1:]))
    k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    if s == 1 and d * (k - 1) % 2 == 0 and draw(st.booleans()):
        p = "same"
        size = draw(st.integers(1, max_hw))
    else:
        p = draw(st.integers(0, 2))
        base = d * (k - 1) + 1 - 2 * p      # sizes n with n ≡ base (mod s) are exact; n >= base gives an output
        smallest = base + s * (-(-(max(1, base) - base) // s))
        size = smallest + s * draw(st.integers(0, max(0, (max_hw - smallest) // s)))
    return dict(group=group, in_group=in_group, kernel=k, stride=s, dilation=d, padding=p, size=size,
                c_in=draw(st.integers(1, 3)), c_out=draw(st.integers(1, 3)), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


def _equivariance_error(cfg, backend, dtype, device):
    assert not inexact_reasons(cfg["group"], (cfg["size"],) * 2, cfg["kernel"], cfg["stride"], cfg["padding"],
                               cfg["dilation"]), cfg
    torch.manual_seed(cfg["seed"])
    layer = gconv_triton.GroupConv2d(cfg["c_in"], cfg["c_out"], cfg["kernel"], group=cfg["group"],
                                     in_group=cfg["in_group"], stride=cfg["stride"], padding=cfg["padding"],
                                     dilation=cfg["dilation"], bias=cfg["bias"]).to(device, dtype)
    s_in = layer.in_group.order
    shape = (2, cfg["c_in"], s_in, cfg["size"], cfg["size"]) if s_in > 1 else (2, cfg["c_in"], cfg["size"], cfg["size"])
    x = torch.randn(shape, dtype=dtype, device=device)
    with gconv_triton.backend(backend), warnings.catch_warnings():
        warnings.simplefilter("error", gconv_triton.EquivarianceWarning)  # exact configurations never warn
        return gconv_triton.check_equivariance(layer, x, cfg["group"])


@fuzz(ci_examples=60)
@given(cfg=exact_configs())
def test_fuzz_equivariance_reference(cfg):
    assert _equivariance_error(cfg, "torch", torch.float64, "cpu") < 1e-12


@fuzz(ci_examples=10)
@given(cfg=exact_configs(max_hw=7))
def test_fuzz_equivariance_triton(cfg):
    assert _equivariance_error(cfg, "triton", torch.float32, DEVICE) < tolerance(torch.float32)


# ----------------------------------------------------------------------------------------- exactness rule
@fuzz(ci_examples=150)
@given(cfg=configs(max_hw=9))
def test_fuzz_exactness_rule(cfg):
    """``inexact_reasons`` is empty exactly when the layer is equivariant (float64 reference path): the warning
    fires on every inexact configuration and on no exact one."""
    torch.manual_seed(cfg["seed"])
    layer = gconv_triton.GroupConv2d(2, 2, cfg["kernel"], group=cfg["group"], in_group=cfg["in_group"],
                                     stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                                     dtype=torch.float64)
    s_in = layer.in_group.order
    x = torch.randn(1, 2, s_in, *cfg["size"], dtype=torch.float64)
    x = x if s_in > 1 else x[:, :, 0]
    with gconv_triton.backend("torch"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        # an output that never sees the input (every window position of some axis in the padding) is trivially
        # equivariant
        assume(not torch.equal(layer(x), layer(torch.randn_like(x))))
        try:
            error = gconv_triton.check_equivariance(layer, x, cfg["group"])
        except ValueError as err:  # a 90-degree rotation of a non-square input or output
            assert "needs a square image" in str(err)
            error = float("inf")
    reasons = inexact_reasons(cfg["group"], cfg["size"], cfg["kernel"], cfg["stride"], cfg["padding"],
                              cfg["dilation"])
    warned = [w for w in record if w.category is gconv_triton.EquivarianceWarning]
    assert len(warned) == (1 if reasons else 0), (reasons, [str(w.message) for w in warned])
    if cfg["group"] == "z2":
        assert not reasons
    assert (error < 1e-12) == (not reasons), (error, reasons)
