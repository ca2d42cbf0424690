"""Pre-tune the fused kernels for a model's layer shapes, and the layer shapes of real models.

    python -m gconv_triton.autotune --model p4cnn --dtype bf16

runs every layer of the model forward and backward on the GPU, so that each kernel times its candidate configs
for that shape bucket once, and writes the best ones to the JSON cache (``GCONV_TRITON_AUTOTUNE_CACHE``, else
``~/.cache/gconv_triton/autotune.json``) that later processes read instead of tuning again.  The same shape sets
drive the perf suite (``python -m perf``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from typing import Iterator, Optional, Sequence, Union

import torch

from ._backend import backend
from ._spec import make_spec
from ._support import as_group_map
from .functional import gconv2d
from .groups import get_group

__all__ = ["Layer", "MODELS", "FORWARD_ONLY", "STEERABLE_SETS", "DTYPES", "LAYOUTS", "Progress", "model_layers",
           "dtype_setting", "make_input", "to_layout", "parse_names", "pretune", "main"]

# name -> (torch dtype, tf32 allowed): fp32 runs exact fp32 dots, tf32 lets cuDNN, cuBLAS and our kernels use tf32.
DTYPES = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "bf16": (torch.bfloat16, False),
          "fp16": (torch.float16, False)}
LAYOUTS = ("contiguous", "channels_last")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One group-convolution layer of a model: ``x (B, c_in, S_in, H, W)`` -> ``(B, c_out, S_out, H_out, W_out)``.

    ``count`` is how many times the model runs this shape per step; ``input_grad`` is False for a first layer,
    whose input (an image) needs no gradient.
    """

    name: str
    group: str
    in_group: str
    c_in: int
    c_out: int
    height: int
    width: int
    kernel: tuple[int, int] = (3, 3)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dilation: int = 1
    groups: int = 1
    batch: int = 1
    count: int = 1
    input_grad: bool = True

    def spec(self):
        """The validated :class:`~gconv_triton._spec.ConvSpec` (built on meta tensors: nothing is allocated)."""
        x = torch.empty(self.input_shape(), device="meta")
        w = torch.empty(self.weight_shape(), device="meta")
        return make_spec(x, w, None, group=self.group, in_group=self.in_group, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups)

    @property
    def s_in(self) -> int:
        return get_group(self.in_group).order

    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.c_in, self.s_in, self.height, self.width)

    def weight_shape(self) -> tuple[int, ...]:
        return (self.c_out, self.c_in // self.groups, self.s_in, *self.kernel)

    def gemm(self) -> tuple[int, int, int]:
        """``(M, N, K)`` of the forward as one GEMM with the same FLOPs: pixels, all output channels, the
        reduction of one channel group."""
        s = self.spec()
        m = s.batch * s.out_height * s.out_width
        return m, s.groups * s.out_channels * s.s_out, s.in_channels * s.s_in * s.kernel[0] * s.kernel[1]

    def flops(self, mode: str = "forward") -> int:
        """Useful FLOPs of one call: the forward GEMM; backward adds the weight gradient and, when the input needs
        it, the input gradient (each as many FLOPs as the forward)."""
        m, n, k = self.gemm()
        forward = 2 * m * n * k
        backward = forward * (2 if self.input_grad else 1)
        return {"forward": forward, "backward": backward, "forward+backward": forward + backward}[mode]

    def with_batch(self, batch: int) -> "Layer":
        return dataclasses.replace(self, batch=batch)


def _resnet44_p4m(batch: int = 128) -> list[Layer]:
    """p4m ResNet-44 for CIFAR-10 (Cohen & Welling 2016): 3 stages of 7 basic blocks, base widths 32/64/128
    divided by sqrt(8) (so the parameter count stays that of the planar network), 32x32 inputs, through
    ``gconv_triton.models.p4m_resnet44``'s exact 4x4 stem (32 -> 33 -> 17 -> 9)."""
    w1, w2, w3 = (round(c / math.sqrt(8)) for c in (32, 64, 128))   # 11, 23, 45
    p = dict(group="p4m", in_group="p4m", batch=batch, padding=(1, 1))
    return [
        Layer("stem", group="p4m", in_group="z2", c_in=3, c_out=w1, height=32, width=32, kernel=(4, 4),
              padding=(2, 2), batch=batch, input_grad=False),
        Layer("stage1", c_in=w1, c_out=w1, height=33, width=33, count=14, **p),
        Layer("stage2.down", c_in=w1, c_out=w2, height=33, width=33, stride=2, **p),
        Layer("stage2.shortcut", group="p4m", in_group="p4m", c_in=w1, c_out=w2, height=33, width=33, kernel=(1, 1),
              stride=2, batch=batch),
        Layer("stage2", c_in=w2, c_out=w2, height=17, width=17, count=13, **p),
        Layer("stage3.down", c_in=w2, c_out=w3, height=17, width=17, stride=2, **p),
        Layer("stage3.shortcut", group="p4m", in_group="p4m", c_in=w2, c_out=w3, height=17, width=17, kernel=(1, 1),
              stride=2, batch=batch),
        Layer("stage3", c_in=w3, c_out=w3, height=9, width=9, count=13, **p),
    ]


def _p4cnn(batch: int = 128) -> list[Layer]:
    """P4CNN on rotated MNIST (Cohen & Welling 2016): 7 layers of 10 p4 channels, 3x3 valid convolutions (4x4 in
    the last), 2x2 max-pooling after layer 2; 28x28 inputs."""
    p = dict(group="p4", in_group="p4", c_in=10, c_out=10, batch=batch)
    return [Layer("l1", group="p4", in_group="z2", c_in=1, c_out=10, height=28, width=28, batch=batch,
                  input_grad=False),
            Layer("l2", height=26, width=26, **p)] + [
            Layer(f"l{i}", height=h, width=h, **p) for i, h in zip(range(3, 7), (12, 10, 8, 6))] + [
            Layer("l7", height=4, width=4, kernel=(4, 4), **p)]


def _grouped(batch: int = 32) -> list[Layer]:
    """The channel-grouped, depthwise and 1-D convolutions that the same kernels serve."""
    return [
        Layer("p4.groups4", group="p4", in_group="p4", c_in=64, c_out=64, height=32, width=32, padding=(1, 1),
              groups=4, batch=batch),
        Layer("p4.depthwise", group="p4", in_group="p4", c_in=64, c_out=64, height=32, width=32, padding=(1, 1),
              groups=64, batch=batch),
        Layer("conv2d", group="z2", in_group="z2", c_in=64, c_out=64, height=56, width=56, padding=(1, 1),
              batch=batch),
        Layer("conv1d", group="z2", in_group="z2", c_in=256, c_out=256, height=1, width=2048, kernel=(1, 3),
              padding=(0, 1), batch=batch),
        Layer("conv1d.depthwise", group="z2", in_group="z2", c_in=512, c_out=512, height=1, width=2048,
              kernel=(1, 7), padding=(0, 3), groups=512, batch=batch),
    ]


def _wide(batch: int = 64) -> Layer:
    return Layer("wide", group="p4m", in_group="p4m", c_in=128, c_out=128, height=32, width=32, padding=(1, 1),
                 batch=batch)


def _inference() -> list[Layer]:
    """Serving: the wide p4m layer and the P4CNN at batch 1 and 8 (the perf suite runs them forward only), where
    reading the base weight instead of the S-times larger filter bank matters most."""
    return [dataclasses.replace(layer, name=f"{prefix}{layer.name}.b{batch}", batch=batch)
            for batch in (1, 8) for prefix, layers in (("", [_wide()]), ("p4cnn.", _p4cnn())) for layer in layers]


def _reresnet_stage(group: str, batch: int = 32) -> list[Layer]:
    """Stage 1 of ReDet's ReResNet-50 (3 bottleneck blocks, 64 -> 256 channels, 56x56 maps of a 224x224 input):
    channel counts are G-channels in total, divided by the group order into regular fields (ReDet's
    ``build_enn_divide_feature``).  Block 1's 1x1 projection shortcut has conv3's shape (stride 1), so it is
    counted there.  The basis is e2cnn's default (ReDet passes ``frequencies_cutoff=3r``)."""
    s = get_group(group).order
    narrow, wide = 64 // s, 256 // s
    p = dict(group=group, in_group=group, height=56, width=56, batch=batch)
    return [Layer("stage1.conv1", c_in=narrow, c_out=narrow, kernel=(1, 1), **p),
            Layer("stage1.conv1.from256", c_in=wide, c_out=narrow, kernel=(1, 1), count=2, **p),
            Layer("stage1.conv2", c_in=narrow, c_out=narrow, padding=(1, 1), count=3, **p),
            Layer("stage1.conv3+shortcut", c_in=narrow, c_out=wide, kernel=(1, 1), count=4, **p)]


def _steerable_mnist(group: str, batch: int = 64) -> list[Layer]:
    """The rotated-MNIST model of e2cnn's tutorial (``C8SteerableCNN``, after the E(2)-CNN paper): 29x29 input, a
    7x7 lifting layer (padding 1), then five 5x5 layers of 24, 48, 48, 96, 64, 64 regular C8 fields with
    stride-2 pooling after the 2nd and 4th; for a group of order S the fields are scaled by sqrt(8/S), which keeps
    the parameter count."""
    s = get_group(group).order
    f1, f2, f3, f4, f5, f6 = (max(1, round(f * math.sqrt(8 / s))) for f in (24, 48, 48, 96, 64, 64))
    p = dict(group=group, in_group=group, kernel=(5, 5), padding=(2, 2), batch=batch)
    return [Layer("mnist.l1", group=group, in_group="z2", c_in=1, c_out=f1, height=29, width=29, kernel=(7, 7),
                  padding=(1, 1), batch=batch, input_grad=False),
            Layer("mnist.l2", c_in=f1, c_out=f2, height=25, width=25, **p),
            Layer("mnist.l3", c_in=f2, c_out=f3, height=13, width=13, **p),
            Layer("mnist.l4", c_in=f3, c_out=f4, height=13, width=13, **p),
            Layer("mnist.l5", c_in=f4, c_out=f5, height=7, width=7, **p),
            Layer("mnist.l6", **dict(p, padding=(1, 1)), c_in=f5, c_out=f6, height=7, width=7)]


def _steerable(group: str) -> list[Layer]:
    return _reresnet_stage(group) + _steerable_mnist(group)


def _steerable_description(group: str) -> str:
    stage, mnist = _reresnet_stage(group), _steerable_mnist(group)
    return (f"{group.upper()} steerable: ReResNet-50 stage 1 (64 -> 256 G-channels as {stage[0].c_in} -> "
            f"{stage[-1].c_out} fields, 1x1 and 3x3, 56x56, batch 32) and e2cnn's rotated-MNIST model "
            f"({mnist[0].c_out}-{max(layer.c_out for layer in mnist)} fields, 7x7 then 5x5, 29x29, batch 64)")


# Shape sets on steerable filters (C_N / D_N: the weight is basis coefficients, not per-position weights).
STEERABLE_SETS = ("c8", "c16", "d8")

# Shape sets that the perf suite times forward only (inference).
FORWARD_ONLY = ("inference",)

# name -> (description, layers)
MODELS: dict[str, tuple[str, list[Layer]]] = {
    "p4cnn": ("P4CNN, rotated MNIST: 7 layers, 10 p4 channels, 28x28, batch 128", _p4cnn()),
    "resnet44": ("p4m ResNet-44, CIFAR-10: widths 32/64/128 / sqrt(8), 32x32, batch 128", _resnet44_p4m()),
    "wide": ("wide p4m layer: 128 -> 128 G-channels, 3x3, 32x32, batch 64", [_wide()]),
    "lifting": ("lifting layer Z2 -> p4m on 224x224 RGB: 3 -> 23 G-channels, 7x7, stride 2, batch 64",
                [Layer("lift224", group="p4m", in_group="z2", c_in=3, c_out=23, height=224, width=224,
                       kernel=(7, 7), stride=2, padding=(3, 3), batch=64, input_grad=False)]),
    "grouped": ("grouped, depthwise and 1-D convolutions, batch 32", _grouped()),
    "inference": ("inference, forward only: the wide p4m layer and the P4CNN at batch 1 and 8", _inference()),
    **{group: (_steerable_description(group), _steerable(group)) for group in STEERABLE_SETS},
}


def model_layers(model: str, batch: Optional[int] = None) -> list[Layer]:
    """The layers of ``model`` (a key of :data:`MODELS`), at ``batch`` if given."""
    if model not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {model!r}")
    layers = MODELS[model][1]
    return [layer.with_batch(batch) for layer in layers] if batch else list(layers)


@contextlib.contextmanager
def dtype_setting(name: str) -> Iterator[torch.dtype]:
    """Yields the torch dtype of ``name`` (a key of :data:`DTYPES`) with tf32 allowed exactly for ``"tf32"``, in
    cuDNN and cuBLAS (our kernels follow ``torch.backends.cudnn.allow_tf32``); restores both flags after."""
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {name!r}")
    dtype, tf32 = DTYPES[name]
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield dtype
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t (B, C, S, H, W)`` with the same values stored as ``layout``: ``contiguous``, or ``channels_last`` (memory
    order ``(B, H, W, C, S)``, so that the flattened ``(B, C·S, H, W)`` view is channels-last for cuDNN)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if layout == "contiguous":
        return t.contiguous()
    return as_group_map(t)


def make_input(shape: Sequence[int], dtype: torch.dtype, device, layout: str = "contiguous",
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard-normal ``(B, C, S, H, W)`` stored as ``layout`` (:func:`to_layout`); the values depend on the
    generator only, not on the layout."""
    return to_layout(torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype), layout)


class Progress:
    """A one-line progress bar on stderr (``[####....] 12/40 30% 0:12 < 0:28 label``); without a terminal, a line
    every 10% instead of carriage returns; nothing at all when ``quiet``."""

    def __init__(self, total: int, desc: str = "", stream=None, width: int = 28, quiet: bool = False):
        self.total, self.desc, self.width, self.quiet = max(int(total), 0), desc, width, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    @staticmethod
    def _clock(seconds: float) -> str:
        seconds = int(seconds)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
            else f"{seconds // 60}:{seconds % 60:02d}"

    def line(self, label: str = "") -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        elapsed = time.monotonic() - self.start
        eta = self._clock(elapsed / frac - elapsed) if 0 < frac < 1 else "0:00"
        head = f"{self.desc} " if self.desc else ""
        return (f"{head}[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {frac:4.0%} "
                f"{self._clock(elapsed)} < {eta} {label}").rstrip()

    def update(self, n: int = 1, label: str = "") -> None:
        self.done = min(self.done + n, self.total)
        if self.quiet:
            return
        if self._tty:
            self.stream.write("\r\033[K" + self.line(label))
            self.stream.flush()
            return
        decile = int(10 * self.done / self.total) if self.total else 10
        if decile != self._last_decile:
            self._last_decile = decile
            self.stream.write(self.line(label) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_layer(layer: Layer, dtype: torch.dtype, layout: str, device) -> None:
    """One forward and backward of ``layer`` on the fused kernels (what makes every kernel of it tune)."""
    x = make_input(layer.input_shape(), dtype, device, layout).requires_grad_(layer.input_grad)
    w = (torch.randn(layer.weight_shape(), device=device, dtype=dtype) * 0.1).requires_grad_()
    with backend("triton"):
        y = gconv2d(x, w, group=layer.group, in_group=layer.in_group, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=layer.groups)
    y.backward(torch.randn_like(y))


def pretune(models: Sequence[str], dtypes: Sequence[str] = ("bf16",), layouts: Sequence[str] = ("contiguous",),
            batch: Optional[int] = None, device: Union[str, torch.device] = "cuda", progress: bool = True) -> dict:
    """Run every layer of ``models`` forward and backward for each dtype and layout; returns ``{"tuned": ...,
    "failed": [(layer, error)], "cache": path}``.  The kernels' autotuner writes its cache as it goes."""
    from .kernels import tuner as _autotune

    models = [m for m in models if m not in STEERABLE_SETS]  # no Triton kernels for steerable filters yet
    jobs = [(m, layer, d, lay) for m in models for layer in model_layers(m, batch) for d in dtypes for lay in layouts]
    before = _autotune.DEFAULT_CACHE.count()
    failed = []
    bar = Progress(len(jobs), "autotune", quiet=not progress)
    with bar:
        for model, layer, dname, layout in jobs:
            label = f"{model}/{layer.name} {dname} {layout}"
            try:
                with dtype_setting(dname) as dtype:
                    _run_layer(layer, dtype, layout, device)
            except torch.cuda.OutOfMemoryError as err:
                failed.append((label, f"out of memory: {err}".splitlines()[0]))
                torch.cuda.empty_cache()
            bar.update(1, label)
    return {"tuned": _autotune.DEFAULT_CACHE.count() - before, "entries": _autotune.DEFAULT_CACHE.count(),
            "failed": failed, "cache": str(_autotune.DEFAULT_CACHE.path)}


def parse_names(value: str, allowed: Sequence[str], what: str) -> list[str]:
    """``"all"`` or a comma-separated subset of ``allowed`` -> the names; ValueError naming ``what`` otherwise."""
    names = list(allowed) if value == "all" else [v.strip() for v in str(value).split(",") if v.strip()]
    if not names or any(v not in allowed for v in names):
        raise ValueError(f"{what}: expected 'all' or a comma-separated subset of {list(allowed)}, got {value!r}")
    return names


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gconv_triton.autotune",
                                     description="Pre-tune the fused kernels for a model's layer shapes "
                                                 "(forward and backward) and write the autotune cache.")
    parser.add_argument("--model", default="all",
                        help=f"'all' or a comma-separated list of {sorted(MODELS)} (default: all)")
    parser.add_argument("--dtype", default="bf16", help=f"'all' or a comma-separated list of {list(DTYPES)} "
                                                        "(default: bf16)")
    parser.add_argument("--layout", default="contiguous", help=f"'all' or a comma-separated list of {list(LAYOUTS)}")
    parser.add_argument("--batch", type=int, default=None, help="override every layer's batch size")
    parser.add_argument("--list", action="store_true", help="list the models and their layers, then exit")
    args = parser.parse_args(argv)
    try:
        models = parse_names(args.model, list(MODELS), "--model")
        dtypes = parse_names(args.dtype, list(DTYPES), "--dtype")
        layouts = parse_names(args.layout, LAYOUTS, "--layout")
    except ValueError as err:
        parser.error(str(err))
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch: expected a positive int, got {args.batch}")
    if args.list:
        for name in models:
            print(f"{name}: {MODELS[name][0]}")
            for layer in model_layers(name, args.batch):
                print(f"  {layer.name:18s} {layer.in_group}->{layer.group} {layer.c_in}->{layer.c_out} "
                      f"{layer.height}x{layer.width} k{layer.kernel[0]}x{layer.kernel[1]} stride {layer.stride} "
                      f"groups {layer.groups} batch {layer.batch} x{layer.count}")
        return 0
    if not torch.cuda.is_available():
        print("gconv_triton.autotune: no CUDA GPU here; nothing to tune (the kernels are tuned on a GPU only).")
        return 0
    from . import kernels

    if kernels.INTERPRET:
        print("gconv_triton.autotune: TRITON_INTERPRET is set; the interpreter runs fixed configs, nothing to tune.")
        return 0
    result = pretune(models, dtypes, layouts, args.batch)
    print(f"autotune cache {result['cache']}: {result['tuned']} new entries, {result['entries']} in all")
    for label, err in result["failed"]:
        print(f"  skipped {label}: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
