"""Writing a run down: the environment, JSON with the raw numbers, a Markdown table, PNG plots."""

from __future__ import annotations

import datetime
import json
import math
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIB = 2 ** 20
# The suite's speed targets (H100, bf16, forward+backward).
TARGET_DTYPE, TARGET_MODE = "bf16", "forward+backward"
TARGET_VS_BANK, TARGET_VS_E2CNN, TARGET_MATMUL_WIDE = 1.3, 2.0, 0.6


def _version(module: str) -> Optional[str]:
    try:
        return getattr(__import__(module), "__version__", "?")
    except Exception:  # noqa: BLE001  (absent or broken: say so, do not fail the report)
        return None


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict:
    """What the numbers depend on: GPU (name, capability, SMs, memory, driver), CUDA, cuDNN, torch, triton, ..."""
    from gconv_triton import __version__

    from .providers import e2cnn_broken, load_e2cnn

    device = torch.device(device)
    e2cnn, why = load_e2cnn()
    if not why:
        why = "; ".join(f"{g}: {e2cnn_broken(g)}" for g in ("p4", "p4m", "z2") if e2cnn_broken(g)) or None
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device.type,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gconv_triton": __version__,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "e2cnn": getattr(e2cnn, "__version__", "?") if e2cnn else None,
        "e2cnn_unavailable": why,
        "matplotlib": _version("matplotlib"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        from gconv_triton.kernels.tuner import DEFAULT_CACHE  # (imports the kernels: not on a CPU-only run)

        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), driver=_driver_version(),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   autotune_cache=str(DEFAULT_CACHE.path), autotune_entries=DEFAULT_CACHE.count())
    return env


def result_stem(env: dict, out_dir: Path, kind: str = "gpu") -> Path:
    """``<gpu>-<date>`` (``cpu-smoke-<date>`` for the smoke mode), with ``-2``, ``-3``... if taken."""
    date = env["date"][:10]
    name = "cpu-smoke" if kind == "cpu-smoke" else re.sub(r"[^a-z0-9]+", "-", env.get("gpu", "gpu").lower()).strip("-")
    stem = out_dir / f"{name}-{date}"
    n = 2
    while any(stem.with_suffix(s).exists() for s in (".json", ".md", ".png")):
        stem = out_dir / f"{name}-{date}-{n}"
        n += 1
    return stem


def write(result: dict, out_dir: Optional[Path] = None, kind: str = "gpu", plot: bool = True) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png`` under ``out_dir``; returns paths."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result["environment"], out_dir, kind)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(result), encoding="utf-8")
    if plot and plot_speedups(result, stem.with_suffix(".png")):
        paths.append(stem.with_suffix(".png"))
    return paths


# ------------------------------------------------------------------------------------------------- Markdown
def _ms(v) -> str:
    return "–" if v is None else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _tflops(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _mib(v) -> str:
    return "–" if v is None else f"{v / MIB:.0f}" if v >= 10 * MIB else f"{v / MIB:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _providers(result: dict) -> list[str]:
    return list(dict.fromkeys(r["provider"] for r in result["records"]))


def env_line(env: dict) -> str:
    keys = ["gpu", "capability", "driver", "cuda", "cudnn", "torch", "triton", "e2cnn", "cpu", "cpu_threads"]
    return ", ".join(f"{k} {env[k]}" for k in keys if env.get(k) is not None)


def summary_table(result: dict) -> str:
    """One row per (shape set, dtype, mode, layout): gconv_triton's step time, TFLOP/s and fraction of the matmul
    ceiling, every other provider's time as a multiple of gconv_triton's, peak memory of ours and bank_cudnn."""
    others = [p for p in _providers(result) if p not in ("gconv_triton", "matmul")]
    bank_name = "bank_torch_cpu" if "bank_torch_cpu" in others else "bank_cudnn"   # the CPU smoke mode's label
    by = {(r["set"], r["dtype"], r["mode"], r["layout"], r["provider"]): r for r in result["summary"]}
    keys = list(dict.fromkeys((r["set"], r["dtype"], r["mode"], r["layout"]) for r in result["summary"]))
    rows = []
    for key in keys:
        ours = by.get((*key, "gconv_triton"), {})
        bank = by.get((*key, bank_name), {})
        rows.append([*key, _ms(ours.get("total_ms")),
                     _tflops(ours.get("tflops")), _pct(ours.get("frac_matmul"))]
                    + [_x(by.get((*key, p), {}).get("ratio_to_gconv_triton")) for p in others]
                    + [f"{_mib(ours.get('peak_bytes'))} / {_mib(bank.get('peak_bytes'))}"])
    header = (["set", "dtype", "mode", "layout", "gconv_triton ms", "TFLOP/s", "% of matmul"]
              + [f"{p} ×" for p in others] + [f"peak MiB ours / {bank_name}"])
    return _table(header, rows)


def layer_table(result: dict) -> str:
    rows = []
    for r in result["records"]:
        if r["status"] == "ok":
            time = f"{_ms(r['median_ms'])} [{_ms(r['p20_ms'])}, {_ms(r['p80_ms'])}]"
            err = "–" if r.get("rel_err") is None else f"{r['rel_err']:.1e}" + (" ✗" if r.get("message") else "")
            rows.append([r["set"], r["layer"], r["dtype"], r["mode"], r["layout"], r["provider"], time,
                         _tflops(r["tflops"]), _pct(r.get("frac_matmul")), _x(r.get("ratio_to_gconv_triton")),
                         _mib(r.get("peak_bytes")), err])
        else:
            rows.append([r["set"], r["layer"], r["dtype"], r["mode"], r["layout"], r["provider"], r["status"],
                         "", "", "", "", ""])
    header = ["set", "layer", "dtype", "mode", "layout", "provider", "median ms [p20, p80]", "TFLOP/s", "% of matmul",
              "× gconv_triton", "peak MiB", "fwd rel err"]
    return _table(header, rows)


def targets(result: dict) -> list[str]:
    """The speed targets on this run's bf16 forward+backward shape-set numbers: met or missed, and by how much."""
    rows = [r for r in result["summary"] if r["dtype"] == TARGET_DTYPE and r["mode"] == TARGET_MODE]
    by = {(r["set"], r["layout"], r["provider"]): r for r in rows}
    lines = []
    for set_name, layout, prov in by:
        if prov != "gconv_triton":
            continue
        ours, where = by[(set_name, layout, prov)], f"{set_name} ({layout})"
        for other, goal in (("bank_cudnn", TARGET_VS_BANK), ("e2cnn", TARGET_VS_E2CNN)):
            r = by.get((set_name, layout, other))
            if r is None:
                continue
            ratio = r.get("ratio_to_gconv_triton")
            if ratio is None:
                lines.append(f"- {where}: speed-up over {other} not measured ({r['status']})")
            else:
                verdict = "met" if ratio >= goal else f"MISSED (needs {goal / ratio:.2f}x more speed)"
                lines.append(f"- {where}: {ratio:.2f}× the speed of {other} (target ≥{goal}×): {verdict}")
        if set_name == "wide" and ours.get("frac_matmul") is not None:
            frac = ours["frac_matmul"]
            verdict = "met" if frac >= TARGET_MATMUL_WIDE else \
                f"MISSED by {100 * (TARGET_MATMUL_WIDE - frac):.0f} points"
            lines.append(f"- {where}: {100 * frac:.0f}% of the matmul ceiling (target ≥"
                         f"{100 * TARGET_MATMUL_WIDE:.0f}%): {verdict}")
        bank = by.get((set_name, layout, "bank_cudnn"))
        if ours.get("peak_bytes") is not None and bank and bank.get("peak_bytes") is not None:
            limit = bank["peak_bytes"] - 2 * bank["bank_bytes"]
            over = ours["peak_bytes"] - limit
            verdict = "met" if over <= 0 else f"MISSED by {_mib(over)} MiB"
            lines.append(f"- {where}: peak {_mib(ours['peak_bytes'])} MiB vs bank_cudnn's "
                         f"{_mib(bank['peak_bytes'])} MiB minus bank and its gradient = {_mib(limit)} MiB: {verdict}")
    return lines


def markdown(result: dict) -> str:
    env = result["environment"]
    cpu = result.get("kind") == "cpu-smoke"
    title = "CPU smoke run (CPU numbers)" if cpu else f"{env.get('gpu', 'GPU')}"
    out = [f"# gconv_triton perf: {title}, {env['date'][:10]}\n", f"{env_line(env)}\n"]
    if cpu:
        out.append("**These are CPU numbers and say nothing about the Triton kernels.** On a CPU `gconv_triton` runs "
                   "its CPU path (filter bank + `F.conv2d`); `bank_torch_cpu` is the bank built on every call (the "
                   "GrouPy-style gather; for C_N / D_N `steerable_bank`) + `F.conv2d` on the CPU.\n")
    out.append("Times: median [p20, p80] in ms " + ("(wall clock)" if cpu else "(`triton.testing.do_bench`)") +
               "; shape-set rows add `count × median` over the set's layers (one training step). "
               "`×` = provider time / gconv_triton time in the same run (above 1: gconv_triton is faster). "
               "`% of matmul` = `torch.matmul` time for the same M, N, K / the provider's time. "
               "Peak MiB = what one call allocates beyond what was allocated before it.\n")
    if result.get("incomplete"):
        out.append("**Incomplete run**: the time budget ran out; the tables hold what was measured.\n")
    if result.get("notes"):
        out.append("\n".join(f"- {note}" for note in result["notes"]) + "\n")
    if result.get("agreement"):
        out += ["## Agreement on tiny shapes (relative error against the float64 reference)\n",
                agreement_table(result["agreement"])]
    out += ["## Shape sets\n", summary_table(result)]
    goals = targets(result) if not cpu else []
    if goals:
        out += [f"## Targets ({TARGET_DTYPE}, {TARGET_MODE})\n", "\n".join(goals) + "\n"]
    skipped = {}
    for r in result["records"]:
        if r["status"] != "ok" or r.get("message") or r.get("note"):
            key = (r["provider"], r["status"], r.get("message") or r.get("note"))
            skipped[key] = skipped.get(key, 0) + 1
    if skipped:
        out += ["## Skipped, failed or flagged\n",
                "\n".join(f"- {p} ({s}, {n}×): {m}" for (p, s, m), n in skipped.items()) + "\n"]
    out += ["## Per layer\n", layer_table(result)]
    return "\n".join(out)


def agreement_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        if r.get("status") == "skipped":
            body.append([r["case"], r["provider"], "–", "skipped", r.get("message", "")])
        else:
            body.append([r["case"], r["provider"], r["quantity"], f"{r['rel_err']:.1e}",
                         f"{'ok' if r['ok'] else 'FAIL'} (< {r['tolerance']:.0e})"])
    return _table(["case", "provider", "quantity", "rel err", "result"], body)


# ------------------------------------------------------------------------------------------------------ plot
def plot_speedups(result: dict, path: Path) -> bool:
    """Bars of gconv_triton's speed-up over each provider (provider time / ours), per shape set, one panel per
    (dtype, mode); hatched bars for channels_last.  False (nothing written) without matplotlib or numbers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except Exception:  # noqa: BLE001  (optional dependency)
        return False
    times = FuncFormatter(lambda v, _: f"{v:g}×")
    # minor ticks of a log axis: label 2 and 5 of each decade only
    some = FuncFormatter(lambda v, _: f"{v:g}×" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5)
                         else "")
    rows = [r for r in result["summary"] if r.get("ratio_to_gconv_triton") and r["provider"] != "gconv_triton"]
    if not rows:
        return False
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in result["summary"]))
    providers = [p for p in _providers(result) if p != "gconv_triton"]
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    series = [(p, lay) for p in providers for lay in layouts]
    by = {(r["set"], r["dtype"], r["mode"], r["layout"], r["provider"]): r["ratio_to_gconv_triton"] for r in rows}
    fig, axes = plt.subplots(len(dtypes), len(modes), figsize=(4.5 * len(modes) + 1, 3.2 * len(dtypes) + 0.6),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(series), 1)
    for i, dtype in enumerate(dtypes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for k, (prov, lay) in enumerate(series):
                xs, ys = [], []
                for n, set_name in enumerate(sets):
                    v = by.get((set_name, dtype, mode, lay, prov))
                    if v:
                        xs.append(n + (k - (len(series) - 1) / 2) * width)
                        ys.append(v)
                ax.bar(xs, ys, width, color=colors[providers.index(prov) % len(colors)],
                       hatch="//" if lay == "channels_last" else None,
                       label=f"{prov}" + (f" ({lay})" if len(layouts) > 1 else ""))
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(times)
            ax.yaxis.set_minor_formatter(some)
            ax.set_xticks(range(len(sets)))
            ax.set_xticklabels(sets, rotation=20, fontsize=8)
            ax.set_title(f"{dtype}, {mode}", fontsize=10)
            if j == 0:
                ax.set_ylabel("speed-up of gconv_triton (×)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    env = result["environment"]
    where = "CPU numbers (not the kernels)" if result.get("kind") == "cpu-smoke" else env.get("gpu", "GPU")
    fig.suptitle(f"gconv_triton speed-up per provider and shape set: {where}, {env['date'][:10]}", fontsize=11)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def console_summary(result: dict) -> str:
    """What the command prints: the shape-set table, targets and the skip reasons (the full tables go to files)."""
    text = [summary_table(result)]
    goals = targets(result) if result.get("kind") != "cpu-smoke" else []
    if goals:
        text.append("\n".join(goals))
    reasons = dict.fromkeys(f"{r['provider']} {r['status']}: {r.get('message')}" for r in result["records"]
                            if r["status"] != "ok")
    text += list(reasons)
    return "\n".join(text)
