"""The implementations the suite compares, each built for one :class:`Case` (a layer's tensors in a dtype and
memory layout).

- ``gconv_triton``: ``gconv_triton.functional.gconv2d`` on the fused kernels (on a CPU: the package's CPU path);
  for the steerable groups (C_N / D_N) ``gconv_triton.steerable.steerable_conv2d``, on the kernels once they serve
  the group, until then on the package's path for the device (the bank + ``F.conv2d``), which the record notes.
- ``gconv_triton_copy``: ``gconv_triton`` on the kernels with the channels-first in-place reads switched off
  (``kernels.group_conv.pixel_major_reads(False)``): a contiguous activation that the forward or the input gradient
  would read in place is copied channels-last first.  Beside ``gconv_triton`` on the ``contiguous`` layout it times
  what those reads save or cost (4-byte loads in the hot loop against a copy launch and an activation pass).
- ``bank_cudnn``: the filter bank gathered from the base weight by a precomputed index on every call, then
  ``F.conv2d`` (what GrouPy-style ports do; on a CPU, the same on the CPU); for C_N / D_N the bank built from the
  coefficients on every call by the package's one-matmul builder (``steerable_bank``), then ``F.conv2d``.
- ``e2cnn``: ``e2cnn.nn.R2Conv`` on regular fields (its own steerable parametrisation; the bank is expanded on
  every training call).  Skipped, with the reason, when e2cnn is missing or cannot build a layer.
- ``dense_cudnn``: ``F.conv2d`` with the bank precomputed and trained as a dense weight (cuDNN if the bank were free).
- ``matmul``: ``torch.matmul`` of ``(M, K) @ (K, N)`` with the layer's ``M, N, K`` (:meth:`Layer.gemm`): the same
  FLOPs at the tensor-core ceiling.

On a steerable group (:func:`is_steerable`) a case's weight ``w`` is the basis coefficients
``(C_out, C_in / groups, S_in, B)`` (:func:`weight_shape`), as ``GroupConv2d(group="c8")`` holds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F

import gconv_triton
from gconv_triton.autotune import DTYPES, Layer, make_input
from gconv_triton.functional import gconv2d
from gconv_triton.reference import filter_bank
from gconv_triton.steerable import SteerableGroup, basis_size, steerable_bank, steerable_conv2d

PROVIDERS = ("gconv_triton", "bank_cudnn", "e2cnn", "dense_cudnn", "matmul")
#: providers run only when named (``--providers gconv_triton,gconv_triton_copy``), never by ``all``
EXTRA_PROVIDERS = ("gconv_triton_copy",)


@functools.lru_cache(maxsize=256)
def is_steerable(layer: Layer) -> bool:
    """Whether ``layer``'s group is C_N / D_N on steerable filters (its weight: basis coefficients)."""
    return isinstance(layer.spec().group, SteerableGroup)


def weight_shape(layer: Layer) -> tuple[int, ...]:
    """The trained weight: the base weight ``(C_out, C_in / groups, S_in, kh, kw)``, or for a steerable group the
    coefficients ``(C_out, C_in / groups, S_in, B)``."""
    shape = layer.weight_shape()
    return (*shape[:3], basis_size(layer.kernel)) if is_steerable(layer) else shape


def layer_conv(x: torch.Tensor, w: torch.Tensor, layer: Layer) -> torch.Tensor:
    """The package's public functional op for ``layer`` (``gconv2d``, or ``steerable_conv2d`` for C_N / D_N) on
    ``x (B, C_in, S_in, H, W)`` and the weight ``w`` (:func:`weight_shape`), on the current backend."""
    geometry = dict(group=layer.group, in_group=layer.in_group, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=layer.groups)
    if is_steerable(layer):
        return steerable_conv2d(x, w, kernel_size=layer.kernel[0], **geometry)
    return gconv2d(x, w, **geometry)


@dataclasses.dataclass
class Case:
    """One layer's tensors in one dtype and memory layout, shared by every provider.

    ``x (B, C_in, S_in, H, W)`` (requires grad when the layer's input does), base weight ``w`` (requires grad),
    output gradient ``dy (B, C_out, S_out, H_out, W_out)`` in ``x``'s layout.
    """

    layer: Layer
    dtype: str
    layout: str
    x: torch.Tensor
    w: torch.Tensor
    dy: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.x.device

    def inputs(self, *params: torch.Tensor) -> list[torch.Tensor]:
        """What a backward differentiates: ``x`` when the layer needs its gradient, then ``params``."""
        return ([self.x] if self.layer.input_grad else []) + list(params)


def make_case(layer: Layer, dtype: str, layout: str, device, seed: int = 0) -> Case:
    """Fresh standard-normal tensors made on ``device`` (the weight scaled by 1/sqrt(fan-in) so outputs stay O(1) in
    half precision; coefficients by 1/sqrt(C_in·S_in·B), which gives the taps about that variance); the values
    depend on the seed only, not on the layout or dtype (before rounding)."""
    device = torch.device(device)
    torch_dtype = DTYPES[dtype][0]
    gen = torch.Generator(device=device).manual_seed(seed)
    spec = layer.spec()
    taps = weight_shape(layer)[-1] if is_steerable(layer) else spec.kernel[0] * spec.kernel[1]
    fan_in = spec.in_channels * spec.s_in * taps
    x = make_input(layer.input_shape(), torch.float32, device, layout, gen)
    w = torch.randn(weight_shape(layer), generator=gen, device=device) / math.sqrt(fan_in)
    out_shape = (spec.batch, spec.groups * spec.out_channels, spec.s_out, spec.out_height, spec.out_width)
    dy = make_input(out_shape, torch.float32, device, layout, gen)
    x, w, dy = (t.to(torch_dtype) for t in (x, w, dy))   # .to keeps each tensor's memory layout
    return Case(layer, dtype, layout, x.requires_grad_(layer.input_grad), w.requires_grad_(), dy)


@dataclasses.dataclass
class Built:
    """A provider ready to run: ``forward()`` returns a tensor shaped like ``grad_output``; a backward
    differentiates it with respect to ``inputs``.  ``note``: what the records should say about what ran."""

    forward: Callable[[], torch.Tensor]
    inputs: list[torch.Tensor]
    grad_output: torch.Tensor
    note: Optional[str] = None
    #: entered around every timed call, its backward included (a switch that the backward's launchers read too)
    setting: Callable[[], ContextManager] = contextlib.nullcontext


class Provider:
    """Base class: ``build(case)`` for timing, ``outputs(case)`` for the numerical check (``{"y", "dx", "dw"}``
    in the package's conventions, comparable with the reference)."""

    name = ""
    comparable = True   # outputs() reproduce the reference layer (e2cnn's own weights do not)

    def unsupported(self, layer: Layer) -> Optional[str]:
        """Why this provider cannot run ``layer``, or None."""
        return None

    def build(self, case: Case) -> Built:
        raise NotImplementedError

    def outputs(self, case: Case) -> dict[str, torch.Tensor]:
        built = self.build(case)
        with built.setting():
            y = built.forward()
            grads = torch.autograd.grad(y, built.inputs, built.grad_output)
        names = (["dx"] if case.layer.input_grad else []) + ["dw"]
        return {"y": y.detach(), **dict(zip(names, grads))}


class GconvTriton(Provider):
    """Our functional op (:func:`layer_conv`): the fused kernels with ``backend="triton"``; ``backend="auto"`` on
    CPU tensors times the package's CPU path (the reference: bank + ``F.conv2d``).  A steerable layer that the
    kernels would not serve (``NotImplementedError`` under ``"triton"``; none since the steering kernels serve
    C_N / D_N) would run on ``"auto"``, the package's own path for the device, and say so (:meth:`fallback`)."""

    name = "gconv_triton"

    def __init__(self, backend: str = "triton"):
        self.backend = backend
        self._fallbacks: dict[tuple, Optional[str]] = {}

    def fallback(self, case: Case) -> Optional[str]:
        """Why ``case`` runs on ``"auto"`` instead of this provider's ``"triton"`` backend, or None.  Found once
        per layer, dtype and device, by a forward of the first sample under ``"triton"``."""
        layer = case.layer
        if self.backend != "triton" or not is_steerable(layer):
            return None
        key = (layer, case.x.dtype, case.device.type)
        if key not in self._fallbacks:
            try:
                with gconv_triton.backend("triton"), torch.no_grad():
                    layer_conv(case.x[:1], case.w, layer)
                self._fallbacks[key] = None
            except NotImplementedError as err:
                self._fallbacks[key] = (f"no Triton kernels serve {layer.group} yet, so this is the package's path "
                                        f"for the device: steerable_bank + F.conv2d, the ops of bank_cudnn "
                                        f"({str(err).splitlines()[0][:120]})")
        return self._fallbacks[key]

    def build(self, case: Case) -> Built:
        note = self.fallback(case)
        backend = "auto" if note else self.backend

        def forward():
            with gconv_triton.backend(backend):
                return layer_conv(case.x, case.w, case.layer)

        return Built(forward, case.inputs(case.w), case.dy, note)


class GconvTritonCopy(GconvTriton):
    """:class:`GconvTriton` on the kernels with the channels-first in-place reads off
    (``kernels.group_conv.pixel_major_reads(False)``, held around the backward too): where ``gconv_triton`` reads a
    contiguous ``x`` or ``dy`` in place, this copies it channels-last first, as the launchers did before."""

    name = "gconv_triton_copy"

    def __init__(self):
        super().__init__("triton")

    def build(self, case: Case) -> Built:
        from gconv_triton.kernels.group_conv import pixel_major_reads   # (imports the kernels: CUDA or interpreter)

        built = super().build(case)
        setting = functools.partial(pixel_major_reads, False)

        def forward():
            with setting():
                return built.forward()

        return dataclasses.replace(built, forward=forward, setting=setting)


@functools.lru_cache(maxsize=64)
def _bank_index_cpu(layer: Layer) -> torch.Tensor:
    spec = layer.spec()
    numel = math.prod(layer.weight_shape())
    index = torch.arange(numel).view(layer.weight_shape())
    return filter_bank(index, spec.group, spec.in_group).flatten(0, 1).flatten(1, 2).contiguous()


def bank_index(layer: Layer, device) -> torch.Tensor:
    """Where each filter-bank entry ``(C_out·S_out, C_in_g·S_in, kh, kw)`` reads the flattened base weight: GrouPy's
    precomputed gather index (built once, by running :func:`filter_bank` on ``arange``)."""
    return _bank_index_cpu(layer).to(device)


def gather_bank(w: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The bank as one ``index_select`` of the flattened base weight (its backward is one ``index_add_``: the
    fastest form of the gather that we found, so the baseline is not handicapped by slow advanced indexing)."""
    return w.reshape(-1).index_select(0, index.flatten()).view(index.shape)


def layer_bank(w: torch.Tensor, layer: Layer) -> torch.Tensor:
    """The filter bank ``(C_out·S_out, C_in_g·S_in, kh, kw)`` of the weight ``w`` (:func:`weight_shape`),
    differentiable: :func:`gather_bank`, or for a steerable group ``steerable_bank`` (one matmul of the
    coefficients with the rotated basis tables, one ``index_select``)."""
    if is_steerable(layer):
        spec = layer.spec()
        return steerable_bank(w, spec.group, spec.in_group, layer.kernel[0])
    return gather_bank(w, bank_index(layer, w.device))


def conv_with_bank(x: torch.Tensor, bank: torch.Tensor, layer: Layer) -> torch.Tensor:
    """``F.conv2d`` of the flattened ``x (B, C·S, H, W)`` with ``bank``; returns
    ``(B, C_out, S_out, H_out, W_out)``."""
    spec = layer.spec()
    y = F.conv2d(x.flatten(1, 2), bank, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return y.unflatten(1, (spec.groups * spec.out_channels, spec.s_out))


def bank_grad_to_weight(dbank: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Sum a bank gradient back onto the base weight (the scatter-add that the gather's backward does); for a
    steerable group, the coefficients' gradient (the bank builder's backward, which is linear)."""
    if is_steerable(layer):
        w = dbank.new_zeros(weight_shape(layer)).requires_grad_()
        return torch.autograd.grad(layer_bank(w, layer), w, dbank)[0]
    index = bank_index(layer, dbank.device).flatten()
    dw = torch.zeros(math.prod(layer.weight_shape()), dtype=dbank.dtype, device=dbank.device)
    return dw.index_add_(0, index, dbank.flatten()).view(layer.weight_shape())


class BankCudnn(Provider):
    """The filter bank gathered by index on every call (its backward scatter-adds into the base weight), then
    ``F.conv2d``: what GrouPy-style ports do.  For a steerable group the bank is built from the coefficients on
    every call (:func:`layer_bank`), as a training step must."""

    name = "bank_cudnn"

    def build(self, case: Case) -> Built:
        if is_steerable(case.layer):
            return Built(lambda: conv_with_bank(case.x, layer_bank(case.w, case.layer), case.layer),
                         case.inputs(case.w), case.dy)
        index = bank_index(case.layer, case.device)
        return Built(lambda: conv_with_bank(case.x, gather_bank(case.w, index), case.layer),
                     case.inputs(case.w), case.dy)


class DenseCudnn(Provider):
    """``F.conv2d`` with the bank built once and trained as a dense weight: the cost of cuDNN alone."""

    name = "dense_cudnn"

    def _bank(self, case: Case) -> torch.Tensor:
        bank = layer_bank(case.w.detach(), case.layer)
        if case.layout == "channels_last":
            bank = bank.contiguous(memory_format=torch.channels_last)
        return bank.requires_grad_()

    def build(self, case: Case) -> Built:
        bank = self._bank(case)
        return Built(lambda: conv_with_bank(case.x, bank, case.layer), case.inputs(bank), case.dy)

    def outputs(self, case: Case) -> dict[str, torch.Tensor]:
        out = super().outputs(case)
        out["dw"] = bank_grad_to_weight(out["dw"], case.layer)
        return out


class Matmul(Provider):
    """``torch.matmul`` of random ``(M, K) @ (K, N)`` with the layer's GEMM sizes: the tensor-core ceiling.

    Its numerical check runs the layer itself as that GEMM (im2col of ``x`` times the bank, per channel group),
    which shows that ``M, N, K`` are the layer's."""

    name = "matmul"
    comparable = False   # times random matrices, not the layer

    def build(self, case: Case) -> Built:
        m, n, k = case.layer.gemm()
        gen = torch.Generator(device=case.device).manual_seed(1)
        dtype = case.x.dtype
        a = torch.randn(m, k, generator=gen, device=case.device, dtype=dtype).requires_grad_(case.layer.input_grad)
        b = torch.randn(k, n, generator=gen, device=case.device, dtype=dtype).requires_grad_()
        dy = torch.randn(m, n, generator=gen, device=case.device, dtype=dtype)
        return Built(lambda: torch.matmul(a, b), ([a] if case.layer.input_grad else []) + [b], dy)

    def outputs(self, case: Case) -> dict[str, torch.Tensor]:
        layer, spec = case.layer, case.layer.spec()
        m, n, k = layer.gemm()
        g = spec.groups
        cols = F.unfold(case.x.flatten(1, 2), spec.kernel, layer.dilation, layer.padding, layer.stride)
        b, _, pixels = cols.shape
        a = cols.view(b, g, k, pixels).permute(1, 0, 3, 2).reshape(g, b * pixels, k)      # (groups, M, K)
        bank = layer_bank(case.w, layer).reshape(g, n // g, k)                             # (groups, N_g, K)
        if a.shape[1:] != (m, k) or bank.shape[0] * bank.shape[1] != n:
            raise RuntimeError(f"im2col GEMM is {tuple(a.shape)} @ {tuple(bank.shape)}, Layer.gemm() says {(m, n, k)}")
        y = torch.matmul(a, bank.transpose(1, 2))                                          # (groups, M, N_g)
        y = y.view(g, b, spec.out_height, spec.out_width, n // g).permute(1, 0, 4, 2, 3)
        y = y.reshape(b, spec.groups * spec.out_channels, spec.s_out, spec.out_height, spec.out_width)
        grads = torch.autograd.grad(y, case.inputs(case.w), case.dy)
        names = (["dx"] if layer.input_grad else []) + ["dw"]
        return {"y": y.detach(), **dict(zip(names, grads))}


# ------------------------------------------------------------------------------------------------------ e2cnn
_E2_GSPACES = {"p4": ("Rot2dOnR2", dict(N=4)), "p4m": ("FlipRot2dOnR2", dict(N=4)), "z2": ("TrivialOnR2", {})}


def _e2cnn_gspace_args(group: str) -> Optional[tuple[str, dict]]:
    """``(gspace class, kwargs)`` of e2cnn's gspace for a group name: p4, p4m, z2, ``cN`` (``Rot2dOnR2(N)``),
    ``dN`` (``FlipRot2dOnR2(N)``, e2cnn's default axis); None for other groups."""
    if group in _E2_GSPACES:
        return _E2_GSPACES[group]
    steerable = re.fullmatch(r"([cd])([0-9]+)", group)
    if steerable is None:
        return None
    return ("Rot2dOnR2" if steerable[1] == "c" else "FlipRot2dOnR2"), dict(N=int(steerable[2]))


def e2cnn_gspace(group: str):
    """e2cnn's gspace for the group name ``group`` (:func:`_e2cnn_gspace_args`); ValueError if it has none."""
    args = _e2cnn_gspace_args(group)
    if args is None:
        raise ValueError(f"group: expected p4, p4m, z2, cN or dN (a group e2cnn has), got {group!r}")
    from e2cnn import gspaces

    return getattr(gspaces, args[0])(**args[1])


@functools.lru_cache(maxsize=1)
def load_e2cnn():
    """``(e2cnn module, None)`` if e2cnn imports, else ``(None, why)``."""
    try:
        import e2cnn
        import e2cnn.gspaces  # noqa: F401  (what the provider uses: fail here, not later)
        import e2cnn.nn  # noqa: F401
    except ImportError as err:
        return None, f"e2cnn is not installed ({err}); `pip install gconv_triton[perf]` adds it"
    from gconv_triton.interop import patch_e2cnn

    patch_e2cnn()  # e2cnn 0.2.3 on NumPy 2, as for users of gconv_triton.interop
    return e2cnn, None


def unshare_e2cnn_blocks() -> None:
    """Empty e2cnn's cache of basis-expansion blocks, so that the next ``R2Conv`` gets its own.  e2cnn shares one
    block module between every ``R2Conv`` of the same basis, so ``.to(dtype)`` on one converts the others' sampled
    basis too (an fp32 layer built after a float64 one fails); its dihedral key also ignores the reflection axis
    (``gconv_triton.interop``)."""
    import e2cnn.nn.modules.r2_conv.basisexpansion_singleblock as single

    single._stored_filters.clear()


@functools.lru_cache(maxsize=None)
def e2cnn_broken(group: str) -> Optional[str]:
    """Why e2cnn cannot build a small ``R2Conv`` between regular fields of ``group`` here, or None.  (e2cnn 0.2.3
    calls numpy APIs that numpy 2 removed, and only on some groups' basis paths: try each group once.)"""
    e2cnn, why = load_e2cnn()
    if why:
        return why
    try:
        from e2cnn import nn as enn

        space = e2cnn_gspace(group)
        enn.R2Conv(enn.FieldType(space, [space.regular_repr]), enn.FieldType(space, [space.regular_repr]), 3)
    except Exception as err:  # noqa: BLE001  (report why, go on without it)
        import numpy

        detail = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        return (f"e2cnn {getattr(e2cnn, '__version__', '?')} cannot build a {group} R2Conv with numpy "
                f"{numpy.__version__} ({detail})")
    return None


class E2cnn(Provider):
    """``e2cnn.nn.R2Conv`` between regular fields (trivial fields for a lifting layer) of ``Rot2dOnR2(N)`` (p4,
    ``cN``) or ``FlipRot2dOnR2(N)`` (p4m, ``dN``), default basis, in training mode: the bank is expanded from
    e2cnn's steerable basis on every call, as in training.  Its own weights (drawn here): on C_N / D_N the smoke
    mode's agreement reads them into our coefficients (``steerable.from_e2cnn``) to check the same function."""

    name = "e2cnn"
    comparable = False

    def unsupported(self, layer: Layer) -> Optional[str]:
        _, why = load_e2cnn()
        if why:
            return why
        if layer.kernel[0] != layer.kernel[1]:
            return f"R2Conv takes square kernels only, got {layer.kernel}"
        if _e2cnn_gspace_args(layer.group) is None or layer.in_group not in (layer.group, "z2"):
            return f"no e2cnn gspace for {layer.in_group} -> {layer.group} here"
        return e2cnn_broken(layer.group)

    def module(self, layer: Layer, device, dtype):
        e2cnn, why = load_e2cnn()
        if why:
            raise RuntimeError(why)
        from e2cnn import nn as enn

        space = e2cnn_gspace(layer.group)
        unshare_e2cnn_blocks()   # this layer is cast to `dtype` below
        in_repr = space.trivial_repr if layer.in_group == "z2" else space.regular_repr
        conv = enn.R2Conv(enn.FieldType(space, layer.c_in * [in_repr]),
                          enn.FieldType(space, layer.c_out * [space.regular_repr]), layer.kernel[0],
                          padding=layer.padding[0], stride=layer.stride, dilation=layer.dilation, groups=layer.groups,
                          bias=False, initialize=False)
        with torch.no_grad():
            conv.weights.normal_(0.0, 1.0 / math.sqrt(conv.weights.numel() / max(layer.c_out, 1)))
        return conv.to(device=device, dtype=dtype).train()

    def build(self, case: Case) -> Built:
        from e2cnn import nn as enn

        conv = self.module(case.layer, case.device, case.x.dtype)
        x4 = case.x.flatten(1, 2)

        def forward():
            return conv(enn.GeometricTensor(x4, conv.in_type)).tensor

        return Built(forward, case.inputs(*conv.parameters()), case.dy.flatten(1, 2))


def e2cnn_permutation(group: str) -> Optional[list[int]]:
    """e2cnn's order of the group elements in a regular field, as our indices: e2cnn's slot ``j`` holds our element
    ``p[j]``.  Found from a lifting layer's expanded bank (each output slot is the base filter under one element),
    so it checks e2cnn's conventions instead of assuming them; None if they cannot be matched."""
    layer = Layer("probe", group=group, in_group="z2", c_in=1, c_out=1, height=5, width=5, kernel=(5, 5))
    conv = E2cnn().module(layer, "cpu", torch.float64)
    bank = conv.expand_parameters()[0].detach()                          # (S, 1, 5, 5)
    spec = layer.spec()
    ours = filter_bank(bank[:1].view(1, 1, 1, 5, 5), spec.group, spec.in_group)[0, :, 0, 0]   # (S, 5, 5)
    perm = []
    for j in range(spec.s_out):
        hits = [g for g in range(spec.s_out) if torch.allclose(ours[g], bank[j, 0], atol=1e-12)]
        if len(hits) != 1:
            return None
        perm.append(hits[0])
    return perm if sorted(perm) == list(range(spec.s_out)) else None


def provider(name: str, device) -> Provider:
    """The provider called ``name`` for ``device`` (on a CPU ``gconv_triton`` times the package's CPU path)."""
    if name == "gconv_triton":
        return GconvTriton("triton" if torch.device(device).type == "cuda" else "auto")
    classes = {"gconv_triton_copy": GconvTritonCopy, "bank_cudnn": BankCudnn, "e2cnn": E2cnn,
               "dense_cudnn": DenseCudnn, "matmul": Matmul}
    if name not in classes:
        raise ValueError(f"provider: expected one of {PROVIDERS + EXTRA_PROVIDERS}, got {name!r}")
    return classes[name]()


__all__ = ["PROVIDERS", "EXTRA_PROVIDERS", "Case", "Built", "Provider", "GconvTriton", "GconvTritonCopy", "BankCudnn",
           "DenseCudnn", "Matmul", "E2cnn",
           "make_case", "bank_index", "gather_bank", "conv_with_bank", "bank_grad_to_weight", "load_e2cnn",
           "e2cnn_broken", "e2cnn_permutation", "e2cnn_gspace", "unshare_e2cnn_blocks", "is_steerable",
           "weight_shape", "layer_conv", "layer_bank", "provider"]
