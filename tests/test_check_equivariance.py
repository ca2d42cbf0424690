"""``check_equivariance`` itself: how it reads its input and output (images, 5-D and flattened group maps,
invariants), that it says so, and that it evaluates a model without changing it (eval mode, buffers intact)."""

from __future__ import annotations

import pytest
import torch
from helpers import torch_backend
from torch import nn

import gconv_triton as gt
from gconv_triton import P4ConvP4, P4MConvZ2, check_equivariance
from gconv_triton.layers import GroupBatchNorm

DT = torch.float64
EXACT = 1e-12


@pytest.fixture(autouse=True)
def _reference_path():
    torch.manual_seed(0)
    with torch_backend():
        yield


def test_flattened_group_map_input():
    """GrouPy's flattened (B, C·S, H, W) form, which every layer accepts, is acted on as a group map when
    ``in_group`` says so, and read as planes (with the result saying so) when it does not."""
    layer = P4ConvP4(3, 2, 3, padding=1, dtype=DT)
    x = torch.randn(2, 3 * 4, 7, 7, dtype=DT)
    exact = check_equivariance(layer, x, "p4", in_group="p4")
    assert exact < EXACT
    assert exact.input_form.startswith("flattened p4 maps (B, C*4, H, W)")
    assert exact.output_form == "p4 maps (B, C, 4, H, W)"
    as_planes = check_equivariance(layer, x, "p4")
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
