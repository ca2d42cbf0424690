"""When a group convolution is *exactly* equivariant, and the warning for when it is not.

A layer commutes with a rotation or flip of its input only if its output pixels sit symmetrically about the
image's centre, on every axis the group moves, and, for 90° rotations, if both axes are sampled alike.  Along an
axis of size ``n`` with padding ``(lo, hi)``, dilation ``d``, kernel ``k`` and stride ``s`` the first and last
output pixels are centred at ``-lo + d(k-1)/2`` and that plus ``(n_out - 1)·s``; they are symmetric about
``(n-1)/2`` exactly when

    (n + lo + hi - d(k-1) - 1) % s == hi - lo

which, with symmetric padding ``lo == hi = p``, is ``(n + 2p - d(k-1) - 1) % s == 0`` (always true for stride 1),
and for stride 1 means ``lo == hi`` ('same' padding with an even effective kernel ``d(k-1) + 1`` puts the odd
pixel at the end, so it is inexact).  Nothing else matters: the filter transform itself is exact for odd and
even kernels.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ._library import _compiling
from ._spec import _pair, resolve_geometry
from .groups import Group, get_group

__all__ = ["EquivarianceWarning", "inexact_reasons"]


class EquivarianceWarning(UserWarning):
    """A layer's configuration makes it only approximately equivariant (stride misaligned with the input size,
    a non-square input under 90° rotations, or asymmetric padding).  Silence it with
    ``warnings.filterwarnings("ignore", category=gconv_triton.EquivarianceWarning)``."""


def _moved_axes(group: Group) -> tuple[bool, bool, bool]:
    """Whether some element reverses or moves the row axis, the column axis, and whether one swaps them.

    A matrix acts on ``(row, col)`` offsets, so ``m[0]`` gives the new row coordinate, ``m[1]`` the new column.
    """
    mats = group.matrices or []
    rows = any(m[0] != (1, 0) for m in mats)
    cols = any(m[1] != (0, 1) for m in mats)
    swap = any(m[0][1] != 0 for m in mats)
    return rows, cols, swap


def _axis_reason(axis: str, n: int, lo: int, hi: int, k: int, s: int, d: int) -> Optional[str]:
    remainder = (n + lo + hi - d * (k - 1) - 1) % s
    if remainder == hi - lo:
        return None
    if s == 1:
        return (f"{axis}: asymmetric padding ({lo} before, {hi} after; 'same' padding with the even effective "
                f"kernel d(k-1)+1 = {d * (k - 1) + 1} does that) shifts the output off the image centre")
    if lo == hi:
        return (f"{axis}: stride {s} does not divide {axis[0].upper()} + 2p - d(k-1) - 1 = {n} + {2 * lo} - "
                f"{d * (k - 1)} - 1 (remainder {remainder}); crop the input by {remainder} or pad it by "
                f"{s - remainder} pixel(s) on that axis to make it exact")
    return (f"{axis}: stride {s} with padding ({lo} before, {hi} after): (n + lo + hi - d(k-1) - 1) % s = "
            f"{remainder}, expected {hi - lo}")


def _sampling(n: int, lo: int, hi: int, k: int, s: int, d: int) -> tuple:
    """What a 90-degree rotation must map onto the other axis: the input size, the output pixels' centres
    (first one doubled, count, spacing) and the taps' offsets (kernel size and, if it has two taps, dilation)."""
    n_out = (n + lo + hi - d * (k - 1) - 1) // s + 1
    return n, d * (k - 1) - 2 * lo, n_out, s if n_out > 1 else None, k, d if k > 1 else None


def inexact_reasons(group, input_size: Sequence[int], kernel_size, stride=1, padding=0,
                    dilation=1) -> list[str]:
    """Why a convolution with these arguments is not exactly equivariant; empty when it is.

    Args:
        group: the output group (a :class:`~gconv_triton.groups.Group` or a name); groups without matrices
            (given only by filter tables) do not act on images and give no reasons.
        input_size: ``(H, W)``.
        kernel_size, stride, padding, dilation: as in :func:`~gconv_triton.functional.gconv2d`.
    """
    group = get_group(group)
    kh, kw = _pair(kernel_size, "kernel_size")
    h, w = _pair(tuple(input_size), "input_size")
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = resolve_geometry((kh, kw), stride, padding, dilation)
    rows, cols, swap = _moved_axes(group)
    reasons = []
    if swap:
        if h != w:
            reasons.append(f"input {h}x{w} is not square, but {group.name} rotates by 90 degrees")
        elif _sampling(h, pt, pb, kh, sh, dh) != _sampling(w, pl, pr, kw, sw, dw):
            reasons.append(f"{group.name} rotates by 90 degrees but the axes are sampled differently: stride "
                           f"{(sh, sw)}, dilation {(dh, dw)}, padding (top, bottom, left, right) {(pt, pb, pl, pr)}")
    if rows:
        reasons.append(_axis_reason("height", h, pt, pb, kh, sh, dh))
    if cols:
        reasons.append(_axis_reason("width", w, pl, pr, kw, sw, dw))
    return [r for r in reasons if r is not None]


# layer -> the (input size, geometry) keys already checked: one warning per layer and input size
_checked: WeakIdKeyDictionary = WeakIdKeyDictionary()


def warn_if_inexact(layer, input: torch.Tensor) -> None:
    """Issue one :class:`EquivarianceWarning` per ``layer`` (a :class:`~gconv_triton.modules.GroupConv2d`) and
    input size whose configuration is not exactly equivariant.  A dictionary lookup on later calls; skipped
    while ``torch.compile`` traces (the eager call warns)."""
    if _compiling():
        return
    key = (tuple(input.shape[-2:]), layer.group, layer.kernel_size, str(layer.stride), str(layer.padding),
           str(layer.dilation))
    seen = _checked.setdefault(layer, set())
    if key in seen:
        return
    seen.add(key)
    reasons = inexact_reasons(layer.group, key[0], layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    if reasons:
        h, w = key[0]
        warnings.warn(f"{type(layer).__name__}({layer.extra_repr()}) on {h}x{w} inputs is not exactly "
                      f"{layer.group.name}-equivariant: " + "; ".join(reasons)
                      + " (see docs/errors.md#exactness-warnings)", EquivarianceWarning, stacklevel=2)
