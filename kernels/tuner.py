"""A small autotuner for the fused kernels, in place of ``triton.autotune``.

For each launch it finds the problem's key (kernel name, device name, dtype, memory layout and the key arguments
rounded up to powers of two), prunes the kernel's config space by the problem's size and then by what each compiled
config really needs (shared memory within the device's limit, no register spills), times the candidates with
``triton.testing.do_bench`` once per key and keeps the fastest.  Best configs persist across
processes in a JSON cache: ``$GCONV_TRITON_AUTOTUNE_CACHE``, else ``~/.cache/gconv_triton/autotune.json``.
``GCONV_TRITON_AUTOTUNE=0`` turns the timing off (a cached config, else the first candidate).

Why not ``triton.autotune``: it keys on exact argument values (a new batch size retunes), keeps nothing across
processes, times configs that cannot fit the device or the problem, and cannot run under the interpreter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch

CACHE_ENV = "GCONV_TRITON_AUTOTUNE_CACHE"
TUNE_ENV = "GCONV_TRITON_AUTOTUNE"
CACHE_FORMAT = "gconv_triton.autotune"
CACHE_VERSION = 1
MIN_BLOCK = 16           # tl.dot needs at least 16 in every dimension on a GPU
DEFAULT_SHARED_MEMORY = 48 * 1024   # what every CUDA device gives a block without opting in

# Every kernel decorated with ``maybe_autotune``, by name (filled under the interpreter too, so that CPU tests can
# check the tuning spaces that a GPU would use).
KERNEL_TUNERS: dict[str, "Autotuner"] = {}


# A tool's stand-in for launching (``perf.static``, ``perf.launches``): see :func:`intercept_launches`.
_INTERCEPT: Optional[Callable] = None


@contextlib.contextmanager
def intercept_launches(record: Callable):
    """Within: an autotuned launch ``tuner[grid](*args, **kwargs)`` calls ``record(tuner, grid, args, kwargs)``
    and returns its result instead of choosing a config and launching, so that a tool can see each launch a
    launcher makes (the kernel, its arguments as passed, the grid) and compile or count it itself.  Not
    re-entrant across threads: a tool's single-threaded capture."""
    global _INTERCEPT
    saved, _INTERCEPT = _INTERCEPT, record
    try:
        yield
    finally:
        _INTERCEPT = saved


class AutotuneCacheWarning(UserWarning):
    """The autotune cache file could not be read or written; tuning goes on in memory."""


# --------------------------------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """One launch config: block sizes (constexpr kwargs), warps and software-pipelining stages."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 3

    @classmethod
    def make(cls, blocks: dict, num_warps: int = 4, num_stages: int = 3) -> "TuneConfig":
        return cls(tuple(sorted((str(k), int(v)) for k, v in blocks.items())), int(num_warps), int(num_stages))

    @classmethod
    def from_triton(cls, config) -> "TuneConfig":
        """From a ``triton.Config`` (``kwargs``, ``num_warps`` and ``num_stages`` exist in every triton 3.x)."""
        return cls.make(config.kwargs, config.num_warps, config.num_stages)

    def block(self, name: str) -> int:
        return dict(self.blocks)[name]

    def launch_kwargs(self) -> dict:
        return {**dict(self.blocks), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def to_json(self) -> dict:
        return {"blocks": dict(self.blocks), "num_warps": self.num_warps, "num_stages": self.num_stages}

    @classmethod
    def from_json(cls, obj) -> "TuneConfig":
        """Raises ValueError unless ``obj`` is what :meth:`to_json` writes."""
        ok = (isinstance(obj, dict) and isinstance(obj.get("blocks"), dict)
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in obj["blocks"].values())
              and all(isinstance(obj.get(k), int) and not isinstance(obj.get(k), bool) and obj[k] > 0
                      for k in ("num_warps", "num_stages")))
        if not ok:
            raise ValueError(f"not a config: {obj!r}")
        return cls.make(obj["blocks"], obj["num_warps"], obj["num_stages"])

    def __str__(self) -> str:
        blocks = ", ".join(f"{k}={v}" for k, v in self.blocks)
        return f"{blocks}, num_warps={self.num_warps}, num_stages={self.num_stages}"


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``): the kernels' one spelling of it."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def bucket(value):
    """A key argument's bucket: ints round up to a power of two (one tuning serves e.g. batch 65 to 128);
    strings and bools (constexpr flags such as ``PRECISION``) stay as they are."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return next_power_of_2(value)


def _product(names: tuple[str, ...], values: dict) -> int:
    return math.prod(int(values[n]) for n in names)


def prune(configs: Iterable[TuneConfig], dims: dict[str, int],
          min_blocks: Optional[dict[str, int]] = None) -> list[TuneConfig]:
    """The configs whose tiles suit the problem's size, in the given order, never empty.

    Args:
        dims: the size each tuned block tiles (``{"BLOCK_M": M, ...}``): a block larger than
            ``max(min_blocks[block], next_power_of_2(dim))`` would mostly compute masked-out lanes, so it goes.
        min_blocks: the smallest bound per block (default :data:`MIN_BLOCK`): 64 rows for a ``tl.dot``'s M block
            where the GPU has ``wgmma`` (a warp group multiplies 64 rows at a time), so that narrow layers keep
            configs that run it.
    When no config fits, the bounds double until one does (the smallest tiles win).
    """
    configs = list(configs)
    if not configs:
        raise ValueError("prune: expected at least one config, got none")
    min_blocks = min_blocks or {}
    bound = {p: max(min_blocks.get(p, MIN_BLOCK), next_power_of_2(d)) for p, d in dims.items()}
    while True:  # ends: once the bounds pass every block, every config fits
        kept = [c for c in configs if all(c.block(p) <= bound[p] for p in dims)]
        if kept:
            return kept
        bound = {p: 2 * b for p, b in bound.items()}


# ------------------------------------------------------------------------------------ the compiled kernel
@dataclasses.dataclass(frozen=True)
class Resources:
    """What one compiled config needs: shared memory (bytes, as launched), registers per thread and the bytes of
    local memory per thread (register spills; None when the binary could not be read)."""

    shared: int
    registers: Optional[int] = None
    spills: Optional[int] = None


def _nvidia_tool(name: str) -> Optional[str]:
    """Path of a CUDA binary tool shipped in the triton wheel (``ptxas``, ``cuobjdump``, ``nvdisasm``), if there."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.is_file() else None


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """``cuobjdump --dump-resource-usage`` of a cubin: ``{"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}``
    (empty when the tool is missing or says nothing)."""
    tool = _nvidia_tool("cuobjdump")
    if tool is None or not cubin:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def kernel_resources(kernel) -> Resources:
    """:class:`Resources` of a ``CompiledKernel``: shared memory from its metadata (what the launch asks for),
    registers and stack (spills) from its cubin."""
    usage = cubin_resources(kernel.asm.get("cubin", b""))
    spills = usage["STACK"] + usage.get("LOCAL", 0) if "STACK" in usage else None
    return Resources(int(kernel.metadata.shared), usage.get("REG"), spills)


def fitting(configs: list[TuneConfig], resources: Callable[[TuneConfig], Resources],
            max_shared_memory: int, fallback: Iterable[list[TuneConfig]] = ()) -> list[TuneConfig]:
    """The configs whose compiled kernel fits the device's shared memory and spills no register, in order.

    A config that fails to compile goes.  When none of ``configs`` is left, the first group of ``fallback`` (the
    next larger tiles) that has such configs gives them (masked-out lanes cost less than a spilling kernel); when
    none has, the config of ``configs`` that fits with the fewest spill bytes is kept, else (nothing fits) the one
    that needs the least shared memory: the launch then says what is wrong.
    """
    measured: dict[TuneConfig, Resources] = {}

    def clean(candidates) -> list[TuneConfig]:
        for config in candidates:
            try:
                measured[config] = resources(config)
            except Exception:  # noqa: BLE001  (a compile error or out of resources: that config cannot run)
                continue
        return [c for c in candidates if c in measured and measured[c].shared <= max_shared_memory
                and not measured[c].spills]

    kept = clean(configs)
    for group in fallback:
        if kept:
            break
        kept = clean(group)
    measured = {c: r for c, r in measured.items() if c in configs}
    if kept or not measured:
        return kept or configs[:1]
    fits = [c for c, r in measured.items() if r.shared <= max_shared_memory]
    if fits:
        return [min(fits, key=lambda c: measured[c].spills or 0)]
    return [min(measured, key=lambda c: measured[c].shared)]


# ------------------------------------------------------------------------------------------------ the device
@functools.lru_cache(maxsize=None)
def device_shared_memory(index: int) -> int:
    """Max shared memory per block (bytes, opt-in) of CUDA device ``index``: Triton's driver query, else torch's
    device properties, else the 48 KiB every device gives."""
    try:
        from triton.runtime import driver

        return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001  (the driver API moved between triton releases; fall through)
        pass
    try:
        props = torch.cuda.get_device_properties(index)
        for name in ("shared_memory_per_block_optin", "shared_memory_per_block"):
            if getattr(props, name, None):
                return int(getattr(props, name))
    except Exception:  # noqa: BLE001
        pass
    return DEFAULT_SHARED_MEMORY


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


def device_capability(device: torch.device) -> Optional[tuple[int, int]]:
    """``(major, minor)`` of a CUDA device; None for any other device."""
    return _cuda_capability(_device_index(device)) if device.type == "cuda" else None


def mma_rows(capability: Optional[tuple[int, int]]) -> int:
    """The fewest rows a ``tl.dot`` tile needs to use the device's widest tensor-core instruction: 64 from Hopper
    on (a warp group's ``wgmma`` multiplies 64 rows), else :data:`MIN_BLOCK`."""
    return 64 if capability is not None and capability >= (9, 0) else MIN_BLOCK


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def device_limits(device: torch.device) -> Optional[int]:
    """Shared memory per block of ``device``; None (no limit to prune by) for a non-CUDA device."""
    return device_shared_memory(_device_index(device)) if device.type == "cuda" else None


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_name(device: torch.device) -> str:
    """Part of every key: a config tuned on one GPU model is not reused on another."""
    return _cuda_name(_device_index(device)) if device.type == "cuda" else device.type


def tuning_enabled() -> bool:
    return os.environ.get(TUNE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def do_bench_median(run: Callable[[], object]) -> float:
    """Median time of ``run()`` in ms (``quantiles`` exists in triton 3.2 through 3.9; one quantile comes back as a
    float in some releases and as a one-element list in others)."""
    from triton.testing import do_bench

    ms = do_bench(run, warmup=10, rep=40, quantiles=[0.5])
    return float(ms[0] if isinstance(ms, (list, tuple)) else ms)


# ------------------------------------------------------------------------------------------------- the cache
def cache_path() -> Path:
    """``$GCONV_TRITON_AUTOTUNE_CACHE``, else ``gconv_triton/autotune.json`` under ``$XDG_CACHE_HOME`` or
    ``~/.cache``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gconv_triton" / "autotune.json"


class ConfigCache:
    """Best configs by key, in a JSON file shared by processes.

    The file is read when first needed and again before each write (so processes tuning side by side keep each
    other's entries), and written whole to a temporary file that then replaces it (``os.replace`` is atomic: a
    reader never sees half a file).  A file that is not valid JSON or not this cache's format is ignored with one
    :class:`AutotuneCacheWarning` and never overwritten (it may be someone else's); tuning then stays in memory.
    """

    def __init__(self, path: Optional[os.PathLike] = None):
        self._fixed_path = Path(path) if path is not None else None
        self._entries: dict[Path, dict] = {}
        self._writable: dict[Path, bool] = {}
        self._warned: set[tuple[Path, str]] = set()
        self._lock = threading.RLock()

    @property
    def path(self) -> Path:
        return self._fixed_path if self._fixed_path is not None else cache_path()

    def _warn(self, path: Path, what: str, why: str) -> None:
        if (path, what) in self._warned:
            return
        self._warned.add((path, what))
        action = (f"it is left as it is; delete it (or point {CACHE_ENV} elsewhere) to let gconv_triton write one"
                  if what == "ignore" else "tuned configs stay in this process only")
        warnings.warn(f"gconv_triton autotune cache {str(path)!r}: {why}; {action}", AutotuneCacheWarning,
                      stacklevel=4)

    def _read(self, path: Path, warn: bool = True) -> tuple[dict, bool]:
        """``(entries, ours)``: ``ours`` is False for a file that exists but is not a readable cache of ours."""
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):   # no cache yet (writing will say if it cannot be made)
            return {}, True
        except (OSError, UnicodeDecodeError) as err:
            why = f"cannot be read ({type(err).__name__}: {err})"
        else:
            try:
                data = json.loads(text)
            except ValueError as err:
                why = f"is not valid JSON ({err})"
            else:
                if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT
                        and isinstance(data.get("entries"), dict)):
                    why = f"is not a gconv_triton autotune cache (expected a JSON object with format={CACHE_FORMAT!r})"
                elif data.get("version") != CACHE_VERSION:
                    why = f"has version {data.get('version')!r}, expected {CACHE_VERSION}"
                else:
                    return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}, True
        if warn:
            self._warn(path, "ignore", why)
        return {}, False

    def _load(self, path: Path) -> dict:
        if path not in self._entries:
            self._entries[path], self._writable[path] = self._read(path)
        return self._entries[path]

    def get(self, key: str) -> Optional[dict]:
        with self._lock:
            return self._load(self.path).get(key)

    def put(self, key: str, entry: dict) -> None:
        """Record ``entry`` under ``key`` and persist the cache (merged with what the file holds now)."""
        with self._lock:
            path = self.path
            self._load(path)[key] = entry
            if not self._writable[path]:
                return
            on_disk, ours = self._read(path)
            if not ours:
                self._writable[path] = False
                return
            merged = {**on_disk, **self._entries[path]}
            self._entries[path] = merged
            data = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": merged}
            tmp = None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, path)
                tmp = None
            except OSError as err:
                self._warn(path, "write", f"cannot be written ({type(err).__name__}: {err})")
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)

    def count(self) -> int:
        """How many keys the cache holds (in memory, after reading the file)."""
        with self._lock:
            return len(self._load(self.path))


DEFAULT_CACHE = ConfigCache()


# --------------------------------------------------------------------------------------------- the autotuner
def _parse_tiles(tiles: dict) -> dict[str, tuple[str, ...]]:
    """``{"BLOCK_K": "C_IN_G*S_IN*KH*KW"}`` -> ``{"BLOCK_K": ("C_IN_G", "S_IN", "KH", "KW")}``."""
    return {block: tuple(name.strip() for name in expr.split("*")) for block, expr in tiles.items()}


class Autotuner:
    """Launches ``fn[grid](*args, **kwargs)`` with the best config for the problem's key.

    Args:
        fn: a ``@triton.jit`` kernel (anything with a ``[grid]`` launch and the Python function at ``.fn``).
        configs: the kernel's config space (``triton.Config`` or :class:`TuneConfig`).
        key: argument names whose (bucketed) values decide the config; the tiled sizes must be among them.
        tiles: ``{block: "ARG*ARG"}``, the size each tuned block tiles.  Blocks of ``configs`` not named here are
            not tuned: they keep the first config's value (a weight-gradient kernel's reduction block stays fixed,
            so tuning never changes the summation order and so the bits of ``dw``).
        operands: the ``tl.dot`` operand tiles ``(rows, cols)`` by block name, as stored (either may be
            transposed): the first operand's block that the second lacks is the dot's M (kept at least
            :func:`mma_rows` wide where the device has ``wgmma``); ``perf.static`` also sizes its shared-memory
            guess from them.
        bench, cache, shared_memory, capability, resources: injectable for tests and for compiling for a target
            without its GPU (``bench(run) -> ms``, a :class:`ConfigCache`, ``shared_memory(device) -> bytes or
            None``, ``capability(device) -> (major, minor) or None``, ``resources(config, launch) ->``
            :class:`Resources` where ``launch = (grid, args, kwargs)``).
    On a CUDA device every candidate is compiled before it is timed (the compiled kernels are the ones timed) and
    kept only if its kernel fits the device's shared memory without spilling registers (:func:`fitting`).
    The kernel must be safe to launch repeatedly on the same arguments (it writes its outputs, never
    accumulates into them): candidates are timed on the caller's tensors.
    """

    def __init__(self, fn, configs, key, *, tiles: dict, operands=(), name: Optional[str] = None,
                 bench: Optional[Callable] = None, cache: Optional[ConfigCache] = None,
                 shared_memory: Optional[Callable] = None, capability: Optional[Callable] = None,
                 resources: Optional[Callable] = None):
        self._init = dict(fn=fn, configs=configs, key=key, tiles=tiles, operands=operands, name=name, bench=bench,
                          cache=cache, shared_memory=shared_memory, capability=capability, resources=resources)
        self.fn = fn
        inner = fn
        while hasattr(inner, "fn"):   # a @triton.heuristics wrapper holds a JITFunction, which holds the function
            inner = inner.fn
        self.arg_names = list(inspect.signature(inner).parameters)
        self.name = name or f"{inner.__module__}.{inner.__qualname__}"
        self.key = list(key)
        self.tiles = _parse_tiles(tiles)
        self.operands = tuple(tuple(pair) for pair in operands)
        configs = [c if isinstance(c, TuneConfig) else TuneConfig.from_triton(c) for c in configs]
        self.configs = self._space(configs)
        self._check()
        self._bench = bench or do_bench_median
        self._cache = cache
        self._shared_memory = shared_memory or device_limits
        self._capability = capability or device_capability
        self._resources = resources or self.compiled_resources
        self._best: dict[str, TuneConfig] = {}
        self._lock = threading.RLock()
        self.last_key: Optional[str] = None
        self.last_config: Optional[TuneConfig] = None
        self.timings: dict[str, dict[TuneConfig, float]] = {}  # what tuning measured, by key (for reports)

    def replace(self, **changes) -> "Autotuner":
        """A new tuner with this one's arguments but ``changes`` (e.g. another ``fn``, or a test's ``bench``)."""
        return Autotuner(**{**self._init, **changes})

    def _space(self, configs: list[TuneConfig]) -> list[TuneConfig]:
        """Untuned blocks fixed to the first config's values, duplicates dropped, order kept."""
        if not configs:
            raise ValueError(f"configs: expected at least one config for {self.name}, got none")
        fixed = {k: v for k, v in configs[0].blocks if k not in self.tiles}
        space = []
        for c in configs:
            c = dataclasses.replace(c, blocks=tuple(sorted({**dict(c.blocks), **fixed}.items())))
            if c not in space:
                space.append(c)
        return space

    def _check(self) -> None:
        args = set(self.arg_names)
        blocks = set(dict(self.configs[0].blocks))
        problems = [f"key argument {k!r} is not a parameter" for k in self.key if k not in args]
        problems += [f"config block {b!r} is not a parameter" for c in self.configs for b, _ in c.blocks
                     if b not in args]
        for block, names in self.tiles.items():
            if block not in blocks:
                problems.append(f"tiles: {block!r} is not a block of the configs {sorted(blocks)}")
            problems += [f"tiles: {block} tiles {n!r}, which is not a key argument" for n in names if n not in self.key]
        problems += [f"operands: {n!r} is neither a config block nor a parameter" for pair in self.operands
                     for n in pair if n not in blocks and n not in args]
        if problems:
            raise ValueError(f"maybe_autotune for {self.name}: " + "; ".join(dict.fromkeys(problems)))

    # ----------------------------------------------------------------------------------------------- launch
    def __getitem__(self, grid):
        return functools.partial(self.run, grid=grid)

    def run(self, *args, grid, **kwargs):
        clash = set(kwargs) & (set(dict(self.configs[0].blocks)) | {"num_warps", "num_stages"})
        if clash:
            raise TypeError(f"{self.name}: {sorted(clash)} are chosen by the autotuner; do not pass them")
        if _INTERCEPT is not None:
            return _INTERCEPT(self, grid, args, kwargs)
        bound = dict(zip(self.arg_names, args), **kwargs)
        key, device = self.problem_key(bound)
        config = self._best.get(key) or self._choose(key, device, bound, (grid, args, kwargs))
        self.last_key, self.last_config = key, config
        return self._launch(config, grid, args, kwargs)

    def _launch(self, config: TuneConfig, grid, args, kwargs):
        return self.fn[grid](*args, **kwargs, **config.launch_kwargs())

    def problem_key(self, bound: dict) -> tuple[str, torch.device]:
        """``kernel|device name|dtype|layout|ARG=bucket,...`` from the first tensor argument and the key arguments."""
        tensor = next((v for v in bound.values() if isinstance(v, torch.Tensor)), None)
        if tensor is None:
            raise TypeError(f"{self.name}: expected at least one tensor argument")
        layout = "contiguous" if tensor.is_contiguous() else "strided"
        dims = ",".join(f"{k}={bucket(bound[k])}" for k in self.key)
        dtype = str(tensor.dtype).replace("torch.", "")
        return "|".join([self.name, device_name(tensor.device), dtype, layout, dims]), tensor.device

    def sized(self, bound: dict, device: torch.device) -> list[TuneConfig]:
        """The configs whose tiles suit this problem's sizes (a function of its key: sizes are bucketed first)."""
        sizes = {k: bucket(bound[k]) for k in self.key}
        dims = {block: _product(names, sizes) for block, names in self.tiles.items()}
        return prune(self.configs, dims, self._min_blocks(dims, device))

    def _min_blocks(self, dims: dict, device: torch.device) -> Optional[dict[str, int]]:
        """The dot's M block (that of the first operand the second lacks: the other one is the reduction) at least
        :func:`mma_rows` where the device has ``wgmma``."""
        rows = next((b for b in self.operands[0] if b not in self.operands[1]), None) if len(self.operands) > 1 \
            else None
        return {rows: mma_rows(self._capability(device))} if rows in dims else None

    def wider(self, bound: dict, device: torch.device) -> Iterator[list[TuneConfig]]:
        """The rest of the space beyond :meth:`sized`, in groups of growing tiles (the size bounds doubled, then
        doubled again...), smallest first."""
        sizes = {k: bucket(bound[k]) for k in self.key}
        dims = {block: _product(names, sizes) for block, names in self.tiles.items()}
        seen = set(self.sized(bound, device))
        mins = self._min_blocks(dims, device)
        factor = 2
        while len(seen) < len(self.configs):
            group = [c for c in prune(self.configs, {b: d * factor for b, d in dims.items()}, mins) if c not in seen]
            seen.update(group)
            factor *= 2
            if group:
                yield group

    def candidates(self, bound: dict, device: torch.device, launch=None) -> list[TuneConfig]:
        """The configs worth timing: :meth:`sized`, then, on a device with a shared-memory limit and given the
        ``launch = (grid, args, kwargs)`` to compile them for, those whose compiled kernel fits and does not
        spill; if none does, those of the next larger tiles that do (:meth:`wider`, :func:`fitting`)."""
        configs = self.sized(bound, device)
        limit = self._shared_memory(device)
        if limit is None or launch is None:
            return configs
        return fitting(configs, lambda config: self._resources(config, launch), limit,
                       fallback=self.wider(bound, device))

    def compile(self, config: TuneConfig, launch):
        """The ``CompiledKernel`` of ``config`` for ``launch = (grid, args, kwargs)`` through the kernel's warm-up
        path (nothing runs; triton caches it for the launches that follow)."""
        grid, args, kwargs = launch
        return self.fn.warmup(*args, grid=grid, **kwargs, **config.launch_kwargs())

    def compiled_resources(self, config: TuneConfig, launch) -> Resources:
        return kernel_resources(self.compile(config, launch))

    def _choose(self, key, device, bound, launch) -> TuneConfig:
        with self._lock:
            if key in self._best:
                return self._best[key]
            candidates = self.candidates(bound, device, launch)
            cache = self._cache if self._cache is not None else DEFAULT_CACHE
            config = self._cached(cache.get(key), candidates)
            if config is None:
                # Timing is impossible while a CUDA graph is being captured: run the first candidate, tune later.
                if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                    return candidates[0]
                if len(candidates) == 1 or not tuning_enabled():
                    config = candidates[0]
                else:
                    config, ms = self._tune(key, candidates, *launch)
                    cache.put(key, self._entry(config, ms, len(candidates)))
            self._best[key] = config
            return config

    @staticmethod
    def _cached(entry: Optional[dict], candidates: list[TuneConfig]) -> Optional[TuneConfig]:
        """The cached config if it is still one of this problem's candidates (a stale entry is retuned)."""
        if entry is None:
            return None
        try:
            config = TuneConfig.from_json(entry.get("config"))
        except ValueError:
            return None
        return config if config in candidates else None

    def _tune(self, key, candidates, grid, args, kwargs) -> tuple[TuneConfig, float]:
        timings, errors = {}, []
        for config in candidates:
            try:
                timings[config] = float(self._bench(lambda: self._launch(config, grid, args, kwargs)))
            except Exception as err:  # noqa: BLE001  (out of resources, compile errors: skip that config)
                timings[config] = math.inf
                errors.append(err)
        self.timings[key] = timings
        best = min(candidates, key=lambda c: timings[c])  # ties: the earlier config
        if math.isinf(timings[best]):
            raise errors[0]
        return best, timings[best]

    @staticmethod
    def _entry(config: TuneConfig, ms: float, n: int) -> dict:
        import triton

        return {"config": config.to_json(), "ms": round(ms, 6), "candidates": n, "triton": triton.__version__,
                "torch": torch.__version__.split("+")[0]}
