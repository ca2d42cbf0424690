"""Steerable C_N / D_N layers against e2cnn's ``R2Conv`` on a CPU: training-step time and equivariance error.

``python -m perf.steerable`` prints two tables (and with ``--save`` writes them under ``perf/results``):

- **CPU train step**: forward + backward (to the input and the weight, fp32) of a regular -> regular layer, ours
  (``GroupConv2d(group="c8" | "c16")``: the bank from the coefficients by one small matmul, then ``F.conv2d``) and
  e2cnn's ``R2Conv`` on the same fields, interleaved in one process (:func:`perf.cpu_train.interleaved_rounds`),
  medians over rounds; also each one's bank alone (built from the parameters and differentiated back, as every
  training step does), the ``F.conv2d`` both steps end in with the bank a leaf (the floor of either step), and
  the medians of the per-round ratios ours / e2cnn and that floor / e2cnn.
- **Equivariance**: the error under the rotation by ``2π/N`` on the resampling protocol
  (:func:`gconv_triton.steerable.resampled_equivariance_error`: smooth input, bicubic rotation, central disc,
  relative L2, float64) of e2cnn's ``R2Conv``, of our layer with the same weights (``from_e2cnn``) and of our
  layer with its own init, for C8, C16, D8 at k = 5, 7, lifting and regular -> regular; and, for ``4 | N``, the
  error at 90° of our layer in fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

import gconv_triton as gt
from gconv_triton import steerable as st

from .cpu_train import interleaved_rounds
from .providers import e2cnn_gspace, load_e2cnn, unshare_e2cnn_blocks

#: (group, k, fields in = fields out, batch, map size) of the timing table
TIMING_CASES = [(g, k, 8, 8, size) for g in ("c8", "c16") for k in (5, 7) for size in (8, 32)]
TINY_TIMING_CASES = [("c8", 3, 2, 2, 8)]
#: (group, k, lifting) of the equivariance table
EQUIVARIANCE_CASES = [(g, k, lifting) for g in ("c8", "c16", "d8") for k in (5, 7) for lifting in (True, False)]
TINY_EQUIVARIANCE_CASES = [("c8", 3, False)]
PROVIDERS = ("ours", "e2cnn", "ours_bank", "e2cnn_bank", "conv")


def r2conv(name: str, k: int, fields: int, lifting: bool = False, **kwargs):
    """e2cnn's ``R2Conv`` from ``fields`` regular (or trivial, ``lifting``) fields to ``fields`` regular fields of
    ``Rot2dOnR2(N)`` / ``FlipRot2dOnR2(N)``, padding ``k // 2``, default basis."""
    e2cnn, why = load_e2cnn()
    if why:
        raise RuntimeError(why)
    from e2cnn import nn as enn

    space = e2cnn_gspace(name)
    unshare_e2cnn_blocks()   # callers cast the layer (.double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_type = enn.FieldType(space, fields * [space.trivial_repr if lifting else space.regular_repr])
        return enn.R2Conv(in_type, enn.FieldType(space, fields * [space.regular_repr]), k, padding=k // 2, **kwargs)


def train_steps(name: str, k: int, fields: int, batch: int, size: int, seed: int = 0) -> dict:
    """The calls to time, ``{provider: fn}``: one training step (forward, backward to the input and the weight) of
    our layer and of e2cnn's, each one's bank alone (built from the parameters, backward to them), and ``conv``:
    the ``F.conv2d`` that both steps end in, with a bank of the same shape as a leaf (forward, backward to the input
    and the bank): the floor of either step, what no cheaper bank or glue can go under."""
    from e2cnn import nn as enn

    torch.manual_seed(seed)
    ours = gt.GroupConv2d(fields, fields, k, group=name, in_group=name, padding=k // 2, bias=False).train()
    theirs = r2conv(name, k, fields, bias=False).train()
    s = ours.group.order
    x = torch.randn(batch, fields, s, size, size, requires_grad=True)
    x_flat = x.detach().flatten(1, 2).requires_grad_()
    dy = torch.randn(batch, fields, s, size, size)
    bank_shape = (fields * s, fields * s, k, k)
    dbank = torch.randn(bank_shape)

    def ours_step():
        return torch.autograd.grad(ours(x), [x, ours.weight], dy)

    def e2cnn_step():
        y = theirs(enn.GeometricTensor(x_flat, theirs.in_type)).tensor
        return torch.autograd.grad(y, [x_flat, theirs.weights], dy.flatten(1, 2))

    def ours_bank():
        bank = st.steerable_bank(ours.weight, ours.group, ours.in_group, k, ours.basis)
        return torch.autograd.grad(bank, [ours.weight], dbank)

    def e2cnn_bank():   # what R2Conv.forward does in training before its F.conv2d
        return torch.autograd.grad(theirs.expand_parameters()[0], [theirs.weights], dbank)

    leaf_bank = st.steerable_bank(ours.weight, ours.group, ours.in_group, k, ours.basis).detach().requires_grad_()
    dy_flat = dy.flatten(1, 2)

    def conv():
        return torch.autograd.grad(F.conv2d(x_flat, leaf_bank, padding=k // 2), [x_flat, leaf_bank], dy_flat)

    return {"ours": ours_step, "e2cnn": e2cnn_step, "ours_bank": ours_bank, "e2cnn_bank": e2cnn_bank, "conv": conv}


def time_case(case, rounds: int, warmup: int, progress=sys.stderr) -> dict:
    """Medians (ms) of each provider and of the per-round ratios ours / e2cnn (step and bank) for one case."""
    name, k, fields, batch, size = case
    label = f"{name} k={k} {fields}->{fields} fields, batch {batch}, {size}x{size}"
    runs = train_steps(name, k, fields, batch, size)
    times = interleaved_rounds(runs, "ours", rounds, warmup, progress, label)["times_ms"]
    step_ratios = [a / b for a, b in zip(times["ours"], times["e2cnn"])]
    bank_ratios = [a / b for a, b in zip(times["ours_bank"], times["e2cnn_bank"])]
    conv_ratios = [a / b for a, b in zip(times["conv"], times["e2cnn"])]
    return dict(group=name, k=k, fields=fields, batch=batch, size=size, rounds=rounds, times_ms=times,
                median_ms={p: statistics.median(t) for p, t in times.items()},
                ratio=statistics.median(step_ratios), bank_ratio=statistics.median(bank_ratios),
                conv_ratio=statistics.median(conv_ratios))


def equivariance_case(case, size: int = 64, channels: int = 2, seed: int = 0) -> dict:
    """The resampled equivariance errors of one (group, k, lifting) case at ``2π/N`` (and at 90° in fp32)."""
    from e2cnn.nn import GeometricTensor

    name, k, lifting = case
    torch.manual_seed(seed)
    conv = r2conv(name, k, channels, lifting, bias=False).double().eval()
    weights = st.from_e2cnn(conv)
    group, in_group = weights.group, weights.in_group
    perm = st.e2cnn_permutation(conv.out_type.gspace, group)
    inverse_perm = torch.argsort(torch.tensor(perm))

    def theirs(t):   # our element order in and out
        t = t if lifting else t[:, :, inverse_perm].flatten(1, 2)
        return conv(GeometricTensor(t, conv.in_type)).tensor.unflatten(1, (channels, group.order))[:, :, perm]

    def mapped(t):
        return st.steerable_conv2d(t, weights.coefficients.to(t.dtype), None, group=group, in_group=in_group,
                                   kernel_size=k, padding=k // 2)

    own = st.init_coefficients(channels, channels, group, in_group, k, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64)

    def ours(t):
        return st.steerable_conv2d(t, own.to(t.dtype), None, group=group, in_group=in_group, kernel_size=k,
                                   padding=k // 2)

    row = dict(group=name, k=k, lifting=lifting, angle_deg=360 / group.rotations)
    for label, layer in (("e2cnn", theirs), ("ours_e2cnn_weights", mapped), ("ours", ours)):
        row[label] = st.resampled_equivariance_error(layer, group, 1, lifting, size=size, channels=channels)
    if group.rotations % 4 == 0:
        quarter = group.rotations // 4
        for label, layer in (("ours_90_fp32", ours), ("ours_e2cnn_weights_90_fp32", mapped)):
            row[label] = st.resampled_equivariance_error(layer, group, quarter, lifting, size=size,
                                                         channels=channels, dtype=torch.float32)
        row["ours_90_fp32_grid"] = _grid_error(ours, group, quarter, lifting, size, channels)
    return row


@torch.no_grad()
def _grid_error(layer, group, g: int, lifting: bool, size: int, channels: int) -> float:
    """The fp32 error at the grid symmetry ``g`` with the exact action (a permutation of pixels and of the group
    axis, no resampler) on the whole map: what remains is the layer's own rounding."""
    x = st.smooth_input(1, channels, *(() if lifting else (group.order,)), size, size, seed=3, dtype=torch.float32)
    expected = group.act_on_features(g, layer(x))
    got = layer(group.act_on_features(g, x))
    return float((got - expected).double().norm() / expected.double().norm())


def timing_table(rows: list[dict]) -> str:
    lines = ["| group | k | fields | batch | map | ours step (ms) | e2cnn step (ms) | ours / e2cnn | ours bank (ms) "
             "| e2cnn bank (ms) | bank ours / e2cnn | F.conv2d alone (ms) | F.conv2d alone / e2cnn step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["median_ms"]
        lines.append(f"| {r['group'].upper()} | {r['k']} | {r['fields']} -> {r['fields']} | {r['batch']} | "
                     f"{r['size']}x{r['size']} | {m['ours']:.2f} | {m['e2cnn']:.2f} | {r['ratio']:.2f} | "
                     f"{m['ours_bank']:.2f} | {m['e2cnn_bank']:.2f} | {r['bank_ratio']:.2f} | {m['conv']:.2f} | "
                     f"{r['conv_ratio']:.2f} |")
    return "\n".join(lines)


def equivariance_table(rows: list[dict]) -> str:
    lines = ["| group | k | layer | angle | e2cnn | ours, e2cnn's weights | ours, own init | ours 90° fp32 "
             "| ours, e2cnn's weights, 90° fp32 | ours 90° fp32, exact action |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = [f"{r[key]:.1e}" if key in r else "-" for key in ("ours_90_fp32", "ours_e2cnn_weights_90_fp32",
                                                                          "ours_90_fp32_grid")]
        lines.append(f"| {r['group'].upper()} | {r['k']} | {'lifting' if r['lifting'] else 'regular -> regular'} | "
                     f"{r['angle_deg']:g}° | {r['e2cnn']:.4f} | {r['ours_e2cnn_weights']:.4f} | {r['ours']:.4f} | "
                     f"{q[0]} | {q[1]} | {q[2]} |")
    return "\n".join(lines)


def environment() -> dict:
    import numpy

    e2cnn, _ = load_e2cnn()
    return dict(torch=torch.__version__, e2cnn=getattr(e2cnn, "__version__", None), numpy=numpy.__version__,
                python=platform.python_version(), machine=platform.machine(), processor=platform.processor(),
                cpu_count=os.cpu_count(), threads=torch.get_num_threads(), load_average_1_5_15min=os.getloadavg())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.steerable", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per timing case (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls per provider (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--tiny", action="store_true", help="one tiny case per table (for tests)")
    parser.add_argument("--skip-timing", action="store_true", help="only the equivariance table")
    parser.add_argument("--save", action="store_true",
                        help="write steerable-cpu[-<N>threads]-<date>.{json,md} under --out")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results directory")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit("python -m perf.steerable: error: --rounds and --threads: expected positive ints, "
                         f"--warmup a non-negative int, got {args.rounds}, {args.threads}, {args.warmup}")
    _, why = load_e2cnn()
    if why:
        raise SystemExit(f"python -m perf.steerable: error: {why}")
    torch.set_num_threads(args.threads)
    env = environment()
    command = "python -m perf.steerable " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"torch {env['torch']}, e2cnn {env['e2cnn']}, {env['threads']} threads, fp32")
    timing = []
    if not args.skip_timing:
        for case in (TINY_TIMING_CASES if args.tiny else TIMING_CASES):
            timing.append(time_case(case, args.rounds, args.warmup))
        print(f"\nCPU train step (forward + backward to input and weight, regular -> regular, padding k//2), "
              f"median of {args.rounds} interleaved rounds; the ratios are medians of per-round ratios")
        print(timing_table(timing))
    rows = [equivariance_case(case, size=32 if args.tiny else 64)
            for case in (TINY_EQUIVARIANCE_CASES if args.tiny else EQUIVARIANCE_CASES)]
    print("\nEquivariance error under the rotation by 2π/N (smooth input, bicubic rotation, central disc, relative "
          "L2, float64; 2 -> 2 fields, 64x64), and at 90° in fp32 (on the same protocol, and with the exact action: "
          "a permutation of pixels and group axis, no resampler)")
    print(equivariance_table(rows))
    env["load_average_at_end"] = os.getloadavg()   # other processes on the machine: the timings' context
    if args.save:
        threads = "" if args.threads == 2 else f"-{args.threads}threads"   # the 2 threads: no tag
        stem = args.out / f"steerable-cpu{threads}-{datetime.date.today().isoformat()}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        result = dict(kind="steerable-cpu", command=command, environment=env, timing=timing, equivariance=rows)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        stem.with_suffix(".md").write_text(
            f"# Steerable layers vs e2cnn on a CPU\n\n`{command}`: torch {env['torch']}, e2cnn {env['e2cnn']}, "
            f"numpy {env['numpy']}, {env['threads']} threads, {env['cpu_count']} CPUs ({env['machine']}), load average "
            f"{env['load_average_1_5_15min'][0]:.1f} at the start, {env['load_average_at_end'][0]:.1f} at the end.\n\n"
            f"## CPU train step (fp32, median of {args.rounds} interleaved rounds, ms)\n\n{timing_table(timing)}\n\n"
            f"## Equivariance error (rotation by 2π/N; 90° in fp32)\n\n{equivariance_table(rows)}\n")
        print(f"wrote {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
