"""The demo (``make demo``) in its --quick form, and the small model builder it uses."""

from __future__ import annotations

import math

import pytest
import torch

import gconv_triton
from gconv_triton import demo
from gconv_triton.models import SmallGCNN, count_parameters, widths_for_budget


def test_demo_quick_returns_sane_metrics(capsys):
    metrics = demo.main(["--quick"])
    printed = capsys.readouterr().out
    models = metrics["models"]
    assert set(models) == {"P4CNN", "CNN"}
    p4, cnn = models["P4CNN"], models["CNN"]
    for name, r in models.items():
        assert name in printed
        accuracies = [*r["accuracy"].values(), r["upright"], r["rotated"]]
        assert all(0.0 <= a <= 1.0 for a in accuracies), (name, accuracies)
        assert set(r["accuracy"]) == set(demo.ANGLES)
        assert math.isfinite(r["train_images_per_s"]) and r["train_images_per_s"] > 0
        assert len(r["losses"]) == metrics["epochs"] and r["losses"][-1] < r["losses"][0], (name, r["losses"])
    assert abs(cnn["params"] / p4["params"] - 1) < 0.05, (p4["params"], cnn["params"])
    # The P4CNN's logits are invariant up to round-off; the CNN's are not, so the check measures something.
    assert p4["invariance_error"] < 1e-6
    assert cnn["invariance_error"] > 1e-3
    # Invariant logits give the same predictions at every angle (a near-tie may flip within round-off).
    spread = max(p4["accuracy"].values()) - min(p4["accuracy"].values())
    assert spread <= 2 / metrics["n_test"], p4["accuracy"]


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--width", "-1"], ["--threads", "0"],
                                  ["--device", "not-a-device"]])
def test_demo_rejects_bad_options(argv):
    with pytest.raises(SystemExit):
        demo.parse_args(argv)


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_small_gcnn_is_invariant(group):
    torch.manual_seed(0)
    model = SmallGCNN(group, (2, 3, 4), in_channels=2, num_classes=5, dtype=torch.float64)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    assert model(x).shape == (3, 5)
    assert gconv_triton.check_equivariance(model, x, group) < 1e-12


@pytest.mark.parametrize("group", ["z2", "p4m"])
def test_widths_for_budget_meets_the_p4_budget(group):
    budget = count_parameters(SmallGCNN("p4", (8, 8, 16)))
    widths = widths_for_budget(group, budget)
    count = count_parameters(SmallGCNN(group, widths))
    assert abs(count / budget - 1) < 0.05, (group, widths, count, budget)


@pytest.mark.parametrize("widths", [(8, 8), (8, 0, 16), (8, 8.0, 16)])
def test_small_gcnn_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match="widths"):
        SmallGCNN("p4", widths)
