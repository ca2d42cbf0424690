"""The perf suite on a CPU: providers agree on tiny shapes, the measurement loop and the report writers work."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gconv_triton.autotune import Layer

from helpers import INTERPRETED

from perf import cli, report, smoke
from perf.providers import PROVIDERS, Matmul, make_case, provider
from perf.runner import CpuTimer, Timing, run_suite

# Both kernel families, lifting, p4m, channel groups and 1-D (the p4 depthwise case adds only interpreter time);
# steerable C8 and D8 filters, lifting and regular.
CASES = ("lift-p4", "p4m", "conv1d-groups", "conv1d-depthwise", "lift-c8", "c8", "lift-d8", "d8")
STEERABLE_CASES = ("lift-c8", "c8", "lift-d8", "d8")

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="the smoke mode is the no-GPU path")


@needs_interpreter
def test_every_provider_agrees_on_tiny_shapes():
    rows = smoke.agreement(CASES)
    failed = [r for r in rows if r.get("status") != "skipped" and not r["ok"]]
    assert not failed, failed
    done = {(r["case"], r["provider"]) for r in rows if r.get("status") != "skipped"}
    for case in CASES:
        for name in ("gconv_triton", "bank_torch_cpu", "dense_torch_cpu", "matmul"):
            quantities = {r["quantity"] for r in rows if (r["case"], r["provider"]) == (case, name)}
            expected = {"y", "dw"} | ({"dx"} if smoke.SMOKE_CASES[case].input_grad else set())
            assert quantities == expected, (case, name, quantities)
    # e2cnn either agrees (its bank read back in our convention) or is skipped with the reason.
    for r in rows:
        if r["provider"] == "e2cnn" and r.get("status") == "skipped":
            assert r["message"]
    assert ("conv1d-groups", "e2cnn") not in done          # R2Conv has square kernels only
    # C_N / D_N: e2cnn's weights read into our coefficients give the same y and dx; our op says what it ran
    if importlib.util.find_spec("e2cnn") is not None:
        for case in STEERABLE_CASES:
            assert {r["quantity"] for r in rows if (r["case"], r["provider"]) == (case, "e2cnn")} == {"y", "dx"}
    ours = [r for r in rows if r["case"] in STEERABLE_CASES and r["provider"] == "gconv_triton"]
    assert ours and not any(r.get("message", "").startswith("no Triton kernels serve") for r in ours)   # kernels


def test_matmul_provider_has_the_layer_gemm_sizes():
    layer = smoke.SMOKE_CASES["conv1d-groups"]
    case = make_case(layer, "fp32", "contiguous", "cpu")
    built = Matmul().build(case)
    m, n, k = layer.gemm()
    assert (m, n, k) == (2 * 9, 6, 2 * 3)       # pixels, all output channels, one channel group's reduction
    assert built.forward().shape == (m, n) and built.inputs[-1].shape == (k, n)
    assert layer.flops("forward+backward") == 3 * 2 * m * n * k


@needs_interpreter
def test_agreement_in_a_subprocess_sets_the_interpreter():
    rows = smoke.agreement_subprocess(["conv1d-depthwise"], ["gconv_triton", "bank_cudnn"])
    assert {(r["provider"], r["quantity"]) for r in rows} == {
        (p, q) for p in ("gconv_triton", "bank_torch_cpu") for q in ("y", "dx", "dw")}
    assert all(r["ok"] for r in rows), rows


def test_agreement_refuses_to_run_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(smoke, "kernels_interpreted", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        smoke.agreement(["conv1d-groups"])


def _tiny_sets():
    small = dict(group="p4", in_group="p4", c_in=2, c_out=3, height=5, width=5, padding=(1, 1), batch=1)
    return {"p4cnn": [Layer("a", count=2, **small), Layer("b", **small)],
            "wide": [Layer("wide", group="p4m", in_group="p4m", c_in=2, c_out=2, height=3, width=3, padding=(1, 1))]}


def test_runner_and_report_on_cpu(tmp_path):
    """The GPU run's pipeline (records, derived ratios, totals, targets, files) driven with CPU timers."""
    sets = _tiny_sets()
    provs = [provider(p, "cpu") for p in ("gconv_triton", "bank_cudnn", "dense_cudnn", "matmul")]
    result = run_suite(sets, provs, modes=("forward", "forward+backward"), dtypes=("bf16",), device="cpu",
                       timer=CpuTimer(min_time_s=0, min_runs=2), memory=lambda run: 3 * 2 ** 20, progress=None)
    recs = result["records"]
    assert len(recs) == 3 * 4 * 2 and all(r["status"] == "ok" for r in recs), [r.get("message") for r in recs]
    ours = [r for r in recs if r["provider"] == "gconv_triton"]
    assert all(r["ratio_to_gconv_triton"] == 1.0 and r["rel_err"] < 1e-2 for r in ours)
    assert all(r["frac_matmul"] > 0 and r["tflops"] > 0 for r in recs)
    summary = {(r["set"], r["mode"], r["provider"]): r for r in result["summary"]}
    a, b = (r for r in recs if r["set"] == "p4cnn" and r["mode"] == "forward" and r["provider"] == "bank_cudnn")
    assert summary[("p4cnn", "forward", "bank_cudnn")]["total_ms"] == pytest.approx(2 * a["median_ms"]
                                                                                    + b["median_ms"])
    result.update(kind="gpu", environment=report.environment("cpu"), config={})
    paths = report.write(result, tmp_path, plot=True)
    text = paths[1].read_text()
    assert "## Shape sets" in text and "bank_cudnn ×" in text and "## Targets (bf16, forward+backward)" in text
    assert "of the matmul ceiling" in text and "## Per layer" in text
    saved = json.loads(paths[0].read_text())
    assert saved["records"][0]["median_ms"] > 0 and saved["environment"]["torch"] == torch.__version__
    again = report.write(result, tmp_path, plot=False)
    assert again[0].name.endswith("-2.json")            # never overwrites an earlier run


def test_unsupported_and_failing_providers_are_recorded_not_fatal():
    class Broken(type(provider("bank_cudnn", "cpu"))):
        name = "broken"

        def build(self, case):
            raise RuntimeError("no kernel for this")

    result = run_suite(_tiny_sets(), [provider("gconv_triton", "cpu"), Broken(), provider("e2cnn", "cpu")],
                       modes=("forward",), dtypes=("fp32",), device="cpu",
                       timer=lambda run: (run(), Timing(1.0, 0.9, 1.1))[1], progress=None)
    broken = [r for r in result["records"] if r["provider"] == "broken"]
    assert broken and all(r["status"] == "error" and "no kernel" in r["message"] for r in broken)
    e2 = [r for r in result["records"] if r["provider"] == "e2cnn"]
    assert all(r["status"] in ("ok", "skipped") for r in e2)
    assert "Skipped, failed or flagged" in report.markdown(dict(result, environment=report.environment("cpu")))


@needs_interpreter
def test_python_m_perf_without_cuda_runs_the_smoke_mode(tmp_path, capsys):
    rc = cli.main(["--tiny", "--smoke-cases", "conv1d-groups", "--providers", "gconv_triton,bank_cudnn,matmul",
                   "--save", "--out", str(tmp_path), "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].startswith("No CUDA GPU here")
    assert "CPU numbers" in out and "| conv1d-groups | gconv_triton | y |" in out
    (md,) = tmp_path.glob("cpu-smoke-*.md")
    assert "CPU numbers" in md.read_text()
    assert not list(tmp_path.glob("*.png"))


@needs_interpreter
def test_smoke_mode_honours_the_selection_and_timing_flags(tmp_path, capsys):
    rc = cli.main(["--tiny", "--smoke-cases", "conv1d-depthwise", "--providers", "gconv_triton,bank_cudnn",
                   "--sets", "p4cnn", "--dtypes", "bf16", "--layouts", "channels_last", "--modes", "forward",
                   "--warmup", "1", "--rep", "3", "--save", "--out", str(tmp_path), "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0
    (saved,) = tmp_path.glob("cpu-smoke-*.json")
    result = json.loads(saved.read_text())
    recs = result["records"]
    assert recs and all(r["status"] == "ok" for r in recs), recs
    assert {(r["set"], r["dtype"], r["layout"], r["mode"]) for r in recs} == {("p4cnn", "bf16", "channels_last",
                                                                              "forward")}
    # On a CPU there is no cuDNN: the timings say what ran.
    assert {r["provider"] for r in recs} == {"gconv_triton", "bank_torch_cpu"}
    assert "cudnn" not in out.split("CPU timings", 1)[1]
    assert (result["config"]["warmup_ms"], result["config"]["rep_ms"]) == (1, 3)
    bank = next(r for r in recs if r["provider"] == "bank_torch_cpu")
    assert bank["ratio_to_gconv_triton"] > 0 and "bank_torch_cpu ×" in out


@needs_interpreter
def test_smoke_mode_times_the_steerable_sets(tmp_path, capsys):
    rc = cli.main(["--tiny", "--smoke-cases", "c8", "--sets", "c8,c16,d8", "--modes", "forward+backward",
                   "--providers", "gconv_triton,bank_cudnn,e2cnn,dense_cudnn", "--warmup", "1", "--rep", "3",
                   "--save", "--out", str(tmp_path), "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(next(tmp_path.glob("cpu-smoke-*.json")).read_text())
    recs = result["records"]
    assert {r["set"] for r in recs} == {"c8", "c16", "d8"}
    providers = {"gconv_triton", "bank_torch_cpu", "dense_torch_cpu"}
    if importlib.util.find_spec("e2cnn") is not None:
        providers.add("e2cnn")
    ok = [r for r in recs if r["status"] == "ok"]
    assert {(r["set"], r["provider"]) for r in ok} == {(s, p) for s in ("c8", "c16", "d8") for p in providers}, recs
    assert all(r["rel_err"] < r["tolerance"] for r in ok if r["rel_err"] is not None)
    assert all(r["ratio_to_gconv_triton"] > 0 for r in ok)
    assert smoke.STEERABLE_NOTE in result["notes"] and "bank_torch_cpu ×" in out


@needs_interpreter
def test_our_provider_times_the_kernels_on_a_steerable_group(monkeypatch):
    """The 'triton' backend serves C8 (the steering kernels): ``gconv_triton`` times that, with no fallback note."""
    import gconv_triton
    from perf import providers

    case = make_case(smoke.SMOKE_CASES["c8"], "fp32", "contiguous", "cpu")
    backends = []
    real = providers.steerable_conv2d

    def recorded(*args, **kwargs):
        backends.append(gconv_triton.current_backend())
        return real(*args, **kwargs)

    monkeypatch.setattr(providers, "steerable_conv2d", recorded)
    built = providers.GconvTriton("triton").build(case)
    assert built.note is None
    assert built.forward().shape == case.dy.shape
    assert backends == ["triton", "triton"]        # the probe, then the timed call


def test_steerable_shape_sets():
    """ReResNet-50's stage 1 (64 -> 256 G-channels as regular fields) and e2cnn's rotated-MNIST model, per group:
    k = 1, 3, 5, 7, consecutive layers chain, and the MNIST model keeps C8's parameter count within 10%."""
    from gconv_triton.autotune import STEERABLE_SETS, model_layers
    from perf.providers import weight_shape

    params = {}
    for name in STEERABLE_SETS:
        layers = model_layers(name)
        order = layers[0].spec().s_out
        stage = [layer for layer in layers if layer.name.startswith("stage1.")]
        mnist = [layer for layer in layers if layer.name.startswith("mnist.")]
        assert {layer.kernel[0] for layer in layers} == {1, 3, 5, 7}
        assert {(layer.c_in * order, layer.c_out * order) for layer in stage} == {(64, 64), (256, 64), (64, 256)}
        assert sum(layer.count for layer in stage) == 10          # 3 blocks of 3 convolutions and a shortcut
        assert mnist[0].in_group == "z2" and all(layer.in_group == name for layer in mnist[1:])
        assert all(a.c_out == b.c_in for a, b in zip(mnist, mnist[1:]))
        assert [layer.spec().out_height for layer in mnist] == [25, 25, 13, 13, 7, 5]
        params[name] = sum(math.prod(weight_shape(layer)) for layer in mnist)
    assert all(abs(p / params["c8"] - 1) < 0.1 for p in params.values()), params


def test_interleaved_timer_rotates_the_order():
    calls = []
    timer = smoke.InterleavedTimer(warmup_ms=0, rep_ms=1e-6, rounds=3)  # one call per provider per round
    samples = timer({name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")})
    assert calls[:3] == ["a", "b", "c"]                                  # the warm-up: one call each
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]    # each round starts one later
    assert set(samples) == {"a", "b", "c"} and all(len(t) == 3 and min(t) >= 0 for t in samples.values())
    with pytest.raises(ValueError, match="rounds"):
        smoke.InterleavedTimer(rounds=0)


def test_cli_rejects_unknown_names():
    for argv in (["--sets", "nope"], ["--providers", "cudnn"], ["--dtypes", "fp8"]):
        with pytest.raises(SystemExit, match="expected 'all'"):
            cli.main(argv)
    assert set(PROVIDERS) == {"gconv_triton", "bank_cudnn", "e2cnn", "dense_cudnn", "matmul"}


def test_resnet44_shape_set_is_the_models_convolutions():
    """The perf shape set and gconv_triton.models.p4m_resnet44 must not drift apart."""
    import collections

    from gconv_triton.autotune import model_layers
    from gconv_triton.models import p4m_resnet44
    from gconv_triton.nn import GroupConv2d

    convs = collections.Counter(
        (m.in_channels, m.out_channels, tuple(m.kernel_size), m.stride, m.in_group.name)
        for m in p4m_resnet44(device="meta").modules() if isinstance(m, GroupConv2d))
    layers = collections.Counter()
    for layer in model_layers("resnet44"):
        layers[(layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.in_group)] += layer.count
    assert layers == convs


def test_perf_builds_e2cnn_p4m_on_numpy2():
    """``python -m perf`` times e2cnn's p4m layers on NumPy 2 (the interop module's shim), in a fresh process."""
    pytest.importorskip("e2cnn")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    script = "from perf.providers import e2cnn_broken\nprint(e2cnn_broken('p4m'))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "None", proc.stdout


# ------------------------------------------------------------------------------------------ python -m perf.launches
from perf import launches  # noqa: E402

TINY = dict(batch=1, size=6)


def test_launch_recorder_counts_ops_that_write_memory():
    x = torch.randn(4, 5, 6)
    with launches.StepRecorder() as rec:
        x.view(20, 6), x.permute(2, 0, 1), x.expand(2, 4, 5, 6), x.detach(), x[1:]   # views: no launch
        torch.empty(10), torch.empty_like(x)                                       # allocations: no launch
        assert rec.records == []
        y = x.clone()
        y.add_(1)
        torch.zeros(3)
        torch.add(x, x, out=y)
    assert [(r.name, r.bytes) for r in rec.records] == [("clone", 480), ("add_", 480), ("zeros", 12), ("add", 480)]
    assert all(r.kind == "torch" and not r.gemm for r in rec.records)
    with launches.StepRecorder() as rec:
        a = torch.ones(1000)
        b = a * 2
        del a, b
        c = torch.ones(500)
    assert (rec.peak_bytes, rec.live_bytes) == (8000, 2000)   # two 4000-byte tensors at once, then one of 2000
    del c


def test_launch_recorder_follows_stores_into_jit_helpers():
    """A kernel that stores through a ``@triton.jit`` helper writes the tensors it passes for the helper's stored
    parameters: the forward's layout launch writes the halo copy and both permuted weights."""
    from gconv_triton.kernels import group_conv_layouts as layouts

    assert launches.stored_pointers(layouts._padded_copy_kernel.fn) == ("out_ptr", "fwd_ptr", "ig_ptr")
    assert launches.stored_pointers(layouts._permute_weight_kernel.fn) == ("fwd_ptr", "ig_ptr")
    assert launches.stored_pointers(layouts._finish_kernel.fn) == ("dw_ptr", "db_ptr")


class _Clone(torch.nn.Module):
    def forward(self, x):
        return x.clone()


def test_launches_counts_one_more_clone_with_its_bytes():
    base = launches.MODELS["layer"]
    cloned = launches.Model("layer, then clone", lambda: torch.nn.Sequential(base.build(), _Clone()), base.batch,
                            base.size, base.input_shape, base.input_grad)
    output_bytes = 1 * 32 * 4 * 6 * 6 * 4
    for path in launches.PATHS:
        plain, more = launches.measure(base, path, **TINY), launches.measure(cloned, path, **TINY)
        assert more["launches"] == plain["launches"] + 1, path
        assert more["bytes_outside_gemms"] == plain["bytes_outside_gemms"] + output_bytes, path
        assert more["gemm_bytes"] == plain["gemm_bytes"], path


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = launches.MODELS["layer"].build()

    def forward(self, x):
        return x + self.conv(x)


def test_launches_charges_the_sum_of_two_gradients_to_no_layer():
    """``x`` feeds the conv and the sum: autograd adds its two gradients after the conv's backward ran."""
    base = launches.MODELS["layer"]
    residual = launches.Model("x + conv(x)", _Residual, base.batch, base.size, base.input_shape, base.input_grad)
    for path in launches.PATHS:
        plain, res = launches.measure(base, path, **TINY), launches.measure(residual, path, **TINY)
        sums = [(r["name"], r["bytes"]) for r in res["records"] if r["layer"] == "(gradient sums)"]
        assert sums == [("add", 1 * 32 * 4 * 6 * 6 * 4)], path
        assert [lay["launches"] for lay in res["layers"]] == [lay["launches"] for lay in plain["layers"]], path


def test_launches_kernel_path_records_three_gemms_per_layer_and_the_bank_path_none():
    from triton.runtime.interpreter import InterpretedFunction

    from gconv_triton import kernels

    run = InterpretedFunction.run
    kernel = launches.measure("layer", "kernel", **TINY)
    triton = [r for r in kernel["records"] if r["kind"] == "triton"]
    gemm, wgrad = "group_conv._conv_gemm_kernel", "group_conv_weight_grad._orbit_weight_grad_kernel"
    assert sorted(r["name"] for r in triton if r["gemm"]) == [gemm, gemm, wgrad]
    # the loss's channels-first dy is laid out once for both gradients (one clone), not re-laid for the weight's
    assert not [r for r in triton if r["name"] == "group_conv_layouts._dy_relayout_kernel"]
    assert [r["name"] for r in kernel["records"] if r["layer"] == "P4ConvP4" and r["name"] == "clone"] == ["clone"]
    # the layout kernels (kernels/group_conv_layouts.py) are launches outside the GEMMs
    assert all(r["gemm"] != r["name"].startswith(launches.LAYOUT_KERNELS) for r in triton)
    assert all(r["bytes"] > 0 and r["programs"] > 0 for r in triton)
    assert kernel["launches"] == kernel["triton"] + kernel["torch"] and kernel["gemm"] == 3
    (layer,) = kernel["layers"]
    assert (layer["gemm"], layer["input_from_layer"]) == (3, True)
    bank = launches.measure("layer", "bank", **TINY)
    assert bank["triton"] == 0
    assert sorted(r["name"] for r in bank["records"] if r["gemm"]) == ["convolution", "convolution_backward"]
    # the loss and the optimizer are the same ops on both paths
    assert (kernel["loss_optimizer_launches"], kernel["loss_optimizer_bytes"]) == (
        bank["loss_optimizer_launches"], bank["loss_optimizer_bytes"]) != (0, 0)
    # P4CNN: the lifting layer's input needs no gradient, so it launches two GEMMs; deterministic counts
    net = launches.measure("p4cnn", "kernel", "channels_last", batch=2, size=8)
    assert [lay["gemm"] for lay in net["layers"]] == [2, 3, 3]
    assert sum(r["kind"] == "triton" and r["gemm"] for r in net["records"]) == 8
    assert [lay["input_from_layer"] for lay in net["layers"]] == [False, True, True]
    again = launches.measure("p4cnn", "kernel", "channels_last", batch=2, size=8)
    assert again["records"] == net["records"] and again["peak_bytes"] == net["peak_bytes"]
    # the package is as it was: interpreted kernels, launched for real
    assert kernels._common.INTERPRET == kernels.INTERPRET and InterpretedFunction.run is run


def test_python_m_perf_launches_prints_the_table_and_targets(tmp_path, capsys):
    rc = launches.main(["--models", "layer,p4cnn", "--batch", "1", "--size", "6", "--per-layer",
                        "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("| model | input | launches: kernel path (Triton) | bank path (Triton) |")
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(rows) == 4 and "| `P4ConvP4(32, 32, 3, padding=1)`, B1, 6×6 | channels_last | " in out
    assert "p4cnn, contiguous, kernel path, per group-conv layer" in out
    assert sum(line.startswith(("PASS ", "FAIL ")) for line in out.splitlines()) == 5 * 4
    with gzip.open(tmp_path / "run.json.gz", "rt", encoding="utf-8") as f:
        saved = json.load(f)
    assert len(saved["results"]) == 8 and (tmp_path / "run.md").read_text().count("| `") == 4
    with pytest.raises(SystemExit):
        launches.main(["--models", "resnet18"])
    assert "--models: expected 'all' or a comma-separated subset" in capsys.readouterr().err


def test_python_m_perf_launches_in_a_fresh_process_matches_the_interpreted_import():
    """Without TRITON_INTERPRET the kernels are autotuners (a GPU's import): the same launches are recorded."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GCONV_TRITON_POISON")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "perf.launches", "--models", "p4cnn", "--layouts", "contiguous",
                           "--batch", "2", "--size", "8", "--json"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = {r["path"]: r for r in json.loads(proc.stdout)["results"]}
    for path in launches.PATHS:
        here = launches.measure("p4cnn", path, "contiguous", batch=2, size=8)
        assert fresh[path]["records"] == here["records"], path


def test_launches_a_layer_step_rebuilds_no_table_and_copies_x_once():
    """``P4ConvP4(32, 32, 3, padding=1)`` on a contiguous input, one steady training step on the kernel path: the
    weight gradient's window offsets come from the cache filled by the warm-up step (no ``arange`` ... chain), it
    reads the forward's zero-halo copy of ``x`` instead of making one (one copy of an x-sized tensor per step, in the
    forward), nothing fills a buffer before a copy, the loss's dy is laid out once for both gradients, the input
    gradient reads the permuted weight the forward wrote, and the bias gradient comes with the weight gradient's
    sums."""
    step = launches.measure("layer", "kernel", batch=2, size=8)
    layer = [r for r in step["records"] if r["layer"] == "P4ConvP4" and not r["gemm"]]
    names = [(r["phase"], r["name"]) for r in layer]
    assert not {"arange", "mul", "add", "zeros", "new_zeros", "reshape", "sum", "zero_", "fill_", "add_"} & {
        name for _, name in names}, names
    assert names == [
        ("forward", "group_conv_layouts._padded_copy_kernel"),     # x into the zero-halo copy, border included,
                                                                   # and the forward's and input gradient's weights
        ("backward", "clone"),            # the loss's channels-first dy laid out once, read in place by both
                                          # gradients (the weight gradient's orbit kernel: the bias's sums too)
        ("backward", "group_conv_layouts._finish_kernel"),         # the split's sums and the bias gradient
    ]
    # an input that keeps no gradient from the warm-up step: no `x.grad += dx`
    assert not [r for r in step["records"] if r["layer"] == "(accumulate)" or r["name"] == "add_"]
    # the forward's launch writes the halo copy of x and both weights: its bytes are all three
    forward = next(r for r in layer if r["phase"] == "forward")
    halo = 2 * 10 * 10 * 32 * 4 * 4
    weights = 2 * 32 * 32 * 4 * 9 * 4
    assert forward["bytes"] == halo + weights, forward


def test_launches_a_channels_last_layer_step_copies_no_x():
    """``P4ConvP4(32, 32, 3, padding=1)`` on a ``(B, H, W, C, S)`` input: the forward and the weight gradient read
    ``x`` in place (no zero-halo border, no copy of ``x``, none saved for the backward); the weight gradient
    resolves its table against this step's addresses itself (``dy`` read in place: no re-layout launch)."""
    step = launches.measure("layer", "kernel", "channels_last", batch=2, size=8)
    layer = [r for r in step["records"] if r["layer"] == "P4ConvP4" and not r["gemm"]]
    names = [(r["phase"], r["name"]) for r in layer]
    assert names == [
        ("forward", "group_conv_layouts._permute_weight_kernel"),   # both weights re-laid, no halo copy of x
        ("backward", "clone"),            # the loss's channels-first dy laid out once, read in place by both
                                          # gradients (the orbit kernel resolves the in-place table itself)
        ("backward", "group_conv_layouts._finish_kernel"),         # the bias gradient
    ], names


def test_launches_a_layer_step_on_whole_pixel_tiles_copies_no_dy():
    """The same layer on 16 x 16 maps (256 pixels: whole tiles of the input gradient's pixels, 128, and of the
    weight gradient's, 64), fp32: the loss's channels-first ``dy`` is read in place by both gradients (no clone, no
    re-layout), and a channels-first ``x`` by the forward (no zero-halo copy in the forward)."""
    for layout in ("channels_last", "contiguous"):
        step = launches.measure("layer", "kernel", layout, batch=1, size=16)
        layer = [(r["phase"], r["name"]) for r in step["records"] if r["layer"] == "P4ConvP4" and not r["gemm"]]
        assert ("forward", "group_conv_layouts._permute_weight_kernel") in layer, layer
        assert not [name for phase, name in layer if phase == "backward" and name in (
            "clone", "group_conv_layouts._dy_relayout_kernel")], layer
        assert ("forward", "group_conv_layouts._padded_copy_kernel") not in layer, layer


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_launches_a_layer_between_layers_re_lays_no_dy(layout):
    """P4CNN, one steady training step on the kernel path: the group-conv layers after the first get ``dy`` from
    another layer of the package, in its ``(B, H, W, C, S)`` layout, and the weight gradient reads it in place:
    no re-layout of ``dy``, and per layer the one launch outside the GEMMs in the backward adds up the bias
    gradient's partial sums."""
    step = launches.measure("p4cnn", "kernel", layout, batch=2, size=8)
    assert not [r for r in step["records"] if r["name"] == "group_conv_layouts._dy_relayout_kernel"]
    for layer in ("features.2", "features.5"):
        names = [(r["phase"], r["name"]) for r in step["records"] if r["layer"] == layer and not r["gemm"]]
        assert names == [("forward", "group_conv_layouts._permute_weight_kernel"),
                         ("backward", "group_conv_layouts._finish_kernel")], (layer, names)


def test_python_m_perf_steerable_prints_both_tables(tmp_path, capsys):
    pytest.importorskip("e2cnn")
    from perf import steerable

    threads = torch.get_num_threads()
    try:
        rc = steerable.main(["--tiny", "--rounds", "2", "--warmup", "1", "--save", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0
    assert "| C8 | 3 | 2 -> 2 | 2 | 8x8 |" in out                          # the timing table's tiny row
    (row,) = [line for line in out.splitlines() if line.startswith("| C8 | 3 | regular -> regular | 45° |")]
    e2cnn, mapped, own, quarter, quarter_mapped, exact = (float(v) for v in row.strip("| ").split(" | ")[4:])
    assert 0 < own < 0.2 and 0 < e2cnn < 0.2
    assert math.isclose(mapped, e2cnn, rel_tol=1e-3)                      # the same weights: the same function
    assert max(quarter, quarter_mapped, exact) < 1e-6                     # 90°: exact up to fp32 rounding
    result = json.loads(next(tmp_path.glob("steerable-cpu-*.json")).read_text())
    assert result["timing"][0]["median_ms"]["ours"] > 0 and len(result["timing"][0]["times_ms"]["e2cnn"]) == 2
    assert 0 < result["timing"][0]["median_ms"]["conv"] and 0 < result["timing"][0]["conv_ratio"]
    assert "## Equivariance error" in next(tmp_path.glob("steerable-cpu-*.md")).read_text()


def test_launches_prints_an_earlier_run_before_this_one(tmp_path, capsys):
    """``--before`` reads an earlier ``--out`` JSON and prints its kernel path beside this run's, per model and
    layout (here the same tiny run twice: the two halves of the row agree)."""
    tiny = ["--models", "layer", "--paths", "kernel,bank", "--layouts", "contiguous", "--batch", "1", "--size", "6"]
    assert launches.main([*tiny, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert launches.main([*tiny, "--before", str(tmp_path / "run.json.gz")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| layer | contiguous |")]
    assert len(rows) == 1, rows
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2:7] == cells[7:12], cells


def test_launches_tells_a_weight_relayout_from_an_activation_copy():
    """At batch 1 on 6×6 maps the layer's permuted weight outweighs its activations: it is reported as a weight
    re-layout, not as an activation-sized copy (a channels-last input is read in place: no copy of ``x``)."""
    result = launches.measure("layer", "kernel", layout="channels_last", **TINY)
    (layer,) = result["layers"]
    relayouts = [r for r in result["records"] if r["name"] in launches.WEIGHT_LAYOUT_KERNELS]
    assert relayouts and all(r["bytes"] > layer["input_bytes"] for r in relayouts)
    assert layer["weight_relayout_bytes"] == sum(r["bytes"] for r in relayouts)
    assert not any(launches.WEIGHT_LAYOUT_KERNELS[0] in c for c in layer["activation_copies"])


@needs_interpreter
def test_copy_provider_copies_what_the_kernels_read_in_place(monkeypatch):
    """``gconv_triton_copy`` holds the channels-first in-place reads off for its whole step: where ``gconv_triton``'s
    forward and input gradient read a contiguous ``x`` and ``dy`` in place, it copies both channels-last (its
    backward too, outside the forward call); each gives the float64 reference's ``y``, ``dx`` and ``dw``."""
    from gconv_triton.kernels import group_conv as gconv
    from perf.providers import GconvTriton
    from perf.runner import rel_error
    from perf.smoke import FP32_TOLERANCE, dtype_setting, reference_outputs

    read_in_place = []
    view = gconv.pixel_major_view
    monkeypatch.setattr(gconv, "pixel_major_view", lambda a: read_in_place.append(tuple(a.shape)) or view(a))
    layer = Layer("pixel-major", "p4", "p4", 2, 3, 16, 8, padding=(1, 1), batch=2)   # 128 pixels: whole tiles
    with dtype_setting("fp32"):
        case = make_case(layer, "fp32", "contiguous", "cpu")
        want = reference_outputs(case)
        for prov, reads in ((GconvTriton("triton"), 2), (provider("gconv_triton_copy", "cpu"), 0)):
            read_in_place.clear()
            got = prov.outputs(case)
            assert len(read_in_place) == reads, (prov.name, read_in_place)
            for quantity in ("y", "dx", "dw"):
                assert rel_error(got[quantity], want[quantity]) < FP32_TOLERANCE, (prov.name, quantity)
    assert gconv._pixel_major_allowed   # restored
