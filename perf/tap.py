"""``python -m perf.tap``: tap convolutions (adder, max-plus) against an unfold implementation and against
``F.conv2d`` of the same shape, forward + backward, with peak memory.

Shapes: the three stages of ResNet-20 on CIFAR-10 (3x3, padding 1: 16 channels at 32x32, 32 at 16x16, 64 at
8x8), batch 128 on a GPU.  The three providers of one (shape, tap, dtype) run interleaved in one process and
every number is a median; ratios are taken within the run.

* On a CUDA GPU: ``triton.testing.do_bench`` times and ``torch.cuda.max_memory_allocated`` peaks (beyond what was
  allocated before the call).
* On a CPU (label ``cpu``): wall-clock medians of the package's PyTorch path, and the largest single tensor one
  call creates in place of a peak (tracemalloc does not see torch's allocator).  CPU numbers say nothing about
  the kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from gconv_triton.functional import tap_conv2d

from .memory import AllocationRecorder
from .runner import CpuTimer, CudaTimer, cuda_peak_memory

#: (name, channels, height = width) of ResNet-20's three stages
RESNET20_CIFAR = (("stage1", 16, 32), ("stage2", 32, 16), ("stage3", 64, 8))
#: tap name -> (tap, reduce, elementwise torch tap for the unfold implementation)
TAPS = {
    "adder": ("adder", "sum", lambda x, w: -(x - w).abs()),
    "maxplus": ("add", "max", lambda x, w: x + w),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def unfold_tap_conv2d(x, w, fn: Callable, reduce: str, padding: int):
    """What users write today: unfold every receptive field, broadcast the tap, reduce (autograd backward)."""
    b, _, h, wd = x.shape
    cols = F.unfold(x, w.shape[-2:], padding=padding)                       # (B, C·k·k, L)
    f = fn(cols[:, None], w.flatten(1)[None, :, :, None])                   # (B, C_out, C·k·k, L)
    y = f.sum(2) if reduce == "sum" else f.amax(2)
    return y.view(b, w.shape[0], h, wd)


def cpu_largest_tensor(run: Callable[[], object]) -> int:
    recorder = AllocationRecorder()
    with recorder:
        run()
    return recorder.largest


def providers(tap: str, x, w, dy):
    name, reduce, fn = TAPS[tap]

    def step(forward):
        def run():
            xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
            return torch.autograd.grad(forward(xr, wr), (xr, wr), dy)
        return run

    return {
        "tap_conv2d": step(lambda a, b: tap_conv2d(a, b, tap=name, reduce=reduce, padding=1)),
        "unfold": step(lambda a, b: unfold_tap_conv2d(a, b, fn, reduce, 1)),
        "conv2d": step(lambda a, b: F.conv2d(a, b, padding=1)),
    }


def run(batch: int, taps, dtypes, device: torch.device) -> list[dict]:
    cuda = device.type == "cuda"
    timer = CudaTimer() if cuda else CpuTimer(min_time_s=0.1, min_runs=3, max_runs=20)
    memory = cuda_peak_memory if cuda else cpu_largest_tensor
    records = []
    for stage, channels, size in RESNET20_CIFAR:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
            w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
            dy = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
            for tap in taps:
                rec = dict(stage=stage, batch=batch, channels=channels, size=size, dtype=dtype_name, tap=tap,
                           device=timer.label)
                for prov, call in providers(tap, x, w, dy).items():
                    try:
                        rec[f"{prov}_ms"] = timer(call).median_ms
                        rec[f"{prov}_bytes"] = memory(call)
                    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:  # the unfold may not fit
                        rec[f"{prov}_ms"] = rec[f"{prov}_bytes"] = None
                        rec[f"{prov}_error"] = str(err).splitlines()[0]
                ours = rec["tap_conv2d_ms"]
                for other in ("unfold", "conv2d"):
                    if ours and rec[f"{other}_ms"]:
                        rec[f"{other}_over_tap"] = rec[f"{other}_ms"] / ours
                    if rec["tap_conv2d_bytes"] and rec[f"{other}_bytes"]:
                        rec[f"tap_memory_over_{other}"] = rec["tap_conv2d_bytes"] / rec[f"{other}_bytes"]
                records.append(rec)
                print(format_record(rec), flush=True)
    return records


def format_record(rec: dict) -> str:
    def ms(key):
        v = rec.get(f"{key}_ms")
        return f"{v:8.2f}" if v is not None else "     n/a"

    def mb(key):
        v = rec.get(f"{key}_bytes")
        return f"{v / 2**20:8.1f}" if v is not None else "     n/a"

    def ratio(key):
        v = rec.get(key)
        return f"{v:6.2f}" if v is not None else "   n/a"

    return (f"[{rec['device']}] {rec['stage']} B={rec['batch']} C={rec['channels']} {rec['size']}x{rec['size']} "
            f"{rec['dtype']} {rec['tap']:8s} fwd+bwd ms: tap {ms('tap_conv2d')} unfold {ms('unfold')} conv2d "
            f"{ms('conv2d')} | unfold/tap {ratio('unfold_over_tap')} conv2d/tap {ratio('conv2d_over_tap')} | MiB: "
            f"tap {mb('tap_conv2d')} unfold {mb('unfold')} conv2d {mb('conv2d')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.tap", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 128 on a GPU, 4 on a CPU)")
    parser.add_argument("--taps", default=",".join(TAPS), help=f"comma-separated, from {tuple(TAPS)}")
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, from {tuple(DTYPES)}")
    parser.add_argument("--json", help="write the records to this file")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (128 if device.type == "cuda" else 4)
    taps, dtypes = args.taps.split(","), args.dtypes.split(",")
    for name, allowed, what in ((taps, TAPS, "--taps"), (dtypes, DTYPES, "--dtypes")):
        bad = [v for v in name if v not in allowed]
        if bad:
            parser.error(f"{what}: unknown {bad}; expected names from {tuple(allowed)}")
    if device.type == "cpu":
        print("No CUDA GPU: CPU timings of the PyTorch path (labelled cpu); they say nothing about the kernels.")
    records = run(batch, taps, dtypes, device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
