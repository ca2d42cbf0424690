"""Every bad argument fails before any kernel launches, with the argument, the value given and what was expected.

The cases double as the table in ``docs/errors.md``.  Kernels are replaced by a function that fails the test, so
an error that only a launch would raise does not count.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import gconv_triton
import gconv_triton.kernels
from gconv_triton import GroupConv2d, P4ConvP4, P4ConvZ2
from gconv_triton.functional import gconv2d

# A valid p4 -> p4 call: input (B, C_in, 4, H, W), weight (C_out, C_in, 4, k, k), bias (C_out,).
B, C_IN, C_OUT, H, K = 2, 3, 2, 7, 3


def _args(**change):
    args = dict(input=torch.randn(B, C_IN, 4, H, H), weight=torch.randn(C_OUT, C_IN, 4, K, K),
                bias=torch.randn(C_OUT), group="p4", in_group="p4", stride=1, padding=1, dilation=1, groups=1)
    args.update(change)
    return args


@pytest.fixture(autouse=True)
def no_launch(monkeypatch):
    """Fail on any kernel launch: validation must reject every case first."""
    def launched(*args, **kwargs):
        raise AssertionError("a kernel was launched for invalid arguments")
    for name in ("forward", "input_grad", "weight_grad"):
        monkeypatch.setattr(gconv_triton.kernels, name, launched)


# (id, changed arguments, exception, message pattern)
CALL_ERRORS = [
    # rank and type of the tensors
    ("input-not-tensor", dict(input=[[1.0]]), TypeError, r"input: expected a torch\.Tensor, got list"),
    ("input-3d", dict(input=torch.randn(C_IN * 4, H, H)), ValueError,
     r"input: expected a 4-D or 5-D tensor, got a 3-D tensor of shape \(12, 7, 7\)"),
    ("input-6d", dict(input=torch.randn(B, C_IN, 4, H, H, 1)), ValueError, r"input: expected a 4-D or 5-D tensor"),
    ("weight-4d", dict(weight=torch.randn(C_OUT, C_IN * 4, K, K)), ValueError,
     r"weight: expected a 5-D tensor, got a 4-D tensor of shape \(2, 12, 3, 3\)"),
    ("bias-2d", dict(bias=torch.randn(C_OUT, 1)), ValueError, r"bias: expected a 1-D tensor, got a 2-D tensor"),
    # channel and group-axis sizes
    ("channels-5d", dict(input=torch.randn(B, C_IN + 1, 4, H, H)), ValueError,
     r"input: expected 3 channels \(weight\.shape\[1\] = 3 x groups = 1\), got 4 in shape \(2, 4, 4, 7, 7\)"),
    ("group-axis-5d", dict(input=torch.randn(B, C_IN, 8, H, H)), ValueError,
     r"input: expected group axis of size 4 \(in_group p4\) at dim 2, got shape \(2, 3, 8, 7, 7\)"),
    ("channels-4d-not-multiple", dict(input=torch.randn(B, 10, H, H)), ValueError,
     r"input: expected a multiple of S_in = 4 \(in_group p4\) channels in flattened 4-D input"),
    ("channels-4d", dict(input=torch.randn(B, 4 * (C_IN + 1), H, H)), ValueError,
     r"input: expected 3 channels .* got 4 \(the flattened map \(B, C_in\*S_in, H, W\) of in_group p4 needs "
     r"3 x 4 = 12 channels, got 16\)"),
    ("weight-group-axis", dict(weight=torch.randn(C_OUT, C_IN, 1, K, K)), ValueError,
     r"weight: expected shape \(C_out, C_in/groups, 4, kh, kw\) for in_group p4 \(S_in = 4\), got \(2, 3, 1, 3, 3\)"),
    ("bias-shape", dict(bias=torch.randn(C_OUT + 1)), ValueError,
     r"bias: expected shape \(2,\), one per output G-channel, got \(3,\)"),
    # zero sizes (an empty batch is valid: see test_edge_cases.py)
    ("zero-input-channels", dict(input=torch.randn(B, 0, 4, H, H)), ValueError,
     r"input: expected non-zero channel and spatial sizes \(only the batch may be 0\), got shape \(2, 0, 4, 7, 7\)"),
    ("zero-spatial", dict(input=torch.randn(B, C_IN, 4, 0, H), padding=2), ValueError,
     r"input: expected non-zero channel and spatial sizes"),
    ("zero-out-channels", dict(weight=torch.randn(0, C_IN, 4, K, K), bias=None), ValueError,
     r"weight: expected every dimension to be at least 1, got shape \(0, 3, 4, 3, 3\)"),
    ("zero-kernel", dict(weight=torch.randn(C_OUT, C_IN, 4, 0, 0)), ValueError,
     r"weight: expected every dimension to be at least 1"),
    # dtypes and devices
    ("input-int", dict(input=torch.ones(B, C_IN, 4, H, H, dtype=torch.int64)), TypeError,
     r"input: expected a floating-point tensor \(float16, bfloat16, float32, float64\), got dtype torch\.int64"),
    ("input-bool", dict(input=torch.ones(B, C_IN, 4, H, H, dtype=torch.bool)), TypeError,
     r"input: expected a floating-point tensor .* got dtype torch\.bool"),
    ("input-complex", dict(input=torch.ones(B, C_IN, 4, H, H, dtype=torch.complex64)), TypeError,
     r"input: expected a floating-point tensor .* got dtype torch\.complex64"),
    ("weight-float8", dict(weight=torch.randn(C_OUT, C_IN, 4, K, K).to(torch.float8_e4m3fn)), TypeError,
     r"weight: expected a floating-point tensor .* got dtype torch\.float8_e4m3fn"),
    ("weight-dtype", dict(weight=torch.randn(C_OUT, C_IN, 4, K, K, dtype=torch.float64)), TypeError,
     r"weight: dtype torch\.float64 does not match input's dtype torch\.float32; expected the same dtype"),
    ("bias-dtype", dict(bias=torch.randn(C_OUT, dtype=torch.float16)), TypeError,
     r"bias: dtype torch\.float16 does not match input's dtype torch\.float32"),
    ("weight-device", dict(weight=torch.randn(C_OUT, C_IN, 4, K, K, device="meta")), ValueError,
     r"weight: device meta does not match input's device cpu; expected tensors on one device"),
    ("bias-device", dict(bias=torch.randn(C_OUT, device="meta")), ValueError,
     r"bias: device meta does not match input's device cpu"),
    # kernel shape under the group
    ("non-square-p4", dict(weight=torch.randn(C_OUT, C_IN, 4, 3, 5)), ValueError,
     r"weight: kernel_size 3x5 \(weight shape \(2, 3, 4, 3, 5\)\) does not fit group p4: group p4 rotates filters "
     r"by 90 degrees, which needs a square kernel, got 3x5"),
    ("non-square-p4m-lifting", dict(input=torch.randn(B, C_IN, H, H), weight=torch.randn(C_OUT, C_IN, 1, 1, 3),
                                    group="p4m", in_group="z2"), ValueError,
     r"weight: kernel_size 1x3 .* does not fit group p4m"),
    # stride, dilation, padding
    ("stride-0", dict(stride=0), ValueError, r"stride: expected values >= 1, got \(0, 0\)"),
    ("stride-pair-0", dict(stride=(1, 0)), ValueError, r"stride: expected values >= 1, got \(1, 0\)"),
    ("stride-float", dict(stride=1.5), TypeError, r"stride: expected an int or a pair of ints, got 1\.5"),
    ("stride-triple", dict(stride=(1, 1, 1)), TypeError, r"stride: expected an int or a pair of ints, got \(1, 1, 1\)"),
    ("stride-bool", dict(stride=True), TypeError, r"stride: expected an int or a pair of ints, got True"),
    ("dilation-0", dict(dilation=0), ValueError, r"dilation: expected values >= 1, got \(0, 0\)"),
    ("dilation-negative", dict(dilation=(2, -1)), ValueError, r"dilation: expected values >= 1, got \(2, -1\)"),
    ("padding-negative", dict(padding=-1), ValueError, r"padding: expected non-negative values, got -1"),
    ("padding-pair-negative", dict(padding=(0, -2)), ValueError,
     r"padding: expected non-negative values, got \(0, -2\)"),
    ("padding-name", dict(padding="full"), ValueError,
     r"padding: expected an int, a pair, 'valid' or 'same', got 'full'"),
    ("padding-same-strided", dict(padding="same", stride=2), ValueError,
     r"padding: 'same' is not supported for strided convolutions, got stride=\(2, 2\)"),
    ("output-empty", dict(input=torch.randn(B, C_IN, 4, 2, 2), padding=0), ValueError,
     r"input: spatial size 2x2 with kernel 3x3, padding 0, dilation \(1, 1\) and stride \(1, 1\) gives an output of "
     r"0x0; expected at least 1x1"),
    ("output-empty-dilated", dict(dilation=4, padding=0), ValueError,
     r"input: spatial size 7x7 .* dilation \(4, 4\) .* gives an output of -1x-1; expected at least 1x1"),
    # channel groups
    ("groups-zero", dict(groups=0), ValueError, r"groups: expected a positive int, got 0"),
    ("groups-float", dict(groups=1.0), TypeError, r"groups: expected a positive int, got 1\.0"),
    ("groups-input-channels", dict(groups=2, weight=torch.randn(C_OUT, 1, 4, K, K)), ValueError,
     r"groups: in_channels = 3 \(input shape \(2, 3, 4, 7, 7\)\) is not divisible by groups = 2"),
    ("groups-out-channels", dict(groups=3, input=torch.randn(B, 3, 4, H, H), weight=torch.randn(C_OUT, 1, 4, K, K)),
     ValueError, r"groups: out_channels = 2 \(weight\.shape\[0\]\) is not divisible by groups = 3"),
    # groups
    ("group-name", dict(group="p5"), ValueError, r"group: unknown group 'p5', expected a Group or one of"),
    ("group-type", dict(group=4), TypeError, r"group: expected a Group or a group name \(str\), got int"),
    ("in-group", dict(in_group="p4m"), ValueError,
     r"in_group: expected 'z2' \(lifting\) or the output group p4, got p4m"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("change, exc, pattern", [c[1:] for c in CALL_ERRORS], ids=[c[0] for c in CALL_ERRORS])
def test_gconv2d_rejects(change, exc, pattern, backend):
    with gconv_triton.backend(backend), pytest.raises(exc, match=pattern):
        gconv2d(**_args(**change))


def test_valid_call_passes_validation():
    """The base case of the table is valid: each error above comes from its one change."""
    with gconv_triton.backend("torch"):
        assert gconv2d(**_args()).shape == (B, C_OUT, 4, H, H)


def test_non_square_kernel_allowed_without_rotations():
    """Flips and 180-degree rotations map a 3x5 kernel onto itself: only 90-degree rotations need a square one."""
    with gconv_triton.backend("torch"):
        for group in ("pm", "p2", "p2mm", "z2"):
            y = gconv2d(torch.randn(1, 2, 7, 7), torch.randn(3, 2, 1, 3, 5), group=group, in_group="z2")
            assert y.shape[-2:] == (5, 3)


def test_triton_pixel_limit_rejected_before_launch():
    """More than 2**31 - 1 pixels (B·H·W) overflow the kernels' int32 pixel index: a clear error, not a wrap.
    The input is an expanded view (stride 0): 2**32 elements and no memory."""
    x = torch.randn(1, 1, 1, 1, 1).expand(2**16, 1, 1, 2**8, 2**8)
    w = torch.randn(1, 1, 1, 1, 1)
    with gconv_triton.backend("triton"), pytest.raises(
            ValueError, match=r"input: batch x pixels = 65536 x 256x256 \(output 256x256\) = 4294967296 exceeds the "
                              r"Triton kernels' limit of 2\*\*31 - 1 pixels"):
        gconv2d(x, w, group="z2", in_group="z2")


# ------------------------------------------------------------------------------------- module constructors
MODULE_ERRORS = [
    ("in-channels-0", lambda: P4ConvP4(0, 2, 3), ValueError, r"in_channels: expected a positive int, got 0"),
    ("out-channels-negative", lambda: P4ConvP4(2, -1, 3), ValueError, r"out_channels: expected a positive int, got -1"),
    ("groups-0", lambda: P4ConvP4(2, 2, 3, groups=0), ValueError, r"groups: expected a positive int, got 0"),
    ("groups-not-dividing", lambda: P4ConvP4(3, 2, 3, groups=2), ValueError,
     r"groups: in_channels \(3\) and out_channels \(2\) must both be divisible by groups \(2\)"),
    ("kernel-0", lambda: P4ConvP4(2, 2, 0), ValueError, r"kernel_size: expected a positive int or a pair"),
    ("kernel-non-square", lambda: P4ConvZ2(2, 2, (3, 5)), ValueError,
     r"kernel_size: group p4 rotates filters by 90 degrees, which needs a square kernel, got 3x5"),
    ("stride-0", lambda: P4ConvP4(2, 2, 3, stride=0), ValueError, r"stride: expected values >= 1, got \(0, 0\)"),
    ("stride-float", lambda: P4ConvP4(2, 2, 3, stride=0.5), TypeError, r"stride: expected an int or a pair"),
    ("dilation-0", lambda: P4ConvP4(2, 2, 3, dilation=(1, 0)), ValueError,
     r"dilation: expected values >= 1, got \(1, 0\)"),
    ("padding-negative", lambda: P4ConvP4(2, 2, 3, padding=-1), ValueError, r"padding: expected non-negative values"),
    ("padding-name", lambda: P4ConvP4(2, 2, 3, padding="circular"), ValueError,
     r"padding: expected an int, a pair, 'valid' or 'same', got 'circular'"),
    ("padding-same-strided", lambda: P4ConvP4(2, 2, 3, stride=2, padding="same"), ValueError,
     r"padding: 'same' is not supported for strided convolutions"),
    ("group-name", lambda: GroupConv2d(2, 2, 3, group="p3"), ValueError, r"group: unknown group 'p3'"),
    ("in-group", lambda: GroupConv2d(2, 2, 3, group="p4", in_group="p4m"), ValueError,
     r"in_group: expected 'z2' or the output group p4, got p4m"),
]


@pytest.mark.parametrize("make, exc, pattern", [c[1:] for c in MODULE_ERRORS], ids=[c[0] for c in MODULE_ERRORS])
def test_module_constructor_rejects(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


# A wrong type (a float, a str, None or a bool where an int is expected) is a TypeError, a wrong value a
# ValueError; each names the argument and the value given.  (id, constructor, exception, message pattern)
_TAP = dict(tap="adder")
CONSTRUCTOR_TYPES = [
    ("in-channels-float", lambda: GroupConv2d(3.0, 4, 3), TypeError, r"in_channels: expected a positive int, got 3\.0"),
    ("in-channels-none", lambda: GroupConv2d(None, 4, 3), TypeError, r"in_channels: expected a positive int, got None"),
    ("in-channels-bool", lambda: GroupConv2d(True, 4, 3), TypeError, r"in_channels: expected a positive int, got True"),
    ("out-channels-str", lambda: P4ConvP4(3, "4", 3), TypeError, r"out_channels: expected a positive int, got '4'"),
    ("groups-float", lambda: P4ConvP4(2, 2, 3, groups=1.0), TypeError, r"groups: expected a positive int, got 1\.0"),
    ("kernel-float", lambda: P4ConvP4(2, 2, 3.0), TypeError,
     r"kernel_size: expected an int or a pair of ints, got 3\.0"),
    ("kernel-float-in-pair", lambda: P4ConvP4(2, 2, (3, 3.0)), TypeError,
     r"kernel_size: expected an int or a pair of ints, got \(3, 3\.0\)"),
    ("kernel-none", lambda: P4ConvZ2(2, 2, None), TypeError,
     r"kernel_size: expected an int or a pair of ints, got None"),
    ("kernel-negative-in-pair", lambda: P4ConvP4(2, 2, (3, -3)), ValueError,
     r"kernel_size: expected a positive int or a pair of positive ints, got \(3, -3\)"),
    ("dilation-float", lambda: P4ConvP4(2, 2, 3, dilation=1.5), TypeError, r"dilation: expected an int or a pair"),
    ("padding-none", lambda: P4ConvP4(2, 2, 3, padding=None), TypeError, r"padding: expected an int or a pair"),
    ("activation-int", lambda: P4ConvP4(2, 2, 3, activation=1), TypeError,
     r"activation: expected None or one of \('relu', 'silu', 'gelu'\), got 1"),
    ("activation-name", lambda: P4ConvP4(2, 2, 3, activation="tanh"), ValueError, r"activation: .* got 'tanh'"),
    ("group-int", lambda: GroupConv2d(2, 2, 3, group=4), TypeError,
     r"group: expected a Group or a group name \(str\), got int"),
    ("transposed-in-channels-float", lambda: gconv_triton.GroupConvTranspose2d(2.0, 2, 3), TypeError,
     r"in_channels: expected a positive int, got 2\.0"),
    ("transposed-kernel-str", lambda: gconv_triton.GroupConvTranspose2d(2, 2, "3"), TypeError,
     r"kernel_size: expected an int or a pair of ints, got '3'"),
    ("transposed-output-padding-float", lambda: gconv_triton.GroupConvTranspose2d(2, 2, 3, 2, output_padding=0.5),
     TypeError, r"output_padding: expected an int or a pair of ints, got 0\.5"),
    ("tap2d-in-channels-float", lambda: gconv_triton.TapConv2d(2.5, 2, 3, **_TAP), TypeError,
     r"in_channels: expected a positive int, got 2\.5"),
    ("tap2d-kernel-float", lambda: gconv_triton.TapConv2d(2, 2, 3.0, **_TAP), TypeError,
     r"kernel_size: expected an int or a pair of ints, got 3\.0"),
    ("tap1d-kernel-float", lambda: gconv_triton.TapConv1d(2, 2, 3.0, **_TAP), TypeError,
     r"kernel_size: expected an int or a 1-tuple of ints, got 3\.0"),
    ("shared-groups-float", lambda: gconv_triton.SharedKernelConv2d(3, 2.0), TypeError,
     r"groups: expected a positive int, got 2\.0"),
    ("shared-groups-0", lambda: gconv_triton.SharedKernelConv2d(3, 0), ValueError,
     r"groups: expected a positive int, got 0"),
    ("batchnorm-features-float", lambda: gconv_triton.GroupBatchNorm(3.0), TypeError,
     r"num_features: expected a positive int, got 3\.0"),
    ("batchnorm-features-0", lambda: gconv_triton.GroupBatchNorm(0), ValueError,
     r"num_features: expected a positive int, got 0"),
    ("pool-kernel-float", lambda: gconv_triton.GroupMaxPool2d(2.0), TypeError,
     r"kernel_size: expected an int or a pair of ints, got 2\.0"),
    ("pool-kernel-0", lambda: gconv_triton.GroupAvgPool2d(0), ValueError,
     r"kernel_size: expected a positive int or a pair of positive ints, got 0"),
    ("pool-stride-str", lambda: gconv_triton.GroupMaxPool2d(2, stride="2"), TypeError,
     r"stride: expected an int or a pair of ints, got '2'"),
    ("pool-stride-0", lambda: gconv_triton.GroupMaxPool2d(2, stride=0), ValueError,
     r"stride: expected values >= 1, got \(0, 0\)"),
    ("pool-padding-str", lambda: gconv_triton.GroupMaxPool2d(2, padding="same"), TypeError,
     r"padding: expected an int or a pair of ints, got 'same'"),
    ("pool-padding-negative", lambda: gconv_triton.GroupAvgPool2d(3, padding=-1), ValueError,
     r"padding: expected non-negative values, got -1"),
    ("pool-padding-over-half", lambda: gconv_triton.GroupMaxPool2d(3, padding=2), ValueError,
     r"padding: expected at most half the kernel size \(kernel_size \(3, 3\)\), got 2"),
    ("width-float", lambda: gconv_triton.gcnn_width(32.0, "p4"), TypeError,
     r"cnn_width: expected a positive int, got 32\.0"),
    ("width-0", lambda: gconv_triton.gcnn_width(0, "p4"), ValueError, r"cnn_width: expected a positive int, got 0"),
]


@pytest.mark.parametrize("make, exc, pattern", [c[1:] for c in CONSTRUCTOR_TYPES],
                         ids=[c[0] for c in CONSTRUCTOR_TYPES])
def test_constructor_wrong_type_is_a_type_error_wrong_value_a_value_error(make, exc, pattern):
    with pytest.raises(exc, match=pattern) as raised:
        make()
    assert type(raised.value) is exc  # not a subclass standing in for the other


def test_module_forward_rejects_before_launch():
    """A layer's forward goes through the same validation (wrong channels, wrong dtype)."""
    layer = P4ConvP4(3, 2, 3)
    with gconv_triton.backend("triton"):
        with pytest.raises(ValueError, match=r"input: expected 3 channels .* got 2"):
            layer(torch.randn(1, 2, 4, 5, 5))
        with pytest.raises(TypeError, match=r"weight: dtype torch\.float32 does not match input's dtype "
                                            r"torch\.float64"):
            layer(torch.randn(1, 3, 4, 5, 5, dtype=torch.float64))


# ------------------------------------------------------------------------------------- exactness warnings
# (layer arguments, input (H, W), pattern of the reason); every layer is float64 on the reference path.
INEXACT = [
    ("stride-misaligned", dict(kernel_size=3, stride=2), (8, 8), r"height: stride 2 does not divide H \+ 2p - d\(k-1\) "
     r"- 1 = 8 \+ 0 - 2 - 1 \(remainder 1\); crop the input by 1 or pad it by 1 pixel\(s\)"),
    ("stride-misaligned-padded", dict(kernel_size=3, stride=3, padding=1), (8, 8), r"remainder 1"),
    ("stride-misaligned-dilated", dict(kernel_size=3, stride=2, dilation=2), (8, 8), r"remainder 1"),
    ("non-square", dict(kernel_size=3, padding=1), (7, 9), r"input 7x9 is not square, but p4 rotates by 90 degrees"),
    ("same-even", dict(kernel_size=2, padding="same"), (6, 6),
     r"height: asymmetric padding \(0 before, 1 after; 'same' padding with the even effective kernel d\(k-1\)\+1 = 2"),
    ("same-even-4", dict(kernel_size=4, padding="same", group="p4m", in_group="p4m"), (5, 5), r"asymmetric padding"),
    ("axes-differ", dict(kernel_size=3, stride=(1, 2)), (7, 7), r"p4 rotates by 90 degrees but the axes are sampled "
     r"differently"),
    ("flip-height", dict(kernel_size=(3, 1), stride=2, group="pm"), (6, 7), r"height: stride 2 does not divide"),
    ("p2-width", dict(kernel_size=(1, 3), stride=2, group="p2"), (5, 6), r"width: stride 2 does not divide"),
]
EXACT = [
    ("stride-1", dict(kernel_size=3), (7, 7)),
    ("stride-1-padded-even", dict(kernel_size=4, padding=1), (6, 6)),
    ("stride-2-aligned", dict(kernel_size=3, stride=2), (9, 9)),
    ("stride-2-aligned-padded", dict(kernel_size=3, stride=2, padding=1), (7, 7)),
    ("stride-3-aligned-dilated", dict(kernel_size=2, stride=3, dilation=3), (7, 7)),
    ("same-odd", dict(kernel_size=3, padding="same", group="p4m", in_group="p4m"), (5, 5)),
    ("same-even-dilated", dict(kernel_size=2, padding="same", dilation=2), (6, 6)),
    ("one-output-pixel", dict(kernel_size=4, stride=(1, 2)), (4, 4)),
    ("flip-width-free", dict(kernel_size=(3, 1), stride=2, group="pm"), (7, 6)),
    ("flip-non-square", dict(kernel_size=3, group="p2mm", padding=1), (5, 8)),
    ("z2-anything", dict(kernel_size=2, stride=3, padding="valid", group="z2"), (8, 5)),
]


def _layer(kwargs):
    kwargs = dict(kwargs)
    group, in_group = kwargs.pop("group", "p4"), kwargs.pop("in_group", "z2")
    return GroupConv2d(2, 2, group=group, in_group=in_group, dtype=torch.float64, **kwargs), in_group, group


def _input(layer, in_group, size):
    s = 1 if in_group == "z2" else layer.in_group.order
    return torch.randn(1, 2, s, *size, dtype=torch.float64) if s > 1 else torch.randn(1, 2, *size, dtype=torch.float64)


@pytest.mark.parametrize("kwargs, size, pattern", [c[1:] for c in INEXACT], ids=[c[0] for c in INEXACT])
def test_inexact_config_warns(kwargs, size, pattern):
    layer, in_group, _ = _layer(kwargs)
    with gconv_triton.backend("torch"), pytest.warns(gconv_triton.EquivarianceWarning, match=pattern) as record:
        layer(_input(layer, in_group, size))
    assert issubclass(gconv_triton.EquivarianceWarning, UserWarning)
    assert len(record) == 1 and "docs/exactness.md" in str(record[0].message)


@pytest.mark.parametrize("kwargs, size", [c[1:] for c in EXACT], ids=[c[0] for c in EXACT])
def test_exact_config_never_warns(kwargs, size):
    layer, in_group, _ = _layer(kwargs)
    with gconv_triton.backend("torch"), warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(_input(layer, in_group, size))


@pytest.mark.parametrize("kwargs, size, pattern", [c[1:] for c in INEXACT], ids=[c[0] for c in INEXACT])
def test_flagged_configs_are_not_equivariant(kwargs, size, pattern):
    """The rule is right one way: what it flags is off by O(1) (or the group cannot even act on the input)."""
    layer, in_group, group = _layer(kwargs)
    x = _input(layer, in_group, size)
    with gconv_triton.backend("torch"), warnings.catch_warnings():
        warnings.simplefilter("ignore", gconv_triton.EquivarianceWarning)
        try:
            error = gconv_triton.check_equivariance(layer, x, group)
        except ValueError as err:  # a 90-degree rotation of a non-square input or output is not even defined
            assert "needs a square image" in str(err) and layer.group.order in (4, 8)
            return
    assert error > 1e-3


@pytest.mark.parametrize("kwargs, size", [c[1:] for c in EXACT], ids=[c[0] for c in EXACT])
def test_passed_configs_are_equivariant(kwargs, size):
    """...and the other: what it passes is equivariant to float64 round-off."""
    layer, in_group, group = _layer(kwargs)
    with gconv_triton.backend("torch"):
        assert gconv_triton.check_equivariance(layer, _input(layer, in_group, size), group) < 1e-12


def test_warning_once_per_layer_and_input_size():
    first, second = P4ConvZ2(1, 2, 3, stride=2).double(), P4ConvZ2(1, 2, 3, stride=2).double()
    with gconv_triton.backend("torch"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for size in (8, 8, 10, 8, 10, 9):  # 9 is exact for stride 2, kernel 3
            first(torch.randn(1, 1, size, size, dtype=torch.float64))
        second(torch.randn(1, 1, 8, 8, dtype=torch.float64))
    messages = [str(w.message) for w in record if w.category is gconv_triton.EquivarianceWarning]
    assert len(messages) == 3, messages  # first on 8x8 and 10x10, second on 8x8
    assert [("8x8" in m, "10x10" in m) for m in messages] == [(True, False), (False, True), (True, False)]


def test_warning_silenceable():
    layer = P4ConvZ2(1, 2, 2, padding="same").double()
    with gconv_triton.backend("torch"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=gconv_triton.EquivarianceWarning)
        layer(torch.randn(1, 1, 5, 5, dtype=torch.float64))
    assert not record


def test_inexact_reasons_public_helper():
    """What functional users call (gconv2d itself never warns: it has no layer to count warnings for)."""
    from gconv_triton.exactness import inexact_reasons

    assert inexact_reasons("p4", (9, 9), 3, stride=2) == []
    assert inexact_reasons("z2", (8, 7), 2, stride=3, padding="valid") == []
    height, width = inexact_reasons("p4m", (8, 8), 3, stride=2, padding=1)
    assert height.startswith("height: stride 2") and width.startswith("width: stride 2")
    assert len(inexact_reasons("p4", (6, 6), 2, padding="same")) == 2  # both axes
