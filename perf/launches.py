"""``python -m perf.launches``: what one training step launches besides its GEMMs, without a GPU.

One steady-state training step (a warm-up step first, then the measured one: ``zero_grad(set_to_none=True)``,
forward, ``loss = output.square().mean()``, backward, ``SGD(lr=0.01, foreach=True).step()``) of a model on CPU
tensors, fp32 (tf32 allowed, torch's default), for two paths:

- **kernel**: ``gconv_triton.backend("triton")``, run as on a GPU: the launchers take their GPU decisions (the
  interpreter's fixed configs and split are switched off), and every Triton kernel launch is recorded instead of
  run (``perf.static.capturing``), so the kernels' outputs hold garbage; only counts and bytes are read.
- **bank**: ``gconv_triton.backend("torch")``: the filter bank and ``F.conv2d``, run for real.

What is counted (a ``TorchDispatchMode`` sees every aten op, the ops inside ``gconv_triton::*`` custom ops too):

- **launches**: each recorded Triton launch, and each aten op that writes tensor memory: it returns a tensor with
  a storage none of its inputs has (a new result, a copy, ``zeros``) or writes one of its arguments (an in-place op,
  ``copy_``, ``fill_``, ``zero_``, ``out=``).  Not counted: views and metadata ops (outputs that share an input's
  storage: ``view``, ``permute``, ``expand``, ``detach``, ``as_strided``, ...), allocations (``empty``,
  ``empty_strided``, ``empty_like``, ``new_empty``: the caching allocator, no kernel), ops on empty tensors, and
  ``resize_``, ``set_``, ``_local_scalar_dense`` (``.item()``).  One aten op is counted as one launch, as it is on a
  GPU for nearly every op (a cuDNN convolution or a large reduction may run more than one kernel; a
  ``_foreach_`` op runs one per chunk of tensors).
- **GEMM launches**: the Triton kernels but the layout kernels (``kernels/group_conv_layouts.py``: copies, counted
  as such), and the aten ``convolution``, ``convolution_backward``, ``mm``, ``addmm``, ``bmm`` (the bank path's
  convolutions and both paths' ``nn.Linear``).
- **bytes written outside the GEMMs**: over the other launches, the bytes of the tensors they produce or write
  (``numel · element_size`` of each, not of the whole storage).  A Triton kernel writes the tensors passed to the
  pointers its source stores to (``tl.store(NAME ...``); those bytes are reported apart, as ``gemm_bytes``.
- **peak**: the most bytes of storages allocated during the step that are alive at once (CPU storages tracked
  through the same mode, freed when their last tensor goes); parameters, the input and what outlives the warm-up
  step (its gradients, the input's too, are set to None first) are not in it.
- **saved for backward**: the distinct storages (by address) that autograd saves in the step's forward
  (``torch.autograd.graph.saved_tensors_hooks``), their full size; the input and the parameters included.

Each launch is charged to a layer: in the forward to the innermost module running; in the backward to the module
whose forward created the autograd node running it (``torch._C._current_autograd_node``, between the node's pre-
and post-hook); else to ``(loss)``, ``(accumulate)``, ``(optimizer)`` or ``(gradient sums)`` (the engine adding
the two gradients of a tensor used twice, as a residual block's input, after the node that made the second one
ran).  ``--per-layer`` prints, per group-conv layer, its
launches and its activation-sized copies or fills: ``copy_``, ``clone``, ``reshape`` copies, ``zeros``,
``fill_``, a layout kernel, ... writing at least as many bytes as the smaller of the layer's input and output,
but the weight's re-layout (``WEIGHT_LAYOUT_KERNELS``: weight-sized at any batch; its bytes get their own column).
The targets (:func:`check_targets`) are printed as PASS/FAIL lines and do not change the exit status.  See
``docs/launches.md``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import functools
import gzip
import inspect
import json
import os
import re
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import gconv_triton as gt
from gconv_triton._support import empty_in_order
from gconv_triton.autotune import LAYOUTS, parse_names

from .memory import run_inside

PATHS = ("kernel", "bank")
# Allocations: a caching allocator hands out memory without a kernel.
ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "empty_permuted"}
# Ops that write no tensor data on a device.
NO_KERNEL = {"resize_", "set_", "_local_scalar_dense", "record_stream", "_version"}
GEMMS = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm", "_convolution"}
# Triton kernels that only move data (the launchers' re-layouts): counted as copies, outside the GEMMs
LAYOUT_KERNELS = ("group_conv_layouts.",)
# Layout kernels that re-lay a layer's weight, not an activation: weight-sized whatever the batch and image size
WEIGHT_LAYOUT_KERNELS = ("group_conv_layouts._permute_weight_kernel",)
# Ops that only move data (a reshape that cannot be a view copies)
COPIES = {"copy_", "clone", "_to_copy", "constant_pad_nd", "lift_fresh_copy", "contiguous", "reshape", "flatten",
          "_unsafe_view"}
FILLS = {"zero_", "fill_", "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like",
         "new_full", "fill"}
MB = 1e6


# ------------------------------------------------------------------------------------------------ models
@dataclasses.dataclass(frozen=True)
class Model:
    """A model to measure: ``build()`` -> module, its default batch and image size, the input's shape, and whether
    the input needs a gradient (a single layer stands for one inside a network)."""

    description: str
    build: Callable[[], nn.Module]
    batch: int
    size: int
    input_shape: Callable[[int, int], tuple]
    input_grad: bool = False


MODELS = {
    "layer": Model("P4ConvP4(32, 32, 3, padding=1)", lambda: gt.P4ConvP4(32, 32, 3, padding=1), 8, 32,
                   lambda b, s: (b, 32, 4, s, s), input_grad=True),
    "p4cnn": Model('SmallGCNN("p4", (10, 10, 10))', lambda: gt.models.SmallGCNN("p4", (10, 10, 10)), 32, 28,
                   lambda b, s: (b, 1, s, s)),
    "resnet44": Model("p4m_resnet44()", lambda: gt.models.p4m_resnet44(), 8, 32, lambda b, s: (b, 3, s, s)),
}


def make_input(shape: tuple, layout: str) -> torch.Tensor:
    """A random input of ``shape``; ``channels_last``: a 4-D ``(B, C, H, W)`` in torch's channels-last, a 5-D
    ``(B, C, S, H, W)`` stored ``(B, H, W, C, S)`` (the package's channels-last)."""
    x = torch.randn(shape)
    if layout == "contiguous":
        return x
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return empty_in_order(shape, (0, 3, 4, 1, 2), dtype=x.dtype, device=x.device).copy_(x)


# ---------------------------------------------------------------------------------------------- the records
@dataclasses.dataclass
class Record:
    """One launch: ``kind`` ``"triton"`` or ``"torch"``, the op or kernel, the layer and phase it is charged to,
    the bytes it writes, whether it is a GEMM, and for a Triton launch its program count (None if unknown)."""

    kind: str
    name: str
    layer: str
    phase: str
    bytes: int
    gemm: bool
    programs: Optional[int] = None

    @property
    def copy_or_fill(self) -> bool:
        if self.kind == "triton":
            return self.name.startswith(LAYOUT_KERNELS)
        return self.name in COPIES | FILLS

    @property
    def weight_relayout(self) -> bool:
        return self.kind == "triton" and self.name in WEIGHT_LAYOUT_KERNELS


@functools.lru_cache(maxsize=None)
def stored_pointers(fn) -> tuple[str, ...]:
    """The parameters of a ``@triton.jit`` function's Python source that it stores to: ``tl.store(NAME + ...)``, and
    the arguments it passes to a ``@triton.jit`` helper for parameters that helper stores to (followed down)."""
    params = list(inspect.signature(fn).parameters)
    source = textwrap.dedent(inspect.getsource(fn))
    stored = [n for n in re.findall(r"tl\.store\(\s*(\w+)", source) if n in params]
    for node in ast.walk(ast.parse(source)):
        helper = (fn.__globals__.get(node.func.id) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  else None)
        inner = getattr(helper, "fn", None)   # a JITFunction's Python function
        if inner is None or not hasattr(helper, "run"):
            continue
        inner_params = list(inspect.signature(inner).parameters)
        passed = dict(zip(inner_params, node.args))
        passed.update((k.arg, k.value) for k in node.keywords if k.arg)
        for name in stored_pointers(inner):
            arg = passed.get(name)
            if isinstance(arg, ast.Name) and arg.id in params:
                stored.append(arg.id)
    return tuple(dict.fromkeys(stored))


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _args_by_name(func, args, kwargs) -> dict:
    bound = dict(kwargs)
    for arg, value in zip(func._schema.arguments, args):
        bound.setdefault(arg.name, value)
    return bound


class StepRecorder(TorchDispatchMode):
    """Records the launches, bytes, live memory and saved tensors of what runs inside it (see the module doc).

    ``NODE_KEY``: the metadata key under which :func:`tag_graph` names the layer of an autograd node."""

    NODE_KEY = "perf_launches_layer"

    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (the warm-up step's launches)."""
        self.records: list[Record] = []
        self.module_stack: list[str] = []
        self.phase = "forward"
        self.in_node = False      # between a node's pre-hook and its post-hook (see tag_graph)
        self.live: dict[int, tuple] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self.saved: dict[int, int] = {}

    # ------------------------------------------------------------------------------------- attribution
    def enter_node(self, grad_outputs) -> None:
        self.in_node = True

    def leave_node(self, grad_inputs, grad_outputs) -> None:
        self.in_node = False

    def layer(self) -> str:
        node = torch._C._current_autograd_node()
        if node is not None and not self.in_node:
            return "(gradient sums)"   # the engine adding up two gradients of one tensor, after the node ran
        if node is not None:
            return node.metadata.get(self.NODE_KEY, "(accumulate)" if type(node).__name__ == "AccumulateGrad"
                                     else "(untagged)")
        if self.module_stack:
            return self.module_stack[-1]
        return {"forward": "(loss)", "backward": "(loss)", "optimizer": "(optimizer)"}[self.phase]

    # ---------------------------------------------------------------------------------------- memory
    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:
            return
        entry = (size, object())   # this storage's own entry: a later one at the same address is another
        self.live[key] = entry
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._release, key, entry)

    def _release(self, key: int, entry: tuple) -> None:
        if self.live.get(key) is entry:
            del self.live[key]
            self.live_bytes -= entry[0]

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """``saved_tensors_hooks`` pack hook: note the storage, keep the tensor."""
        storage = t.untyped_storage()
        self.saved[storage.data_ptr()] = storage.nbytes()
        return t

    # ---------------------------------------------------------------------------------------- launches
    def triton_launch(self, launch) -> None:
        """Called by ``perf.static.capturing`` for each Triton launch, in place of running it."""
        bound = launch.bound()
        written = {}
        for name in stored_pointers(launch.jit.fn):
            t = bound.get(name)
            if isinstance(t, torch.Tensor):
                written[(t.data_ptr(), t.numel(), t.element_size())] = _tensor_bytes(t)
        self.records.append(Record("triton", launch.kernel, self.layer(), self.phase, sum(written.values()),
                                   not launch.kernel.startswith(LAYOUT_KERNELS), _programs(launch, bound)))

    append = triton_launch   # capturing(out) calls out.append(launch)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace not in ("aten", "prim", "prims"):
            return run_inside(self, func, args, kwargs)   # a gconv_triton::* op: its aten ops come back here
        out = func(*args, **kwargs)
        name = func._schema.name.split("::")[-1]
        inputs = {_storage_key(t) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        fresh = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and _storage_key(t) not in inputs]
        for t in fresh:
            self._track(t)
        if name in ALLOCATIONS or name in NO_KERNEL:
            return out
        written = sum(_tensor_bytes(t) for t in fresh)
        bound = _args_by_name(func, args, kwargs)
        for arg in func._schema.arguments:
            if arg.alias_info is not None and arg.alias_info.is_write:
                written += sum(_tensor_bytes(t) for t in pytree.tree_leaves(bound.get(arg.name))
                               if isinstance(t, torch.Tensor))
        if written:
            self.records.append(Record("torch", name, self.layer(), self.phase, written, name in GEMMS))
        return out


def _programs(launch, bound: dict) -> Optional[int]:
    """The launch's program count, with the blocks the autotuner's size rule puts first where the launcher leaves
    them to it (None when the grid cannot be evaluated)."""
    from gconv_triton.kernels import tuner as _autotune

    tuner = launch.tuner or _autotune.KERNEL_TUNERS.get(f"gconv_triton.kernels.{launch.kernel}")
    blocks = {}
    try:
        if tuner is not None and not all(b in bound for b, _ in tuner.configs[0].blocks):
            first = next(t for t in bound.values() if isinstance(t, torch.Tensor))
            blocks = dict(tuner.sized(bound, first.device)[0].blocks)
        return launch.programs(blocks)
    except Exception:  # noqa: BLE001  (a grid this tool cannot evaluate: the count is what matters)
        return None


# ------------------------------------------------------------------------------------------- layer tags
def tag_modules(model: nn.Module, recorder: StepRecorder, step_input: torch.Tensor, layers: dict) -> list:
    """Forward hooks on every module of ``model``: keep ``recorder.module_stack``, tag the autograd nodes each
    module's forward creates with its name (innermost module first), and fill ``layers[name]`` for the group-conv
    layers: input/output bytes and whether the input came from another layer.  Returns the hook handles."""
    handles, boundaries = [], []   # the grad_fn of each running module's inputs, innermost last

    def pre(name):
        def hook(module, inputs):
            recorder.module_stack.append(name)
            boundaries.append({t.grad_fn for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)})
            if isinstance(module, gt.GroupConv2d):
                x = next(t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor))
                # an input that needs a gradient comes from another layer (or stands for one: a single layer)
                from_layer = step_input.requires_grad or _storage_key(x) != _storage_key(step_input)
                layers[name] = dict(input_bytes=_tensor_bytes(x), input_from_layer=from_layer)
        return hook

    def post(name):
        def hook(module, inputs, output):
            recorder.module_stack.pop()
            tag_graph(output, name, recorder, boundaries.pop())
            if name in layers:
                layers[name]["output_bytes"] = sum(_tensor_bytes(t) for t in pytree.tree_leaves(output)
                                                   if isinstance(t, torch.Tensor))
        return hook

    for name, module in model.named_modules():
        name = name or type(model).__name__
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    return handles


def tag_graph(output, name: str, recorder: StepRecorder, boundary=frozenset()) -> None:
    """Name ``name`` in the metadata of every untagged autograd node behind ``output``, up to the ``boundary``
    nodes (the module's inputs'), and hook it so that ``recorder`` knows when the engine runs it."""
    todo = [t.grad_fn for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    seen = set()
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in boundary:
            continue
        seen.add(node)
        if StepRecorder.NODE_KEY not in node.metadata:
            node.metadata[StepRecorder.NODE_KEY] = name
            node.register_prehook(recorder.enter_node)
            node.register_hook(recorder.leave_node)
        todo.extend(n for n, _ in node.next_functions)


# -------------------------------------------------------------------------------------------- the kernel path
@contextlib.contextmanager
def kernel_path(recorder: StepRecorder):
    """Within: ``backend("triton")`` on CPU tensors, the launchers in their GPU state, every launch recorded."""
    from gconv_triton import kernels
    from gconv_triton.kernels import _common

    from .static import capturing

    modules = (_common,)   # the launchers read the switch there at each call (config, split, dtypes)
    saved = [m.INTERPRET for m in modules], kernels.INTERPRET
    try:
        for m in modules:
            m.INTERPRET = False          # the GPU's configs, split and dtypes, not the interpreter's
        kernels.INTERPRET = True         # lets use_triton take CPU tensors: they never reach a kernel
        with gt.backend("triton"), capturing(recorder):
            yield
    finally:
        for m, value in zip(modules, saved[0]):
            m.INTERPRET = value
        kernels.INTERPRET = saved[1]


# ------------------------------------------------------------------------------------------------ measuring
def measure(model: Union[str, Model], path: str, layout: str = "contiguous", batch: Optional[int] = None,
            size: Optional[int] = None, seed: int = 0) -> dict:
    """One model (a name in MODELS, or a :class:`Model`), path (``"kernel"`` or ``"bank"``) and input layout: the
    second of two training steps, measured (see the module doc)."""
    spec = MODELS[model] if isinstance(model, str) else model
    model_name = model if isinstance(model, str) else spec.description
    batch, size = batch or spec.batch, size or spec.size
    torch.manual_seed(seed)
    net = spec.build()
    x = make_input(spec.input_shape(batch, size), layout).requires_grad_(spec.input_grad)
    # foreach: the implementation torch picks for CUDA tensors (CPU ones default to a loop over the parameters)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, foreach=True)
    recorder = StepRecorder()
    layers: dict[str, dict] = {}
    poison = os.environ.pop("GCONV_TRITON_POISON", None)   # the tests' NaN fill of every output: not a GPU's
    try:
        with kernel_path(recorder) if path == "kernel" else gt.backend("torch"):
            _step(net, x, optimizer, recorder)                  # warm-up: caches, gradients, optimizer state
            optimizer.zero_grad(set_to_none=True)
            # the input stands for another layer's output: its gradient goes on to that layer, never added to one
            # kept from the warm-up step (an `add_` of an input's size no layer inside a network pays)
            x.grad = None
            recorder.reset()
            handles = tag_modules(net, recorder, x, layers)
            try:
                with recorder, torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t):
                    _step(net, x, optimizer, recorder)
            finally:
                for handle in handles:
                    handle.remove()
    finally:
        if poison is not None:
            os.environ["GCONV_TRITON_POISON"] = poison
    return summarize(recorder, layers, dict(model=model_name, path=path, layout=layout, batch=batch, size=size))


def _step(model: nn.Module, x: torch.Tensor, optimizer, recorder: StepRecorder) -> None:
    """Forward, ``loss = output.square().mean()``, backward, the optimizer's step (gradients set to None before)."""
    recorder.phase = "forward"
    loss = model(x).square().mean()
    tag_graph(loss, "(loss)", recorder)
    recorder.phase = "backward"
    loss.backward()
    recorder.phase = "optimizer"
    optimizer.step()


def summarize(recorder: StepRecorder, layers: dict, config: dict) -> dict:
    """The totals, and per group-conv layer its launches, bytes and activation-sized copies or fills."""
    recs = recorder.records
    triton = [r for r in recs if r.kind == "triton"]
    other = [r for r in recs if not r.gemm]
    per_layer = []
    for name, info in layers.items():
        mine = [r for r in recs if r.layer == name]
        threshold = min(info["input_bytes"], info.get("output_bytes", info["input_bytes"]))
        # a weight re-layout is weight-sized: at a small batch it may pass the threshold without copying an activation
        big = [r for r in mine if r.copy_or_fill and not r.weight_relayout and r.bytes >= threshold]
        per_layer.append(dict(layer=name, **info, launches=len(mine),
                              triton=sum(r.kind == "triton" for r in mine),
                              gemm=sum(r.gemm for r in mine),
                              other=sum(not r.gemm for r in mine),
                              bytes_outside_gemms=sum(r.bytes for r in mine if not r.gemm),
                              activation_copies=[f"{r.phase}:{r.name}:{r.bytes}" for r in big],
                              weight_relayout_bytes=sum(r.bytes for r in mine if r.weight_relayout)))
    phases = {p: sum(r.phase == p for r in recs) for p in ("forward", "backward", "optimizer")}
    step_ops = [r for r in recs if r.layer in ("(loss)", "(optimizer)")]
    return dict(config, launches=len(recs), triton=len(triton), torch=len(recs) - len(triton),
                gemm=sum(r.gemm for r in recs), launches_by_phase=phases,
                loss_optimizer_launches=len(step_ops), loss_optimizer_bytes=sum(r.bytes for r in step_ops),
                bytes_outside_gemms=sum(r.bytes for r in other), gemm_bytes=sum(r.bytes for r in recs if r.gemm),
                peak_bytes=recorder.peak_bytes, saved_bytes=sum(recorder.saved.values()),
                layers=per_layer, records=[dataclasses.asdict(r) for r in recs])


# -------------------------------------------------------------------------------------------------- targets
def _pairs(results: list[dict]) -> dict:
    """``{(model, layout): {path: result}}``."""
    out: dict = {}
    for r in results:
        out.setdefault((r["model"], r["layout"]), {})[r["path"]] = r
    return out


def check_targets(results: list[dict]) -> list[tuple[bool, str]]:
    """The targets, for each model and layout measured on both paths: ``(passed, line)``: launches per step no more
    than the bank path's; per group-conv layer at most two launches besides its GEMMs; bytes written outside the
    GEMMs no more than the bank path's; no activation-sized copy or fill in a layer fed by another layer; saved
    for backward no more than the bank path's."""
    lines = []
    for (model, layout), paths in _pairs(results).items():
        if set(PATHS) - set(paths):
            continue
        k, b = paths["kernel"], paths["bank"]
        where = f"{model} {layout}"
        lines.append((k["launches"] <= b["launches"],
                      f"{where}: launches per step, kernel {k['launches']} <= bank {b['launches']}"))
        extra = [(lay["other"], lay["layer"]) for lay in k["layers"]]
        worst = max(extra, default=(0, "-"))
        lines.append((worst[0] <= 2, f"{where}: launches per group-conv layer besides its GEMMs, at most 2: "
                                     f"max {worst[0]} ({worst[1]})"))
        lines.append((k["bytes_outside_gemms"] <= b["bytes_outside_gemms"],
                      f"{where}: bytes written outside the GEMMs, kernel {k['bytes_outside_gemms'] / MB:.1f} MB "
                      f"<= bank {b['bytes_outside_gemms'] / MB:.1f} MB"))
        copies = [lay["layer"] for lay in k["layers"] if lay["input_from_layer"] and lay["activation_copies"]]
        lines.append((not copies, f"{where}: no activation-sized copy or fill in a layer fed by another layer: "
                                  f"{len(copies)} layers with one" + (f" ({', '.join(copies[:3])}...)" if copies
                                                                      else "")))
        lines.append((k["saved_bytes"] <= b["saved_bytes"],
                      f"{where}: saved for backward, kernel {k['saved_bytes'] / MB:.1f} MB <= bank "
                      f"{b['saved_bytes'] / MB:.1f} MB"))
    return lines


# --------------------------------------------------------------------------------------------------- output
def _mb(r: Optional[dict], key: str) -> str:
    return "–" if r is None else f"{r[key] / MB:.1f}"


def _launches(r: Optional[dict]) -> str:
    return "–" if r is None else f"{r['launches']} ({r['triton']})"


def markdown(results: list[dict], per_layer: bool = False) -> str:
    """One row per model and input layout (MB = 10⁶ bytes); with ``per_layer``, a table per group-conv layer."""
    lines = ["| model | input | launches: kernel path (Triton) | bank path (Triton) | bytes written outside the "
             "GEMMs, MB, kernel vs bank | peak MB, kernel vs bank | saved for backward MB, kernel vs bank | of "
             "which loss + optimizer: launches, MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (model, layout), paths in _pairs(results).items():
        k, b = paths.get("kernel"), paths.get("bank")
        r = k or b
        label = f"`{MODELS[model].description if model in MODELS else model}`, B{r['batch']}, {r['size']}×{r['size']}"
        lines.append(f"| {label} | {layout} | {_launches(k)} | {_launches(b)} | "
                     f"{_mb(k, 'bytes_outside_gemms')} vs {_mb(b, 'bytes_outside_gemms')} | "
                     f"{_mb(k, 'peak_bytes')} vs {_mb(b, 'peak_bytes')} | "
                     f"{_mb(k, 'saved_bytes')} vs {_mb(b, 'saved_bytes')} | "
                     f"{r['loss_optimizer_launches']}, {_mb(r, 'loss_optimizer_bytes')} |")
    out = "\n".join(lines) + "\n"
    if per_layer:
        for r in results:
            out += (f"\n{r['model']}, {r['layout']}, {r['path']} path, per group-conv layer:\n\n"
                    "| layer | launches | Triton | not GEMMs | bytes outside the GEMMs, MB | of which weight "
                    "re-layouts, MB | activation-sized copies or fills |\n"
                    "| --- | --- | --- | --- | --- | --- | --- |\n")
            for lay in r["layers"]:
                copies = ", ".join(lay["activation_copies"]) or "–"
                out += (f"| {lay['layer']} | {lay['launches']} | {lay['triton']} | {lay['other']} | "
                        f"{lay['bytes_outside_gemms'] / MB:.2f} | {lay.get('weight_relayout_bytes', 0) / MB:.2f} | "
                        f"{copies} |\n")
    return out


def before_after(before: list[dict], after: list[dict]) -> str:
    """The kernel path of an earlier run (``--before``, its ``--out`` JSON) against this one's, per model and input
    layout: launches (Triton), bytes written outside the GEMMs, peak and saved for backward (MB), and the most
    launches of a group-conv layer besides its GEMMs."""
    def worst(r: dict) -> int:
        return max((lay["other"] for lay in r["layers"]), default=0)

    def cells(r: Optional[dict]) -> str:
        if r is None:
            return "– | – | – | – | –"
        return (f"{_launches(r)} | {_mb(r, 'bytes_outside_gemms')} | {_mb(r, 'peak_bytes')} | "
                f"{_mb(r, 'saved_bytes')} | {worst(r)}")

    old = {(r["model"], r["layout"]): r for r in before if r["path"] == "kernel"}
    lines = ["| model | input | before: launches (Triton) | MB outside the GEMMs | peak MB | saved MB | per layer, "
             "not GEMMs | after: launches (Triton) | MB outside the GEMMs | peak MB | saved MB | per layer, not "
             "GEMMs |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in after:
        if r["path"] == "kernel":
            lines.append(f"| {r['model']} | {r['layout']} | {cells(old.get((r['model'], r['layout'])))} | "
                         f"{cells(r)} |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                torch=torch.__version__, python=sys.version.split()[0], dtype="fp32",
                tf32=torch.backends.cudnn.allow_tf32, threads=torch.get_num_threads())


def _environment_line(env: dict) -> str:
    tf32 = " (tf32 allowed)" if env["tf32"] else ""
    return (f"{env['date']}: torch {env['torch']}, Python {env['python']}, {env['dtype']}{tf32}, "
            f"{env['threads']} threads")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.launches", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="all", help=f"'all' or a comma-separated subset of {list(MODELS)}")
    p.add_argument("--layouts", default="all", help=f"'all' or a subset of {list(LAYOUTS)} (the input's layout)")
    p.add_argument("--paths", default="all", help=f"'all' or a subset of {list(PATHS)}")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size of every model (default: " + ", ".join(f"{k} {m.batch}" for k, m in
                                                                      MODELS.items()) + ")")
    p.add_argument("--size", type=int, default=None,
                   help="image side of every model (default: " + ", ".join(f"{k} {m.size}" for k, m in
                                                                      MODELS.items()) + ")")
    p.add_argument("--per-layer", action="store_true", help="also a table per group-conv layer")
    p.add_argument("--json", action="store_true", help="print the results as JSON (every launch included) instead")
    p.add_argument("--out", type=Path, default=None,
                   help="also write <out>.md and <out>.json.gz, every launch (e.g. perf/results/launches-2026-12-05)")
    p.add_argument("--before", type=Path, default=None,
                   help="an earlier run's <out>.json.gz: also print its kernel path against this run's")
    args = p.parse_args(argv)
    try:
        models = parse_names(args.models, list(MODELS), "--models")
        layouts = parse_names(args.layouts, list(LAYOUTS), "--layouts")
        paths = parse_names(args.paths, list(PATHS), "--paths")
    except ValueError as err:
        p.error(str(err))
    for flag, value in (("--batch", args.batch), ("--size", args.size)):
        if value is not None and value < 1:
            p.error(f"{flag}: expected a positive int, got {value}")
    results = [measure(m, path, layout, args.batch, args.size) for m in models for layout in layouts for path in paths]
    targets = check_targets(results)
    result = dict(kind="launches", environment=environment(), argv=list(argv if argv is not None else sys.argv[1:]),
                  results=results, targets=[dict(passed=ok, target=line) for ok, line in targets])
    text = markdown(results, args.per_layer)
    if args.before is not None:
        with gzip.open(args.before, "rt", encoding="utf-8") as f:
            earlier = json.load(f)
        text += (f"\nKernel path, before ({args.before.name}, {earlier['environment']['date']}) and after:\n\n"
                 + before_after(earlier["results"], results))
    text += "".join(f"\n{'PASS' if ok else 'FAIL'} {line}" for ok, line in targets) + ("\n" if targets else "")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Every launch of every run: kept for a reader who wants one, compressed (a few hundred kB as text).
        with gzip.open(args.out.with_suffix(".json.gz"), "wt", encoding="utf-8") as f:
            json.dump(result, f, separators=(",", ":"))
        args.out.with_suffix(".md").write_text(
            f"# python -m perf.launches {' '.join(result['argv'])}\n\n{_environment_line(result['environment'])}\n\n"
            f"{text}",
            encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
