"""``check_equivariance``: measure how far a module is from commuting with a group's action."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional, Union

import torch
from torch import nn

from .groups import Group, get_group
from .nn import GroupConv2d, GroupConvTranspose2d, GroupPool, TapConv2d

__all__ = ["check_equivariance", "EquivarianceResult"]


class EquivarianceResult(float):
    """The worst relative error (a ``float``), with what :func:`check_equivariance` assumed about the tensors:
    ``input_form`` and ``output_form`` describe how the group acted on them; ``elements`` lists the group elements
    checked and ``unchecked`` says which were not and why (empty when every element was checked: all but a
    steerable ``C_N`` / ``D_N``'s grid symmetries act on images only approximately)."""

    input_form: str
    output_form: str
    elements: list
    unchecked: str

    def __new__(cls, value: float, input_form: str, output_form: str, elements=(), unchecked: str = ""):
        result = super().__new__(cls, value)
        result.input_form, result.output_form = input_form, output_form
        result.elements, result.unchecked = list(elements), unchecked
        return result

    def __reduce__(self):
        return type(self), (float(self), self.input_form, self.output_form, self.elements, self.unchecked)

    def __repr__(self) -> str:
        unchecked = f"; NOT checked: {self.unchecked}" if self.unchecked else ""
        return f"{float(self)!r} (input read as {self.input_form}; output as {self.output_form}{unchecked})"


def _checked_elements(group: Group) -> tuple[list[int], str]:
    """The elements whose action on images is exact (every element, but for a steerable group its grid
    symmetries) and a note on the others (empty when there are none)."""
    lattice = getattr(group, "lattice_elements", None)
    if lattice is None or len(lattice) == group.order:
        return list(range(group.order)), ""
    if len(lattice) == 1:
        raise ValueError(f"group: {group.name} has no grid symmetry but the identity (no rotation by a multiple of "
                         f"90 degrees, no reflection across a grid axis or diagonal), so no element acts on images "
                         f"exactly and there is nothing check_equivariance can check exactly; expected a group "
                         f"with another grid symmetry (C_N with N even, D_N with a grid-aligned axis, p4, ...)")
    others = [g for g in range(group.order) if g not in lattice]
    return lattice, (f"elements {others} of {group.name} are no symmetries of the pixel grid: they act on images "
                     f"only through a resampler, so equivariance to them is approximate by nature and was not "
                     f"checked (checked: its grid symmetries {lattice})")


def _form(group: Group, t: torch.Tensor, on: Optional[Group], name: str, arg: str) -> tuple[str, Optional[Group]]:
    """How ``group`` acts on ``t``: returns a description and the group of its fibres (None for an invariant,
    the trivial group for planes).  ``on`` is what the caller said (None: read it from the shape)."""
    shape = tuple(t.shape)
    if on is None:  # by shape: 5-D maps on the group, 4-D planes, (B, N) invariants
        if t.dim() == 5:
            on = group
        elif t.dim() == 4:
            on = get_group("z2")
        elif t.dim() <= 2:
            return "an invariant (B, N), compared unchanged", None
        else:
            raise ValueError(f"{name}: cannot apply {group.name} to a tensor of shape {shape}: expected "
                             f"(B, C, {group.order}, H, W), (B, C, H, W) or an invariant (B, N)")
    if not on.is_trivial and on != group:
        raise ValueError(f"{arg}: expected 'z2' or the group {group.name}, got {on.name}")
    if on == group and t.dim() == 5 and shape[2] == group.order:  # (the trivial group's maps have S = 1)
        return f"{group.name} maps (B, C, {group.order}, H, W)", on
    if on.is_trivial:
        if t.dim() != 4:
            raise ValueError(f"{name}: expected planes (B, C, H, W) for {arg} z2, got shape {shape}")
        return "planes (B, C, H, W), transformed as images", on
    if t.dim() == 4 and shape[1] % group.order == 0:
        return f"flattened {group.name} maps (B, C*{group.order}, H, W), channel c*{group.order} + s", on
    raise ValueError(f"{name}: expected a {group.name} map (B, C, {group.order}, H, W) or its flattened form "
                     f"(B, C*{group.order}, H, W), got shape {shape}")


def _act(group: Group, g: int, t: torch.Tensor, on: Optional[Group]) -> torch.Tensor:
    """``g·t`` for ``t`` in the form :func:`_form` read."""
    if on is None:
        return t
    if t.dim() == 5:
        return group.act_on_features(g, t)
    if on.is_trivial:
        return group.act_on_image(g, t)
    return group.act_on_features(g, t.unflatten(1, (-1, group.order))).flatten(1, 2)


def _first_group_layer(module) -> Optional[tuple[str, Group]]:
    """The first module of ``module.modules()`` that reads a 4-D input in one definite way, described as
    ``"(name, a Class)"``, and the group whose maps it reads it as (``z2``: images).  Those are the group
    convolutions (``GroupConv2d`` and its subclasses, ``TapConv2d``: their ``in_group``; ``GroupConvTranspose2d``:
    its ``group``) and ``GroupPool`` given a ``group``.  Layers that treat every channel alike (``GroupBatchNorm``,
    spatial pooling, pointwise layers) read either form the same way and are passed over."""
    if not isinstance(module, nn.Module):
        return None
    for name, layer in module.named_modules():
        if isinstance(layer, (GroupConv2d, TapConv2d)):
            reads = layer.in_group
        elif isinstance(layer, GroupConvTranspose2d):
            reads = layer.group
        elif isinstance(layer, GroupPool) and layer.group is not None:
            reads = layer.group
        else:
            continue
        return f"({name or 'the module itself'}, a {type(layer).__name__})", reads
    return None


def _check_finite(t: torch.Tensor, what: str, expected: str) -> None:
    """Raise a ValueError saying how many entries of ``t`` are NaN or infinite, if any."""
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return
    bad, nan = int((~finite).sum()), int(torch.isnan(t).sum())
    raise ValueError(f"{what} has {bad} non-finite {'entry' if bad == 1 else 'entries'} of {t.numel()} ({nan} NaN, "
                     f"{bad - nan} inf); {expected}")


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖got − expected‖ / ‖expected‖`` in float64 for finite tensors, both scaled by their largest entry first:
    a squared norm of outputs near the float64 maximum would overflow to inf (and inf / inf is NaN)."""
    got, expected = got.double(), expected.double()
    if got.numel() == 0:
        return 0.0
    scale = torch.maximum(got.abs().max(), expected.abs().max())
    if scale == 0:
        return 0.0
    got, expected = got / scale, expected / scale
    return float((got - expected).norm() / expected.norm().clamp_min(torch.finfo(torch.float64).tiny))


def _element(group: Group, g: int) -> str:
    matrix = f" (matrix {group.matrices[g]})" if group.matrices is not None else ""
    return f"group element g = {g} of {group.name}{matrix}"


@torch.no_grad()
def check_equivariance(module: Union[nn.Module, Callable], x: torch.Tensor, group: Union[str, Group], *,
                       in_group: Union[str, Group, None] = None, out_group: Union[str, Group, None] = None,
                       train: bool = False) -> EquivarianceResult:
    """The worst relative error ``max_g ‖f(g·x) − g·f(x)‖ / ‖g·f(x)‖`` over every element ``g`` of ``group`` that
    acts on images exactly.

    For a steerable ``C_N`` / ``D_N`` (``"c8"``, ``"d16"``) those are its grid symmetries (rotations by multiples
    of 90°, reflections across the grid axes and diagonals: for C8 the 4 quarter turns): the others move pixels
    off the grid, equivariance to them is approximate by nature, and they are not checked; the result's
    ``elements`` and ``unchecked`` (and its ``repr``) say so.  A group with no grid symmetry but the identity
    (C3, ...) raises ``ValueError``.

    Args:
        module: an ``nn.Module`` or any callable.  An ``nn.Module`` is evaluated in eval mode (BatchNorm with its
            running statistics, dropout off: a training-mode forward is random or depends on the batch) unless
            ``train=True``; its modes and buffers (BatchNorm's running statistics) are restored afterwards,
            bit for bit.  A plain callable runs as it is.
        x: the input, finite.
        group: the group whose action is checked.
        in_group: how ``group`` acts on ``x``: ``"z2"`` for planes ``(B, C, H, W)`` (images: rotated and flipped),
            ``group`` for group maps, 5-D ``(B, C, S, H, W)`` or GrouPy's flattened ``(B, C·S, H, W)`` (the plane
            rotated, the group axis permuted).  Default: read from the shape, 5-D as group maps; a 4-D ``x`` is
            read as the module's first group layer reads it: the first module in ``module.modules()`` order that
            is a group convolution (``GroupConv2d`` and its subclasses, ``TapConv2d``, ``GroupConvTranspose2d``)
            or a ``GroupPool`` given a ``group``; a flattened map when that layer's input group is ``group``
            (``input_form`` then names the layer), images when it is ``z2``, a ``ValueError`` for another group.
            Without such a layer (a plain callable, a plain ``torch.nn`` model) a 4-D ``x`` is read as images.
        out_group: the same for the output; by default also ``(B, N)`` and 1-D outputs are invariants, compared
            unchanged.
        train: evaluate an ``nn.Module`` in training mode instead.

    Returns:
        An :class:`EquivarianceResult`: a float (exactly equivariant layers give round-off, about 1e-15 in
        float64), whose ``input_form`` and ``output_form`` (and ``repr``) say how the tensors were read,
        ``elements`` which group elements were checked and ``unchecked`` which were not.

    Raises:
        ValueError: when ``x``, the module's output on ``x`` or its output on some ``g·x`` holds a NaN or an inf
            (an overflow, say): the message says which of them (naming the group element ``g``) and how many
            entries are NaN and how many infinite.  A non-finite output has no meaningful error to report.
    """
    group = get_group(group)
    elements, unchecked = _checked_elements(group)
    in_group = None if in_group is None else get_group(in_group, "in_group")
    out_group = None if out_group is None else get_group(out_group, "out_group")
    read_as = ""
    if in_group is None and isinstance(x, torch.Tensor) and x.dim() == 4:
        found = _first_group_layer(module)
        if found is not None and not found[1].is_trivial:
            layer, reads = found
            if reads != group:
                raise ValueError(f"input: the module's first group layer {layer} reads a 4-D input as flattened "
                                 f"{reads.name} maps, on which {group.name} does not act; pass in_group='z2' to "
                                 f"read x as images, or check the group {reads.name}")
            in_group, read_as = reads, f", as the module's first group layer {layer} reads a 4-D input"
    input_form, in_on = _form(group, x, in_group, "input", "in_group")
    if in_on is None:
        raise ValueError(f"input: expected planes (B, C, H, W) or group maps, got shape {tuple(x.shape)}")
    _check_finite(x, "x: the input", "expected finite values")
    not_comparable = "check_equivariance compares finite outputs only"
    with _evaluation(module, train):
        y = module(x)
        output_form, out_on = _form(group, y, out_group, "output", "out_group")
        _check_finite(y, "output: the module's output on x (untransformed)", not_comparable)
        worst = 0.0
        for g in elements:
            expected = _act(group, g, y, out_on)
            got = module(_act(group, g, x, in_on))
            _check_finite(got, f"output: the module's output on g·x for {_element(group, g)}", not_comparable)
            err = _relative_error(got, expected)
            if math.isnan(err) or err > worst:  # a NaN, never dropped (max(0.0, nan) is 0.0)
                worst = err
    return EquivarianceResult(worst, input_form + read_as, output_form, elements, unchecked)


@contextlib.contextmanager
def _evaluation(module, train: bool):
    """Run an ``nn.Module`` in eval (or training) mode, then put its modes and buffers back."""
    if not isinstance(module, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.clone()) for b in module.buffers()]
    module.train(train)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for b, saved in buffers:
            b.copy_(saved)
