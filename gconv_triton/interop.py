"""Load weights trained with e2cnn / escnn (``R2Conv`` on regular p4 / p4m fields) and GrouPy-PyTorch.

**e2cnn and escnn.**  A regular field's components are indexed by the fiber group's elements in
``gspace.fibergroup.elements`` order.  Which of our elements each of them is depends on the library's conventions
and on the gspace (``FlipRot2dOnR2``'s reflection ``axis``), so it is not assumed: :func:`e2cnn_permutation` applies
each element to a small test image with the gspace's own action (``gspace.featurefield_action`` with the trivial
representation, public in both libraries) and finds our element that moves the pixels the same way.  For
``Rot2dOnR2(N=4)`` that is the identity; for ``FlipRot2dOnR2(N=4)`` it is a fixed permutation of the reflections
(``(0, 1, 2, 3, 6, 5, 4, 7)`` for the default axis ``π/2``, ``(0, 1, 2, 3, 4, 7, 6, 5)`` for ``axis=0``).
The expanded filter ``(C_out·S, C_in·S_in, k, k)`` (``R2Conv.expand_parameters()``), group axes permuted to ours,
*is* our filter bank; our base weight is its identity slice ``F[:, 0]`` (``F[o, g=e, i, s] = w[o, i, s]``).  The
conversion rebuilds the bank from that slice and checks it against the whole filter, so a layer that is not a
regular-field group convolution raises instead of loading silently.

e2cnn 0.2.3 predates NumPy 2: two of its calls fail there (``ndarray.tostring`` in the hash of its kernel bases,
which p4m layers reach, and ``np.array(copy=False)``).  Importing this module, with e2cnn installed, replaces
those two calls inside e2cnn's own modules by their NumPy 2 spellings (:func:`patch_e2cnn`); NumPy itself and
everything else are left alone.  Import it before building e2cnn layers.

e2cnn 0.2.3 also caches sampled bases by basis equality, and its dihedral basis' ``__eq__`` ignores the reflection
axis: an ``axis=0`` layer built after an ``axis=π/2`` one in the same process reuses the wrong basis (clear
``e2cnn.nn.modules.r2_conv.basisexpansion_singleblock._stored_filters`` in between).  :func:`from_e2cnn` then
raises, because the bank check fails.

**GrouPy-PyTorch** (``groupy.gconv.pytorch_gconv``; read, not run: it needs ``np.int``, gone since NumPy 1.24):
``SplitGConv2D.weight`` is ``(C_out, C_in, S_in, k, k)`` and its ``D4`` elements ``(m, r)`` (index ``4m + r``)
are the matrices ``M^m R^r`` with ``M = diag(−1, 1)`` on ``(row, col)``; the bank is
``F[g, s] = w[g⁻¹s](g⁻¹x)``, laid out ``(C_out·S_out, C_in·S_in, k, k)``; inputs are viewed as
``(B, C_in·S_in, H, W)`` and outputs as ``(B, C_out, S_out, H, W)``; the bias is one per output G-channel.  All of
it is this package's convention, so GrouPy state dicts load unchanged (``weight`` and ``bias`` keep their names
and shapes; GrouPy keeps its index arrays outside the state dict).  :func:`from_groupy` converts a module.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from .groups import Group, get_group, p4m
from .nn import GroupConv2d
from .reference import filter_bank
from .steerable import field_kind, from_e2cnn as steerable_from_e2cnn

__all__ = ["patch_e2cnn", "patch_escnn", "e2cnn_permutation", "weights_from_e2cnn_filter", "from_e2cnn", "from_groupy"]


def patch_e2cnn() -> None:
    """Let e2cnn 0.2.3 build its layers on NumPy 2 (a no-op on NumPy 1 and when already applied).

    Replaces, inside e2cnn only, ``ndarray.tostring()`` in the ``__hash__`` of its kernel bases by ``tobytes()``
    (the same bytes) and ``np.array(x, copy=False)`` in ``e2cnn.kernels.utils`` by ``np.asarray(x)`` (NumPy 1's
    meaning of ``copy=False``).  Called when this module is imported with e2cnn installed.
    """
    import e2cnn

    if int(np.__version__.split(".")[0]) < 2 or getattr(e2cnn, "_gconv_triton_numpy2", False):
        return
    import e2cnn.kernels.irreps_basis as irreps_basis
    import e2cnn.kernels.utils as kernel_utils

    def __hash__(self):  # e2cnn's formula, with tobytes() for tostring()
        gamma = self.gamma.tobytes() if isinstance(self.gamma, np.ndarray) else self.gamma
        return hash(self.in_irrep) + hash(self.out_irrep) + hash(self.mu.tobytes()) + hash(gamma)

    for cls in vars(irreps_basis).values():
        method = vars(cls).get("__hash__") if isinstance(cls, type) else None
        if callable(method) and "tostring" in method.__code__.co_names:
            cls.__hash__ = __hash__

    class _NumPy2:
        """``numpy`` as e2cnn.kernels.utils sees it: ``array(copy=False)`` means ``asarray``, as in NumPy 1."""

        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def array(obj, *args, copy=True, **kwargs):
            return np.asarray(obj, *args, **kwargs) if copy is False else np.array(obj, *args, copy=copy, **kwargs)

    kernel_utils.np = _NumPy2()
    e2cnn._gconv_triton_numpy2 = True


def patch_escnn():
    """Import escnn 1.0.11 as ``make test`` installs it (``pip install --no-deps escnn``) and return the module.

    escnn declares ``py3nj`` (built with a Fortran compiler) and ``lie-learn`` (compiled against NumPy 1), which its
    planar gspaces never call; without them ``import escnn`` fails on ``lie_learn``.  When ``lie_learn`` cannot be
    imported, a stand-in module takes its place whose one function (SO(3)'s Wigner matrices) raises if called.
    escnn also hands an ``np.matrix`` to scikit-learn's ``randomized_svd``, which current scikit-learn rejects;
    with it unset escnn takes its own exact ``scipy.linalg.svd`` path (the same null space).  With the full
    dependencies on NumPy 1 the stand-in is not installed; the SVD path is chosen either way.  Call it before
    anything imports escnn.
    """
    try:
        import lie_learn.representations.SO3.wigner_d  # noqa: F401
    except ImportError:
        names = ["lie_learn", "lie_learn.representations", "lie_learn.representations.SO3",
                 "lie_learn.representations.SO3.wigner_d"]
        for name in names:
            sys.modules.setdefault(name, types.ModuleType(name))

        def wigner_D_matrix(*args, **kwargs):
            raise NotImplementedError("lie_learn is not installed: SO(3) Wigner matrices are unavailable")

        sys.modules[names[-1]].wigner_D_matrix = wigner_D_matrix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "py3nj not found": only SO(3) Clebsch-Gordan coefficients need it
        import escnn
        import escnn.group._numerical as numerical
    numerical.randomized_svd = None
    return escnn


def _grid_elements(gspace) -> list[int]:
    """Our p4m index of each of the gspace's fiber-group elements (in ``fibergroup.elements`` order), found by
    comparing how each moves the pixels of an asymmetric 3×3 image (planar action only: trivial representation)."""
    image = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    ours = [p4m.act_on_image(s, torch.from_numpy(image)).numpy() for s in range(p4m.order)]
    found = []
    for element in gspace.fibergroup.elements:
        with warnings.catch_warnings():  # escnn deprecates featurefield_action in favour of FieldType.transform
            warnings.simplefilter("ignore", DeprecationWarning)
            moved = np.asarray(gspace.featurefield_action(image, gspace.trivial_repr, element))
        hits = [s for s in range(p4m.order) if np.abs(ours[s] - moved).max() < 1e-6]
        if len(hits) != 1:
            raise ValueError(f"gspace: element {element} of {getattr(gspace, 'name', gspace)} does not move the "
                             f"pixel grid as a rotation by a multiple of 90 degrees or a reflection across a grid "
                             f"axis or diagonal; expected Rot2dOnR2(N=4) or FlipRot2dOnR2(N=4) with axis a multiple "
                             f"of pi/4")
        found.append(hits[0])
    return found


def e2cnn_permutation(gspace) -> list[int]:
    """``perm[s]``: the component of the gspace's regular field that holds our group element ``s``.

    ``gspace``: an e2cnn / escnn ``Rot2dOnR2(N=4)`` (our p4; ``perm`` has 4 entries) or ``FlipRot2dOnR2(N=4)``
    with any grid-aligned reflection axis (our p4m; 8 entries).  Feature maps convert with
    ``ours = theirs.unflatten(1, (C, S))[:, :, perm]``, shape ``(B, C, S, H, W)``.
    """
    found = _grid_elements(gspace)
    order = len(found)
    if sorted(found) not in (list(range(4)), list(range(8))):
        raise ValueError(f"gspace: expected the rotations of p4 (order 4) or all of p4m (order 8), got "
                         f"{type(gspace.fibergroup).__name__} of order {order} acting as our elements {found}")
    perm = [0] * order
    for component, s in enumerate(found):
        perm[s] = component
    return perm


def _group_of(perm: Sequence[int]) -> Group:
    return get_group("p4" if len(perm) == 4 else "p4m")


@torch.no_grad()
def weights_from_e2cnn_filter(filter: torch.Tensor, bias: Optional[torch.Tensor], perm: Sequence[int],
                              regular_input: bool = True, *, rtol: float = 1e-5):
    """e2cnn's expanded filter ``(C_out·S, C_in·S_in, k, k)`` (and bias ``(C_out·S,)``) -> our base weight
    ``(C_out, C_in, S_in, k, k)`` and bias ``(C_out,)``.

    ``perm``: :func:`e2cnn_permutation` of the layer's gspace (it fixes the group: p4 for 4 entries, p4m for 8).
    ``regular_input``: whether the input fields are regular (else trivial: a lifting layer, ``S_in = 1``).
    Raises ``ValueError`` when the filter is not the filter bank of a group convolution between such fields: the
    bank rebuilt from the identity slice must match the whole filter to ``rtol`` of its norm; the bias must be
    constant over each field.
    """
    group = _group_of(perm)
    in_group = group if regular_input else get_group("z2")
    s, s_in = group.order, in_group.order
    if filter.dim() != 4 or filter.shape[0] % s or filter.shape[1] % s_in:
        raise ValueError(f"filter: expected (C_out*{s}, C_in*{s_in}, k, k), got {tuple(filter.shape)}")
    index = torch.tensor(perm, device=filter.device)
    index_in = index if s_in > 1 else torch.zeros(1, dtype=torch.long, device=filter.device)
    bank = filter.unflatten(0, (-1, s)).unflatten(2, (-1, s_in))[:, index][:, :, :, index_in]
    weight = bank[:, 0].contiguous()
    rebuilt = filter_bank(weight, group, in_group)
    err = float((rebuilt - bank).norm() / bank.norm().clamp_min(1e-30))
    if err > rtol:
        raise ValueError(f"filter: not a {in_group.name} -> {group.name} group-convolution bank with the group-element "
                         f"order perm={list(perm)} (relative mismatch {err:.2e} > rtol {rtol:.0e}); expected R2Conv "
                         f"between regular (or, for the input, trivial) fields, expanded with "
                         f"R2Conv.expand_parameters()")
    if bias is None:
        return weight, None
    per_field = bias.view(-1, s)
    if not torch.allclose(per_field, per_field[:, :1].expand_as(per_field), rtol=rtol, atol=0.0):
        raise ValueError("bias: expected one value per regular field (constant over its components), got varying "
                         "components")
    return weight, per_field[:, 0].contiguous()


@torch.no_grad()
def from_e2cnn(conv, device=None, dtype=None) -> GroupConv2d:
    """A :class:`GroupConv2d` computing the same function as an e2cnn or escnn ``R2Conv`` between regular
    p4 / p4m fields (or from trivial fields: a lifting layer).  Feature maps convert by a view and the group-axis
    permutation of :func:`e2cnn_permutation` (the identity for p4): ours = ``geometric_tensor.tensor.unflatten(1,
    (C, S))[:, :, perm]``.

    Other ``Rot2dOnR2(N)`` / ``FlipRot2dOnR2(N)`` (``N != 4``) with e2cnn's default basis give a steerable
    :class:`GroupConv2d` (group ``C_N`` / ``D_N``, coefficients from :func:`gconv_triton.steerable.from_e2cnn`;
    feature maps convert with :func:`gconv_triton.steerable.e2cnn_permutation`)."""
    fiber = conv.out_type.gspace.fibergroup
    if (getattr(fiber, "rotation_order", None) or fiber.order()) != 4:  # D_N's rotations, C_N's order
        return _from_e2cnn_steerable(conv, device, dtype)
    perm = e2cnn_permutation(conv.out_type.gspace)
    if field_kind(conv.out_type) != "regular":
        raise ValueError("conv: expected regular output fields")
    regular_input = field_kind(conv.in_type) == "regular"
    if getattr(conv, "groups", 1) != 1:
        raise ValueError(f"conv: expected groups=1, got {conv.groups}")
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"conv: expected padding_mode='zeros', got {conv.padding_mode!r}")
    filt, bias = conv.expand_parameters()
    weight, b = weights_from_e2cnn_filter(filt, bias, perm, regular_input)
    group = _group_of(perm)
    out = GroupConv2d(weight.shape[1], weight.shape[0], weight.shape[-1], group=group,
                      in_group=group if regular_input else "z2", stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, bias=b is not None,
                      device=device if device is not None else weight.device, dtype=dtype or weight.dtype)
    out.weight.copy_(weight)
    if b is not None:
        out.bias.copy_(b)
    return out


@torch.no_grad()
def _from_e2cnn_steerable(conv, device, dtype) -> GroupConv2d:
    weights = steerable_from_e2cnn(conv)
    coefficients = weights.coefficients
    out = GroupConv2d(coefficients.shape[1], coefficients.shape[0], weights.kernel_size, group=weights.group,
                      in_group=weights.in_group, stride=weights.stride, padding=weights.padding,
                      dilation=weights.dilation, bias=weights.bias is not None,
                      device=device if device is not None else coefficients.device,
                      dtype=dtype or coefficients.dtype)
    out.weight.copy_(coefficients)
    if weights.bias is not None:
        out.bias.copy_(weights.bias)
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


# Before the user builds an e2cnn layer (the NumPy 2 failures happen while building, not while converting).  Only
# when e2cnn is installed: GrouPy users need not have it.
if importlib.util.find_spec("e2cnn") is not None:
    patch_e2cnn()
