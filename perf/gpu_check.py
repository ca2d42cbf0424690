"""``make gpu-check`` (``python -m perf.gpu_check``): everything worth checking on a machine with one CUDA GPU, in
under 8 minutes, written to ``perf/results/<gpu>-<date>.gpu-check.{json,md,log}``.

1. compile: one forward and backward of every kernel (the ``perf.static`` sample layers and two small steerable
   C8 / D8 networks, every dtype) with timing off, so each autotuned kernel compiles every config it could keep
   for real and keeps those that fit;
2. tests: the test suite's CUDA subset (fp32, tf32, fp16, bf16: the float64 cases are left out);
3. memcheck: ``compute-sanitizer --tool memcheck`` over step 1 in bf16 and fp32, when it is installed;
4. perf: ``python -m perf --quick`` within a time budget (it writes ``perf/results/<gpu>-<date>.{json,md,png}``);
5. in_place: the tf32 training step of the ``wide`` and ``grouped`` layers on contiguous inputs, ``gconv_triton``
   (activations read in place channels-first) beside ``gconv_triton_copy`` (copied channels-last first), written
   to ``perf/results/in-place/``: what the in-place reads' 4-byte loads cost against the copies they save.

Each step runs in its own process with its own time limit; one that fails or runs out of time is recorded and the
next one runs.  Without a CUDA GPU it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "perf" / "results"
BUDGET_S = 8 * 60
# Per-step limits (seconds), within BUDGET_S together.
LIMITS = dict(compile=100, tests=180, memcheck=50, perf=100, in_place=50)
DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp64")
CUDA_TESTS = ["tests/test_kernels.py", "tests/test_modules.py", "tests/test_layers.py", "tests/test_amp.py",
              "tests/test_determinism.py", "tests/test_edge_cases.py", "tests/test_user_groups.py",
              "tests/test_steerable_kernels.py"]
#: (name, group, input channels, [(out channels, k), ...], map size) of the steerable networks step 1 runs: a lifting
#: layer then regular ones, so that the regular layers read the package's layout as a network's do (odd sizes:
#: the strided layer stays exactly equivariant)
STEERABLE_SAMPLE = [("c8 mnist-like", "c8", 1, [(4, 7), (4, 5), (3, 3)], 29),
                    ("d8 rgb", "d8", 3, [(2, 5), (2, 3)], 17)]
NO_FLOAT64 = "not float64 and not fp64 and not double"


def exercise(dtypes: Sequence[str]) -> list[dict]:
    """One forward and backward of every kernel family on the ``perf.static`` sample layers, for each dtype; returns
    ``[{layer, dtype, status, seconds, configs}]`` where ``configs`` is what each autotuned kernel launched."""
    import torch

    from gconv_triton import backend
    from gconv_triton.functional import gconv2d
    from gconv_triton.kernels import tuner as _autotune

    from .static import DTYPES as ALL_DTYPES
    from .static import SAMPLE, tf32_setting

    out = []
    for layer in SAMPLE:
        for name in dtypes:
            dtype, tf32 = ALL_DTYPES[name]
            start = time.monotonic()
            try:
                with tf32_setting(tf32), backend("triton"):
                    x = torch.randn(layer.input_shape(), device="cuda", dtype=dtype, requires_grad=True)
                    w = torch.randn(layer.weight_shape(), device="cuda", dtype=dtype, requires_grad=True)
                    y = gconv2d(x, w, group=layer.group, in_group=layer.in_group, padding=layer.padding,
                                groups=layer.groups)
                    y.backward(torch.randn_like(y))
                    torch.cuda.synchronize()
                status = "ok"
            except Exception as err:  # noqa: BLE001  (recorded: the check goes on)
                status = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            configs = {name_.split("kernels.")[-1]: str(t.last_config) for name_, t in _autotune.KERNEL_TUNERS.items()
                       if t.last_config is not None}
            out.append(dict(layer=layer.name, dtype=name, status=status, seconds=round(time.monotonic() - start, 2),
                            configs=configs))
    for label, group, c_in, widths, size in STEERABLE_SAMPLE:
        for name in dtypes:
            dtype, tf32 = ALL_DTYPES[name]
            start = time.monotonic()
            try:
                with tf32_setting(tf32), backend("triton"):
                    net = steerable_network(group, c_in, widths).to(device="cuda", dtype=dtype)
                    x = torch.randn(2, c_in, size, size, device="cuda", dtype=dtype, requires_grad=True)
                    y = net(x)
                    y.backward(torch.randn_like(y))
                    torch.cuda.synchronize()
                status = "ok"
            except Exception as err:  # noqa: BLE001  (recorded: the check goes on)
                status = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            out.append(dict(layer=label, dtype=name, status=status, seconds=round(time.monotonic() - start, 2),
                            configs={}))
    return out


def steerable_network(group: str, in_channels: int, widths):
    """A lifting ``GroupConv2d`` on ``group`` then regular ones, ``widths = [(out_channels, k), ...]``, each padded
    ``k // 2`` with a bias (the second layer strided by 2)."""
    import torch

    import gconv_triton as gt

    layers, c, in_group = [], in_channels, "z2"
    for i, (c_out, k) in enumerate(widths):
        layers.append(gt.GroupConv2d(c, c_out, k, group=group, in_group=in_group, padding=k // 2,
                                     stride=2 if i == 1 else 1))
        c, in_group = c_out, group
    return torch.nn.Sequential(*layers)


def run_step(name: str, cmd: list[str], limit_s: float, log, env: Optional[dict] = None) -> dict:
    """Run ``cmd`` with a time limit, its output appended to ``log``; returns ``{step, status, seconds, ...}``."""
    start = time.monotonic()
    log.write(f"\n===== {name}: {' '.join(cmd)} (limit {limit_s:.0f} s)\n")
    log.flush()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=max(limit_s, 1))
        text, status = proc.stdout, "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired as err:
        text = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        status = f"timed out after {limit_s:.0f} s"
    log.write(text)
    log.flush()
    tail = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
    return dict(step=name, status=status, seconds=round(time.monotonic() - start, 1), last_line=tail[0][:300])


def gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--exercise", default=None, metavar="DTYPES",
                   help="internal: only run step 1 for these dtypes (comma-separated) and print it as JSON")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default perf/results)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; nothing to check (run it on a machine with one).")
        return 0
    if args.exercise is not None:
        rows = exercise([d.strip() for d in args.exercise.split(",") if d.strip()])
        print(json.dumps(rows))
        return 0 if all(r["status"] == "ok" for r in rows) else 1

    gpu = torch.cuda.get_device_name(0)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{gpu_slug(gpu)}-{date}.gpu-check"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)
    quiet = {**env, "GCONV_TRITON_AUTOTUNE": "0"}
    py = sys.executable
    sanitizer = shutil.which("compute-sanitizer") or next(
        (c for c in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(c)), None)
    steps = [
        ("compile", [py, "-m", "perf.gpu_check", "--exercise", ",".join(DTYPES)], quiet),
        ("tests", [py, "-m", "pytest", "-q", "-x", *CUDA_TESTS, "-k", NO_FLOAT64], env),
        ("memcheck", [sanitizer, "--tool", "memcheck", "--error-exitcode", "1", py, "-m", "perf.gpu_check",
                      "--exercise", "bf16,fp32"] if sanitizer else None, quiet),
        ("perf", [py, "-m", "perf", "--quick", "--budget-min", f"{(LIMITS['perf'] - 40) / 60:.2f}", "--out",
                  str(args.out)], env),
        ("in_place", [py, "-m", "perf", "--sets", "wide,grouped", "--dtypes", "tf32", "--layouts", "contiguous",
                      "--modes", "forward+backward", "--providers", "gconv_triton,gconv_triton_copy", "--budget-min",
                      f"{(LIMITS['in_place'] - 20) / 60:.2f}", "--no-plot", "--out", str(args.out / "in-place")], env),
    ]
    start = time.monotonic()
    results = []
    versions = dict(gpu=gpu, torch=torch.__version__, cuda=torch.version.cuda,
                    triton=__import__("triton").__version__, sanitizer=sanitizer)
    print(f"gpu-check on {gpu}: {', '.join(name for name, _, _ in steps)} (budget {BUDGET_S // 60} min)")
    with open(f"{stem}.log", "w", encoding="utf-8") as log:
        for name, cmd, step_env in steps:
            left = BUDGET_S - (time.monotonic() - start)
            if cmd is None:
                results.append(dict(step=name, status="skipped (compute-sanitizer is not installed)", seconds=0))
            elif left < 10:
                results.append(dict(step=name, status="skipped (no time left)", seconds=0))
            else:
                results.append(run_step(name, cmd, min(LIMITS[name], left), log, step_env))
            print(f"  {name}: {results[-1]['status']} ({results[-1]['seconds']} s)")
    total = round(time.monotonic() - start, 1)
    summary = dict(kind="gpu-check", date=date, seconds=total, versions=versions, steps=results)
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    lines = [f"# gpu-check on {gpu}, {date}", "", f"torch {versions['torch']} (CUDA {versions['cuda']}), triton "
             f"{versions['triton']}; {total} s in all.", "", "| step | status | seconds | last line |",
             "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']} | {r.get('last_line', '').replace('|', '/')} |"
              for r in results]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"gpu-check: {sum(r['status'] == 'ok' for r in results)} of {len(results)} steps ok in {total} s; wrote "
          f"{stem}.{{json,md,log}}")
    return 0 if all(r["status"] in ("ok",) or r["status"].startswith("skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
