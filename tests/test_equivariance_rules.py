"""The exactness rules of every layer that resamples, against measured equivariance, and the warnings that
follow from them (eager, ``torch.compile``, ``torch.jit.trace``).

Measured: :func:`check_equivariance` in float64 on the reference path, with random weights; round-off (< 1e-9)
is exact, anything else inexact.  The rule (``inexact_reasons*``) must agree on every configuration of a grid of
sizes, kernels, strides, paddings (and dilations, output paddings, ceil mode).
"""

from __future__ import annotations

import itertools
import re
import warnings

import pytest
import torch
from helpers import clear_caches, torch_backend
from torch import nn

import gconv_triton as gt
from gconv_triton import EquivarianceWarning, GroupAvgPool2d, GroupConv2d, GroupMaxPool2d, check_equivariance
from gconv_triton.exactness import inexact_reasons
from gconv_triton.groups import get_group
from gconv_triton.nn import GroupConvTranspose2d

DT = torch.float64
ROUND_OFF = 1e-9


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    """Seeded, one thread (tiny ops), and the warnings these grids trigger on purpose silenced."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch_backend(), warnings.catch_warnings():
        warnings.simplefilter("ignore", EquivarianceWarning)
        yield
    torch.set_num_threads(threads)


def _maps(group: str, h: int, w: int, c: int = 2, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, c, get_group(group).order, h, w, dtype=DT)


def _mismatches(cases, measure, rule):
    """The cases where the rule and the measurement disagree, with both."""
    out = []
    for case in cases:
        err, reasons = measure(*case), rule(*case)
        if (err > ROUND_OFF) != bool(reasons):
            out.append((case, err, reasons))
    return out


# ------------------------------------------------------------------------------------------ rule vs measured
def test_conv_rule_matches_measured():
    """The convolution's rule (footprints), including 'same' padding and tiny inputs the windows overhang."""
    cases = [(g, n, k, s, p, d) for g in ("p4m", "pm") for n in ((3, 4, 5, 6, 7) if g == "p4m" else (4, 5))
             for k in (1, 2, 3, 4) for s in (1, 2, 3) for p in (0, 1, 2, "same") for d in ((1, 2) if k > 1 else (1,))
             if (p != "same" or s == 1) and (n + 2 * (0 if p == "same" else p) - d * (k - 1) - 1) >= 0]

    def measure(g, n, k, s, p, d):
        layer = GroupConv2d(1, 1, k, group=g, in_group=g, stride=s, padding=p, dilation=d, dtype=DT)
        return check_equivariance(layer, _maps(g, n, n, 1, batch=1), g)

    assert len(cases) > 300
    assert _mismatches(cases, measure, lambda g, n, k, s, p, d: inexact_reasons(g, (n, n), k, s, p, d)) == []


def test_transposed_conv_rule_matches_measured():
    """Exact exactly when output_padding is 0, at any stride, kernel, padding and dilation."""
    cases = [(g, n, k, s, p, o, d) for g in ("p4m", "pm") for n in ((2, 4) if g == "p4m" else (3,))
             for k in (1, 2, 3, 4) for s in (1, 2, 3) for p in (0, 1, 2) for d in ((1, 2) if k > 1 else (1,))
             for o in range(s)  # output_padding >= stride has no matching convolution
             if (n - 1) * s - 2 * p + d * (k - 1) + o + 1 >= 1]

    def measure(g, n, k, s, p, o, d):
        layer = GroupConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=o, dilation=d, group=g,
                                     dtype=DT)
        return check_equivariance(layer, _maps(g, n, n, 1, batch=1), g)

    from gconv_triton.exactness import inexact_reasons_transposed

    def rule(g, n, k, s, p, o, d):
        return inexact_reasons_transposed(g, (n, n), k, s, p, o, d)

    assert len(cases) > 300
    assert _mismatches(cases, measure, rule) == []
    # the closed form, wherever the output has more than one pixel (a lone pixel may read only padding)
    assert all(bool(rule(g, n, k, s, p, o, d)) == (o != 0) for g, n, k, s, p, o, d in cases
               if (n - 1) * s - 2 * p + d * (k - 1) + o > 0)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_rule_matches_measured(mode):
    """Max and average pooling, floor and ceil mode, padded or not, square (p4m) and not (p2mm)."""
    cases = [(g, h, w, k, s, p, c) for g, sizes in (("p4m", [(n, n) for n in range(2, 10)]),
                                                     ("p2mm", [(5, 8), (6, 7), (4, 9)]))
             for h, w in sizes for k in (1, 2, 3, 4) for s in (1, 2, 3) for p in range(k // 2 + 1)
             for c in (False, True) if min(h, w) + 2 * p >= k]
    cls = GroupMaxPool2d if mode == "max" else GroupAvgPool2d

    def measure(g, h, w, k, s, p, c):
        return check_equivariance(cls(k, s, p, ceil_mode=c, group=g), _maps(g, h, w, batch=1), g)

    from gconv_triton.exactness import inexact_reasons_pool

    def rule(g, h, w, k, s, p, c):
        return inexact_reasons_pool(g, (h, w), k, s, p, ceil_mode=c, mode=mode)

    assert len(cases) > 300
    assert _mismatches(cases, measure, rule) == []


def test_pool_closed_form():
    """Away from tiny inputs the footprints reduce to (H + 2p - k) % s == 0, as for the convolution."""
    from gconv_triton.exactness import inexact_reasons_pool

    for n, k, s, p in itertools.product(range(6, 12), (2, 3), (2, 3), (0, 1)):
        exact = (n + 2 * p - k) % s == 0
        assert (inexact_reasons_pool("p4m", (n, n), k, s, p) == []) == exact, (n, k, s, p)


# -------------------------------------------------------------------------------------------------- warnings
# The configurations a user met without a warning (float64 errors 1.42, 0.79, 0.44, 1.14).
INEXACT_LAYERS = [
    ("transposed-unet", lambda: GroupConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, group="p4m",
                                                     dtype=DT), 16, "output_padding 1 adds 1 pixel"),
    ("maxpool-2-on-7", lambda: GroupMaxPool2d(2), 7, r"stride 2 does not divide H \+ 2p - d\(k-1\) - 1 = 7"),
    ("maxpool-3-2-1-on-8", lambda: GroupMaxPool2d(3, stride=2, padding=1), 8, "remainder 1"),
    ("avgpool-2-on-7", lambda: GroupAvgPool2d(2), 7, "remainder 1"),
    ("avgpool-ceil", lambda: GroupAvgPool2d(2, ceil_mode=True), 7, "ceil_mode adds a last window"),
    ("adder-stride-2-on-8", lambda: gt.TapConv2d(3, 2, 3, tap="adder", stride=2, padding=1, group="p4m",
                                                 in_group="p4m", dtype=DT), 8, "remainder 1"),
]


@pytest.mark.parametrize("make,size,pattern", [c[1:] for c in INEXACT_LAYERS], ids=[c[0] for c in INEXACT_LAYERS])
def test_inexact_resampling_layers_warn_once_per_size(make, size, pattern):
    layer = make()
    x = _maps("p4m", size, size, 3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            layer(x)
    messages = [str(w.message) for w in record if w.category is EquivarianceWarning]
    assert len(messages) == 1, messages
    assert check_equivariance(layer, x, "p4m") > 1e-3  # and it really is inexact
    assert re.search(pattern, messages[0]), messages[0]
    assert "docs/exactness.md" in messages[0]


EXACT_LAYERS = [
    ("transposed-doubling", lambda: GroupConvTranspose2d(3, 2, 4, stride=2, padding=1, group="p4m", dtype=DT), 8),
    ("transposed-stride-3", lambda: GroupConvTranspose2d(3, 2, 3, stride=3, group="p4m", dtype=DT), 5),
    ("maxpool-2-on-8", lambda: GroupMaxPool2d(2), 8),
    ("maxpool-3-2-1-on-9", lambda: GroupMaxPool2d(3, stride=2, padding=1), 9),
    ("avgpool-3-on-9", lambda: GroupAvgPool2d(3), 9),
    ("avgpool-ceil-on-8", lambda: GroupAvgPool2d(2, ceil_mode=True), 8),
    ("maxplus-stride-2-on-9", lambda: gt.TapConv2d(3, 2, 3, tap="add", reduce="max", stride=2, padding=1,
                                                   group="p4m", in_group="p4m", dtype=DT), 9),
]


@pytest.mark.parametrize("make,size", [c[1:] for c in EXACT_LAYERS], ids=[c[0] for c in EXACT_LAYERS])
def test_exact_resampling_layers_never_warn(make, size):
    layer = make()
    x = _maps("p4m", size, size, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EquivarianceWarning)
        layer(x)
        assert check_equivariance(layer, x, "p4m") < 1e-12


def test_pool_group_argument():
    """``group`` says which symmetry to check: p2mm allows a non-square input that p4/p4m (the default) cannot
    rotate, and a 5-D input's group axis must match it."""
    x = _maps("p2mm", 6, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        GroupMaxPool2d(2)(x)
        GroupMaxPool2d(2, group="p2mm")(x)
    messages = [str(w.message) for w in record if w.category is EquivarianceWarning]
    assert len(messages) == 1 and "input 6x8 is not square" in messages[0] and "pass group=" in messages[0]
    with pytest.raises(ValueError, match=r"input: expected a group axis of 8 elements \(p4m\)"):
        GroupMaxPool2d(2, group="p4m")(x)


# ------------------------------------------------------------------------------------ compile and tracing
def _resampling_model():
    """Every resampling layer: on 8x8 and 12x12 inputs the first three are inexact, the average pool exact."""
    return nn.Sequential(
        GroupConv2d(1, 2, 3, group="p4", in_group="z2", stride=2, dtype=DT),             # 8 -> 3, 12 -> 5
        GroupConvTranspose2d(2, 2, 3, stride=2, output_padding=1, group="p4", dtype=DT),  # 3 -> 8, 5 -> 12
        GroupMaxPool2d(3, stride=2, padding=1),                                           # 8 -> 4, 12 -> 6
        GroupAvgPool2d(2),                                                                # 4 -> 2, 6 -> 3
        gt.GroupPool("max"),
    )


def _warned(record):
    return sorted(str(w.message).split(" on ")[0].split("(")[0] for w in record if w.category is EquivarianceWarning)


LAYERS_WARNED = ["GroupConv2d", "GroupConvTranspose2d", "GroupMaxPool2d"]


def test_compiled_model_warns_at_trace_once_per_layer_and_size():
    """A model that only ever runs compiled warns as in eager mode: once per inexact layer and input size."""
    model = _resampling_model()
    clear_caches()
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for size in (8, 8, 12, 8):
            x = torch.randn(2, 1, size, size, dtype=DT)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-12)  # eager: already warned
    assert _warned(record) == sorted(LAYERS_WARNED * 2), _warned(record)  # 8x8 and 12x12
    messages = " ".join(str(w.message) for w in record)
    assert "on 8x8 inputs" in messages and "on 12x12 inputs" in messages


def test_compiled_dynamic_shapes_warn_for_the_traced_size():
    clear_caches()
    pool = GroupMaxPool2d(2)
    compiled = torch.compile(pool, backend="eager", fullgraph=True, dynamic=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        y = compiled(_maps("p4", 7, 7))
    assert y.shape[-2:] == (3, 3)
    assert [str(w.message).split(": ")[0] for w in record if w.category is EquivarianceWarning] == [
        "GroupMaxPool2d(kernel_size=2, stride=2, padding=0) on 7x7 inputs is not exactly equivariant under p4 or "
        "p4m (assumed; pass group= for another group)"]


def test_jit_trace_of_group_layers_matches_eager_and_warns():
    """torch.jit.trace (and the TorchScript ONNX exporter, which traces) never crashes in the warning code."""
    model = _resampling_model()
    x = torch.randn(2, 1, 8, 8, dtype=DT)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)  # with its check that two invocations trace the same graph
    assert _warned(record) == sorted(LAYERS_WARNED)
    x2 = torch.randn(2, 1, 8, 8, dtype=DT)
    assert torch.equal(traced(x2), model(x2))


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_warns_on_traced_sizes_and_takes_symbolic_ones(strict):
    """torch.export warns for a concrete traced size, and for a symbolic (dynamic) one for the example's size,
    as torch.compile does, strict (TorchDynamo) or not (Python tracing)."""
    def build():
        return nn.Sequential(GroupConv2d(1, 2, 3, group="p4", in_group="z2", stride=2, dtype=DT), GroupMaxPool2d(2))

    model = build()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        torch.export.export(model, (torch.randn(2, 1, 8, 8, dtype=DT),), strict=strict)
    assert _warned(record) == ["GroupConv2d", "GroupMaxPool2d"]  # 8 -> 3 -> 1, both off-centre
    side = torch.export.Dim("side", min=3, max=32)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        torch.export.export(build(), (torch.randn(2, 1, 12, 12, dtype=DT),),
                            dynamic_shapes=({2: 2 * side, 3: 2 * side},), strict=strict)
    assert _warned(record) == ["GroupConv2d", "GroupMaxPool2d"]  # 12 -> 5 -> 2: each layer once
    sizes = [str(w.message).split(" on ")[1].split(" inputs")[0] for w in record if w.category is EquivarianceWarning]
    assert sorted(sizes) == ["12x12", "5x5"]  # the example's sizes, as each layer sees them
    exported = torch.export.export(model, (torch.randn(2, 1, 9, 9, dtype=DT),),
                                   dynamic_shapes=({2: 2 * side + 1, 3: 2 * side + 1},), strict=strict)
    x = torch.randn(2, 1, 13, 13, dtype=DT)
    assert torch.equal(exported.module()(x), model(x))
