"""The CPU smoke mode of ``python -m perf``, for machines without a CUDA GPU.

1. Agreement: every provider on tiny shapes against the float64 reference (forward, input and weight gradients);
   our kernels run under Triton's interpreter, in a subprocess with ``TRITON_INTERPRET=1`` when this process did
   not set it before importing the kernels.  e2cnn, which trains its own steerable basis, is checked by reading
   its expanded bank back into our convention (its group-element order is found, not assumed).
2. CPU timings of the package's CPU path against ``bank_cudnn``'s CPU equivalent and e2cnn: CPU numbers,
   labelled as such; they say nothing about the kernels.

``python -m perf.smoke --cases NAME,... --json PATH`` is the subprocess's entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

import gconv_triton
from gconv_triton.autotune import Layer, dtype_setting, model_layers
from gconv_triton.functional import gconv2d
from gconv_triton.reference import filter_bank

from .providers import PROVIDERS, E2cnn, GconvTriton, e2cnn_permutation, make_case, provider
from .runner import TOLERANCE, CpuTimer, run_suite

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
        y = gconv2d(x, w, group=layer.group, in_group=layer.in_group, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=layer.groups)
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
    xr = x.clone().requires_grad_()
    with gconv_triton.backend("torch"):
        y_ref = gconv2d(xr, base, group=layer.group, in_group=layer.in_group, stride=layer.stride,
                        padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    (dx_ref,) = torch.autograd.grad(y_ref, xr, dy)
    return [("bank", filter_bank(base, spec.group, spec.in_group), ours),
            ("y", y_e2[:, :, inv].detach(), y_ref.detach()),
            ("dx", dx_e2.unflatten(1, (layer.c_in, spec.s_in))[:, :, inv_in], dx_ref)]


def agreement(names: Optional[Sequence[str]] = None, providers: Sequence[str] = PROVIDERS, seed: int = 0) -> list[dict]:
    """Relative error of every provider's ``y``, ``dx``, ``dw`` against the float64 reference on the tiny layers
    ``names`` (default: all of :data:`SMOKE_CASES`), in fp32.  Needs the kernels under the interpreter."""
    from .runner import rel_error

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
                    rows.append(dict(case=name, provider=pname, status="skipped", message=why))
                    continue
                try:
                    if pname == "e2cnn":
                        triples = e2cnn_outputs(layer, seed)
                    else:
                        triples = [(q, out, ref[q]) for q, out in prov.outputs(case).items()]
                except Exception as err:  # noqa: BLE001  (a provider that crashes fails its row, loudly)
                    rows.append(dict(case=name, provider=pname, quantity="run", rel_err=float("inf"),
                                     tolerance=FP32_TOLERANCE, ok=False, message=f"{type(err).__name__}: {err}"))
                    continue
                for quantity, out, expected in triples:
                    err = rel_error(out, expected)
                    rows.append(dict(case=name, provider=pname, quantity=quantity, rel_err=err,
                                     tolerance=FP32_TOLERANCE, ok=err < FP32_TOLERANCE))
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


def cpu_sets(tiny: bool = False) -> dict[str, list[Layer]]:
    """Layers for the CPU timings: a few real layers at small batch (``tiny``: the smallest, for tests)."""
    if tiny:
        return {"p4cnn": model_layers("p4cnn", batch=1)[4:5], "resnet44": model_layers("resnet44", batch=1)[-1:]}
    return {"p4cnn": model_layers("p4cnn", batch=8)[1:3], "resnet44": model_layers("resnet44", batch=4)[1:2],
            "grouped": model_layers("grouped", batch=2)[:1]}


def cpu_timings(providers: Sequence[str] = ("gconv_triton", "bank_cudnn", "e2cnn"),
                modes: Sequence[str] = ("forward", "forward+backward"), tiny: bool = False,
                min_time_s: float = 0.2, progress=sys.stderr) -> dict:
    """CPU wall-clock times of the package's CPU path (``gconv_triton``), the GrouPy-style gather + ``F.conv2d``
    (``bank_cudnn``'s CPU equivalent) and e2cnn, in fp32: CPU numbers only."""
    provs = [provider(p, "cpu") for p in providers if p in ("gconv_triton", "bank_cudnn", "e2cnn", "dense_cudnn")]
    return run_suite(cpu_sets(tiny), provs, modes=modes, dtypes=("fp32",), layouts=("contiguous",), device="cpu",
                     timer=CpuTimer(min_time_s=min_time_s, min_runs=3 if tiny else 5), memory=None,
                     progress=progress)


def run(providers: Sequence[str] = PROVIDERS, modes: Sequence[str] = ("forward", "forward+backward"),
        cases: Optional[Sequence[str]] = None, tiny: bool = False, progress=sys.stderr) -> dict:
    """The whole smoke mode; returns a result shaped like a GPU run's (``kind = "cpu-smoke"``)."""
    from .report import environment

    rows = (agreement(cases, providers) if kernels_interpreted() else agreement_subprocess(cases, providers))
    modes = [m for m in modes if m != "backward"] or ["forward"]
    result = cpu_timings(providers, modes, tiny=tiny, min_time_s=0.02 if tiny else 0.2, progress=progress)
    result.update(kind="cpu-smoke", agreement=rows, environment=environment("cpu"),
                  config=dict(providers=list(providers), modes=list(modes), cases=list(cases or SMOKE_CASES),
                              tiny=tiny),
                  notes=["CPU numbers: on a CPU `gconv_triton` is the package's CPU path (bank + F.conv2d), the "
                         "same algorithm as `bank_cudnn`; they say nothing about the Triton kernels.",
                         "Agreement: the kernels ran under Triton's interpreter (fp32), every other provider on the "
                         "CPU in fp32, all against the float64 reference path."])
    return result


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
