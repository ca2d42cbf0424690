"""The measurement loop: every provider over shape sets, modes, dtypes and layouts, then the derived metrics.

One record per (shape set, layer, mode, dtype, layout, provider) holds the raw numbers (median, p20, p80 time,
peak memory, forward error against a float64 reference) and, once the run is over, the numbers derived from the
same run: TFLOP/s, fraction of the ``matmul`` ceiling and ratio to ``gconv_triton``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable, Optional, Sequence

import torch

from gconv_triton.autotune import DTYPES, FORWARD_ONLY, Layer, Progress, dtype_setting

from .providers import Built, Case, Provider, layer_conv, make_case

MODES = ("forward", "backward", "forward+backward")
QUANTILES = (0.5, 0.2, 0.8)
# Relative error of a forward against the float64 reference of the same (rounded) inputs (docs/numerics.md).
TOLERANCE = {"fp32": 1e-5, "tf32": 3e-3, "bf16": 1e-2, "fp16": 1e-2}


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


class CudaTimer:
    """``triton.testing.do_bench`` (CUDA events, L2 flushed between runs) with the median and p20/p80."""

    label = "cuda"

    def __init__(self, warmup_ms: float = 25, rep_ms: float = 100):
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms

    def __call__(self, run: Callable[[], object]) -> Timing:
        from triton.testing import do_bench

        median, p20, p80 = do_bench(run, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=list(QUANTILES))
        return Timing(float(median), float(p20), float(p80))


class CpuTimer:
    """Wall-clock time of ``run()`` on the CPU: one warm-up call, then calls until ``min_time_s`` and ``min_runs``."""

    label = "cpu"

    def __init__(self, min_time_s: float = 0.2, min_runs: int = 5, max_runs: int = 200):
        self.min_time_s, self.min_runs, self.max_runs = min_time_s, min_runs, max_runs

    def __call__(self, run: Callable[[], object]) -> Timing:
        run()
        times: list[float] = []
        while len(times) < self.max_runs and (len(times) < self.min_runs or sum(times) < self.min_time_s):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        q = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor(QUANTILES, dtype=torch.float64))
        median, p20, p80 = (1e3 * float(v) for v in q)
        return Timing(median, p20, p80)


def cuda_peak_memory(run: Callable[[], object]) -> int:
    """Bytes one call allocates at its peak beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak)


def mode_runner(built: Built, mode: str) -> Callable[[], object]:
    """The call to time: the forward (with autograd recording, as in training), the backward of one recorded
    forward (``retain_graph``: the same graph every run), or both.  ``autograd.grad`` never accumulates."""
    def within(fn):
        def call():
            with built.setting():
                return fn()
        return call

    if mode == "forward":
        return within(built.forward)
    if mode == "backward":
        y = within(built.forward)()
        return within(lambda: torch.autograd.grad(y, built.inputs, built.grad_output, retain_graph=True))
    if mode == "forward+backward":
        return within(lambda: torch.autograd.grad(built.forward(), built.inputs, built.grad_output))
    raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64; anything not finite gives inf."""
    out = out.detach().to(torch.float64)
    if not torch.isfinite(out).all():
        return float("inf")
    ref = ref.to(device=out.device, dtype=torch.float64)
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def reference_forward(case: Case) -> torch.Tensor:
    """The layer's output from the case's (already rounded) inputs by the filter-bank reference path: in float64 on
    a CPU; on a GPU in fp32 with tf32 off (cuDNN's float64 convolutions can be very slow on large layers, and fp32
    round-off, about 1e-6, is far under every tolerance it checks)."""
    import gconv_triton

    dtype = torch.float64 if case.device.type == "cpu" else torch.float32
    with torch.no_grad(), gconv_triton.backend("torch"), dtype_setting("fp32"):
        return layer_conv(case.x.detach().to(dtype), case.w.detach().to(dtype), case.layer)


def note_field(built: Built) -> dict:
    """``{"note": ...}`` for a record when the provider said what ran (:attr:`Built.note`), else nothing."""
    return {"note": built.note} if built.note else {}


def _first_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def run_suite(sets: dict[str, Sequence[Layer]], providers: Sequence[Provider], modes: Sequence[str] = MODES,
              dtypes: Sequence[str] = ("bf16",), layouts: Sequence[str] = ("contiguous",), device="cuda",
              timer: Optional[Callable] = None, memory: Optional[Callable] = None, check: bool = True,
              progress=sys.stderr, budget_s: Optional[float] = None) -> dict:
    """Measure every combination; returns ``{"records", "summary", "incomplete"}``.

    Args:
        sets: shape-set name -> layers.  providers: built with :func:`perf.providers.provider`.
        timer: ``timer(run) -> Timing`` (:class:`CudaTimer` on a GPU, :class:`CpuTimer` on a CPU).
        memory: ``memory(run) -> bytes`` (:func:`cuda_peak_memory`), or None for no memory column.
        check: compare each comparable provider's forward with the float64 reference first.
        progress: stream for the progress bar, or None.  budget_s: start no new layer after this many seconds
            (the results then say ``incomplete``).
    A provider that cannot run a layer is recorded as ``skipped`` with the reason; one that raises, as ``error``
    with the message: the run goes on either way.
    """
    device = torch.device(device)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"modes: expected a subset of {MODES}, got {list(modes)}")
    run = _Run(modes, timer or (CudaTimer() if device.type == "cuda" else CpuTimer()), memory, check,
               total=sum(len(layers) * len(set_modes(name, modes)) for name, layers in sets.items())
               * len(dtypes) * len(layouts) * len(providers), progress=progress)
    start, incomplete = time.monotonic(), False
    with run.bar:
        for set_name, layers in sets.items():
            for layer in layers:
                if budget_s is not None and time.monotonic() - start > budget_s:
                    incomplete = True
                    break
                run.modes = set_modes(set_name, modes)
                for dtype in dtypes:
                    run.layer(set_name, layer, dtype, layouts, providers, device)
            if incomplete:
                break
    derive(run.records)
    return {"records": run.records, "summary": summarize(run.records, sets), "incomplete": incomplete}


def set_modes(set_name: str, modes: Sequence[str]) -> tuple[str, ...]:
    """The modes a shape set is timed in: ``modes``, except an inference set (``FORWARD_ONLY``): ``forward``,
    whatever ``modes`` says (serving runs no backward, and ``--quick`` asks for forward+backward only)."""
    return ("forward",) if set_name in FORWARD_ONLY else tuple(modes)


class _Run:
    """The state of one :func:`run_suite`: records so far, the progress bar, matmul timings to reuse."""

    def __init__(self, modes, timer, memory, check, total, progress):
        self.modes, self.timer, self.memory, self.check = modes, timer, memory, check
        self.records: list[dict] = []
        self.bar = Progress(total, "perf", stream=progress, quiet=progress is None)
        self.matmul_seen: dict[tuple, list[dict]] = {}   # a matmul does not depend on the layout: time it once

    def add(self, base: dict, layer: Layer, mode: str, **fields) -> dict:
        rec = {**base, "mode": mode, "flops": layer.flops(mode), **fields}
        self.records.append(rec)
        self.bar.update(1, f"{base['set']}/{base['layer']} {base['dtype']} {base['layout']} {base['provider']} "
                           f"{mode}")
        return rec

    def layer(self, set_name: str, layer: Layer, dtype: str, layouts, providers, device) -> None:
        with dtype_setting(dtype):
            reference = None
            for layout in layouts:
                bases = [dict(set=set_name, layer=layer.name, count=layer.count, dtype=dtype, layout=layout,
                              provider=prov.name, gemm=list(layer.gemm()),
                              bank_bytes=layer.spec().bank_numel() * DTYPES[dtype][0].itemsize) for prov in providers]
                try:
                    case = make_case(layer, dtype, layout, device)
                    if self.check and reference is None:   # the values do not depend on the layout
                        reference = reference_forward(case)
                except Exception as exc:  # noqa: BLE001  (out of memory for the inputs: record it for everyone)
                    for base in bases:
                        for mode in self.modes:
                            self.add(base, layer, mode, status="error", message=_first_line(exc))
                    continue
                for prov, base in zip(providers, bases):
                    self.measure(prov, case, base, reference)
                del case
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def measure(self, prov: Provider, case: Case, base: dict, reference: Optional[torch.Tensor]) -> None:
        layer = case.layer
        why = prov.unsupported(layer)
        if why:
            for mode in self.modes:
                self.add(base, layer, mode, status="skipped", message=why)
            return
        shape_key = (tuple(base["gemm"]), base["dtype"], layer.input_grad)
        if prov.name == "matmul" and shape_key in self.matmul_seen:
            for old in self.matmul_seen[shape_key]:
                self.add(base, layer, old["mode"], **{k: v for k, v in old.items() if k not in base and k != "mode"})
            return
        try:
            built = prov.build(case)
            err = rel_error(built.forward(), reference) if reference is not None and prov.comparable else None
        except Exception as exc:  # noqa: BLE001  (recorded, and the run goes on)
            for mode in self.modes:
                self.add(base, layer, mode, status="error", message=_first_line(exc))
            return
        tolerance = TOLERANCE.get(base["dtype"]) if err is not None else None
        measured = []
        for mode in self.modes:
            try:
                call = mode_runner(built, mode)
                timing = self.timer(call)
                peak = self.memory(call) if self.memory is not None else None
                del call
            except Exception as exc:  # noqa: BLE001
                self.add(base, layer, mode, status="error", message=_first_line(exc))
                if case.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            fields = dict(status="ok", median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms,
                          peak_bytes=peak, rel_err=err, tolerance=tolerance, **note_field(built))
            if err is not None and not err < tolerance:
                fields["message"] = f"forward relative error {err:.2e} exceeds {tolerance:.0e}"
            measured.append(self.add(base, layer, mode, **fields))
        if prov.name == "matmul":
            self.matmul_seen[shape_key] = measured


# --------------------------------------------------------------------------------------------- derived metrics
def _case_key(rec: dict) -> tuple:
    return rec["set"], rec["layer"], rec["mode"], rec["dtype"], rec["layout"]


def _ratios(rec: dict, ours: Optional[dict], matmul: Optional[dict], time_key: str) -> None:
    t = rec.get(time_key)
    rec["ratio_to_gconv_triton"] = t / ours[time_key] if t and ours and ours.get(time_key) else None
    rec["frac_matmul"] = matmul[time_key] / t if t and matmul and matmul.get(time_key) else None


def derive(records: list[dict]) -> None:
    """Fill TFLOP/s, fraction of the matmul ceiling and ratio to gconv_triton into the ``ok`` records, in place."""
    by = {(_case_key(r), r["provider"]): r for r in records if r["status"] == "ok"}
    for rec in records:
        if rec["status"] != "ok":
            continue
        rec["tflops"] = rec["flops"] / (rec["median_ms"] * 1e9)
        _ratios(rec, by.get((_case_key(rec), "gconv_triton")), by.get((_case_key(rec), "matmul")), "median_ms")


def summarize(records: list[dict], sets: dict[str, Sequence[Layer]]) -> list[dict]:
    """Per (shape set, mode, dtype, layout, provider): the step time ``Σ count · median`` over the set's layers
    (None unless every layer ran), its TFLOP/s, ratios, and the largest peak memory."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["set"], rec["mode"], rec["dtype"], rec["layout"], rec["provider"]), []).append(rec)
    rows = []
    for (set_name, mode, dtype, layout, prov), recs in groups.items():
        complete = len(recs) == len(sets[set_name]) and all(r["status"] == "ok" for r in recs)
        peaks = [r["peak_bytes"] for r in recs if r.get("peak_bytes") is not None]
        row = dict(set=set_name, mode=mode, dtype=dtype, layout=layout, provider=prov, layers=len(recs),
                   complete=complete, total_ms=None, flops=sum(r["count"] * r["flops"] for r in recs),
                   tflops=None, peak_bytes=max(peaks) if peaks else None,
                   bank_bytes=max(r["bank_bytes"] for r in recs),
                   status=("ok" if complete else "skipped" if all(r["status"] == "skipped" for r in recs)
                           else "partial"),
                   message=next((r.get("message") for r in recs if r["status"] != "ok"), None))
        if complete:
            row["total_ms"] = sum(r["count"] * r["median_ms"] for r in recs)
            row["tflops"] = row["flops"] / (row["total_ms"] * 1e9)
        rows.append(row)
    by = {((r["set"], r["mode"], r["dtype"], r["layout"]), r["provider"]): r for r in rows}
    for row in rows:
        key = (row["set"], row["mode"], row["dtype"], row["layout"])
        _ratios(row, by.get((key, "gconv_triton")), by.get((key, "matmul")), "total_ms")
    return rows
