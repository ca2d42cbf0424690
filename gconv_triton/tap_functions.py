"""Tap functions: what a tap convolution computes between one input pixel and one weight, ``f(x, w)``.

A :class:`TapFunction` carries the tap twice: as a PyTorch function (the CPU path and the reference; its
derivatives come from autograd) and as three ``@triton.jit`` functions (the value and the two partial
derivatives) that the fused kernels call.  :func:`check_tap` checks that the two agree.  The built-in taps are
looked up by name (``"mul"``, ``"adder"``, ``"addernet"``, ``"l2"``, ``"add"``, ``"sub"``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pickle
from typing import Callable, Optional

import torch

from ._backend import backend, use_triton
from ._support import TAP_FUNCTIONS, untraced

__all__ = ["TapFunction", "check_tap", "get_tap", "BUILTIN_TAPS", "REDUCTIONS"]

REDUCTIONS = ("sum", "max", "min", "prod")


class TapFunction:
    """An elementwise tap ``f(x, w)`` and its partial derivatives.

    Args:
        name: a short name (shown by modules' ``repr``; the ops refer to the tap by it).
        torch_fn: ``torch_fn(x, w)`` on broadcast tensors, differentiable by autograd: the CPU path and the
            reference.
        triton_fn, triton_dx, triton_dw: ``@triton.jit`` functions of ``(x, w)`` returning ``f``, ``∂f/∂x`` and
            ``∂f/∂w`` elementwise (fp32 blocks, fp64 for fp64 tensors).
        torch_dx, torch_dw: optional elementwise PyTorch derivatives used by the CPU path instead of autograd of
            ``torch_fn`` (the built-ins give them; ``"addernet"`` uses them for its surrogate gradient).
        reductions: the reductions the tap may be used with (all by default).
    """

    _builtin = False  # a built-in's Triton functions are compiled when first needed (see _BuiltinTap)

    def __init__(self, name: str, torch_fn: Callable, triton_fn=None, triton_dx=None, triton_dw=None, *,
                 torch_dx: Optional[Callable] = None, torch_dw: Optional[Callable] = None,
                 reductions=REDUCTIONS):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a non-empty str, got {name!r}")
        if not callable(torch_fn):
            raise ValueError(f"torch_fn: expected a callable torch_fn(x, w) on tensors, got {torch_fn!r}")
        for arg, fn in (("torch_dx", torch_dx), ("torch_dw", torch_dw)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{arg}: expected None or a callable of (x, w), got {fn!r}")
        self.name = name
        self.torch_fn = torch_fn
        self.torch_dx = torch_dx
        self.torch_dw = torch_dw
        self.reductions = tuple(reductions)
        self._triton = (triton_fn, triton_dx, triton_dw)
        if not self._builtin:
            for arg, fn in zip(("triton_fn", "triton_dx", "triton_dw"), self._triton):
                _check_jit(fn, arg)
        TAP_FUNCTIONS.register(self)  # now, outside any trace: a compiled first call finds it

    # A tap is an immutable description of functions: copies share it (as they share a function), and a pickle
    # holds a built-in's name or a user tap's functions by reference (rebuilt and registered on loading).
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        if self._builtin:
            return get_tap, (self.name,)
        fields = dict(torch_fn=self.torch_fn, torch_dx=self.torch_dx, torch_dw=self.torch_dw)
        for arg, fn in fields.items():
            if fn is not None:
                _check_picklable(self, arg, fn)
        triton = tuple(_global_name(self, arg, fn) for arg, fn in zip(("triton_fn", "triton_dx", "triton_dw"),
                                                                        self._triton))
        return _rebuild_tap, (self.name, fields, triton, self.reductions)

    def triton_functions(self) -> tuple:
        """``(f, ∂f/∂x, ∂f/∂w)`` as ``@triton.jit`` functions (imports Triton)."""
        return self._triton

    def differentiable(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``torch_fn(x, w)`` whose autograd derivatives are the tap's own: ``torch_dx``/``torch_dw`` when both are
        given (so ``"addernet"`` keeps its surrogates), else autograd's of ``torch_fn``; differentiable twice
        when they are (the second-order gradients differentiate them)."""
        if self.torch_dx is None or self.torch_dw is None:
            return self.torch_fn(x, w)
        return _ExplicitDerivatives.apply(x, w, self)

    def torch_grads(self, x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, coef: torch.Tensor):
        """``(Σ coef·∂f/∂x, Σ coef·∂f/∂w)`` reduced to ``x``'s and ``w``'s shapes; ``f`` is :meth:`torch_value` of
        ``x`` and ``w`` (leaves requiring grad), needed only when no explicit derivatives are given."""
        if self.torch_dx is not None and self.torch_dw is not None:
            dx = _sum_to(coef * self.torch_dx(x, w), x.shape)
            dw = _sum_to(coef * self.torch_dw(x, w), w.shape)
            return dx, dw
        return torch.autograd.grad(f, (x, w), coef)

    def torch_value(self, x: torch.Tensor, w: torch.Tensor, differentiable: bool) -> torch.Tensor:
        """``torch_fn(x, w)``; with ``differentiable``, recorded by autograd for :meth:`torch_grads` even inside an
        op's implementation (where the custom-op machinery switched autograd off below it)."""
        if not differentiable or (self.torch_dx is not None and self.torch_dw is not None):
            return self.torch_fn(x, w)
        with contextlib.ExitStack() as stack:
            for key in ("AutogradFunctionality", "ADInplaceOrView"):
                stack.enter_context(torch._C._SetExcludeDispatchKeyGuard(getattr(torch._C.DispatchKey, key), False))
            stack.enter_context(torch.enable_grad())
            return self.torch_fn(x, w)

    def standard_ops_problem(self) -> Optional[str]:
        """None when ``torch_fn`` is made of standard PyTorch (aten) operators, the form ONNX export and
        :func:`~gconv_triton.export_model` write; else why not.  Traced once, on fake tensors, and remembered."""
        if self._builtin:
            return None
        if not hasattr(self, "_standard_problem"):
            self._standard_problem = _standard_ops_problem(self.torch_fn)
        return self._standard_problem

    def __repr__(self) -> str:
        return f"TapFunction({self.name!r})"


def _standard_ops_problem(fn) -> Optional[str]:
    """Trace ``fn(x, w)`` on fake tensors (apart from any export in progress): None when its graph holds aten or
    prims operators only, else what it holds or why it could not be traced."""
    import operator

    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with untraced():  # called inside an export or a compiled graph: trace apart from whatever traces the caller
            graph = make_fx(fn, tracing_mode="fake")(torch.zeros(2), torch.zeros(2))
    except Exception as e:  # anything but tensor operators: numpy, .item(), Python control flow on values
        return f"tracing torch_fn on fake tensors failed ({type(e).__name__}: {str(e).splitlines()[0]})"
    others = sorted({str(node.target) for node in graph.graph.nodes if node.op == "call_function"
                     and getattr(node.target, "namespace", None) not in ("aten", "prims")
                     and node.target.__module__ not in (operator.__name__, "_operator")})
    if others:
        return f"torch_fn calls {', '.join(others)}, which are not standard PyTorch operators"
    return None


def _check_picklable(tap: TapFunction, arg: str, fn) -> None:
    try:
        pickle.dumps(fn)
    except Exception as e:  # PicklingError, AttributeError, TypeError: which one depends on the object
        raise pickle.PicklingError(
            f"{arg}: TapFunction {tap.name!r} cannot be pickled: its {arg} {fn!r} cannot ({e}); define it with def "
            f"at module level (not a lambda or a local function) to save or load a model that holds this tap "
            f"(copy.deepcopy shares the tap and needs no pickling)") from e


def _global_name(tap: TapFunction, arg: str, fn) -> tuple:
    """``(module, qualified name)`` under which the ``@triton.jit`` function ``fn`` can be imported again."""
    inner = getattr(fn, "fn", fn)
    module, qualname = getattr(inner, "__module__", None), getattr(inner, "__qualname__", "")
    try:
        found = _import_global(module, qualname)
    except (ImportError, AttributeError, TypeError, ValueError):
        found = None
    if found is not fn:
        raise pickle.PicklingError(
            f"{arg}: TapFunction {tap.name!r} cannot be pickled: its {arg} {fn!r} is not importable as "
            f"{module}.{qualname}; define the @triton.jit function at module level to save or load a model that "
            f"holds this tap")
    return module, qualname


def _import_global(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rebuild_tap(name: str, fields: dict, triton: tuple, reductions: tuple) -> "TapFunction":
    """Unpickle a user tap: import its ``@triton.jit`` functions and construct (and so register) it again."""
    return TapFunction(name, fields["torch_fn"], *(_import_global(*ref) for ref in triton),
                       torch_dx=fields["torch_dx"], torch_dw=fields["torch_dw"], reductions=reductions)


class _ExplicitDerivatives(torch.autograd.Function):
    """``tap.torch_fn(x, w)`` with ``tap.torch_dx``/``torch_dw`` as its derivatives (a differentiable backward)."""

    @staticmethod
    def forward(x, w, tap):
        return tap.torch_fn(x, w)

    @staticmethod
    def setup_context(ctx, inputs, output):  # a separate setup_context: torch.func (the double backward) needs it
        x, w, tap = inputs
        ctx.save_for_backward(x, w)
        ctx.tap = tap

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        dx = _sum_to(g * ctx.tap.torch_dx(x, w), x.shape) if ctx.needs_input_grad[0] else None
        dw = _sum_to(g * ctx.tap.torch_dw(x, w), w.shape) if ctx.needs_input_grad[1] else None
        return dx, dw, None


def _sum_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast product back to ``shape`` (what autograd does for a broadcast operand)."""
    lead = t.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(d + lead for d, n in enumerate(shape) if n == 1 and t.shape[d + lead] != 1)
    return t.sum(dims, keepdim=True).reshape(shape) if dims else t


def _check_jit(fn, arg: str) -> None:
    """``fn`` is a ``@triton.jit`` function (a JITFunction, or an InterpretedFunction under the interpreter)."""
    if fn is None:
        raise ValueError(f"{arg}: missing; a TapFunction needs three @triton.jit functions of (x, w): triton_fn, "
                         f"triton_dx and triton_dw")
    try:
        from triton.runtime.jit import JITFunction
        kinds = [JITFunction]
        try:
            from triton.runtime.interpreter import InterpretedFunction
            kinds.append(InterpretedFunction)
        except ImportError:
            pass
    except ImportError:  # no Triton (a CPU-only install): the torch path does not call them
        return
    if not isinstance(fn, tuple(kinds)):
        raise ValueError(f"{arg}: expected a @triton.jit function of (x, w), got {type(fn).__name__} {fn!r}")


class _BuiltinTap(TapFunction):
    """A built-in tap: its ``@triton.jit`` functions are compiled from the plain Triton bodies below the first time a
    kernel needs them (:func:`_jit`), so that importing the package needs no Triton."""

    _builtin = True

    def triton_functions(self) -> tuple:
        return tuple(_jit(body) for body in self._triton)


# ---------------------------------------------------------------------------------------------- the built-in taps
# Each built-in tap's PyTorch and Triton bodies side by side, each written once.  They cannot be one body: the
# Triton ones are triton.language code (tl.where, tl.abs; a derivative may return a block that the kernel
# broadcasts, where PyTorch expands it), and a CPU-only install has no Triton to import.  The Triton bodies are
# plain functions here, compiled by triton.jit when a kernel first needs them; the kernels then call them exactly
# as they call a user TapFunction's @triton.jit functions (``TAP``, ``TAP_DX``, ``TAP_DW`` in kernels/tap_conv.py).
tl = None   # triton.language, bound by _jit: imported only when a kernel runs


@functools.lru_cache(maxsize=None)
def _jit(body):
    """``triton.jit(body)``, once per body (the same JITFunction for every launch, so the kernels compile once)."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    return triton.jit(body)


def _ones(x, w):
    return torch.ones_like(x + w)


def _triton_mul(x, w):
    return x * w


def _triton_mul_dx(x, w):
    return w


def _triton_mul_dw(x, w):
    return x


def _triton_adder(x, w):
    return -tl.abs(x - w)


def _triton_adder_dx(x, w):   # sign(w − x)
    v = w - x
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0)).to(v.dtype)


def _triton_adder_dw(x, w):   # sign(x − w)
    v = x - w
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0)).to(v.dtype)


def _triton_addernet_dx(x, w):   # HardTanh(w − x); NaN propagates, as torch.clamp
    return tl.minimum(tl.maximum(w - x, -1.0, propagate_nan=tl.PropagateNan.ALL), 1.0,
                      propagate_nan=tl.PropagateNan.ALL)


def _triton_addernet_dw(x, w):
    return x - w


def _triton_l2(x, w):
    return -(x - w) * (x - w)


def _triton_l2_dx(x, w):
    return 2.0 * (w - x)


def _triton_l2_dw(x, w):
    return 2.0 * (x - w)


def _triton_add(x, w):
    return x + w


def _triton_sub(x, w):
    return x - w


def _triton_one(x, w):
    return tl.zeros_like(x + w) + 1.0


def _triton_minus_one(x, w):
    return tl.zeros_like(x + w) - 1.0


_NO_PROD = ("sum", "max", "min")
#: name -> the built-in TapFunction: the PyTorch value and derivatives, then the Triton value and derivatives.
BUILTIN_TAPS = {
    # the ordinary convolution: a consistency check against F.conv2d (prod would only scale Π x by Π w)
    "mul": _BuiltinTap("mul", torch.mul, _triton_mul, _triton_mul_dx, _triton_mul_dw,
                       torch_dx=lambda x, w: w.expand_as(x + w), torch_dw=lambda x, w: x.expand_as(x + w),
                       reductions=_NO_PROD),
    # AdderNet: −|x − w|, exact gradients sign(w − x), sign(x − w); a product of distances makes no sense
    "adder": _BuiltinTap("adder", lambda x, w: -(x - w).abs(), _triton_adder, _triton_adder_dx, _triton_adder_dw,
                         torch_dx=lambda x, w: torch.sign(w - x), torch_dw=lambda x, w: torch.sign(x - w),
                         reductions=_NO_PROD),
    # the adder tap with AdderNet's training gradients: HardTanh(w − x) for the input, x − w for the weight
    "addernet": _BuiltinTap("addernet", lambda x, w: -(x - w).abs(), _triton_adder, _triton_addernet_dx,
                            _triton_addernet_dw, torch_dx=lambda x, w: (w - x).clamp(-1, 1),
                            torch_dw=lambda x, w: x - w, reductions=_NO_PROD),
    "l2": _BuiltinTap("l2", lambda x, w: -(x - w).square(), _triton_l2, _triton_l2_dx, _triton_l2_dw,
                      torch_dx=lambda x, w: 2 * (w - x), torch_dw=lambda x, w: 2 * (x - w), reductions=_NO_PROD),
    # morphology: max-plus dilation (reduce="max"), min-plus (reduce="min"); erosion is "sub" with "min"
    "add": _BuiltinTap("add", torch.add, _triton_add, _triton_one, _triton_one, torch_dx=_ones, torch_dw=_ones),
    "sub": _BuiltinTap("sub", torch.sub, _triton_sub, _triton_one, _triton_minus_one, torch_dx=_ones,
                       torch_dw=lambda x, w: -_ones(x, w)),
}


def get_tap(tap) -> TapFunction:
    """A built-in tap's name or a :class:`TapFunction` -> the TapFunction; ``ValueError`` naming ``tap`` else."""
    if isinstance(tap, TapFunction):
        return tap
    if isinstance(tap, str) and tap in BUILTIN_TAPS:
        return BUILTIN_TAPS[tap]
    raise ValueError(f"tap: expected one of {tuple(BUILTIN_TAPS)} or a gconv_triton.TapFunction, got {tap!r}")


def check_reduce(tap: TapFunction, reduce) -> str:
    if not isinstance(reduce, str) or reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    if reduce not in tap.reductions:
        raise ValueError(f"reduce: {reduce!r} makes no sense with tap {tap.name!r} (its reductions are "
                         f"{tap.reductions}); expected one of those")
    return reduce


def check_tap(tap: TapFunction, *, points: int = 4096, seed: int = 0, rtol: float = 1e-6,
              device: Optional[torch.device] = None) -> None:
    """Check a tap's ``@triton.jit`` value and derivatives (and ``torch_dx``/``torch_dw`` when given) against
    ``torch_fn`` and its autograd derivatives at ``points`` random float64 points (``x, w ~ N(0, 1)``).

    Raises ``ValueError`` naming the first function that disagrees (relative error over the points where the
    reference is finite above ``rtol``).  The Triton functions run where the kernels run: on a CUDA device, or
    on the CPU under ``TRITON_INTERPRET=1``; where neither is available the PyTorch derivatives are still
    checked, and a ``RuntimeWarning`` says the Triton functions were not and what to set.
    """
    import warnings

    tap = get_tap(tap)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(points, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(points, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    with torch.enable_grad():
        f = tap.torch_fn(x, w)
    ref_dx, ref_dw = torch.autograd.grad(f, (x, w), torch.ones_like(f))
    x, w, f = x.detach(), w.detach(), f.detach()
    got = {}
    if tap.torch_dx is not None:
        got["torch_dx"] = (tap.torch_dx(x, w), ref_dx)
    if tap.torch_dw is not None:
        got["torch_dw"] = (tap.torch_dw(x, w), ref_dw)
    try:
        with backend("triton"):
            use_triton(x)  # raises when the Triton functions cannot run here
    except RuntimeError:
        warnings.warn(f"check_tap: tap {tap.name!r}: checked {', '.join(got) or 'nothing'} against autograd of "
                      f"torch_fn, but not triton_fn, triton_dx, triton_dw: they run on a CUDA device or under "
                      f"Triton's CPU interpreter, and neither is available here (set TRITON_INTERPRET=1 in the "
                      f"environment before importing gconv_triton, or pass device='cuda' on a machine with a GPU)",
                      RuntimeWarning, stacklevel=2)
    else:
        from .kernels import tap_conv as tap_kernels

        values = tap_kernels.evaluate(tap.triton_functions(), x, w)
        for name, out, ref in zip(("triton_fn", "triton_dx", "triton_dw"), values, (f, ref_dx, ref_dw)):
            got[name] = (out, ref)
    for name, (out, ref) in got.items():
        finite = torch.isfinite(ref)
        err = float((out[finite] - ref[finite]).norm() / ref[finite].norm().clamp_min(1e-300))
        if not err <= rtol:
            raise ValueError(f"{name}: tap {tap.name!r} disagrees with autograd of torch_fn (relative error "
                             f"{err:.2e} > {rtol:.0e} at {points} random points)")
