"""When a layer that resamples (group convolution, transposed group convolution, spatial pooling) is *exactly*
equivariant, and the warning for when it is not.

Along one image axis every such layer is a list of output pixels, each reading a *footprint*: the in-image input
pixels it reads, and through which window position of the kernel (for pooling the window is symmetric, so only the
pixels, and, for average pooling, the divisor).  A flip of that axis commutes with the layer exactly when reflecting
every footprint about the input's centre (and the kernel about its own) gives the footprint of the mirrored
output pixel; a 90° rotation also needs the rows' footprints to equal the columns' (and a square input).  That
is what :func:`inexact_reasons` and its siblings decide, by listing the footprints: ``O(H·k)`` once per layer
and input size, and no approximation.  In closed form (``docs/exactness.md`` derives it):

* convolution (padding ``lo`` before, ``hi`` after): ``(n + lo + hi - d(k-1) - 1) % s == hi - lo``; with
  symmetric padding ``(n + 2p - d(k-1) - 1) % s == 0`` (always true for stride 1);
* transposed convolution: ``output_padding == 0`` (the extra rows go to the bottom and right only);
* pooling: as the convolution, and ``ceil_mode`` exact only where it changes nothing.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ._args import pair
from ._spec import concrete_shape, resolve_geometry
from ._support import assume_constant
from .groups import Group, get_group

__all__ = ["EquivarianceWarning", "inexact_reasons", "inexact_reasons_transposed", "inexact_reasons_pool"]

DOCS = "docs/exactness.md"


class EquivarianceWarning(UserWarning):
    """A layer's configuration makes it only approximately equivariant (stride misaligned with the input size,
    a non-square input under 90° rotations, asymmetric padding, a transposed convolution's ``output_padding``,
    a pooling window that overhangs one edge only).  Silence it with
    ``warnings.filterwarnings("ignore", category=gconv_triton.EquivarianceWarning)``."""


def _moved_axes(group: Group) -> tuple[bool, bool, bool]:
    """Whether some element reverses or moves the row axis, the column axis, and whether one swaps them.

    A matrix acts on ``(row, col)`` offsets, so ``m[0]`` gives the new row coordinate, ``m[1]`` the new column.
    """
    # a steerable C_N / D_N moves images by its grid symmetries only (its other elements are no lattice matrices)
    mats = group.matrices or [m for m in getattr(group, "lattice_matrices", ()) if m is not None]
    rows = any(m[0] != (1, 0) for m in mats)
    cols = any(m[1] != (0, 1) for m in mats)
    swap = any(m[0][1] != 0 for m in mats)
    return rows, cols, swap


# ------------------------------------------------------------------------------------------- footprints
class _Axis(NamedTuple):
    """One axis of a layer: the input size, the kernel's window positions (1 for pooling: its window is symmetric)
    and each output pixel's footprint, a frozenset of ``(input pixel, window position)`` pairs (for pooling, with the
    divisor)."""

    n: int
    k: int
    footprints: list


def _conv_axis(n: int, lo: int, hi: int, k: int, s: int, d: int) -> _Axis:
    n_out = (n + lo + hi - d * (k - 1) - 1) // s + 1
    return _Axis(n, k, [frozenset((o * s - lo + j * d, j) for j in range(k) if 0 <= o * s - lo + j * d < n)
                        for o in range(n_out)])


def _transposed_axis(n: int, p: int, out_pad: int, k: int, s: int, d: int) -> _Axis:
    n_out = (n - 1) * s - 2 * p + d * (k - 1) + out_pad + 1
    footprints = [set() for _ in range(max(n_out, 0))]
    for i in range(n):          # input pixel i spreads over outputs i·s - p + j·d
        for j in range(k):
            o = i * s - p + j * d
            if 0 <= o < n_out:
                footprints[o].add((i, j))
    return _Axis(n, k, [frozenset(f) for f in footprints])


def _pool_output_size(n: int, p: int, k: int, s: int, d: int, ceil_mode: bool) -> int:
    """``torch.nn.MaxPool2d``'s output size (a ceil-mode window must start inside the input or its left pad)."""
    span = n + 2 * p - d * (k - 1) - 1
    n_out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n_out - 1) * s >= n + p:
        n_out -= 1
    return n_out


def _pool_axis(n: int, p: int, k: int, s: int, d: int, ceil_mode: bool, count_padding: bool) -> _Axis:
    """``count_padding``: average pooling divides by the window clipped to the padded input (its default
    ``count_include_pad``), which the footprint must then carry; otherwise the pixels decide everything."""
    footprints = []
    for o in range(_pool_output_size(n, p, k, s, d, ceil_mode)):
        start = o * s - p
        pixels = frozenset((start + j * d, 0) for j in range(k) if 0 <= start + j * d < n)
        footprints.append((pixels, min(start + d * (k - 1) + 1, n + p) - start if count_padding else None))
    return _Axis(n, 1, footprints)


def _mirror(footprint, n: int, k: int):
    if isinstance(footprint, tuple):  # pooling: (pixels, divisor)
        return _mirror(footprint[0], n, k), footprint[1]
    return frozenset((n - 1 - i, k - 1 - j) for i, j in footprint)


def _symmetric(axis: _Axis) -> bool:
    return all(_mirror(f, axis.n, axis.k) == g for f, g in zip(axis.footprints, reversed(axis.footprints)))


def _reasons(group: Group, size: tuple[int, int], rows: _Axis, cols: _Axis, explain: Callable[[str], str],
             axes_differ: str) -> list[str]:
    """The reasons, from the two axes' footprints; ``explain(axis)`` words an asymmetric axis."""
    moves_rows, moves_cols, swap = _moved_axes(group)
    h, w = size
    reasons = []
    if swap:
        if h != w:
            reasons.append(f"input {h}x{w} is not square, but {group.name} rotates by 90 degrees")
        elif rows.footprints != cols.footprints:
            reasons.append(f"{group.name} rotates by 90 degrees but the axes are sampled differently: {axes_differ}")
    if moves_rows and not _symmetric(rows):
        reasons.append(explain("height"))
    if moves_cols and not _symmetric(cols):
        reasons.append(explain("width"))
    return reasons


def _stride_reason(axis: str, n: int, lo: int, hi: int, k: int, s: int, d: int, what: str = "") -> Optional[str]:
    """The closed-form rule for an axis sampled by windows ``k`` positions wide, ``d`` apart, every ``s`` pixels."""
    remainder = (n + lo + hi - d * (k - 1) - 1) % s
    if remainder == hi - lo:
        return None
    if s == 1:
        return (f"{axis}: asymmetric padding ({lo} before, {hi} after; 'same' padding with the even effective "
                f"kernel d(k-1)+1 = {d * (k - 1) + 1} does that) shifts the output off the image centre")
    if lo == hi:
        return (f"{axis}: stride {s} does not divide {axis[0].upper()} + 2p - d(k-1) - 1 = {n} + {2 * lo} - "
                f"{d * (k - 1)} - 1 (remainder {remainder}){what}; crop the input by {remainder} or pad it by "
                f"{s - remainder} pixel(s) on that axis to make it exact")
    return (f"{axis}: stride {s} with padding ({lo} before, {hi} after): (n + lo + hi - d(k-1) - 1) % s = "
            f"{remainder}, expected {hi - lo}")


# ------------------------------------------------------------------------------------------ public rules
def inexact_reasons(group, input_size: Sequence[int], kernel_size, stride=1, padding=0,
                    dilation=1) -> list[str]:
    """Why a group convolution with these arguments is not exactly equivariant; empty when it is.

    Args:
        group: the output group (a :class:`~gconv_triton.groups.Group` or a name); groups without matrices
            (given only by filter tables) do not act on images and give no reasons.
        input_size: ``(H, W)``.
        kernel_size, stride, padding, dilation: as in :func:`~gconv_triton.functional.gconv2d`.
    """
    group = get_group(group)
    kh, kw = pair(kernel_size, "kernel_size")
    h, w = pair(tuple(input_size), "input_size")
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = resolve_geometry((kh, kw), stride, padding, dilation)
    args = {"height": (h, pt, pb, kh, sh, dh), "width": (w, pl, pr, kw, sw, dw)}
    return _reasons(group, (h, w), _conv_axis(*args["height"]), _conv_axis(*args["width"]),
                    lambda axis: _stride_reason(axis, *args[axis]) or f"{axis}: the output is not centred",
                    f"stride {(sh, sw)}, dilation {(dh, dw)}, padding (top, bottom, left, right) {(pt, pb, pl, pr)}")


def inexact_reasons_transposed(group, input_size: Sequence[int], kernel_size, stride=1, padding=0,
                               output_padding=0, dilation=1) -> list[str]:
    """Why a transposed group convolution (:class:`~gconv_triton.nn.GroupConvTranspose2d`) with these
    arguments is not exactly equivariant; empty when it is.  ``group`` is the input's group, ``input_size`` its
    ``(H, W)``; the other arguments as in ``torch.nn.ConvTranspose2d``.

    It is exact when ``output_padding`` is 0 on every axis the group moves (at any stride: the adjoint of an
    exact convolution), e.g. stride 2 with ``kernel_size=4, padding=1`` or ``kernel_size=2, padding=0`` doubles
    the size exactly; ``kernel_size=3, padding=1, output_padding=1`` doubles it off-centre.
    """
    group = get_group(group)
    kh, kw = pair(kernel_size, "kernel_size")
    h, w = pair(tuple(input_size), "input_size")
    (sh, sw), (dh, dw), _ = resolve_geometry((kh, kw), stride, 0, dilation)
    ph, pw = pair(padding, "padding")
    oh, ow = pair(output_padding, "output_padding")
    args = {"height": (h, ph, oh, kh, sh, dh), "width": (w, pw, ow, kw, sw, dw)}

    def explain(axis: str) -> str:
        n, p, out_pad, k, s, d = args[axis]
        if out_pad:
            better = (" (stride 2 doubles the size exactly with kernel_size=4, padding=1 or kernel_size=2, "
                      "padding=0)" if s == 2 else "")
            side = "bottom" if axis == "height" else "right"
            return (f"{axis}: output_padding {out_pad} adds {out_pad} pixel(s) at the {side} only, so the output is "
                    f"not centred on the input; use output_padding=0{better}")
        return f"{axis}: the output is not centred on the input"

    return _reasons(group, (h, w), _transposed_axis(*args["height"]), _transposed_axis(*args["width"]), explain,
                    f"stride {(sh, sw)}, dilation {(dh, dw)}, padding {(ph, pw)}, output_padding {(oh, ow)}")


def inexact_reasons_pool(group, input_size: Sequence[int], kernel_size, stride=None, padding=0, dilation=1,
                         ceil_mode: bool = False, mode: str = "max", count_include_pad: bool = True,
                         divisor_override: Optional[int] = None) -> list[str]:
    """Why spatial pooling (:class:`~gconv_triton.nn.GroupMaxPool2d`, ``mode="max"``, or
    :class:`~gconv_triton.nn.GroupAvgPool2d`, ``mode="avg"``) with these arguments does not commute
    exactly with ``group``; empty when it does.  Arguments as ``torch.nn.MaxPool2d`` / ``AvgPool2d``.

    The windows must sit symmetrically about the image centre: ``(H + 2p - d(k-1) - 1) % s == 0`` (and the same
    for W) as for a convolution; ``ceil_mode`` adds a last window overhanging one edge, which is exact only on
    sizes where it adds nothing.  Windows clipped to the image can make a few tiny sizes exact anyway; the
    footprints decide.
    """
    group = get_group(group)
    kh, kw = pair(kernel_size, "kernel_size")
    h, w = pair(tuple(input_size), "input_size")
    (sh, sw), (dh, dw), (pt, _, pl, _) = resolve_geometry((kh, kw), kernel_size if stride is None else stride,
                                                          padding, dilation)
    if mode not in ("max", "avg"):
        raise ValueError(f"mode: expected 'max' or 'avg', got {mode!r}")
    count_padding = mode == "avg" and count_include_pad and not divisor_override
    args = {"height": (h, pt, kh, sh, dh), "width": (w, pl, kw, sw, dw)}

    def explain(axis: str) -> str:
        n, p, k, s, d = args[axis]
        remainder = (n + 2 * p - d * (k - 1) - 1) % s
        if ceil_mode and remainder:
            return (f"{axis}: ceil_mode adds a last window that hangs {s - remainder} pixel(s) over the "
                    f"{'bottom' if axis == 'height' else 'right'} edge only ({axis[0].upper()} + 2p - d(k-1) - 1 "
                    f"= {n + 2 * p - d * (k - 1) - 1} is not a multiple of stride {s}); crop the input by "
                    f"{remainder} or pad it by {s - remainder} pixel(s) on that axis to make it exact")
        return (_stride_reason(axis, n, p, p, k, s, d, what=": the last window stops short of the far edge")
                or f"{axis}: the windows are not centred on the image")

    return _reasons(group, (h, w), _pool_axis(*args["height"], ceil_mode, count_padding),
                    _pool_axis(*args["width"], ceil_mode, count_padding), explain,
                    f"kernel_size {(kh, kw)}, stride {(sh, sw)}, padding {(pt, pl)}, dilation {(dh, dw)}")


# --------------------------------------------------------------------------------------------- warnings
# layer -> the (input size, configuration) keys already checked: one warning per layer and input size
_checked: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _size_hint(n) -> Optional[int]:
    """A size as an int: a symbolic one (dynamic shapes) as the example value it is traced with, read without
    guarding on it; None where there is none."""
    hint = n if isinstance(n, int) else getattr(getattr(n, "node", None), "hint", None)
    return hint if isinstance(hint, int) else None


def _traced_size(input: torch.Tensor) -> Optional[tuple[int, int]]:
    """``(H, W)`` as ints (the example's for symbolic sizes), or None where the sizes have no value."""
    size = tuple(_size_hint(n) for n in concrete_shape(input, quiet=True)[-2:])  # read only to decide to warn
    return size if None not in size else None


def _warn(layer, size: tuple[int, int], stacklevel: int) -> None:
    key = (size, layer.extra_repr())
    seen = _checked.setdefault(layer, set())
    if key in seen:
        return
    seen.add(key)
    group, reasons = layer._inexact_reasons(size)
    if reasons:
        h, w = size
        warnings.warn(f"{type(layer).__name__}({key[1]}) on {h}x{w} inputs is not exactly equivariant under "
                      f"{group}: " + "; ".join(reasons) + f" (see {DOCS})", EquivarianceWarning,
                      stacklevel=stacklevel)


# Under torch.compile the check runs while TorchDynamo traces, on the traced sizes (warnings.warn inside the graph
# would break it): comptime runs a function at trace time on the fake input, whose symbolic sizes (dynamic shapes)
# carry the example's values as hints; the layer crosses as a constant key, registered by a function Dynamo runs
# for real while tracing (assume_constant_result).  A static-shape graph is traced once per input size, so it
# warns as eager mode does; a dynamic-shape one (dynamic=True, or torch.compile's default after a second size
# arrives) warns for the size it is traced with, and the sizes it then serves without retracing do not warn.
from torch._dynamo.comptime import comptime  # noqa: E402  (after the comment that explains it)

_layers: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


@assume_constant
def _register(layer) -> int:
    _layers[id(layer)] = layer
    return id(layer)


def _warn_traced(key: int, fake: torch.Tensor) -> None:
    layer, size = _layers.get(key), _traced_size(fake)
    if layer is not None and size is not None:
        _warn(layer, size, stacklevel=2)


def warn_if_inexact(layer, input: torch.Tensor) -> None:
    """Issue one :class:`EquivarianceWarning` per ``layer`` and input size whose configuration is not exactly
    equivariant (``layer._inexact_reasons((H, W))`` gives the group's name and the reasons).  A dictionary
    lookup on later calls.  ``torch.compile``, ``torch.jit.trace`` and ``torch.export`` warn while they trace,
    for the traced size (the example's, where sizes are symbolic); the graphs they make never warn."""
    if torch.compiler.is_dynamo_compiling():
        key = _register(layer)  # noqa: F841  (read by the comptime callback, as a local)
        comptime(lambda ctx: _warn_traced(ctx.get_local("key").as_python_constant(),
                                          ctx.get_local("input").as_fake()))
        return
    size = _traced_size(input)  # eager, or Python tracing: torch.jit.trace, torch.export(strict=False)
    if size is not None:
        _warn(layer, size, stacklevel=3)
