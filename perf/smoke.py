"""The CPU smoke mode of ``python -m perf``, for machines without a CUDA GPU.

1. Agreement: every provider on tiny shapes against the float64 reference (forward, input and weight gradients);
   our kernels run under Triton's interpreter, in a subprocess with ``TRITON_INTERPRET=1`` when this process did
   not set it before importing the kernels.  e2cnn, which trains its own steerable basis, is checked by reading
   its expanded bank back into our convention (its group-element order is found, not assumed); on C_N / D_N its
   weights are read into our coefficients (``from_e2cnn``), and both layers must compute the same function.
2. CPU timings of the package's CPU path against the same providers on the CPU (``bank_cudnn`` and
   ``dense_cudnn`` run torch's CPU convolution there, so they are labelled ``bank_torch_cpu`` and
   ``dense_torch_cpu``): every provider of a layer interleaved in one process, medians of rounds, reported as
   ratios.  CPU numbers, labelled as such; they say nothing about the kernels.

``python -m perf.smoke --cases NAME,... --json PATH`` is the subprocess's entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

import gconv_triton
from gconv_triton.autotune import DTYPES, STEERABLE_SETS, Layer, Progress, dtype_setting, model_layers
from gconv_triton.reference import filter_bank

from .providers import (PROVIDERS, E2cnn, GconvTriton, e2cnn_permutation, is_steerable, layer_conv, make_case,
                        provider)
from .runner import (QUANTILES, TOLERANCE, _first_line, derive, mode_runner, note_field, reference_forward,
                     rel_error, summarize)

# Tiny layers covering both kernel families (implicit GEMM and depthwise), lifting, p4m, channel groups and 1-D.
SMOKE_CASES: dict[str, Layer] = {layer.name: layer for layer in [
    Layer("lift-p4", group="p4", in_group="z2", c_in=2, c_out=3, height=5, width=5, padding=(1, 1), batch=2),
    Layer("p4m", group="p4m", in_group="p4m", c_in=2, c_out=2, height=3, width=3, padding=(1, 1), batch=2),
    Layer("p4-depthwise", group="p4", in_group="p4", c_in=2, c_out=2, height=5, width=5, padding=(1, 1), groups=2,
          batch=2),
    Layer("conv1d-groups", group="z2", in_group="z2", c_in=4, c_out=6, height=1, width=9, kernel=(1, 3),
          padding=(0, 1), groups=2, batch=2),
    Layer("conv1d-depthwise", group="z2", in_group="z2", c_in=3, c_out=3, height=1, width=9, kernel=(1, 3),
          padding=(0, 1), groups=3, batch=2),
    # steerable filters (the weight is basis coefficients): lifting and regular, C8 and D8, k = 3 and 5
    Layer("lift-c8", group="c8", in_group="z2", c_in=2, c_out=2, height=7, width=7, kernel=(5, 5), padding=(2, 2),
          batch=2, input_grad=False),
    Layer("c8", group="c8", in_group="c8", c_in=2, c_out=2, height=5, width=5, padding=(1, 1), batch=2),
    Layer("lift-d8", group="d8", in_group="z2", c_in=2, c_out=2, height=5, width=5, padding=(1, 1), batch=2,
          input_grad=False),
    Layer("d8", group="d8", in_group="d8", c_in=2, c_out=2, height=6, width=6, kernel=(5, 5), padding=(2, 2),
          batch=2),
]}
FP32_TOLERANCE = TOLERANCE["fp32"]


def kernels_interpreted() -> bool:
    """Whether the kernels run (or, once imported, will run) under Triton's interpreter in this process."""
    module = sys.modules.get("gconv_triton.kernels")
    if module is not None:
        return bool(module.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def reference_outputs(case) -> dict[str, torch.Tensor]:
    """``y``, ``dx`` (when the layer needs it) and ``dw`` in float64 from the case's values."""
    layer = case.layer
    x = case.x.detach().double().requires_grad_(layer.input_grad)
    w = case.w.detach().double().requires_grad_()
    with gconv_triton.backend("torch"):
        y = layer_conv(x, w, layer)
    grads = torch.autograd.grad(y, ([x] if layer.input_grad else []) + [w], case.dy.double())
    return {"y": y.detach(), **dict(zip((["dx"] if layer.input_grad else []) + ["dw"], grads))}


def _inverse(perm: Sequence[int]) -> list[int]:
    inv = [0] * len(perm)
    for j, p in enumerate(perm):
        inv[p] = j
    return inv


def e2cnn_outputs(layer: Layer, seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(quantity, e2cnn's, reference)`` for ``bank``, ``y`` and ``dx``: e2cnn's expanded bank is read back as a base
    weight in our convention (slot ``j`` of an e2cnn regular field is our element ``perm[j]``), then e2cnn's layer
    and our reference with that weight must agree on permuted inputs.  Raises if the orders cannot be matched."""
    from e2cnn import nn as enn

    spec = layer.spec()
    perm = e2cnn_permutation(layer.group)
    if perm is None:
        raise RuntimeError(f"e2cnn's {layer.group} filters match none of our group elements one to one")
    perm_in = perm if spec.s_in > 1 else [0]
    inv, inv_in = _inverse(perm), _inverse(perm_in)
    conv = E2cnn().module(layer, "cpu", torch.float64)
    bank = conv.expand_parameters()[0].detach()
    bank = bank.unflatten(0, (layer.c_out, spec.s_out)).unflatten(2, (spec.in_channels, spec.s_in))
    ours = bank[:, inv][:, :, :, inv_in]                                       # (C_out, S_out, C_in_g, S_in, k, k)
    base = ours[:, 0].contiguous()                                             # the identity's slice
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(layer.input_shape(), generator=gen, dtype=torch.float64)
    out_shape = (spec.batch, layer.c_out, spec.s_out, spec.out_height, spec.out_width)
    dy = torch.randn(out_shape, generator=gen, dtype=torch.float64)
    x_e2 = x[:, :, perm_in].flatten(1, 2).requires_grad_()
    y_e2 = conv(enn.GeometricTensor(x_e2, conv.in_type)).tensor.unflatten(1, (layer.c_out, spec.s_out))
    (dx_e2,) = torch.autograd.grad(y_e2, x_e2, dy[:, :, perm])
    y_ref, dx_ref = _reference_y_dx(layer, x, base, dy)
    return [("bank", filter_bank(base, spec.group, spec.in_group), ours),
            ("y", y_e2[:, :, inv].detach(), y_ref),
            ("dx", dx_e2.unflatten(1, (layer.c_in, spec.s_in))[:, :, inv_in], dx_ref)]


def _reference_y_dx(layer: Layer, x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor):
    """The reference path's output and input gradient (float64) for the weight ``w``."""
    xr = x.clone().requires_grad_()
    with gconv_triton.backend("torch"):
        y = layer_conv(xr, w, layer)
    (dx,) = torch.autograd.grad(y, xr, dy)
    return y.detach(), dx


def e2cnn_steerable_outputs(layer: Layer, seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(quantity, e2cnn's, reference)`` for ``y`` and ``dx`` of a C_N / D_N layer: e2cnn's ``R2Conv`` (its own
    init) is read into our coefficients by ``gconv_triton.steerable.from_e2cnn`` (which checks the rebuilt bank
    against e2cnn's within 1e-5), then both layers run on the same inputs, e2cnn's regular fields reordered by
    ``steerable.e2cnn_permutation`` (``ours = theirs[:, :, perm]``)."""
    from e2cnn import nn as enn

    from gconv_triton import steerable

    spec = layer.spec()
    conv = E2cnn().module(layer, "cpu", torch.float64)
    weights = steerable.from_e2cnn(conv)
    if weights.group != spec.group:
        raise RuntimeError(f"from_e2cnn read e2cnn's {layer.group} layer as {weights.group!r}")
    perm = steerable.e2cnn_permutation(conv.out_type.gspace, weights.group)
    perm_in = perm if spec.s_in > 1 else [0]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(layer.input_shape(), generator=gen, dtype=torch.float64)
    dy = torch.randn((spec.batch, layer.c_out, spec.s_out, spec.out_height, spec.out_width), generator=gen,
                     dtype=torch.float64)
    x_e2 = x[:, :, _inverse(perm_in)].flatten(1, 2).requires_grad_()
    y_e2 = conv(enn.GeometricTensor(x_e2, conv.in_type)).tensor.unflatten(1, (layer.c_out, spec.s_out))
    (dx_e2,) = torch.autograd.grad(y_e2, x_e2, dy[:, :, _inverse(perm)])
    y_ref, dx_ref = _reference_y_dx(layer, x, weights.coefficients, dy)
    return [("y", y_e2[:, :, perm].detach(), y_ref),
            ("dx", dx_e2.unflatten(1, (layer.c_in, spec.s_in))[:, :, perm_in], dx_ref)]


def agreement(names: Optional[Sequence[str]] = None, providers: Sequence[str] = PROVIDERS, seed: int = 0) -> list[dict]:
    """Relative error of every provider's ``y``, ``dx``, ``dw`` against the float64 reference on the tiny layers
    ``names`` (default: all of :data:`SMOKE_CASES`), in fp32.  Needs the kernels under the interpreter."""
    if not kernels_interpreted():
        raise RuntimeError("agreement runs the kernels under Triton's interpreter: set TRITON_INTERPRET=1 before "
                           "gconv_triton.kernels is imported, or call agreement_subprocess()")
    rows = []
    for name in names or list(SMOKE_CASES):
        if name not in SMOKE_CASES:
            raise ValueError(f"names: expected cases from {sorted(SMOKE_CASES)}, got {name!r}")
        layer = SMOKE_CASES[name]
        with dtype_setting("fp32"):
            case = make_case(layer, "fp32", "contiguous", "cpu", seed)
            ref = reference_outputs(case)
            for pname in providers:
                prov = GconvTriton("triton") if pname == "gconv_triton" else provider(pname, "cpu")
                why = prov.unsupported(layer)
                if why:
                    rows.append(dict(case=name, provider=cpu_label(pname), status="skipped", message=why))
                    continue
                try:
                    if pname == "e2cnn":
                        triples = (e2cnn_steerable_outputs if is_steerable(layer) else e2cnn_outputs)(layer, seed)
                    else:
                        triples = [(q, out, ref[q]) for q, out in prov.outputs(case).items()]
                    note = prov.fallback(case) if isinstance(prov, GconvTriton) else None
                except Exception as err:  # noqa: BLE001  (a provider that crashes fails its row, loudly)
                    rows.append(dict(case=name, provider=cpu_label(pname), quantity="run", rel_err=float("inf"),
                                     tolerance=FP32_TOLERANCE, ok=False, message=f"{type(err).__name__}: {err}"))
                    continue
                for quantity, out, expected in triples:
                    err = rel_error(out, expected)
                    rows.append(dict(case=name, provider=cpu_label(pname), quantity=quantity, rel_err=err,
                                     tolerance=FP32_TOLERANCE, ok=err < FP32_TOLERANCE,
                                     **({"message": note} if note else {})))
    return rows


def agreement_subprocess(names: Optional[Sequence[str]] = None, providers: Sequence[str] = PROVIDERS,
                         timeout_s: float = 600) -> list[dict]:
    """:func:`agreement` in a fresh Python with ``TRITON_INTERPRET=1`` (it is read when the kernels are defined)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, TRITON_INTERPRET="1", GCONV_TRITON_POISON="1",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "agreement.json"
        cmd = [sys.executable, "-m", "perf.smoke", "--json", str(out), "--providers", ",".join(providers)]
        if names:
            cmd += ["--cases", ",".join(names)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the interpreter subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


# The slice of each shape set timed on a CPU, and its batch: a few real layers, small enough for a laptop.  A set
# not listed here times its first layer at batch 2.
DEFAULT_SETS = ("p4cnn", "resnet44", "grouped")
_CPU_SLICES = {"p4cnn": (slice(1, 3), 8), "resnet44": (slice(1, 2), 4), "grouped": (slice(0, 1), 2),
               "wide": (slice(0, 1), 2), "lifting": (slice(0, 1), 1),
               # the ReResNet stage's 3x3 and 1x1, the MNIST model's lifting 7x7 and first 5x5
               **{name: (slice(2, 6), 2) for name in STEERABLE_SETS}}
# Providers as CPU timings call them: on a CPU there is no cuDNN, only torch's own CPU convolution.
CPU_LABELS = {"bank_cudnn": "bank_torch_cpu", "dense_cudnn": "dense_torch_cpu"}
CPU_PROVIDERS = ("gconv_triton", "bank_cudnn", "e2cnn", "dense_cudnn")


def cpu_label(name: str) -> str:
    """How a provider's CPU measurement is labelled (``bank_cudnn`` -> ``bank_torch_cpu``)."""
    return CPU_LABELS.get(name, name)


def cpu_sets(names: Sequence[str] = DEFAULT_SETS, batch: Optional[int] = None,
             tiny: bool = False, full: bool = False) -> dict[str, list[Layer]]:
    """The layers timed on a CPU for each shape set in ``names``: a slice of its real layers at a small batch
    (``batch`` overrides it); ``tiny``: only its cheapest layer at batch 1 (for tests); ``full``: every layer at
    the set's own batch (or ``batch``)."""
    sets = {}
    for name in names:
        if full:
            sets[name] = model_layers(name, batch)
        elif tiny:
            sets[name] = [min(model_layers(name, 1), key=lambda layer: layer.flops("forward"))]
        else:
            part, default_batch = _CPU_SLICES.get(name, (slice(0, 1), 2))
            sets[name] = model_layers(name, batch or default_batch)[part]
    return sets


class InterleavedTimer:
    """CPU wall-clock times of several calls measured together, as ratios need: each call is warmed up for
    ``warmup_ms``, then ``rounds`` rounds run every call in turn (the order rotated each round, so drift and
    frequency scaling hit all of them alike), each call repeated within a round to about ``rep_ms / rounds``.
    Returns each call's time per round, in ms: comparing two calls round by round cancels load that changes
    between rounds (other processes on a shared machine)."""

    def __init__(self, warmup_ms: float = 50.0, rep_ms: float = 400.0, rounds: int = 7):
        if warmup_ms < 0 or rep_ms <= 0 or rounds < 1:
            raise ValueError(f"timer: expected warmup_ms >= 0, rep_ms > 0 and rounds >= 1, got {warmup_ms}, {rep_ms}, "
                             f"{rounds}")
        self.warmup_ms, self.rep_ms, self.rounds = warmup_ms, rep_ms, rounds

    def __call__(self, calls: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
        per_call = {}
        for name, call in calls.items():
            start, n = time.perf_counter(), 0
            while n == 0 or time.perf_counter() - start < self.warmup_ms / 1e3:
                call()
                n += 1
            per_call[name] = (time.perf_counter() - start) / n
        inner = {name: max(1, round(self.rep_ms / 1e3 / self.rounds / max(t, 1e-9))) for name, t in per_call.items()}
        names = list(calls)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(self.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for _ in range(inner[name]):
                    calls[name]()
                samples[name].append(1e3 * (time.perf_counter() - start) / inner[name])
        return samples


def _quantiles(values: Sequence[float]) -> list[float]:
    """The median, p20 and p80 of ``values``."""
    q = torch.tensor(values, dtype=torch.float64).quantile(torch.tensor(QUANTILES, dtype=torch.float64))
    return [float(v) for v in q]


def cpu_timings(sets: dict[str, Sequence[Layer]], providers: Sequence[str] = CPU_PROVIDERS,
                modes: Sequence[str] = ("forward", "forward+backward"), dtypes: Sequence[str] = ("fp32",),
                layouts: Sequence[str] = ("contiguous",), timer: Optional[InterleavedTimer] = None,
                budget_s: Optional[float] = None, progress=sys.stderr) -> dict:
    """CPU wall-clock times of the package's CPU path (``gconv_triton``), the GrouPy-style gather + ``F.conv2d``
    (``bank_torch_cpu``), ``F.conv2d`` with the bank precomputed (``dense_torch_cpu``) and e2cnn: all providers of
    one (layer, mode, dtype, layout) interleaved by ``timer``.  CPU numbers only.  Returns ``{"records", "summary",
    "incomplete"}`` as :func:`perf.runner.run_suite` does; a layer's ``ratio_to_gconv_triton`` is the median over
    rounds of the two providers' times in the same round, a shape set's the ratio of its summed medians."""
    timer = timer or InterleavedTimer()
    provs = [provider(p, "cpu") for p in providers if p in CPU_PROVIDERS]
    records: list[dict] = []
    bar = Progress(sum(map(len, sets.values())) * len(dtypes) * len(layouts), "cpu timings", stream=progress,
                   quiet=progress is None)
    start, incomplete = time.monotonic(), False
    with bar:
        for set_name, layers in sets.items():
            for layer in layers:
                if budget_s is not None and time.monotonic() - start > budget_s:
                    incomplete = True
                    break
                for dtype in dtypes:
                    for layout in layouts:
                        with dtype_setting(dtype):
                            records += _time_layer(set_name, layer, dtype, layout, provs, modes, timer)
                        bar.update(1, f"{set_name}/{layer.name} {dtype} {layout}")
            if incomplete:
                break
    derive(records)
    for r in records:  # derive() divides medians; the ratio paired round by round is the steadier one
        if "paired_ratio" in r:
            r["ratio_to_gconv_triton"] = r.pop("paired_ratio")
    return {"records": records, "summary": summarize(records, sets), "incomplete": incomplete}


def _time_layer(set_name: str, layer: Layer, dtype: str, layout: str, provs, modes, timer) -> list[dict]:
    """The records of one (layer, dtype, layout): every provider built and checked, then timed together."""
    base = dict(set=set_name, layer=layer.name, count=layer.count, dtype=dtype, layout=layout, gemm=list(layer.gemm()),
                bank_bytes=layer.spec().bank_numel() * DTYPES[dtype][0].itemsize, peak_bytes=None)
    records, built, errors, notes = [], {}, {}, {}

    def add(prov_name: str, mode: str, **fields) -> None:
        records.append(dict(base, provider=cpu_label(prov_name), mode=mode, flops=layer.flops(mode), **fields))

    try:
        case = make_case(layer, dtype, layout, "cpu")
        reference = reference_forward(case)
    except Exception as err:  # noqa: BLE001  (recorded for every provider; the run goes on)
        for prov in provs:
            for mode in modes:
                add(prov.name, mode, status="error", message=_first_line(err))
        return records
    for prov in provs:
        why = prov.unsupported(layer)
        if why:
            for mode in modes:
                add(prov.name, mode, status="skipped", message=why)
            continue
        try:
            built[prov.name] = prov.build(case)
            errors[prov.name] = rel_error(built[prov.name].forward(), reference) if prov.comparable else None
            notes[prov.name] = note_field(built[prov.name])
        except Exception as err:  # noqa: BLE001
            for mode in modes:
                add(prov.name, mode, status="error", message=_first_line(err))
    for mode in modes:
        try:
            samples = timer({name: mode_runner(b, mode) for name, b in built.items()}) if built else {}
        except Exception as err:  # noqa: BLE001
            for name in built:
                add(name, mode, status="error", message=_first_line(err))
            continue
        ours = samples.get("gconv_triton")
        for name, times in samples.items():
            err = errors[name]
            tolerance = TOLERANCE.get(dtype) if err is not None else None
            median, p20, p80 = _quantiles(times)
            fields = dict(status="ok", median_ms=median, p20_ms=p20, p80_ms=p80, rel_err=err, tolerance=tolerance,
                          **notes[name])
            if ours is not None:
                fields["paired_ratio"] = _quantiles([t / o for t, o in zip(times, ours)])[0]
            if err is not None and not err < tolerance:
                fields["message"] = f"forward relative error {err:.2e} exceeds {tolerance:.0e}"
            add(name, mode, **fields)
    return records


def run(providers: Sequence[str] = PROVIDERS, modes: Sequence[str] = ("forward", "forward+backward"),
        cases: Optional[Sequence[str]] = None, tiny: bool = False, sets: Sequence[str] = DEFAULT_SETS,
        dtypes: Sequence[str] = ("fp32",), layouts: Sequence[str] = ("contiguous",), batch: Optional[int] = None,
        warmup_ms: Optional[float] = None, rep_ms: Optional[float] = None, budget_s: Optional[float] = None,
        progress=sys.stderr, full: bool = False, rounds: Optional[int] = None) -> dict:
    """The whole smoke mode; returns a result shaped like a GPU run's (``kind = "cpu-smoke"``).  ``full``: time
    every layer of the sets at their own batch (:func:`cpu_sets`); ``rounds``: the timer's (default 7, tiny 3)."""
    from .report import environment

    rows = (agreement(cases, providers) if kernels_interpreted() else agreement_subprocess(cases, providers))
    modes = [m for m in modes if m != "backward"] or ["forward"]
    timer = InterleavedTimer(warmup_ms if warmup_ms is not None else (5 if tiny else 50),
                             rep_ms if rep_ms is not None else (20 if tiny else 400),
                             rounds=rounds or (3 if tiny else 7))
    layers = cpu_sets(sets, batch, tiny, full)
    result = cpu_timings(layers, providers, modes, dtypes, layouts, timer, budget_s, progress)
    result.update(kind="cpu-smoke", agreement=rows, environment=environment("cpu"),
                  config=dict(providers=list(providers), modes=list(modes), cases=list(cases or SMOKE_CASES),
                              sets=list(sets), dtypes=list(dtypes), layouts=list(layouts), batch=batch, tiny=tiny,
                              full=full, warmup_ms=timer.warmup_ms, rep_ms=timer.rep_ms, rounds=timer.rounds),
                  notes=["CPU numbers: on a CPU `gconv_triton` is the package's CPU path (bank + F.conv2d), the "
                         "same algorithm as `bank_torch_cpu` (the GrouPy-style gather + torch's CPU F.conv2d); "
                         "they say nothing about the Triton kernels.",
                         f"Timing: every provider of a layer interleaved in one process, {timer.rounds} rounds in "
                         f"rotating order after {timer.warmup_ms:g} ms of warm-up each, about {timer.rep_ms:g} ms "
                         f"timed per provider; medians, and ratios (×) to gconv_triton from the same rounds.",
                         "Agreement: the kernels ran under Triton's interpreter (fp32), every other provider on the "
                         "CPU in fp32, all against the float64 reference path."]
                  + ([STEERABLE_NOTE] if set(sets) & set(STEERABLE_SETS) else []))
    return result


STEERABLE_NOTE = ("Steerable sets (C_N / D_N): the weight is basis coefficients.  `gconv_triton` is "
                  "`steerable_conv2d`: on the Triton kernels (a GPU, or the 'triton' backend) it steers the filter "
                  "inside the GEMM, no bank; on a CPU ('auto') it builds the bank from the coefficients "
                  "(`steerable_bank`: one matmul, one index_select) and calls F.conv2d, as `bank_torch_cpu` does, "
                  "so there the two run the same ops and their ratio is noise "
                  "(about 1.00). `dense_torch_cpu` trains the bank as a dense weight (no bank build); `e2cnn` is "
                  "`R2Conv` on the same fields (default basis, its own init: the values do not change the time).")


def _worker(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.smoke",
                                     description="Agreement of every provider on tiny shapes (kernels under the "
                                                 "interpreter); writes the rows as JSON.")
    parser.add_argument("--json", required=True, help="where to write the rows")
    parser.add_argument("--cases", default=None, help=f"comma-separated subset of {sorted(SMOKE_CASES)}")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    args = parser.parse_args(argv)
    rows = agreement(args.cases.split(",") if args.cases else None, args.providers.split(","))
    Path(args.json).write_text(json.dumps(rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker())
