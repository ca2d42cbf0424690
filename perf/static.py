"""``python -m perf.static``: compile every kernel the package launches for a GPU target, here, without a GPU.

For each perf shape set (``gconv_triton.autotune.MODELS``), layer, dtype and role (forward, input gradient,
weight gradient), the package's own launchers run on ``meta`` tensors with the kernel launch intercepted: whatever
kernel they pick, with whatever arguments, constexprs and grid, is recorded, never hard-coded here.  Each
recorded launch is compiled through the kernel's warm-up path (the autotuner's :meth:`~Autotuner.compile`) with
Triton's driver pointed at a target such as ``GPUTarget("cuda", 90, 32)``, for every config the autotuner could
keep for that problem, and the result is read back:

- registers, spill bytes (``cuobjdump``), shared memory as launched and whether it fits the target;
- the SASS hot loop (``perf.static_sass``): its tensor-core instruction, its warp-instructions per 1024 MACs, and
  the same for a plain Triton matmul compiled in the same run at the same tile, warps and stages;
- how each ``tl.dot`` operand arrives (``cp.async``, TMA or plain loads);
- the global bytes the whole launch requests (programs x K-loop iterations x tile bytes) beside those of a dense
  implicit GEMM of the same shape with N = C_out·S_out at the same tile.

Then the targets (``TARGETS``) are checked and printed as PASS/FAIL lines.  See ``docs/static-analysis.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import dataclasses
import datetime
import functools
import gzip
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import triton
import triton.language as tl

from gconv_triton import kernels
from gconv_triton._support import GROUP_MAP_ORDER, dim_order, empty_in_order
from gconv_triton.autotune import FORWARD_ONLY, MODELS, STEERABLE_SETS, Layer, Progress, model_layers, parse_names
from gconv_triton.groups import get_group
from gconv_triton.kernels import steerable_conv
from gconv_triton.kernels import tuner as _autotune

from . import static_sass as sass

# Opt-in shared memory per block, bytes (CUDA programming guide, compute capabilities table).
SHARED_MEMORY = {70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448,
                 100: 232448, 120: 101376}
# name -> (torch dtype, tf32 allowed): as gconv_triton.autotune.DTYPES, plus fp64.
DTYPES = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "fp16": (torch.float16, False),
          "bf16": (torch.bfloat16, False), "fp64": (torch.float64, False)}
DEFAULT_ARCHS = (90, 80)
# A small sample over every kernel family (implicit GEMM on a narrow p4 layer and a lifting layer, depthwise), for the
# CI test: not a perf shape set, so ``--sets all`` leaves it out.
# Tiny sizes, so that the size rule leaves few configs to compile.
SAMPLE = [Layer("gemm", group="p4", in_group="p4", c_in=8, c_out=8, height=4, width=4, padding=(1, 1)),
          Layer("depthwise", group="p4", in_group="p4", c_in=8, c_out=8, height=4, width=4, padding=(1, 1),
                groups=8),
          # an RGB lifting layer: the folded forward (taps of a kernel row share a K block), its K-major tf32 weight
          Layer("lifting", group="p4m", in_group="z2", c_in=3, c_out=8, height=6, width=6, padding=(1, 1))]

QUICK = dict(sets="wide,p4cnn,grouped", layers="wide,l2,p4.depthwise", archs="90")
CACHE_DIR_ENV = "GCONV_TRITON_STATIC_CACHE"
CACHE_VERSION = 3   # 3: operand_sources reads the dot's own definitions


def set_layers(name: str) -> list[Layer]:
    """The layers of a perf shape set (``gconv_triton.autotune.MODELS``) or of ``"sample"``; a steerable set
    (``STEERABLE_SETS``) keeps its k x k layers with k >= 3 (the issue's k = 3, 5, 7; a 1 x 1 layer has no window
    to steer) and gains a 7 x 7 regular layer (its only 7 x 7 layer is a lifting one, which has no input
    gradient)."""
    if name == "sample":
        return list(SAMPLE)
    layers = model_layers(name)
    if name not in STEERABLE_SETS:
        return layers
    base = next(layer for layer in layers if layer.name == "mnist.l3")
    k7 = dataclasses.replace(base, name="mnist.l3.k7", kernel=(7, 7), padding=(3, 3))
    return [layer for layer in layers if layer.kernel[0] >= 3] + [k7]


# ---------------------------------------------------------------------------------------------- the target
class _TargetDriver:
    """Just enough of a Triton driver for the compiler: the current device is the target's arch number (so each
    target keeps its own per-device kernel cache), its target is ``GPUTarget("cuda", arch, 32)``."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_device(self) -> int:
        return self.arch

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)

    def __getattr__(self, name):
        raise RuntimeError(f"perf.static compiles for sm_{self.arch} without a GPU: nothing can {name!r} here")


@contextlib.contextmanager
def target(arch: int):
    """Within: ``JITFunction.warmup`` compiles for ``sm_<arch>`` (nothing can launch)."""
    from triton.runtime import driver

    saved = driver.__dict__.get("_active")
    driver.set_active(_TargetDriver(arch))
    try:
        yield
    finally:
        driver._active = saved


# --------------------------------------------------------------------------------------------- the launches
@dataclasses.dataclass
class Launch:
    """One kernel launch a launcher made: the kernel (an autotuner or a bare ``@triton.jit``), its arguments and
    grid, exactly as the launcher passed them."""

    kernel: str
    runner: object
    args: tuple
    kwargs: dict
    grid: object

    @property
    def tuner(self) -> Optional[_autotune.Autotuner]:
        return self.runner if isinstance(self.runner, _autotune.Autotuner) else None

    @property
    def jit(self):
        """The ``@triton.jit`` function launched (inside its tuner and any ``@triton.heuristics`` wrapper)."""
        from triton.runtime.autotuner import Heuristics

        fn = self.tuner.fn if self.tuner else self.runner
        while isinstance(fn, Heuristics):
            fn = fn.fn
        return fn

    def bound(self) -> dict:
        names = [p.name for p in self.jit.params] if hasattr(self.jit, "params") else self.jit.arg_names  # interpreted
        return dict(zip(names, self.args), **self.kwargs)

    def programs(self, blocks: dict) -> int:
        grid = self.grid({**self.bound(), **blocks}) if callable(self.grid) else self.grid
        return math.prod(int(g) for g in grid)


def _short(name: str) -> str:
    return name.split("gconv_triton.kernels.", 1)[-1]


@contextlib.contextmanager
def capturing(out: list):
    """Within: kernel launches are recorded in ``out`` instead of run: autotuned kernels through the tuner's hook
    (``tuner.intercept_launches``), the others at ``JITFunction.run`` (or ``InterpretedFunction.run`` when
    ``TRITON_INTERPRET`` was set at import), which Triton offers no hook for."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    def tuner_launch(tuner, grid, args, kwargs):
        out.append(Launch(_short(tuner.name), tuner, args, kwargs, grid))

    def jit_run(self, *args, grid, warmup, **kwargs):
        if warmup:
            run = saved_interpreted if isinstance(self, InterpretedFunction) else saved_jit
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        out.append(Launch(_short(f"{self.fn.__module__}.{self.fn.__qualname__}"), self, args, kwargs, grid))

    saved_jit, saved_interpreted = JITFunction.run, InterpretedFunction.run
    JITFunction.run, InterpretedFunction.run = jit_run, jit_run
    try:
        with _autotune.intercept_launches(tuner_launch):
            yield out
    finally:
        JITFunction.run, InterpretedFunction.run = saved_jit, saved_interpreted


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


def _output_shape(spec) -> tuple[int, ...]:
    return (spec.batch, spec.groups * spec.out_channels, spec.s_out, spec.out_height, spec.out_width)


def _forward(layer: Layer, dtype, make_map=_meta) -> None:
    """The forward of an ``x`` stored channels-first (a network's first layer's: read in place where
    ``group_conv.reads_channels_first_x`` says so, else copied), or as ``make_map`` makes it."""
    kernels.forward(make_map(layer.input_shape(), dtype), _meta(layer.weight_shape(), dtype),
                    _meta((layer.c_out,), dtype), layer.spec())


def _input_grad(layer: Layer, dtype, make_map=_meta) -> None:
    """The input gradient of a ``dy`` stored channels-first (the loss's: read in place where
    ``group_conv.reads_channels_first_dy`` says so, else copied channels-last), or as ``make_map`` makes it; ``dx``
    in the layout ``make_map`` gives ``x`` (the input gradient writes ``dx`` in ``x``'s)."""
    if layer.input_grad:
        x = make_map(layer.input_shape(), dtype)
        kernels.input_grad(make_map(_output_shape(layer.spec()), dtype), _meta(layer.weight_shape(), dtype),
                           layer.spec(), dim_order(x))


def _weight_grad(layer: Layer, dtype) -> None:
    # with the bias gradient, as a layer with a bias runs it: its sums' launch compiles too
    kernels.weight_grad(_meta(_output_shape(layer.spec()), dtype), _meta(layer.input_shape(), dtype), layer.spec(),
                        layer.weight_shape(), with_bias=True)


def _package_layout(shape, dtype) -> torch.Tensor:
    """A ``(B, C, S, H, W)`` tensor stored ``(B, H, W, C, S)``: the layout every layer of the package hands on."""
    return empty_in_order(shape, GROUP_MAP_ORDER, dtype=dtype, device="meta")


def _forward_package(layer: Layer, dtype) -> None:
    """:func:`_forward` with ``x`` in the package's layout, as every layer after a network's first meets it (read in
    place channels-last where ``group_conv.reads_in_place`` says so, else copied into the zero-halo layout)."""
    _forward(layer, dtype, _package_layout)


def _input_grad_package(layer: Layer, dtype) -> None:
    """:func:`_input_grad` with ``dy`` and ``x`` in the package's layout, as a layer between two others meets them
    (``dy`` read in place channels-last, ``dx`` written so)."""
    _input_grad(layer, dtype, _package_layout)


def _weight_grad_package(layer: Layer, dtype) -> None:
    """:func:`_weight_grad` with ``x`` and ``dy`` in the package's layout, as a layer between two others meets them
    (``x`` read in place where ``reads_in_place`` says so; ``dy`` too where the kernel can)."""
    kernels.weight_grad(_package_layout(_output_shape(layer.spec()), dtype),
                        _package_layout(layer.input_shape(), dtype), layer.spec(), layer.weight_shape(),
                        with_bias=True)


def _tap(kernel: str, tap: str, reduce: str) -> Callable[[Layer, torch.dtype], None]:
    """A tap-convolution kernel (``kernels/tap_conv.py``) on the layer's shapes: ``adder``/sum (AdderNet) or
    ``add``/max (max-plus), the two families whose kernels differ (a sum, or an arg-extreme index)."""
    def run(layer: Layer, dtype) -> None:
        if kernel == "input_grad" and not layer.input_grad:
            return
        launch_tap_kernel(kernel, _meta(layer.input_shape(), dtype), _meta(layer.weight_shape(), dtype),
                          layer.spec(), tap, reduce)
    return run


def launch_tap_kernel(kernel: str, x, weight, spec, tap: str = "adder", reduce: str = "sum", ignore: bool = False):
    """Launch one tap kernel (``"forward"``, ``"input_grad"`` or ``"weight_grad"``) of ``kernels/tap_conv.py`` for
    the problem ``spec`` (``gconv_triton._spec.make_spec``) with random ``dy``, through its launchers, for a tool
    that intercepts the launch.  ``tap``: a built-in tap function's name."""
    from gconv_triton.kernels import tap_conv as tap_kernels
    from gconv_triton.tap_functions import get_tap

    fns = get_tap(tap).triton_functions()
    if kernel == "forward":
        return tap_kernels.forward(x, weight, None, spec, fns, reduce, ignore)[0]
    aux = tap_kernels.forward(x, weight, None, spec, fns, reduce, ignore)[1] if reduce in ("max", "min") else None
    dy = torch.randn(_output_shape(spec), dtype=x.dtype, device=x.device)
    if kernel == "input_grad":
        return tap_kernels.input_grad(dy, x, weight, aux, spec, fns, reduce, ignore, dim_order(x))
    if kernel == "weight_grad":
        return tap_kernels.weight_grad(dy, x, weight, aux, spec, fns, reduce, ignore)
    raise ValueError(f"kernel: expected 'forward', 'input_grad' or 'weight_grad', got {kernel!r}")


@dataclasses.dataclass(frozen=True)
class Role:
    """A launcher entry point and the GEMM it computes, for the bytes columns.

    ``reduction(spec)``: the length of the sum behind one output element; ``dense(spec)``: ``(M, N, K, count)`` of
    the dense implicit GEMM that a filter-bank convolution runs for the same role, with N = C_out·S_out;
    ``split_reduction``: the launch cuts the reduction over programs (a weight gradient), so its bytes count per
    output tile rather than per program; ``steered``: a ``kernels/steerable_conv.py`` kernel (the set's layers are
    C_N / D_N ones; the others' sets skip it, and it skips theirs).
    """

    run: Callable[[Layer, torch.dtype], None]
    reduction: Callable
    dense: Callable
    split_reduction: bool = False
    steered: bool = False     # a steerable kernel: two dots, judged on the main one (``steered_bytes``)


def _taps(spec) -> int:
    return spec.kernel[0] * spec.kernel[1]


# A new kernel family dispatched by these launchers is captured as it is; a new entry point is one more Role.
ROLES = {
    "forward": Role(_forward, lambda s: s.in_channels * s.s_in * _taps(s),
                    lambda s: (s.batch * s.out_height * s.out_width, s.out_channels * s.s_out,
                               s.in_channels * s.s_in * _taps(s), s.groups)),
    "input_grad": Role(_input_grad, lambda s: s.out_channels * s.s_out * _taps(s),
                       lambda s: (s.batch * s.height * s.width, s.in_channels * s.s_in,
                                  s.out_channels * s.s_out * _taps(s), s.groups)),
    "weight_grad": Role(_weight_grad, lambda s: s.batch * s.out_height * s.out_width * s.s_out
                        * (s.groups // s.weight_groups),
                        lambda s: (s.out_channels * s.s_out, s.in_channels * s.s_in * _taps(s),
                                   s.batch * s.out_height * s.out_width, s.groups),
                        split_reduction=True),
}
ROLES["forward_package"] = dataclasses.replace(ROLES["forward"], run=_forward_package)
ROLES["input_grad_package"] = dataclasses.replace(ROLES["input_grad"], run=_input_grad_package)
ROLES["weight_grad_package"] = dataclasses.replace(ROLES["weight_grad"], run=_weight_grad_package)
# The tap convolutions (no tl.dot: compiled for their registers and spills; their bytes beside the same GEMM's).
for _name, _tap_args in (("adder", ("adder", "sum")), ("maxplus", ("add", "max"))):
    for _kernel in ("forward", "input_grad", "weight_grad"):
        ROLES[f"tap_{_name}_{_kernel}"] = dataclasses.replace(ROLES[_kernel], run=_tap(_kernel, *_tap_args))




def _steer_arguments(layer: Layer, dtype) -> tuple:
    """``(coefficients, tables, index, geometry)`` of a steerable layer, for ``kernels/steerable_conv.py``'s
    launchers: coefficients ``(C_out, C_in, S_in, B)`` on meta, the cached tables on meta, the stabilizer index."""
    from gconv_triton import steerable

    group, in_group = get_group(layer.group), get_group(layer.in_group)
    k = layer.kernel[0]
    coefficients = _meta((layer.c_out, layer.c_in, in_group.order, steerable.basis_size(k)), dtype)
    tables = steerable._tables(group, k, dtype, torch.device("meta"))
    return coefficients, tables, group.stabilizer_index(in_group), (layer.stride, layer.padding, layer.dilation)


def _steer_forward(layer: Layer, dtype) -> None:
    coefficients, tables, index, geometry = _steer_arguments(layer, dtype)
    steerable_conv.forward(_meta(layer.input_shape(), dtype), coefficients, _meta((layer.c_out,), dtype), tables,
                           index, *geometry)


def _steer_input_grad(layer: Layer, dtype) -> None:
    if layer.input_grad:
        coefficients, tables, index, geometry = _steer_arguments(layer, dtype)
        steerable_conv.input_grad(_meta(_output_shape(layer.spec()), dtype), coefficients, tables, index,
                                  layer.input_shape(), *geometry)


def _steer_weight_grad(layer: Layer, dtype) -> None:
    coefficients, tables, index, geometry = _steer_arguments(layer, dtype)
    steerable_conv.weight_grad(_meta(_output_shape(layer.spec()), dtype), _meta(layer.input_shape(), dtype), tables,
                               index, tuple(coefficients.shape), *geometry)


for _kernel, _run in (("forward", _steer_forward), ("input_grad", _steer_input_grad),
                      ("weight_grad", _steer_weight_grad)):
    ROLES[f"steer_{_kernel}"] = dataclasses.replace(ROLES[_kernel], run=_run, steered=True)


def applies(role: str, set_name: str) -> bool:
    """Whether ``role`` runs on ``set_name``: the steerable roles on the C_N / D_N sets, the others elsewhere."""
    return ROLES[role].steered == (set_name in STEERABLE_SETS)


@contextlib.contextmanager
def tf32_setting(allow: bool):
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@functools.lru_cache(maxsize=None)
def launches(set_name: str, layer_name: str, dtype_name: str, role: str, arch: int) -> tuple[Launch, ...]:
    """The kernel launches of one role of one layer for ``sm_<arch>`` (captured once per process; within
    :func:`target`, so that a launcher choosing its tile by architecture sees that one)."""
    layer = next(lay for lay in set_layers(set_name) if lay.name == layer_name)
    dtype, tf32 = DTYPES[dtype_name]
    out: list[Launch] = []
    with tf32_setting(tf32), target(arch), capturing(out):
        ROLES[role].run(layer, dtype)
    return tuple(out)


def spec_key(launch: Launch) -> str:
    """What the compiled code depends on besides the config: dtypes of the tensors, and for integers what Triton
    specializes on (equal to 1, divisible by 16, 32- or 64-bit); constexprs exactly."""
    parts = []
    for v in launch.args:
        if isinstance(v, torch.Tensor):
            parts.append(str(v.dtype))
        elif isinstance(v, bool) or not isinstance(v, int):
            parts.append(repr(v))
        else:
            parts.append(f"i{'1' if v == 1 else ''}{'d' if v % 16 == 0 else ''}{'64' if abs(v) >= 2 ** 31 else ''}")
    parts += [f"{k}={v!r}" for k, v in sorted(launch.kwargs.items())]
    return hashlib.sha1("|".join([launch.kernel] + parts).encode()).hexdigest()[:16]


def target_tuner(tuner: _autotune.Autotuner, arch: int, **changes) -> _autotune.Autotuner:
    """``tuner`` as it would decide on a ``sm_<arch>`` GPU: that GPU's shared memory and capability."""
    return tuner.replace(shared_memory=lambda device: SHARED_MEMORY.get(arch, _autotune.DEFAULT_SHARED_MEMORY),
                         capability=lambda device: divmod(arch, 10), **changes)


def shared_memory_bytes(config: _autotune.TuneConfig, operands, elem_size: int, args: Optional[dict] = None) -> int:
    """A first guess at one program's shared memory: each ``tl.dot`` operand tile ``(rows, cols)`` staged once per
    pipeline stage (tile sizes from the config, else from the launch's constexpr arguments such as ``BLOCK_R``).
    The tuner prunes by the compiled kernel's figure instead (``tuner.Resources``); the report shows this guess
    beside it (column ``est KiB``)."""
    sizes = {**(args or {}), **dict(config.blocks)}
    per_stage = sum(int(sizes[a]) * int(sizes[b]) for a, b in operands)
    return config.num_stages * per_stage * elem_size


# ----------------------------------------------------------------------------------------- compile and read
def _cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gconv_triton"
    return (base if env else base / "static") / f"v{CACHE_VERSION}"


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                   PRECISION: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The plain Triton matmul the hot loops are compared with (as in Triton's tutorial)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None] * sam + rk[None, :] * sak
    b_ptrs = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs, mask=rk[None, :] < K - k * BLOCK_K, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < K - k * BLOCK_K, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk
    cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(c_ptr + cm[:, None] * scm + cn[None, :] * scn, acc.to(c_ptr.dtype.element_ty),
             mask=(cm[:, None] < M) & (cn[None, :] < N))


_IR_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32, "f64": torch.float64}


def _tools() -> dict[str, str]:
    tools = {name: _autotune._nvidia_tool(name) for name in ("ptxas", "cuobjdump", "nvdisasm")}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        raise RuntimeError(f"perf.static needs {missing} from triton/backends/nvidia/bin (a CUDA triton wheel)")
    return tools


def analyze(kernel, arch: int, read_sass: bool = True) -> dict:
    """What a compiled kernel says about itself (cached on disk by the kernel's hash); without ``read_sass``,
    only its resources."""
    if not read_sass:
        res = _autotune.kernel_resources(kernel)
        return dict(shared=res.shared, registers=res.registers, spills=res.spills, dot=None,
                    warps=int(kernel.metadata.num_warps), stages=int(kernel.metadata.num_stages))
    path = _cache_dir() / f"{kernel.metadata.hash}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    res = _autotune.kernel_resources(kernel)
    warps, stages = int(kernel.metadata.num_warps), int(kernel.metadata.num_stages)
    instrs, labels = sass.parse_sass(sass.disassemble(kernel.asm["cubin"], _tools()["nvdisasm"]))
    loop = sass.hot_loop(instrs, labels)
    found = sass.dots(kernel.asm.get("ttir", ""))
    dot = found[0] if found else None
    macs = None
    if loop is not None:
        if loop.mma != "none":
            macs = loop.macs(warps)
        elif dot is not None:
            macs = dot.macs
        elif loop.counts["FMA"]:
            macs = loop.counts["FMA"] * 32 * warps   # an elementwise loop: one MAC per lane per FMA
    out = dict(shared=res.shared, registers=res.registers, spills=res.spills, warps=warps, stages=stages,
               mma=loop.mma if loop else "none", mma_opcode=loop.mma_opcode if loop else "",
               loop_instructions=loop.instructions if loop else None,
               loop_counts=loop.counts if loop else {},
               per_1024_macs=loop.per_1024_macs(warps, macs) if loop and macs else None,
               dot=dataclasses.asdict(dot) if dot else None,
               operands=sass.operand_sources(kernel.asm.get("ttgir", "")),
               wgmma_pendings=sass.wgmma_pendings(kernel.asm.get("ttgir", "")))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    return out


@functools.lru_cache(maxsize=None)
def matmul_reference(arch: int, m: int, n: int, k: int, ir_dtype: str, precision: str, warps: int,
                     stages: int) -> dict:
    """The plain matmul at the same dot tile, warps and stages, on 4096^3 (sizes and strides divisible by 16)."""
    dtype = _IR_DTYPES[ir_dtype]
    a, b = _meta((4096, 4096), dtype), _meta((4096, 4096), dtype)
    c = _meta((4096, 4096), dtype)
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    with target(arch):
        kernel = _matmul_kernel.warmup(a, b, c, 4096, 4096, 4096, 4096, 1, 4096, 1, 4096, 1,
                                       PRECISION=precision or ("tf32" if ir_dtype == "f32" else "ieee"), ACC=acc,
                                       BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=warps, num_stages=stages,
                                       grid=(1,))
    return analyze(kernel, arch)


def _main_dot(out: dict, kernel) -> dict:
    """``analyze``'s figures of a steerable kernel, per MAC of its main dot (the largest: the window's; the steering
    dot ``W = C @ Ψ`` in the same loop is overhead, its MACs not counted) and with the matmul at that dot's tile."""
    found = sass.dots(kernel.asm.get("ttir", ""))
    if not found or not out.get("loop_instructions"):
        return out
    main = max(found, key=lambda d: d.macs)
    # a loop unrolled over window chunks holds several dots of the main shape
    macs = sum(d.macs for d in found if (d.m, d.n, d.k) == (main.m, main.n, main.k))
    per = out["loop_instructions"] * out["warps"] * 1024 / macs
    instrs, _ = sass.parse_sass(sass.disassemble(kernel.asm["cubin"], _tools()["nvdisasm"]))
    # the main dot's MMA: the steering dot, too small for wgmma, runs on mma.sync beside it
    mma = "HGMMA" if any(i.base == "HGMMA" for i in instrs) else out["mma"]
    return {**out, "dot": dataclasses.asdict(main), "per_1024_macs": per, "mma": mma}


def compile_unit(unit: dict) -> dict:
    """Compile one (arch, launch, config) and read it; runs in a worker process.  Never raises: a failure is a
    row with its error."""
    start = time.monotonic()
    try:
        launch = launches(unit["set"], unit["layer"], unit["dtype"], unit["role"], unit["arch"])[unit["index"]]
        config = _autotune.TuneConfig.from_json(unit["config"]) if unit["config"] else None
        with target(unit["arch"]):
            if config is not None:
                kernel = launch.tuner.compile(config, (launch.grid, launch.args, launch.kwargs))
            else:
                kernel = launch.runner.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
        out = analyze(kernel, unit["arch"], unit["sass"])
        if ROLES[unit["role"]].steered and unit["sass"]:
            out = _main_dot(out, kernel)
        dot = out["dot"]
        if dot and dot["a_type"] in _IR_DTYPES:
            ref = matmul_reference(unit["arch"], dot["m"], dot["n"], dot["k"], dot["a_type"], dot["precision"],
                                   out["warps"], out["stages"])
            out["matmul_per_1024_macs"] = ref["per_1024_macs"]
            out["matmul_mma"] = ref["mma"]
            out["matmul_operands"] = ref["operands"]
        out["status"] = "ok"
    except Exception as err:  # noqa: BLE001  (a compile error is a result)
        text = f"{type(err).__name__}: {err}".strip().splitlines()
        out = dict(status="error", error=text[0][:300] if text else type(err).__name__)
    out["compile_s"] = round(time.monotonic() - start, 2)
    return out


# ------------------------------------------------------------------------------------------------ the plan
@dataclasses.dataclass
class Problem:
    """One launch of one role of one layer, for one dtype and arch, and the configs the tuner could keep."""

    set: str
    layer: Layer
    dtype: str
    role: str
    index: int
    arch: int
    launch: Launch
    configs: list                  # TuneConfig, or [None] for an untuned kernel (its launch fixes the config)


def plan(sets: Sequence[str], dtypes: Sequence[str], archs: Sequence[int], roles: Sequence[str],
         layer_names: Optional[Sequence[str]] = None) -> tuple[list[Problem], list[dict]]:
    """The problems to compile, and an error row for each launcher that failed before launching anything."""
    problems, failed = [], []
    for set_name in sets:
        for layer in set_layers(set_name):
            if layer_names and layer.name not in layer_names:
                continue
            for dtype in dtypes:
                for role in roles:
                    if set_name in FORWARD_ONLY and not role.endswith("forward") or not applies(role, set_name):
                        continue   # an inference set: the perf suite times it forward only, so only that runs
                    for arch in archs:
                        try:
                            found = launches(set_name, layer.name, dtype, role, arch)
                        except Exception as err:  # noqa: BLE001  (a launcher that cannot run on meta tensors)
                            failed.append(dict(set=set_name, layer=layer.name, group=layer.group, role=role,
                                               kernel="?", dtype=dtype, arch=arch, config="-", tuned=False,
                                               kept=False, status="error",
                                               error=f"launcher: {type(err).__name__}: {err}"[:300]))
                            continue
                        for index, launch in enumerate(found):
                            if launch.tuner is not None:
                                tuner = target_tuner(launch.tuner, arch)
                                configs = tuner.sized(launch.bound(), torch.device("meta"))
                            else:
                                configs = [None]
                            problems.append(Problem(set_name, layer, dtype, role, index, arch, launch, configs))
    return problems, failed


def _config_json(config) -> Optional[dict]:
    return config.to_json() if config is not None else None


def _unit_key(p: Problem, config) -> tuple:
    return (p.arch, p.launch.kernel, spec_key(p.launch), json.dumps(_config_json(config), sort_keys=True))


def run(problems: list[Problem], jobs: int = 1, progress: bool = True, read_sass: bool = True,
        done: Optional[dict] = None) -> dict:
    """Compile every distinct (arch, kernel specialization, config) once, in ``jobs`` processes (``read_sass``
    False: resources only, no hot loop and no matmul); ``done``: results already in hand."""
    units: dict[tuple, dict] = {}
    for p in problems:
        for config in p.configs:
            if done and _unit_key(p, config) in done:
                continue
            units.setdefault(_unit_key(p, config), dict(set=p.set, layer=p.layer.name, dtype=p.dtype, role=p.role,
                                                        index=p.index, arch=p.arch, config=_config_json(config),
                                                        sass=read_sass))
    results: dict[tuple, dict] = {}
    bar = Progress(len(units), "compile", quiet=not progress)
    with bar:
        if jobs <= 1:
            for key, unit in units.items():
                results[key] = compile_unit(unit)
                bar.update(1, f"sm_{unit['arch']} {unit['dtype']} {units[key]['role']}")
        else:
            with futures.ProcessPoolExecutor(max_workers=jobs) as pool:
                pending = {pool.submit(compile_unit, unit): key for key, unit in units.items()}
                for fut in futures.as_completed(pending):
                    key = pending[fut]
                    results[key] = fut.result()
                    unit = units[key]
                    bar.update(1, f"sm_{unit['arch']} {unit['dtype']} {unit['role']}")
    return {**(done or {}), **results}


def _clean(result: dict, arch: int) -> bool:
    return (result["status"] == "ok" and not result["spills"]
            and result["shared"] <= SHARED_MEMORY.get(arch, _autotune.DEFAULT_SHARED_MEMORY))


def widen(problems: list[Problem], results: dict) -> list[Problem]:
    """The tuned problems none of whose configs so far compiles clean, with the autotuner's next larger group of
    tiles (``Autotuner.wider``) added to their configs: what the autotuner compiles next on such a GPU."""
    out = []
    for p in problems:
        if p.launch.tuner is None or any(_clean(results[_unit_key(p, c)], p.arch) for c in p.configs):
            continue
        groups = target_tuner(p.launch.tuner, p.arch).wider(p.launch.bound(), torch.device("meta"))
        group = next((g for g in groups if not set(g) <= set(p.configs)), None)
        if group:
            p.configs = p.configs + [c for c in group if c not in p.configs]
            out.append(p)
    return out


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def bytes_requested(p: Problem, config, dot: dict) -> tuple[Optional[int], Optional[int]]:
    """(bytes the launch requests, bytes the dense implicit GEMM with N = C_out·S_out requests), at the dot's tile:
    programs x ceil(reduction / tile K) x (tile A + tile B)."""
    if not dot:
        return None, None
    if ROLES[p.role].steered:
        return steered_bytes(p)
    spec = p.layer.spec()
    role = ROLES[p.role]
    elem = DTYPES[p.dtype][0].itemsize
    tile = (dot["m"] * dot["k"] + dot["k"] * dot["n"]) * elem
    m, n, k, count = role.dense(spec)
    dense = count * _ceil(m, dot["m"]) * _ceil(n, dot["n"]) * _ceil(k, dot["k"]) * tile
    if role.split_reduction:   # the launch splits the sum: each output tile reads the whole reduction once
        ours = count * _ceil(spec.out_channels, dot["m"]) * _ceil(n, dot["n"]) * _ceil(role.reduction(spec),
                                                                                         dot["k"]) * tile
    else:
        blocks = dict(config.blocks) if config is not None else {}
        ours = p.launch.programs(blocks) * _ceil(role.reduction(spec), dot["k"]) * tile
    return ours, dense


def steered_bytes(p: Problem) -> tuple[int, int]:
    """(bytes a steerable launch requests, bytes of the dense implicit GEMM at the same pixel x channel tile with
    the window's padded positions as its K step).  Each K step of a steerable kernel reads the window's ``k²``
    positions for its pixels (the padding to ``P_PAD`` is masked off statically) and its channels' ``B``
    coefficients (forward and input gradient; the steered filter never leaves registers), or ``dy``'s pixels and
    the window (coefficient gradient, over all pixels for each output element)."""
    spec, bound = p.layer.spec(), p.launch.bound()
    elem = DTYPES[p.dtype][0].itemsize
    from gconv_triton import steerable

    k2, block_m = _taps(spec), bound["BLOCK_M"]
    # the lifting kernel takes neither (its window is folded with the input channels, its tables padded)
    p_pad = bound.get("P_PAD", max(16, triton.next_power_of_2(k2)))
    basis = bound.get("NBASIS", steerable.basis_size(spec.kernel[0]))
    m, n, k, count = ROLES[p.role].dense(spec)
    if ROLES[p.role].split_reduction:      # dense: (C_out·S_out, C_in·S_in·k², pixels), tiles BLOCK_O x P_PAD x M
        block_o = bound["BLOCK_O"]
        programs = _ceil(spec.out_channels, block_o) * spec.in_channels * spec.s_in
        ours = programs * spec.s_out * _ceil(k, block_m) * (block_o + k2) * block_m * elem
        dense = count * _ceil(m, block_o) * _ceil(n, p_pad) * _ceil(k, block_m) * (block_o + p_pad) * block_m * elem
        return ours, dense
    block_n = bound["BLOCK_N"]              # dense: (pixels, channels, reduction), tiles BLOCK_M x BLOCK_N x P_PAD
    steps = k // k2                         # C_in·S_in (forward) or C_out·S_out (input gradient)
    ours = p.launch.programs({}) * steps * (k2 * block_m + block_n * basis) * elem
    dense = count * _ceil(m, block_m) * _ceil(n, block_n) * _ceil(k, p_pad) * (block_m + block_n) * p_pad * elem
    return ours, dense


def rows(problems: list[Problem], results: dict) -> list[dict]:
    """One row per (problem, config): the compile's numbers, whether the tuner keeps it, and the bytes."""
    out = []
    for p in problems:
        keyed = {json.dumps(_config_json(c), sort_keys=True): results[_unit_key(p, c)] for c in p.configs}
        limit = SHARED_MEMORY.get(p.arch, _autotune.DEFAULT_SHARED_MEMORY)
        if p.launch.tuner is not None:
            def measured(config, launch, keyed=keyed):
                r = keyed[json.dumps(config.to_json(), sort_keys=True)]
                if r["status"] != "ok":
                    raise RuntimeError(r["error"])
                return _autotune.Resources(r["shared"], r["registers"], r["spills"])

            tuner = target_tuner(p.launch.tuner, p.arch, resources=measured)
            kept = set(tuner.candidates(p.launch.bound(), torch.device("meta"),
                                        (p.launch.grid, p.launch.args, p.launch.kwargs)))
        else:
            kept = {None}
        for config in p.configs:
            r = keyed[json.dumps(_config_json(config), sort_keys=True)]
            row = dict(set=p.set, layer=p.layer.name, group=p.layer.group, role=p.role, kernel=p.launch.kernel,
                       dtype=p.dtype, arch=p.arch, config=str(config) if config else "(fixed by the launcher)",
                       tuned=config is not None, kept=config in kept, shared_limit=limit, **r)
            if r["status"] == "ok":
                row["overflow"] = r["shared"] > limit
                if config is not None and p.launch.tuner.operands:
                    row["shared_estimate"] = shared_memory_bytes(
                        config, p.launch.tuner.operands, DTYPES[p.dtype][0].itemsize, p.launch.bound())
                if r.get("per_1024_macs") and r.get("matmul_per_1024_macs"):
                    row["ratio"] = r["per_1024_macs"] / r["matmul_per_1024_macs"]
                row["bytes"], row["dense_bytes"] = bytes_requested(p, config, r.get("dot"))
                if row["bytes"] and row["dense_bytes"]:
                    row["bytes_ratio"] = row["bytes"] / row["dense_bytes"]
            out.append(row)
    return out


# ------------------------------------------------------------------------------------------------- targets
GEMM_DTYPES = ("fp16", "bf16", "tf32")
RATIO_TARGET = 1.5
BYTES_TARGET = 1.25


def _best(rs: list[dict]) -> Optional[dict]:
    """The kept config with the fewest hot-loop instructions per MAC (what the targets judge)."""
    ok = [r for r in rs if r["kept"] and r["status"] == "ok" and r.get("per_1024_macs")]
    return min(ok, key=lambda r: r["per_1024_macs"]) if ok else None


def _problems(rs: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rs:
        out.setdefault((r["set"], r["layer"], r["role"], r["kernel"], r["dtype"], r["arch"]), []).append(r)
    return out


def best_rows(rs: list[dict]) -> list[dict]:
    return [b for b in (_best(group) for group in _problems(rs).values()) if b is not None]


def check_targets(rs: list[dict], arch: int = 90) -> list[tuple[bool, str]]:
    """``[(passed, line)]`` for each target (the GEMM targets judged on ``sm_<arch>``)."""
    lines = []
    errors = [r for r in rs if r["status"] != "ok"]
    lines.append((not errors, f"compile: {len(rs) - len(errors)} of {len(rs)} compiles succeed"
                  + (f"; first error: {errors[0]['kernel']} {errors[0]['dtype']} sm_{errors[0]['arch']} "
                     f"{errors[0]['config']}: {errors[0]['error']}" if errors else "")))
    bad = [r for r in rs if r["kept"] and r["status"] == "ok" and (r["spills"] or r["overflow"])]
    kept = sum(r["kept"] and r["status"] == "ok" for r in rs)
    lines.append((not bad, f"spills/shared memory: {len(bad)} of {kept} kept configs spill or overflow (all archs)"
                  + (f"; worst: {max(bad, key=lambda r: r['spills'] or 0)['kernel']} "
                     f"{max(bad, key=lambda r: r['spills'] or 0)['spills']} B spilled" if bad else "")))
    gemm = [r for r in rs if r["arch"] == arch and r.get("dot") and r["dtype"] in GEMM_DTYPES]
    if not gemm:   # no SASS read (--resources-only), or no GEMM on this target: nothing more to judge
        return lines
    best = best_rows(gemm)
    by_kernel: dict[tuple, list[float]] = {}
    for b in best:
        if b.get("ratio"):
            by_kernel.setdefault((b["kernel"], b["dtype"]), []).append(b["ratio"])
    for (kernel, dtype), ratios in sorted(by_kernel.items()):
        worst = max(ratios)
        lines.append((worst <= RATIO_TARGET, f"hot loop sm_{arch} {kernel} {dtype}: best kept config at "
                      f"{worst:.2f}x the matmul's instructions per MAC on its worst shape (target <= {RATIO_TARGET})"))
    # a steerable kernel's A operand is the filter it steers in registers, never loaded: not judged here
    loaded = [r for r in gemm if not _steered(r)]
    sync = [r for r in loaded if r["kept"] and r["status"] == "ok" and r["dtype"] in ("fp16", "bf16")
            and not all(src in ("cp.async", "TMA") for src in r["operands"] or ["?"])]
    n16 = sum(r["kept"] and r["status"] == "ok" and r["dtype"] in ("fp16", "bf16") for r in loaded)
    lines.append((not sync, f"async operands sm_{arch}: {n16 - len(sync)} of {n16} kept 16-bit GEMM configs load "
                  f"both operands by cp.async/TMA"))
    no_wgmma = [g for g in _problems(gemm).values()
                if not any(r["kept"] and r["status"] == "ok" and r["mma"] == "HGMMA" and r["warps"] >= 4 for r in g)]
    if arch >= 90:
        lines.append((not no_wgmma, f"wgmma sm_{arch}: {len(_problems(gemm)) - len(no_wgmma)} of "
                      f"{len(_problems(gemm))} GEMM problems keep a wgmma config with >= 4 warps"
                      + (f"; e.g. not {no_wgmma[0][0]['kernel']} {no_wgmma[0][0]['dtype']} "
                         f"{no_wgmma[0][0]['set']}/{no_wgmma[0][0]['layer']}" if no_wgmma else "")))
    for role, groups, what in (("forward", ("p4", "p4m"), "p4/p4m"), ("steer_forward", None, "C_N/D_N")):
        fwd = [b for b in best_rows([r for r in rs if r["arch"] == arch and r["role"] == role and r.get("dot")
                                     and (groups is None or r["group"] in groups)]) if b.get("bytes_ratio")]
        if fwd:
            worst = max(fwd, key=lambda r: r["bytes_ratio"])
            lines.append((worst["bytes_ratio"] <= BYTES_TARGET,
                          f"{role.replace('_', ' ')} bytes sm_{arch}: worst {what} layer requests "
                          f"{worst['bytes_ratio']:.2f}x the dense implicit GEMM's ({worst['set']}/{worst['layer']} "
                          f"{worst['dtype']}; target <= {BYTES_TARGET})"))
    return lines


def _steered(row: dict) -> bool:
    return row["role"] in ROLES and ROLES[row["role"]].steered


# -------------------------------------------------------------------------------------------------- output
def versions() -> dict:
    out = dict(triton=triton.__version__, torch=torch.__version__, python=platform.python_version())
    try:
        text = subprocess.run([_tools()["ptxas"], "--version"], capture_output=True, text=True).stdout
        out["ptxas"] = text.strip().splitlines()[-1]
    except Exception as err:  # noqa: BLE001
        out["ptxas"] = f"unavailable ({err})"
    return out


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec) if spec else str(v)


COLUMNS = [("set/layer", lambda r: f"{r['set']}/{r['layer']}"), ("role", lambda r: r["role"]),
           ("dtype", lambda r: r["dtype"]), ("sm", lambda r: r["arch"]), ("config", lambda r: r["config"]),
           ("kept", lambda r: _fmt(r["kept"])), ("regs", lambda r: _fmt(r.get("registers"))),
           ("spill B", lambda r: _fmt(r.get("spills"))), ("smem KiB", lambda r: _fmt(
               r["shared"] / 1024 if r.get("shared") is not None else None, ".1f")),
           ("est KiB", lambda r: _fmt(r["shared_estimate"] / 1024 if r.get("shared_estimate") else None, ".1f")),
           ("mma", lambda r: r.get("mma", "-")), ("A/B", lambda r: "/".join(r.get("operands") or []) or "-"),
           ("loop", lambda r: _fmt(r.get("loop_instructions"))),
           ("instr/1024 MAC", lambda r: _fmt(r.get("per_1024_macs"), ".2f")),
           ("matmul", lambda r: _fmt(r.get("matmul_per_1024_macs"), ".2f")),
           ("ratio", lambda r: _fmt(r.get("ratio"), ".2f")),
           ("MB", lambda r: _fmt(r["bytes"] / 1e6 if r.get("bytes") else None, ".1f")),
           ("dense MB", lambda r: _fmt(r["dense_bytes"] / 1e6 if r.get("dense_bytes") else None, ".1f")),
           ("bytes x", lambda r: _fmt(r.get("bytes_ratio"), ".2f")),
           ("status", lambda r: r["status"] if r["status"] == "ok" else r["error"][:60].replace("|", "/"))]


def markdown(result: dict) -> str:
    rs = result["rows"]
    head = [f"# perf.static: {result['date']}", "",
            f"triton {result['versions']['triton']}, torch {result['versions']['torch']}, "
            f"ptxas {result['versions'].get('ptxas')}; archs {result['config']['archs']}, dtypes "
            f"{result['config']['dtypes']}, sets {result['config']['sets']}.", "", result["summary"], "",
            "## Targets", ""]
    head += [f"- {'PASS' if ok else 'FAIL'}: {line}" for ok, line in result["targets"]]
    head += ["", "## Best kept config per problem (fewest hot-loop instructions per MAC)", ""]

    def table(rows_):
        lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(str(f(r)) for _, f in COLUMNS) + " |" for r in rows_]
        return lines

    order = lambda r: (r["kernel"], r["dtype"], r["arch"], r["set"], r["layer"])  # noqa: E731
    by_kernel: dict[str, list[dict]] = {}
    for r in sorted(best_rows(rs), key=order):
        by_kernel.setdefault(r["kernel"], []).append(r)
    for kernel, krows in by_kernel.items():
        head += [f"### {kernel}", ""] + table(krows) + [""]
    head += ["## Every compile", ""] + table(sorted(rs, key=order)) + [""]
    return "\n".join(head)


def summary_line(rs: list[dict], targets, seconds: float) -> str:
    ok = sum(r["status"] == "ok" for r in rs)
    spilled = sum(bool(r.get("spills")) for r in rs if r["status"] == "ok")
    kept_spilled = sum(bool(r.get("spills")) for r in rs if r["status"] == "ok" and r["kept"])
    passed = sum(p for p, _ in targets)
    return (f"perf.static: {ok}/{len(rs)} configs compiled, {spilled} spill ({kept_spilled} of them kept), "
            f"targets {passed}/{len(targets)} PASS, {seconds:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.static", description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="all", help=f"'all', a comma-separated subset of {sorted(MODELS)}, or 'sample' "
                                                 "(three small layers, every kernel: the CI test's)")
    p.add_argument("--layers", default=None, help="only these layer names (comma-separated)")
    p.add_argument("--dtypes", default="all", help=f"'all' or a subset of {list(DTYPES)}")
    p.add_argument("--roles", default="all", help=f"'all' or a subset of {list(ROLES)}")
    p.add_argument("--archs", default=",".join(map(str, DEFAULT_ARCHS)),
                   help="compute capabilities to compile for, e.g. 90,80 (default) or 90,80,86")
    p.add_argument("--quick", action="store_true",
                   help=f"a small sample: {QUICK} (each unless given); every kernel and dtype still compiles")
    p.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="compile processes (default: CPUs, at most 4)")
    p.add_argument("--out", type=Path, default=None,
                   help="write <out>.json and <out>.md (e.g. perf/results/static-2026-11-30); gzip the JSON for "
                        "perf/results/, --merge reads .json.gz too")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--resources-only", action="store_true",
                   help="registers, spills and shared memory only: no SASS hot loop, no matmul (the CI test's mode)")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="combine earlier runs' JSON files (.json or .json.gz; e.g. one per set or arch) into one "
                        "result, then check the targets and write --out; compiles nothing")
    args = p.parse_args(argv)
    if args.merge:
        return _merge(args.merge, args.out)
    if args.quick:
        for key, value in QUICK.items():
            if key == "sets" and args.sets == "all" or key == "archs" and args.archs == ",".join(
                    map(str, DEFAULT_ARCHS)) or key == "layers" and args.layers is None:
                setattr(args, key, value)
    try:
        sets = (["sample"] if args.sets == "sample" else parse_names(args.sets, list(MODELS), "--sets"))
        dtypes = parse_names(args.dtypes, list(DTYPES), "--dtypes")
        roles = parse_names(args.roles, list(ROLES), "--roles")
        archs = [int(a) for a in args.archs.split(",") if a.strip()]
    except ValueError as err:
        p.error(str(err))
    if not archs or any(a not in SHARED_MEMORY for a in archs):
        p.error(f"--archs: expected a comma-separated subset of {sorted(SHARED_MEMORY)}, got {args.archs!r}")
    # Triton 3.9 warns that its default (fp fusion on) will change; pin what a GPU run of the package gets today.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if kernels.INTERPRET:
        p.error("TRITON_INTERPRET is set: the kernels are interpreted functions, which cannot be compiled; unset it")
    _tools()
    layer_names = [n.strip() for n in args.layers.split(",")] if args.layers else None
    start = time.monotonic()
    problems, failed = plan(sets, dtypes, archs, roles, layer_names)
    if not problems and not failed:
        p.error("nothing to compile: no layer matches --sets/--layers")
    results = run(problems, args.jobs, progress=not args.no_progress, read_sass=not args.resources_only)
    while True:
        wider = widen(problems, results)
        if not wider:
            break
        results = run(wider, args.jobs, progress=not args.no_progress, read_sass=not args.resources_only,
                      done=results)
    rs = failed + rows(problems, results)
    targets = check_targets(rs)
    seconds = time.monotonic() - start
    summary = summary_line(rs, targets, seconds)
    result = dict(kind="static", date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  versions=versions(), seconds=round(seconds, 1),
                  config=dict(sets=sets, layers=layer_names, dtypes=dtypes, roles=roles, archs=archs,
                              shared_memory={a: SHARED_MEMORY[a] for a in archs}),
                  summary=summary, targets=targets, rows=rs)
    _report(result, args.out)
    return 0


def _report(result: dict, out: Optional[Path]) -> None:
    for ok, line in result["targets"]:
        print(f"{'PASS' if ok else 'FAIL'} {line}")
    print(result["summary"])
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")
        json_path.write_text(json.dumps(result, indent=1, default=str))
        md_path.write_text(markdown(result))
        print(f"wrote {json_path} and {md_path}")


def read_result(path: os.PathLike) -> dict:
    """A result JSON written by ``--out``, plain or gzipped (``.json.gz``, as kept under ``perf/results/``)."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    return json.loads(path.read_text())


def _merge(paths: Sequence[Path], out: Optional[Path]) -> int:
    """One result from several runs' JSON (rows concatenated, configs united, targets checked again)."""
    parts = [read_result(p) for p in paths]
    rs = [r for part in parts for r in part["rows"]]
    config: dict = {}
    for part in parts:
        for key, value in part["config"].items():
            if isinstance(value, list):
                config[key] = list(dict.fromkeys((config.get(key) or []) + value))
            elif isinstance(value, dict):
                config[key] = {**config.get(key, {}), **value}
            else:
                config.setdefault(key, value)
    seconds = sum(part["seconds"] for part in parts)
    targets = check_targets(rs)
    result = dict(kind="static", date=max(part["date"] for part in parts), versions=parts[0]["versions"],
                  seconds=round(seconds, 1), config=config, merged_from=[str(p) for p in paths],
                  summary=summary_line(rs, targets, seconds), targets=targets, rows=rs)
    _report(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
