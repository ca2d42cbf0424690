"""``make demo``: a P4CNN, a P4M-CNN, a C8-CNN, a D8-CNN and an ordinary CNN with the same parameter budget, trained
on upright 8×8 digits (scikit-learn's bundled copy of the UCI set: real data, no download) and tested on rotated
digits.

    python -m gconv_triton.demo [--epochs N] [--seed S] [--device cpu|cuda] [--out DIR] [--quick]

CPU tensors run the plain-PyTorch reference path, CUDA tensors the fused Triton kernels (``GCONV_TRITON_BACKEND``
overrides; the steerable C8 / D8 layers run the reference path everywhere).  The G-CNNs' logits are exactly
invariant to 90° rotations, so their accuracy is the same at every multiple of 90°; C8 and D8 also have 45° turns,
which act on the pixel grid only through interpolation, so their invariance to those is approximate.  The CNN only
knows the upright digits.  With matplotlib installed, the learning curves and the test accuracy against the rotation
angle (every 15°) are written as PNG files to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import time
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._backend import use_triton
from .equivariance import EquivarianceResult, check_equivariance
from .models import SmallGCNN, count_parameters, widths_for_budget

ANGLES = (0, 90, 180, 270)
# Angles of the accuracy-vs-rotation plot: every 15°, so the G-CNNs' exact invariance at multiples of 90° and the
# interpolation loss in between both show.
CURVE_ANGLES = tuple(range(0, 361, 15))
# Models compared, by name: the group their convolutions act on ("z2" = nn.Conv2d, the baseline; "c8" / "d8" the
# steerable groups, 3×3 filters on 6 basis coefficients).  The first one sets the parameter budget; the others get
# the widths that come closest to it.
MODELS = {"P4CNN": "p4", "P4M-CNN": "p4m", "C8-CNN": "c8", "D8-CNN": "d8", "CNN": "z2"}
BASELINE = "CNN"
# What `make demo` sets before Python starts: ATen's vector kernels, oneDNN's convolutions and MKL's GEMMs all on
# their AVX2 code paths, so that every x86-64 machine with AVX2 sums in the same order and prints the README's table
# (each machine's widest paths round differently, and 30 epochs of training turn that into a point or two).
PINNED_CPU_PATHS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
# Test digits the invariance error is measured on: round-off needs few, and float64 convolutions take ATen's slow
# path on the CPU (oneDNN has no float64), once per checked group element.
INVARIANCE_DIGITS = 64


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gconv_triton.demo",
                                     description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 30, 5 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the batches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to train (default: cuda when available, else cpu)")
    parser.add_argument("--width", type=int, default=8, help="G-channels of the P4CNN's first layers (default 8)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: the tensors are tiny, and extra threads cost more in "
                             "synchronisation than they save, badly so on a busy machine)")
    parser.add_argument("--out", default="demo_out",
                        help="directory for the PNG plots (default ./demo_out; created when missing)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (smoke test): 5 epochs, 500 train and 150 test digits")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 5 if args.quick else 30
    for name in ("epochs", "width", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: expected a torch device such as 'cpu' or 'cuda', got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: got {args.device!r}, but torch finds no CUDA device here")
    return args


def load_digits(seed: int, device: torch.device, train_limit: Optional[int] = None,
                test_limit: Optional[int] = None):
    """scikit-learn's 1797 8×8 digits, split 75/25 stratified by class (then cut to the first ``train_limit`` /
    ``test_limit`` digits when given).

    Returns ``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 8, 8)`` in [0, 1] (background 0, the value
    the convolutions pad with) and labels ``(N,)``.
    """
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ModuleNotFoundError(f"the demo's digits ship with scikit-learn, which is not installed ({err}): run "
                                  f"`make demo` (it installs the demo extra), or `pip install scikit-learn`",
                                  name="sklearn") from err

    data = _load()
    x_train, x_test, y_train, y_test = train_test_split(data.images, data.target, test_size=0.25,
                                                        stratify=data.target, random_state=seed)
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    if test_limit is not None:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]

    def images(a):
        return torch.as_tensor(a, dtype=torch.float32, device=device).unsqueeze(1) / 16

    def labels(a):
        return torch.as_tensor(a, dtype=torch.long, device=device)

    return images(x_train), labels(y_train), images(x_test), labels(y_test)


def build_models(width: int, seed: int, device: torch.device) -> dict[str, nn.Module]:
    """The models of :data:`MODELS` at the parameter budget of the first one with widths ``(w, w, 2w)``."""
    models, budget = {}, None
    for name, group in MODELS.items():
        widths = (width, width, 2 * width) if budget is None else widths_for_budget(group, budget)
        torch.manual_seed(seed)
        models[name] = SmallGCNN(group, widths).to(device)
        budget = budget or count_parameters(models[name])
    return models


def cpu_code_paths() -> str:
    """The vector code paths ATen runs on this CPU, and whether they are pinned as ``make demo`` pins them
    (:data:`PINNED_CPU_PATHS`, read by torch, oneDNN and MKL when they start, so set before Python starts)."""
    capability = torch.backends.cpu.get_cpu_capability()
    pinned = capability == "AVX2" and all(os.environ.get(k) == v for k, v in PINNED_CPU_PATHS.items())
    return f"CPU code paths {capability}, " + ("pinned as make demo pins them" if pinned else
                                                "not pinned: accuracies may differ from make demo's by a point or two")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
          seed: int, after_epoch: Optional[Callable[[nn.Module], dict]] = None) -> dict:
    """Adam on shuffled mini-batches (the same order for every model).

    Returns the mean loss of each epoch (``losses``), the training throughput in images/s (forward + backward +
    step, timed on the device; ``after_epoch`` is not timed) and, when ``after_epoch(model)`` is given, its
    result after each epoch (``history``: one list per key)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses, history, seconds = [], {}, 0.0
    for _ in range(epochs):
        model.train()
        _synchronize(x.device)
        start = time.perf_counter()
        total = torch.zeros((), device=x.device)
        for batch in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        losses.append(float(total) / len(x))  # synchronises
        seconds += time.perf_counter() - start
        if after_epoch is not None:
            for key, value in after_epoch(model).items():
                history.setdefault(key, []).append(value)
    return {"losses": losses, "images_per_s": epochs * len(x) / seconds, "history": history}


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Images ``(N, C, H, W)`` rotated counter-clockwise (as displayed) by ``degrees`` about their centre:
    bilinear interpolation, zeros outside.  Multiples of 90° equal ``torch.rot90`` up to round-off."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    if degrees % 90 == 0:  # exact 0/±1, so the sampling points land on pixel centres
        c, s = round(c), round(s)
    # affine_grid maps each output pixel (normalised x right, y down) to the input point it samples: the inverse
    # rotation, which in these y-down coordinates is [[c, -s], [s, c]].
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` (``(N, C, H, W)``) that ``model`` (put in eval mode) labels ``y`` (``(N,)``)."""
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
    """Accuracy on ``x`` rotated counter-clockwise by each angle of :data:`ANGLES` (degrees, exact ``rot90``)."""
    return {angle: accuracy(model, torch.rot90(x, angle // 90, dims=(-2, -1)), y) for angle in ANGLES}


def _upright_and_rotated(accuracies: dict[int, float]) -> dict[str, float]:
    """The accuracy at 0° and the mean over the other angles of :data:`ANGLES`."""
    return {"upright": accuracies[0], "rotated": sum(accuracies[a] for a in ANGLES[1:]) / (len(ANGLES) - 1)}


def rotation_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   angles: Sequence[float] = CURVE_ANGLES) -> dict[float, float]:
    """Accuracy on ``x`` turned by each of ``angles`` (degrees) with :func:`rotate` (interpolated)."""
    return {angle: accuracy(model, rotate(x, angle), y) for angle in angles}


def invariance_group(group: str) -> str:
    """The group whose action on the images the ``inv. err`` column measures for a model on ``group``: the model's
    own (checked on its grid symmetries: the quarter turns, and for p4m / d8 the flips as well), the quarter turns
    for the CNN ("z2")."""
    return "p4" if group == "z2" else group


def invariance_error(model: nn.Module, x: torch.Tensor, group: str = "p4") -> EquivarianceResult:
    """:func:`~gconv_triton.check_equivariance` of the logits under ``group`` (for a steerable group such as "c8",
    its grid symmetries only: the result's ``elements``), on a float64 copy of the model on the CPU (the reference
    path): round-off, about 1e-16, for an exactly invariant network."""
    model64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    return check_equivariance(model64, x.to(device="cpu", dtype=torch.float64), group)


def format_table(results: dict[str, dict]) -> str:
    """One row per model: parameters, accuracy per angle and averaged over the rotations, invariance error,
    training images/s."""
    header = (f"{'model':<8}{'params':>8}" + "".join(f"{f'acc@{a}':>9}" for a in ANGLES)
              + f"{'rotated':>9}{'inv. err':>10}{'train img/s':>13}")
    rows = [header, "-" * len(header)]
    for name, r in results.items():
        rows.append(f"{name:<8}{r['params']:>8}" + "".join(f"{r['accuracy'][a]:>9.3f}" for a in ANGLES)
                    + f"{r['rotated']:>9.3f}{r['invariance_error']:>10.1e}{r['train_images_per_s']:>13.0f}")
    return "\n".join(rows)


def format_summary(results: dict[str, dict]) -> str:
    """Parameter counts against the budget, and each G-CNN against the :data:`BASELINE` CNN on rotated digits."""
    budget = next(iter(results.values()))["params"]
    counts = ", ".join(f"{name} {r['params']} ({r['params'] / budget - 1:+.1%})" for name, r in results.items())
    with_flips = [name for name, r in results.items() if len(r["invariance_error"].elements) > 4]
    lines = [f"parameters: {counts}",
             "inv. err: max over g of |f(g x) - f(x)| / |f(x)| on the logits (float64), g: the 4 quarter turns"
             + (f", and the 4 flips for {' and '.join(with_flips)}" if with_flips else "")]
    base = results[BASELINE]
    for name, r in results.items():
        if name != BASELINE:
            verdict = "beats" if r["rotated"] > base["rotated"] else "does NOT beat"
            lines.append(f"{name} {verdict} the {BASELINE} on rotated digits: {r['rotated']:.3f} vs "
                         f"{base['rotated']:.3f} (upright: {r['upright']:.3f} vs {base['upright']:.3f})")
    step = CURVE_ANGLES[1] - CURVE_ANGLES[0]
    curve_means = {name: _curve_mean(r["rotation_curve"]) for name, r in results.items()}
    lines.append(f"mean accuracy over rotations every {step} deg (bilinear): "
                 + ", ".join(f"{name} {m:.3f}" for name, m in curve_means.items()))
    best = max(results, key=lambda name: (results[name]["rotated"], curve_means[name]))
    lines.append(f"best on rotated digits: {best}")
    return "\n".join(lines)


def _curve_mean(curve: dict[float, float]) -> float:
    """Mean accuracy over one turn (360° duplicates 0°, so it is left out)."""
    values = [acc for angle, acc in curve.items() if angle % 360 or angle == 0]
    return sum(values) / len(values)


def save_plots(results: dict[str, dict], out: str) -> list[str]:
    """Write ``learning_curves.png`` (train loss; test accuracy upright and rotated, per epoch) and
    ``accuracy_vs_rotation.png`` to the directory ``out``.  Returns their paths, or ``[]`` (after printing one
    line) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print("matplotlib is not installed: plots skipped (pip install matplotlib)")
        return []
    os.makedirs(out, exist_ok=True)
    # The object-oriented API on an Agg canvas: no pyplot, so the caller's global backend is left alone.
    colors = dict(zip(results, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, r in results.items():
        epochs = range(1, len(r["losses"]) + 1)
        loss_ax.plot(epochs, r["losses"], color=colors[name], label=name)
        acc_ax.plot(epochs, r["history"]["upright"], color=colors[name], label=f"{name}, upright")
        acc_ax.plot(epochs, r["history"]["rotated"], color=colors[name], linestyle="--",
                    label=f"{name}, rotated 90/180/270")
    all_losses = [loss for r in results.values() for loss in r["losses"]]
    # Log scale only when the losses span a decade: a short run's narrow range gets unreadable log ticks.
    loss_ax.set(title="Training loss (upright digits)", xlabel="epoch", ylabel="mean cross-entropy",
                yscale="log" if max(all_losses) > 10 * min(all_losses) else "linear")
    acc_ax.set(title="Test accuracy (G-CNNs: dashed = solid)", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("8x8 digits, trained upright, equal parameter budget")
    paths = [os.path.join(out, "learning_curves.png")]
    fig.savefig(paths[-1], dpi=110)

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, r in results.items():
        angles, accs = zip(*r["rotation_curve"].items())
        ax.plot(angles, accs, color=colors[name], marker="o", markersize=3, label=f"{name} ({r['params']} params)")
    for angle in range(0, 361, 90):  # the angles the G-CNNs are exactly invariant to
        ax.axvline(angle, color="gray", linestyle=":", linewidth=1)
    ax.set(title="Test accuracy vs rotation of the test digits (bilinear, zero padding)",
           xlabel="rotation angle (degrees, counter-clockwise); dotted: multiples of 90", ylabel="accuracy",
           xticks=range(0, 361, 45), xlim=(0, 360), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    paths.append(os.path.join(out, "accuracy_vs_rotation.png"))
    fig.savefig(paths[-1], dpi=110)
    return paths


@contextlib.contextmanager
def _cpu_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op CPU threads inside the block, then restore the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the demo; print the table and return the metrics as a dict (``models`` holds one entry per model)."""
    args = parse_args(argv)
    with _cpu_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    device = torch.device(args.device)
    # --quick also cuts the test digits: the per-epoch and per-angle evaluations of five models outweigh training.
    limits = (500, 150) if args.quick else (None, None)
    x_train, y_train, x_test, y_test = load_digits(args.seed, device, *limits)
    path = "fused Triton kernels" if use_triton(x_train) else "PyTorch reference path"
    print(f"8x8 digits: {len(x_train)} train (upright) / {len(x_test)} test; {args.epochs} epochs on {device} "
          f"({path}); seed {args.seed}")
    if device.type == "cpu":
        print(cpu_code_paths())

    results = {}
    for name, model in build_models(args.width, args.seed, device).items():
        fit = train(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, after_epoch=lambda m: _upright_and_rotated(evaluate(m, x_test, y_test)))
        accuracies = evaluate(model, x_test, y_test)
        results[name] = {
            "params": count_parameters(model),
            "accuracy": accuracies,
            **_upright_and_rotated(accuracies),
            # An EquivarianceResult: a float whose `elements` are the group elements checked.
            "invariance_error": invariance_error(model, x_test[:INVARIANCE_DIGITS], invariance_group(MODELS[name])),
            "train_images_per_s": fit["images_per_s"],
            "losses": fit["losses"],
            "history": fit["history"],  # test accuracy per epoch: "upright" and "rotated" lists
            "rotation_curve": rotation_curve(model, x_test, y_test),
        }

    print(format_table(results))
    print()
    print(format_summary(results))
    plots = save_plots(results, args.out)
    if plots:
        print("plots: " + ", ".join(plots))
    elapsed = time.perf_counter() - start
    print(f"total time {elapsed:.1f} s")
    return {"device": str(device), "backend": path, "epochs": args.epochs, "seed": args.seed,
            "n_train": len(x_train), "n_test": len(x_test), "models": results, "plots": plots,
            "elapsed_s": elapsed}


if __name__ == "__main__":
    try:
        main()
    except ModuleNotFoundError as err:  # a missing optional dependency: say what to install, not a traceback
        if err.name != "sklearn":
            raise
        raise SystemExit(f"python -m gconv_triton.demo: {err}") from None
