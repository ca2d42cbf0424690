"""``check_equivariance`` itself: how it reads its input and output (images, 5-D and flattened group maps,
invariants), that it says so, and that it evaluates a model without changing it (eval mode, buffers intact)."""

from __future__ import annotations

import pytest
import torch
from helpers import torch_backend
from torch import nn

import gconv_triton as gt
from gconv_triton import P4ConvP4, P4MConvZ2, check_equivariance
from gconv_triton.nn import GroupBatchNorm

DT = torch.float64
EXACT = 1e-12


@pytest.fixture(autouse=True)
def _reference_path():
    torch.manual_seed(0)
    with torch_backend():
        yield


def test_flattened_group_map_input():
    """GrouPy's flattened (B, C·S, H, W) form, which every layer accepts, is acted on as a group map when
    ``in_group`` says so, and read as planes (with the result saying so) when ``in_group='z2'`` says that."""
    layer = P4ConvP4(3, 2, 3, padding=1, dtype=DT)
    x = torch.randn(2, 3 * 4, 7, 7, dtype=DT)
    exact = check_equivariance(layer, x, "p4", in_group="p4")
    assert exact < EXACT
    assert exact.input_form.startswith("flattened p4 maps (B, C*4, H, W)")
    assert exact.output_form == "p4 maps (B, C, 4, H, W)"
    as_planes = check_equivariance(layer, x, "p4", in_group="z2")
    assert as_planes > 0.1 and as_planes.input_form.startswith("planes (B, C, H, W)")
    assert "input read as planes" in repr(as_planes)
    # the 5-D form and an invariant output
    assert check_equivariance(layer, x.unflatten(1, (3, 4)), "p4").input_form == "p4 maps (B, C, 4, H, W)"
    pooled = check_equivariance(lambda t: layer(t).mean((2, 3, 4)), x, "p4", in_group="p4")
    assert pooled < EXACT and pooled.output_form.startswith("an invariant")


def test_flattened_group_map_output():
    """An exported layer returns flattened maps: ``out_group`` reads them as group maps."""
    layer = P4MConvZ2(2, 3, 3, padding=1, dtype=DT)
    exported = layer.export()
    x = torch.randn(2, 2, 7, 7, dtype=DT)
    assert check_equivariance(exported, x, "p4m", in_group="z2", out_group="p4m") < EXACT
    assert check_equivariance(exported, x, "p4m") > 0.1  # read as planes: the group axis is not permuted


@pytest.mark.parametrize("kwargs,x,pattern", [
    (dict(in_group="p4"), torch.randn(2, 10, 5, 5), r"input: expected a p4 map \(B, C, 4, H, W\) or its flattened "
                                                    r"form \(B, C\*4, H, W\), got shape \(2, 10, 5, 5\)"),
    (dict(in_group="p4"), torch.randn(2, 3, 8, 5, 5), r"input: expected a p4 map"),
    (dict(in_group="z2"), torch.randn(2, 3, 4, 5, 5), r"input: expected planes \(B, C, H, W\) for in_group z2"),
    (dict(in_group="p4m"), torch.randn(2, 8, 5, 5), r"in_group: expected 'z2' or the group p4, got p4m"),
    (dict(), torch.randn(2, 3, 5), r"input: cannot apply p4 to a tensor of shape \(2, 3, 5\)"),
])
def test_shape_must_fit_the_declared_group(kwargs, x, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_equivariance(nn.Identity(), x.double(), "p4", **kwargs)


def _training_model():
    return nn.Sequential(
        P4ConvP4(2, 3, 3, padding=1, dtype=DT), GroupBatchNorm(3, dtype=DT), nn.ReLU(), nn.Dropout(0.5),
        P4ConvP4(3, 2, 3, padding=1, dtype=DT), GroupBatchNorm(2, dtype=DT),
    )


def test_training_model_is_evaluated_in_eval_mode_and_left_unchanged():
    model = _training_model()
    model(torch.randn(4, 2, 4, 7, 7, dtype=DT) + 1)  # non-trivial running statistics
    model.train()
    model[3].eval()  # a mixed state, to be restored as it was
    modes = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    err = check_equivariance(model, torch.randn(2, 2, 4, 7, 7, dtype=DT), "p4")
    assert err < EXACT  # dropout off, running statistics: exactly equivariant
    assert [m.training for m in model.modules()] == modes
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in buffers.items())  # bit-identical, counters included


def test_train_true_checks_training_mode_and_still_restores_buffers():
    """Batch statistics are equivariant too (dropout removed: it is random), and the running statistics the
    forwards updated are put back."""
    model = nn.Sequential(P4ConvP4(2, 3, 3, padding=1, dtype=DT), GroupBatchNorm(3, dtype=DT))
    model.eval()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    assert check_equivariance(model, torch.randn(2, 2, 4, 7, 7, dtype=DT), "p4", train=True) < EXACT
    assert not model.training and not model[1].training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())


def test_plain_callable_runs_as_it_is():
    calls = []

    def f(t):
        calls.append(t.shape)
        return t.flip(-1).flip(-1)

    assert check_equivariance(f, torch.randn(1, 1, 5, 5, dtype=DT), gt.p4m) < EXACT
    assert len(calls) == 9  # f(x), then one call per element


# ------------------------------------------------------------------------------------- non-finite outputs
def _nan_on_call(call: int):
    """The identity (exactly equivariant), except that its ``call``-th call (1: f(x), 2: f(e·x), 3: f(g1·x), ...)
    puts a NaN and an inf in its output."""
    calls = []

    def f(t):
        calls.append(None)
        out = t.clone()
        if len(calls) == call:
            out[0, 0, 0, 0], out[1, 0, 2, 3] = float("nan"), float("inf")
        return out

    return f


def test_non_finite_output_on_x_is_an_error():
    """An output that overflows to inf everywhere, or one NaN in a non-equivariant model's output, is an error
    that says where, never a perfect 0.0."""
    x = torch.randn(2, 3, 5, 5, dtype=DT)
    with pytest.raises(ValueError, match=r"output: the module's output on x \(untransformed\) has 150 non-finite "
                                         r"entries of 150 \(0 NaN, 150 inf\)"):
        check_equivariance(lambda t: t * 1e300 * 1e300, x, "p4")
    conv = nn.Conv2d(3, 2, 3, dtype=DT)  # not equivariant

    def one_nan(t):
        out = conv(t)
        out[0, 0, 0, 0] = float("nan")
        return out

    with pytest.raises(ValueError, match=r"output: the module's output on x \(untransformed\) has 1 non-finite entry "
                                         r"of 36 \(1 NaN, 0 inf\)"):
        check_equivariance(one_nan, x, "p4")


def test_tap_layer_overflowing_to_inf_is_an_error():
    """An adder layer on finite float32 inputs near the maximum: its sums of |x - w| overflow to -inf (this
    reported a perfect 0.0)."""
    layer = gt.TapConv2d(1, 2, 3, tap="adder", group="p4", in_group="z2", padding=1)
    x = torch.randn(2, 1, 5, 5).clamp(-3, 3) * 1e38
    with pytest.raises(ValueError, match=r"output: the module's output on x \(untransformed\) has \d+ non-finite "
                                         r"entries of 400 \(0 NaN, \d+ inf\)"):
        check_equivariance(layer, x, "p4")


@pytest.mark.parametrize("element", [0, 1, 3])
def test_non_finite_output_on_a_transformed_input_names_the_element(element):
    x = torch.randn(2, 3, 5, 5, dtype=DT)
    with pytest.raises(ValueError, match=rf"output: the module's output on g·x for group element g = {element} of "
                                         rf"p4 .*has 2 non-finite entries of 150 \(1 NaN, 1 inf\)"):
        check_equivariance(_nan_on_call(element + 2), x, "p4")


def test_non_finite_input_is_an_error():
    x = torch.randn(2, 3, 5, 5, dtype=DT)
    x[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"x: the input has 1 non-finite entry of 150 \(1 NaN, 0 inf\); expected "
                                         r"finite values"):
        check_equivariance(nn.Identity(), x, "p4")


def test_huge_finite_outputs_do_not_overflow_the_norm():
    """Outputs near the float64 maximum: the squared norm overflows unless the error is computed scaled, which
    would report inf/inf = NaN (formerly dropped by ``max`` as 0.0)."""
    x = torch.randn(2, 3, 6, 6, dtype=DT)
    assert check_equivariance(lambda t: t * 1e307, x, "p4") < EXACT
    conv = nn.Conv2d(3, 2, 3, dtype=DT)
    scaled = check_equivariance(lambda t: conv(t) * 1e307, x, "p4")
    assert abs(scaled - check_equivariance(conv, x, "p4")) < 1e-12 and scaled > 0.1


# ---------------------------------------------------------------------- flattened maps read as the model does
class _Nested(nn.Module):
    """A model whose first group layer sits two modules deep (registered after an unused-at-input ReLU)."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.body = nn.Sequential(nn.Sequential(P4ConvP4(2, 3, 3, padding=1, dtype=DT)), GroupBatchNorm(3, dtype=DT),
                                  nn.ReLU(), P4ConvP4(3, 2, 3, padding=1, dtype=DT))

    def forward(self, t):
        return self.body(t)


def test_flattened_input_is_read_as_the_first_group_layer_reads_it():
    """GrouPy's flattened ``(B, C·S, H, W)`` input without ``in_group``: read as the model's first group layer
    reads a 4-D input, and the result says so; never reported as broken equivariance."""
    layer = P4ConvP4(2, 4, 3, padding=1, dtype=DT)
    x = torch.randn(2, 8, 8, 8, dtype=DT)
    err = check_equivariance(layer, x, "p4")
    assert err < EXACT
    assert err.input_form == ("flattened p4 maps (B, C*4, H, W), channel c*4 + s, as the module's first group "
                              "layer (the module itself, a P4ConvP4) reads a 4-D input")
    assert check_equivariance(layer, x, "p4") == check_equivariance(layer, x, "p4", in_group="p4")
    nested = _Nested()
    err = check_equivariance(nested, x, "p4")
    assert err < EXACT and "(body.0.0, a P4ConvP4)" in err.input_form
    pooled = check_equivariance(nn.Sequential(gt.GroupMaxPool2d(2), gt.GroupPool("max", group="p4")), x, "p4")
    assert pooled < EXACT and "(1, a GroupPool)" in pooled.input_form  # the spatial pool reads either form alike
    # a lifting first layer reads 4-D input as images, the default
    lifting = nn.Sequential(gt.P4ConvZ2(8, 2, 3, padding=1, dtype=DT), P4ConvP4(2, 2, 3, padding=1, dtype=DT))
    images = check_equivariance(lifting, x, "p4")
    assert images < EXACT and images.input_form == "planes (B, C, H, W), transformed as images"
    # in_group still decides when given: read as images, the flattened map is not equivariantly transformed
    assert check_equivariance(layer, x, "p4", in_group="z2") > 0.1


def test_flattened_input_of_another_group_asks_for_in_group():
    layer = gt.P4MConvP4M(1, 2, 3, padding=1, dtype=DT)
    with pytest.raises(ValueError, match=r"input: the module's first group layer \(the module itself, a P4MConvP4M\) "
                                         r"reads a 4-D input as flattened p4m maps, on which p4 does not act; pass "
                                         r"in_group="):
        check_equivariance(layer, torch.randn(2, 8, 6, 6, dtype=DT), "p4")
