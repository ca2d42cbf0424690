"""CPU training-step speed of the package's CPU path against the other ways to run a group convolution on a CPU.

``python -m perf.cpu_train`` times one training step (forward and backward to the input and the weight) of a
``P4ConvP4`` layer with each provider: ``gconv_triton`` (the package's CPU path), ``bank_cudnn`` (a GrouPy-style
index gather of the filter bank + ``F.conv2d``) and ``e2cnn`` (``R2Conv``, when installed).  The providers run
interleaved in one process, one call each per round, so a load that changes during the run hits all of them; it
prints per provider the median time over the rounds and the median over rounds of the ratio
``gconv_triton / best other``.  CPU numbers only: they say nothing about the Triton kernels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Optional, Sequence

import torch

from gconv_triton.autotune import Layer

from .providers import BankCudnn, E2cnn, GconvTriton, make_case
from .runner import mode_runner

#: the shapes a CPU user trains at: MNIST-sized p4 maps, and a wider layer at CIFAR size
LAYERS = {
    "B32_C10_28": Layer("p4conv_b32_c10_28", "p4", "p4", 10, 10, 28, 28, padding=(1, 1), batch=32),
    "B8_C32_32": Layer("p4conv_b8_c32_32", "p4", "p4", 32, 32, 32, 32, padding=(1, 1), batch=8),
}


def measure(layer: Layer, rounds: int = 30, warmup: int = 3, progress=sys.stderr) -> dict:
    """``{"times_ms": {provider: [per round]}, "ratios": [per round]}`` for one layer: each round calls every
    provider once (forward + backward), in a rotating order."""
    case = make_case(layer, "fp32", "contiguous", "cpu")
    providers = {"gconv_triton": GconvTriton("torch"), "bank_cudnn": BankCudnn(), "e2cnn": E2cnn()}
    runs, skipped = {}, {}
    for name, prov in providers.items():
        why = prov.unsupported(layer)
        if why:
            skipped[name] = why
            continue
        runs[name] = mode_runner(prov.build(case), "forward+backward")
    result = interleaved_rounds(runs, "gconv_triton", rounds, warmup, progress, layer.name)
    return {**result, "skipped": skipped}


def interleaved_rounds(runs: dict, reference: str, rounds: int = 30, warmup: int = 3, progress=sys.stderr,
                       label: str = "") -> dict:
    """Time the calls ``runs {name: fn}`` in ``rounds`` rounds, each calling every one once in a rotating order
    (after ``warmup`` calls each), so that a load that changes during the run hits all of them.  Returns
    ``{"times_ms": {name: [per round]}, "ratios": [per round: runs[reference] / the fastest other]}``."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    names = list(runs)
    times = {name: [] for name in names}
    ratios = []
    for r in range(rounds):
        this_round = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            this_round[name] = time.perf_counter() - start
            times[name].append(1e3 * this_round[name])
        others = [t for n, t in this_round.items() if n != reference]
        if others and reference in this_round:
            ratios.append(this_round[reference] / min(others))
        if progress is not None and (r + 1) % 10 == 0:
            print(f"  {label}: {r + 1}/{rounds} rounds", file=progress)
    return {"times_ms": times, "ratios": ratios}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.cpu_train", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per layer (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--layers", nargs="+", choices=sorted(LAYERS), default=list(LAYERS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, forward+backward of P4ConvP4 "
          f"(3x3, padding 1), median of {args.rounds} interleaved rounds")
    for key in args.layers:
        result = measure(LAYERS[key], rounds=args.rounds)
        medians = {name: statistics.median(t) for name, t in result["times_ms"].items()}
        line = ", ".join(f"{name} {ms:.1f} ms" for name, ms in medians.items())
        ratio = statistics.median(result["ratios"]) if result["ratios"] else float("nan")
        print(f"{key}: {line}; gconv_triton / best other = {ratio:.2f} (median of per-round ratios)")
        for name, why in result["skipped"].items():
            print(f"  {name} skipped: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
