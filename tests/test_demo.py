"""The demo (``make demo``) in its --quick form, and the small model builder it uses."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gconv_triton
from gconv_triton import demo
from gconv_triton.models import SmallGCNN, count_parameters, widths_for_budget


def test_demo_quick_returns_sane_metrics(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    metrics = demo.main(["--quick", "--out", str(tmp_path / "plots")])
    printed = capsys.readouterr().out
    models = metrics["models"]
    assert set(models) == {"P4CNN", "P4M-CNN", "C8-CNN", "D8-CNN", "CNN"}
    cnn = models["CNN"]
    for name, r in models.items():
        assert name in printed
        accuracies = [*r["accuracy"].values(), r["upright"], r["rotated"], *r["rotation_curve"].values(),
                      *r["history"]["upright"], *r["history"]["rotated"]]
        assert all(0.0 <= a <= 1.0 for a in accuracies), (name, accuracies)
        assert set(r["accuracy"]) == set(demo.ANGLES)
        assert tuple(r["rotation_curve"]) == demo.CURVE_ANGLES
        # The interpolated rotation is exact at multiples of 90 degrees, so the curve meets the table there.
        assert all(r["rotation_curve"][a] == r["accuracy"][a] for a in demo.ANGLES), name
        assert len(r["history"]["upright"]) == len(r["history"]["rotated"]) == metrics["epochs"]
        assert r["history"]["upright"][-1] == r["upright"] and r["history"]["rotated"][-1] == r["rotated"]
        assert math.isfinite(r["train_images_per_s"]) and r["train_images_per_s"] > 0
        assert len(r["losses"]) == metrics["epochs"] and r["losses"][-1] < r["losses"][0], (name, r["losses"])
        assert abs(r["params"] / models["P4CNN"]["params"] - 1) < 0.05, (name, r["params"])
    # What inv. err checked: the quarter turns, and the flips too for the mirror-symmetric groups (C8 and D8's
    # 45-degree turns are off the pixel grid and not checked).
    checked = {name: sorted(r["invariance_error"].elements) for name, r in models.items()}
    assert checked == {"P4CNN": [0, 1, 2, 3], "P4M-CNN": list(range(8)), "C8-CNN": [0, 2, 4, 6],
                       "D8-CNN": [0, 2, 4, 6, 8, 10, 12, 14], "CNN": [0, 1, 2, 3]}, checked
    assert "the 4 flips for P4M-CNN and D8-CNN" in printed
    for name in ("P4CNN", "P4M-CNN", "C8-CNN", "D8-CNN"):
        r = models[name]
        # The G-CNNs' logits are invariant up to round-off; the CNN's are not, so the check measures something.
        assert r["invariance_error"] < 1e-6, name
        # Invariant logits give the same predictions at every angle (a near-tie may flip within round-off).
        spread = max(r["accuracy"].values()) - min(r["accuracy"].values())
        assert spread <= 2 / metrics["n_test"], (name, r["accuracy"])
    assert cnn["invariance_error"] > 1e-3
    assert "best on rotated digits:" in printed
    assert [os.path.basename(p) for p in metrics["plots"]] == ["learning_curves.png", "accuracy_vs_rotation.png"]
    for path in metrics["plots"]:
        assert os.path.dirname(path) == str(tmp_path / "plots")
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", path


def test_save_plots_skips_without_matplotlib(monkeypatch, capsys, tmp_path):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    assert demo.save_plots({}, str(tmp_path / "plots")) == []
    assert "plots skipped" in capsys.readouterr().out
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("degrees", [0, 90, 180, 270, 360, -90])
def test_rotate_matches_rot90_at_multiples_of_90(degrees):
    x = torch.rand(3, 2, 8, 8)
    assert torch.equal(demo.rotate(x, degrees), torch.rot90(x, degrees // 90, dims=(-2, -1)))


def _blob(n: int, x0: float, y0: float) -> torch.Tensor:
    """A smooth Gaussian bump centred at ``(x0, y0)`` (x right, y up, origin at the image centre): ``(1, 1, n, n)``."""
    i = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    x, y = i[None, :], -i[:, None]
    return torch.exp(-((x - x0) ** 2 + (y - y0) ** 2) / 6)[None, None]


@pytest.mark.parametrize("degrees", [30, 45, 135])
def test_rotate_turns_counter_clockwise(degrees):
    # The rotated bump is the bump at the rotated centre, up to bilinear interpolation error, at most
    # (|f_xx| + |f_yy|) / 8 <= 2 / (8 sigma^2) = 1/12 on a unit grid; the opposite turn is far off (> 0.6).
    a = math.radians(degrees)
    x0, y0 = 2.0, 1.0
    turned = _blob(11, x0 * math.cos(a) - y0 * math.sin(a), x0 * math.sin(a) + y0 * math.cos(a))
    error = (demo.rotate(_blob(11, x0, y0), degrees) - turned).abs().max()
    wrong = (demo.rotate(_blob(11, x0, y0), -degrees) - turned).abs().max()
    assert error < 1 / 12 and wrong > 0.5, (error, wrong)


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--width", "-1"], ["--threads", "0"],
                                  ["--device", "not-a-device"]])
def test_demo_rejects_bad_options(argv):
    with pytest.raises(SystemExit):
        demo.parse_args(argv)


@pytest.mark.parametrize("group", ["p4", "p4m", "c8", "d8"])
def test_small_gcnn_is_invariant(group):
    torch.manual_seed(0)
    model = SmallGCNN(group, (2, 3, 4), in_channels=2, num_classes=5, dtype=torch.float64)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    assert model(x).shape == (3, 5)
    assert gconv_triton.check_equivariance(model, x, group) < 1e-12


@pytest.mark.parametrize("group", ["z2", "p4m", "c8", "d8"])
def test_widths_for_budget_meets_the_p4_budget(group):
    budget = count_parameters(SmallGCNN("p4", (8, 8, 16)))
    widths = widths_for_budget(group, budget)
    count = count_parameters(SmallGCNN(group, widths))
    assert abs(count / budget - 1) < 0.05, (group, widths, count, budget)
    # widths_for_budget counts on the meta device: the same count as the real model.
    assert count_parameters(SmallGCNN(group, widths, device="meta")) == count


@pytest.mark.parametrize("group, order", [("c8", 8), ("d8", 16)])
def test_steerable_small_gcnn_counts_basis_coefficients(group, order):
    # A steerable 3x3 filter has B = 6 coefficients, not 9 per-position weights: (C_out, C_in, S_in, 6) weights and
    # C_out biases per convolution (S_in = 1 for the lifting one), then the linear classifier.
    widths = (3, 4, 5)
    expected = (3 * 1 * 1 * 6 + 3) + (4 * 3 * order * 6 + 4) + (5 * 4 * order * 6 + 5) + (5 * 10 + 10)
    for device in ("cpu", "meta"):
        assert count_parameters(SmallGCNN(group, widths, device=device)) == expected, device


@pytest.mark.parametrize("widths", [(8, 8), (8, 0, 16), (8, 8.0, 16)])
def test_small_gcnn_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match="widths"):
        SmallGCNN("p4", widths)


def test_demo_without_scikit_learn_says_what_to_install(monkeypatch):
    for module in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ModuleNotFoundError, match=r"scikit-learn.*make demo"):
        demo.main(["--quick"])
    # On the command line: one line naming what to install, exit status 1, no traceback.
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    script = ("import runpy, sys\n"
              "sys.modules['sklearn'] = None\n"
              "runpy.run_module('gconv_triton.demo', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script, "--quick"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "make demo" in proc.stderr, proc.stderr


def _demo_rows(text: str) -> dict[str, list[str]]:
    """The figures of each model's table row that must not depend on the machine (all but ``train img/s``), and
    the rotation-curve means: ``{"P4CNN": ["7186", "0.949", ...], ..., "mean": [...]}``."""
    rows = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[0] in demo.MODELS and fields[1].isdigit():
            rows[fields[0]] = fields[1:-2]  # params, acc@0..270, rotated (inv. err is round-off, img/s a timing)
        elif line.startswith("mean accuracy over rotations"):
            rows["mean"] = line.split(":", 1)[1].split()
    return rows


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the demo pins AVX2 code paths: an x86-64 CPU with AVX2 prints the README's table")
def test_make_demo_prints_the_readme_table(tmp_path):
    """``make demo`` (the full 30 epochs, in a fresh process, with the Makefile's environment) prints the
    accuracies the README shows, figure for figure."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("Output of `make demo`"):readme.index("**The same figures on every machine.**")]
    expected = _demo_rows(section)
    assert set(expected) == {*demo.MODELS, "mean"}, expected
    # The Makefile's environment, not the test process's: no interpreter, no poison, the default backend.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRITON_", "GCONV_TRITON_")) and k not in demo.PINNED_CPU_PATHS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(["make", "-s", "demo", f"PY={sys.executable}", f"DEMO_ARGS=--out {tmp_path}"],
                          cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CPU code paths AVX2, pinned as make demo pins them" in proc.stdout, proc.stdout
    assert _demo_rows(proc.stdout) == expected, proc.stdout
