"""``python -m perf``: the throughput and memory report (see the README section "Performance")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from gconv_triton.autotune import DTYPES, LAYOUTS, MODELS, model_layers, parse_names

from .providers import EXTRA_PROVIDERS, PROVIDERS, provider
from .runner import MODES, CudaTimer, cuda_peak_memory, run_suite

QUICK = dict(dtypes="bf16", modes="forward+backward", layouts="contiguous")


def _names(value: str, allowed: Sequence[str], flag: str) -> list[str]:
    try:
        return parse_names(value, allowed, flag)
    except ValueError as err:
        raise SystemExit(f"python -m perf: error: {err}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m perf",
        description="Time gconv_triton against the filter-bank + cuDNN path, e2cnn, cuDNN with a free bank and the "
                    "matmul ceiling, over shape sets from real models.  Without a CUDA GPU: a CPU smoke mode.")
    p.add_argument("--sets", default=None,
                   help=f"'all' or a comma-separated subset of {sorted(MODELS)} (default: all; CPU smoke mode: a few "
                        "layers of p4cnn,resnet44,grouped at small batch)")
    p.add_argument("--providers", default="all",
                   help=f"'all' ({list(PROVIDERS)}) or a subset of those and {list(EXTRA_PROVIDERS)} (the kernels "
                        "with the channels-first in-place reads off: a copy first, as before them)")
    p.add_argument("--modes", default="all", help=f"'all' or a subset of {list(MODES)}")
    p.add_argument("--dtypes", default=None, help=f"'all' or a subset of {list(DTYPES)} (tf32 = fp32 with tf32 on; "
                                                  "default: all; CPU smoke mode: fp32)")
    p.add_argument("--layouts", default=None, help=f"'all' or a subset of {list(LAYOUTS)} (default: all; CPU smoke "
                                                   "mode: contiguous)")
    p.add_argument("--quick", action="store_true",
                   help="only the targets' configuration: bf16, forward+backward, contiguous")
    p.add_argument("--batch", type=int, default=None, help="override every layer's batch size")
    p.add_argument("--warmup", type=float, default=None,
                   help="warm-up per measurement, ms (default 25 with do_bench; CPU smoke mode: 50 per provider)")
    p.add_argument("--rep", type=float, default=None,
                   help="timed repetitions per measurement, ms (default 100 with do_bench; CPU smoke mode: 400 per "
                        "provider, in 7 interleaved rounds)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="start no new layer after this many minutes; the results are marked incomplete")
    p.add_argument("--out", type=Path, default=None, help="results directory (default perf/results)")
    p.add_argument("--save", action="store_true", help="CPU smoke mode: also write cpu-smoke-<date>.{json,md,png}")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--tiny", action="store_true", help="CPU smoke mode: the smallest timing shapes (for tests)")
    p.add_argument("--full-sets", action="store_true",
                   help="CPU smoke mode: time every layer of each set at its own batch (--batch overrides it) "
                        "instead of a CPU-sized slice")
    p.add_argument("--rounds", type=int, default=None,
                   help="CPU smoke mode: interleaved timing rounds per layer (default 7; --tiny: 3)")
    p.add_argument("--smoke-cases", default="all", help="CPU smoke mode: 'all' or a comma-separated subset of the "
                                                        "tiny agreement cases (perf.smoke.SMOKE_CASES)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) in (None, "all"):
                setattr(args, key, value)
    gpu = torch.cuda.is_available()
    from .smoke import DEFAULT_SETS, SMOKE_CASES

    # Unset flags take each mode's defaults: everything on a GPU, a CPU-sized selection in the smoke mode.
    sets = _names(args.sets or ("all" if gpu else ",".join(DEFAULT_SETS)), list(MODELS), "--sets")
    providers = list(PROVIDERS) if args.providers == "all" else _names(args.providers, PROVIDERS + EXTRA_PROVIDERS,
                                                                       "--providers")
    modes = _names(args.modes, MODES, "--modes")
    dtypes = _names(args.dtypes or ("all" if gpu else "fp32"), list(DTYPES), "--dtypes")
    layouts = _names(args.layouts or ("all" if gpu else "contiguous"), LAYOUTS, "--layouts")
    if args.batch is not None and args.batch < 1:
        raise SystemExit(f"python -m perf: error: --batch: expected a positive int, got {args.batch}")
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit(f"python -m perf: error: --rounds: expected a positive int, got {args.rounds}")
    for flag, value in (("--warmup", args.warmup), ("--rep", args.rep)):
        if value is not None and not value > 0:
            raise SystemExit(f"python -m perf: error: {flag}: expected a positive number of ms, got {value}")
    if not gpu:
        print("No CUDA GPU here: skipping the GPU benchmarks; running the CPU smoke mode (agreement of every provider "
              "on tiny shapes, then CPU timings, which say nothing about the kernels).")
        return _smoke(args, providers, modes, _names(args.smoke_cases, list(SMOKE_CASES), "--smoke-cases"), sets,
                      dtypes, layouts)
    return _gpu(args, sets, providers, modes, dtypes, layouts)


def _smoke(args, providers, modes, cases, sets, dtypes, layouts) -> int:
    from . import report, smoke

    result = smoke.run(providers, modes, cases, tiny=args.tiny, sets=sets, dtypes=dtypes, layouts=layouts,
                       batch=args.batch, warmup_ms=args.warmup, rep_ms=args.rep,
                       budget_s=None if args.budget_min is None else 60 * args.budget_min, full=args.full_sets,
                       rounds=args.rounds)
    print(report.agreement_table(result["agreement"]))
    print("CPU timings (CPU numbers: they say nothing about the Triton kernels)")
    print(report.console_summary(result))
    if args.save:
        for path in report.write(result, args.out, kind="cpu-smoke", plot=not args.no_plot):
            print(f"wrote {path}")
    failed = [r for r in result["agreement"] if r.get("status") != "skipped" and not r["ok"]]
    if failed:
        print(f"{len(failed)} agreement checks FAILED", file=sys.stderr)
    return 1 if failed else 0


def _gpu(args, sets, providers, modes, dtypes, layouts) -> int:
    from . import report

    device = torch.device("cuda")
    warmup, rep = (25 if args.warmup is None else args.warmup), (100 if args.rep is None else args.rep)
    env = report.environment(device)
    layers = {name: model_layers(name, args.batch) for name in sets}
    provs = [provider(name, device) for name in providers]
    print(f"gconv_triton perf on {env['gpu']}: {sum(map(len, layers.values()))} layers x {len(dtypes)} dtypes x "
          f"{len(layouts)} layouts x {len(provs)} providers x {len(modes)} modes")
    if env.get("e2cnn_unavailable") and "e2cnn" in providers:
        print(f"e2cnn skipped: {env['e2cnn_unavailable']}")
    result = run_suite(layers, provs, modes, dtypes, layouts, device,
                       timer=CudaTimer(warmup, rep), memory=cuda_peak_memory,
                       budget_s=None if args.budget_min is None else 60 * args.budget_min)
    result.update(kind="gpu", environment=env,
                  config=dict(sets=sets, providers=providers, modes=modes, dtypes=dtypes, layouts=layouts,
                              batch=args.batch, warmup_ms=warmup, rep_ms=rep,
                              models={name: MODELS[name][0] for name in sets}))
    print(report.console_summary(result))
    for path in report.write(result, args.out, kind="gpu", plot=not args.no_plot):
        print(f"wrote {path}")
    return 0
