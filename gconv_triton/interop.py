"""Load weights trained with e2cnn / escnn (``R2Conv`` on regular p4 / p4m fields) and GrouPy-PyTorch.

**e2cnn** (verified against e2cnn 0.2.3's source and by test): a regular field's components are indexed by the
group elements in ``fibergroup.elements`` order (``e2cnn/group/groups/{cyclic,dihedral}group.py``), acted on by
the left regular representation, with rotations by ``np.rot90(·, k, axes=(-2, -1))``
(``e2cnn/gspaces/r2/utils.py``), the direction of ``torch.rot90`` and of our ``R``.  So for ``Rot2dOnR2(N=4)``
element ``k`` is our ``k``: the layouts agree.  ``FlipRot2dOnR2(N=4)`` orders its elements ``(j, k) = r^k f^j``
(index ``4j + k``) with ``f`` the reflection across the axis ``axis`` (default ``π/2``, the vertical axis: it
flips columns, which is our ``M R²``; ``axis=0`` flips rows, our ``M``).  Since ``R^k M R^a = M R^{a−k}``,
e2cnn's ``(1, k)`` is our element ``4 + (a − k) mod 4`` with ``a = 2`` for ``axis=π/2`` and ``a = 0`` for
``axis=0``: a fixed permutation of the group axis (:func:`e2cnn_permutation`).  The expanded filter
``(C_out·S, C_in·S_in, k, k)`` (``R2Conv.expand_parameters()``), group axis permuted to ours, *is* our filter bank;
our base weight is its identity slice ``F[:, 0]`` (``F[o, g=e, i, s] = w[o, i, s]``).  The conversion rebuilds the
bank from that slice and checks it against the whole filter, so a layer that is not a regular-field G-conv in
these conventions raises instead of loading silently.

e2cnn 0.2.3 caveat: it caches sampled bases by basis equality, and its dihedral basis' ``__eq__`` ignores the
reflection axis, so an ``axis=0`` layer built after an ``axis=π/2`` one in the same process reuses the wrong basis
(clear ``e2cnn.nn.modules.r2_conv.basisexpansion_singleblock._stored_filters`` in between).

**escnn** (untested: not installed here) keeps e2cnn's ``R2Conv`` interface
(``expand_parameters``, ``in_type.gspace``); :func:`from_e2cnn` accepts it, and the bank check decides.

**GrouPy-PyTorch** (``groupy.gconv.pytorch_gconv``, read, not run: it needs ``np.int``, gone since NumPy 1.24):
``SplitGConv2D.weight`` is ``(C_out, C_in, S_in, k, k)`` and its ``D4`` elements ``(m, r)`` (index
``4m + r``) are the matrices ``M^m R^r`` with ``M = diag(−1, 1)`` on ``(row, col)``; the bank is
``F[g, s] = w[g⁻¹s](g⁻¹x)``, laid out ``(C_out·S_out, C_in·S_in, k, k)``; inputs are viewed as
``(B, C_in·S_in, H, W)`` and outputs as ``(B, C_out, S_out, H, W)``; the bias is one per output G-channel.
All of it is this package's convention, so GrouPy state dicts load unchanged (``weight`` and ``bias`` keep their
names and shapes; GrouPy keeps its index arrays outside the state dict).  :func:`from_groupy` converts a module.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .groups import Group, get_group
from .modules import GroupConv2d
from .reference import filter_bank

__all__ = ["e2cnn_permutation", "weights_from_e2cnn_filter", "from_e2cnn", "from_groupy"]


def e2cnn_permutation(group, axis: float = math.pi / 2) -> list[int]:
    """``perm[s]``: the e2cnn regular-field component that holds our group element ``s`` (p4, or p4m with the
    ``FlipRot2dOnR2`` reflection ``axis``, ``π/2`` or ``0``)."""
    group = get_group(group, "group")
    if group.name == "p4":
        return [0, 1, 2, 3]
    if group.name != "p4m":
        raise ValueError(f"group: expected 'p4' or 'p4m', got {group.name}")
    if math.isclose(axis % math.pi, math.pi / 2):
        shift = 2
    elif math.isclose(axis % math.pi, 0.0) or math.isclose(axis % math.pi, math.pi):
        shift = 0
    else:
        raise ValueError(f"axis: expected a reflection axis of pi/2 or 0 (aligned with the grid), got {axis!r}")
    # our element 4 + r is e2cnn's (1, k) with r = (shift - k) mod 4, i.e. k = (shift - r) mod 4
    return [0, 1, 2, 3] + [4 + (shift - r) % 4 for r in range(4)]


def weights_from_e2cnn_filter(filter: torch.Tensor, bias: Optional[torch.Tensor], group, in_group, *,
                              axis: float = math.pi / 2, rtol: float = 1e-5):
    """e2cnn's expanded filter ``(C_out·S, C_in·S_in, k, k)`` (and bias ``(C_out·S,)``) -> our base weight
    ``(C_out, C_in, S_in, k, k)`` and bias ``(C_out,)``.

    Raises ``ValueError`` when the filter is not the filter bank of a group convolution between regular fields
    (or trivial input fields for a lifting layer) in e2cnn's conventions: the bank rebuilt from the identity
    slice must match the whole filter to ``rtol`` of its norm; the bias must be constant over each field.
    """
    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    s, s_in = group.order, in_group.order
    if filter.dim() != 4 or filter.shape[0] % s or filter.shape[1] % s_in:
        raise ValueError(f"filter: expected (C_out*{s}, C_in*{s_in}, k, k), got {tuple(filter.shape)}")
    perm = torch.tensor(e2cnn_permutation(group, axis), device=filter.device)
    perm_in = perm if s_in > 1 else torch.zeros(1, dtype=torch.long, device=filter.device)
    bank = filter.unflatten(0, (-1, s)).unflatten(2, (-1, s_in))[:, perm][:, :, :, perm_in]
    weight = bank[:, 0].contiguous()
    rebuilt = filter_bank(weight, group, in_group)
    err = float((rebuilt - bank).norm() / bank.norm().clamp_min(1e-30))
    if err > rtol:
        raise ValueError(f"filter: not a {in_group.name} -> {group.name} group-convolution bank in e2cnn's regular-"
                         f"field convention (relative mismatch {err:.2e} > rtol {rtol:.0e}); expected R2Conv between "
                         f"regular (or trivial input) fields of Rot2dOnR2(4) / FlipRot2dOnR2(4, axis={axis:.4g})")
    if bias is None:
        return weight, None
    per_field = bias.view(-1, s)
    if not torch.allclose(per_field, per_field[:, :1].expand_as(per_field), rtol=rtol, atol=0.0):
        raise ValueError("bias: expected one value per regular field (constant over its components), got varying "
                         "components")
    return weight, per_field[:, 0].contiguous()


def _e2cnn_group(gspace) -> tuple[Group, float]:
    fiber = gspace.fibergroup
    order = fiber.order()
    flips = "Dihedral" in type(fiber).__name__ or "O2" in type(fiber).__name__
    if order == 4 and not flips:
        return get_group("p4"), math.pi / 2
    if order == 8 and flips:
        return get_group("p4m"), float(getattr(gspace, "axis", math.pi / 2))
    raise ValueError(f"conv: expected the gspace Rot2dOnR2(N=4) or FlipRot2dOnR2(N=4), got {gspace!r} "
                     f"(fibergroup {type(fiber).__name__} of order {order})")


def _field_kind(field_type) -> str:
    names = {r.name for r in field_type.representations}
    if names == {"regular"}:
        return "regular"
    if len(names) == 1 and field_type.representations[0].is_trivial():
        return "trivial"
    raise ValueError(f"conv: expected only regular (or, for the input, only trivial) fields, got representations "
                     f"{sorted(names)}")


@torch.no_grad()
def from_e2cnn(conv, device=None, dtype=None) -> GroupConv2d:
    """A :class:`GroupConv2d` computing the same function as an e2cnn (or escnn) ``R2Conv`` between regular
    p4 / p4m fields (or from trivial fields: a lifting layer).  Feature maps convert by a view and the group-axis
    permutation of :func:`e2cnn_permutation` (the identity for p4): ours = ``geometric_tensor.tensor.unflatten(1,
    (C, S))[:, :, perm]``."""
    group, axis = _e2cnn_group(conv.out_type.gspace)
    if _field_kind(conv.out_type) != "regular":
        raise ValueError("conv: expected regular output fields")
    in_group = group if _field_kind(conv.in_type) == "regular" else get_group("z2")
    if getattr(conv, "groups", 1) != 1:
        raise ValueError(f"conv: expected groups=1, got {conv.groups}")
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"conv: expected padding_mode='zeros', got {conv.padding_mode!r}")
    filt, bias = conv.expand_parameters()
    weight, b = weights_from_e2cnn_filter(filt, bias, group, in_group, axis=axis)
    out = GroupConv2d(weight.shape[1], weight.shape[0], weight.shape[-1], group=group, in_group=in_group,
                      stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=b is not None,
                      device=device if device is not None else weight.device, dtype=dtype or weight.dtype)
    out.weight.copy_(weight)
    if b is not None:
        out.bias.copy_(b)
    return out


_GROUPY_LAYERS = {(1, 4): ("p4", "z2"), (4, 4): ("p4", "p4"), (1, 8): ("p4m", "z2"), (8, 8): ("p4m", "p4m")}


@torch.no_grad()
def from_groupy(module) -> GroupConv2d:
    """A :class:`GroupConv2d` from a GrouPy-PyTorch ``SplitGConv2D`` (``P4ConvZ2``, ``P4ConvP4``, ``P4MConvZ2``,
    ``P4MConvP4M``): same weight, bias and geometry, copied as they are (the conventions agree; module docstring)."""
    key = (getattr(module, "input_stabilizer_size", None), getattr(module, "output_stabilizer_size", None))
    if key not in _GROUPY_LAYERS:
        raise ValueError(f"module: expected a GrouPy SplitGConv2D with (input, output) stabilizer sizes in "
                         f"{sorted(_GROUPY_LAYERS)}, got {key}")
    group, in_group = _GROUPY_LAYERS[key]
    weight = module.weight
    bias = getattr(module, "bias", None)
    out = GroupConv2d(module.in_channels, module.out_channels, tuple(module.kernel_size), group=group,
                      in_group=in_group, stride=tuple(module.stride), padding=tuple(module.padding),
                      bias=bias is not None, device=weight.device, dtype=weight.dtype)
    if tuple(out.weight.shape) != tuple(weight.shape):
        raise ValueError(f"module: weight shape {tuple(weight.shape)} does not match GrouPy's (C_out, C_in, S_in, "
                         f"k, k) = {tuple(out.weight.shape)}")
    out.weight.copy_(weight)
    if bias is not None:
        out.bias.copy_(bias)
    return out
