"""Band-limited steerable filters for the rotation groups C_N and D_N (any N): math and the plain-PyTorch path.

A filter is a vector of coefficients on e2cnn's default basis (:func:`steerable_basis`): Gaussian rings times
angular harmonics up to a per-ring frequency cutoff, sampled at the centres of the ``k × k`` grid.  Rotating such
a filter is exact in coefficient space, so a bank for any angle is ``Σ_b c_b ψ_b(R_g⁻¹ p)``: one small table
``Ψ[g]`` (``B × k²``) per group element (:func:`rotated_basis`).

Coordinates: the continuous maths uses e2cnn's ``(x, y)`` with x to the right and y up (``x = col − c``,
``y = c − row``, ``c = (k − 1) / 2``); a rotation by ``θ > 0`` turns counter-clockwise as displayed, which for
``θ = 90°`` is ``torch.rot90(·, k=1, dims=(-2, -1))``, p4's element 1.

Groups (:func:`cyclic_group`, :func:`dihedral_group`): ``C_N`` element ``r`` is the rotation ``R^r`` by ``2πr/N``;
``D_N`` element ``N·m + r`` is ``F^m R^r`` (rotate by ``r``, then reflect across the line at angle ``axis`` if
``m = 1``).  With ``axis = 0`` (the default: the x axis, so reflection reverses the rows) ``D_4`` is p4m in p4m's
element order and ``C_4`` is p4.  For ``4 | N`` the rotations by multiples of 90° and the reflections across the
grid axes and diagonals map the grid onto itself, and on those elements the tables are exact position permutations.

Parameters: ``coefficients (C_out, C_in, S_in, B)``; the bank (:func:`steerable_bank`) is
``F[o, g, i, s] = Σ_b c[o, i, index(g⁻¹ s), b] · Ψ[g, b]``, as :func:`~gconv_triton.reference.filter_bank` builds
p4's from free per-position weights.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ._args import check_activation, check_group_pair
from ._spec import concrete_shape, make_spec, transposed_geometry
from ._support import autocast_inputs, compiling, untraced
from .groups import Group, get_group, grid_permutation, register_group_family
from .ops.steerable_conv import steerable_conv, steerable_conv_transpose
from .reference import activate, add_bias, steerable_bank_from_tables

__all__ = ["SteerableGroup", "cyclic_group", "dihedral_group", "SteerableBasis", "steerable_basis",
           "rotated_basis", "coefficient_rotation", "steerable_bank", "steerable_conv2d", "steerable_conv_transpose2d",
           "init_coefficients",
           "reset_coefficients", "basis_size", "coefficients_from_filter", "e2cnn_permutation", "SteerableWeights",
           "from_e2cnn", "smooth_input", "rotate_resampled", "resampled_equivariance_error"]

_EXACT = 1e-12  # a matrix entry this close to 0 or ±1 is that value: the element is a grid symmetry


class SteerableGroup(Group):
    """``C_N`` or ``D_N`` acting on the plane by real 2×2 matrices.

    Attributes (besides :class:`~gconv_triton.groups.Group`'s ``order``, ``cayley``, ``inverse``):
        rotations: ``N``.  reflections: whether it is ``D_N``.  axis: the reflection axis' angle (radians, from x).
        planar_matrices: ``(S, 2, 2)`` float64, each element's matrix on ``(x, y)``.
        lattice_matrices: per element its integer matrix on ``(row, col)`` offsets (as in
            :mod:`~gconv_triton.groups`) when it maps the pixel grid onto itself, else None.

    ``matrices`` (the base class' lattice matrices for every element) is None: most elements are no grid
    symmetries.  Images and feature maps transform only under the grid symmetries (:meth:`act_on_image`).
    """

    def __init__(self, rotations: int, reflections: bool, axis: float = 0.0):
        if not isinstance(rotations, int) or isinstance(rotations, bool):
            raise TypeError(f"N: expected a positive int, got {type(rotations).__name__} {rotations!r}")
        if rotations < 1:
            raise ValueError(f"N: expected a positive int, got {rotations!r}")
        n, flips = rotations, 2 if reflections else 1
        m1, r1, m2, r2 = torch.meshgrid(torch.arange(flips), torch.arange(n), torch.arange(flips), torch.arange(n),
                                        indexing="ij")
        # (F^m1 R^r1)(F^m2 R^r2) = F^(m1+m2) R^((-1)^m2 r1 + r2), as p4m's table
        cayley = ((m1 + m2) % 2) * n + ((1 - 2 * m2) * r1 + r2) % n
        name = f"{'D' if reflections else 'C'}{n}"
        super().__init__(cayley.reshape(n * flips, n * flips), name=name)
        self.rotations, self.reflections, self.axis = n, bool(reflections), float(axis)
        angle = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        c, s = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)           # (N, 2, 2)
        c2, s2 = math.cos(2 * self.axis), math.sin(2 * self.axis)
        flip = torch.tensor([[c2, s2], [s2, -c2]], dtype=torch.float64)
        mats = torch.cat([rot, flip @ rot]) if reflections else rot
        self.planar_matrices = _snap(mats)
        # (x, y) = (col, -row): the (row, col) matrix is P A P⁻¹ with P (x, y) -> (row, col) = (-y, x)
        p = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        grid = p @ self.planar_matrices @ p.T
        self.lattice_matrices = [tuple(tuple(int(v) for v in row) for row in m.round().long().tolist())
                                 if torch.equal(m, m.round()) else None for m in grid]

    def __eq__(self, other) -> bool:
        if not isinstance(other, SteerableGroup):
            return self is other
        return (self.rotations, self.reflections, self.axis) == (other.rotations, other.reflections, other.axis)

    def __hash__(self) -> int:
        return hash((self.rotations, self.reflections, self.axis))

    def __repr__(self) -> str:
        axis = f", axis={self.axis:g}" if self.reflections else ""
        return f"SteerableGroup({self.name!r}, order={self.order}{axis})"

    @property
    def lattice_elements(self) -> list[int]:
        """The elements that map the pixel grid onto itself (multiples of 90°, grid-axis and diagonal flips)."""
        return [g for g, m in enumerate(self.lattice_matrices) if m is not None]

    def __reduce__(self):
        """Pickle (and deepcopy) by constructor: a copy is the cached group itself, not an equal stranger."""
        return (dihedral_group, (self.rotations, self.axis)) if self.reflections else (cyclic_group, (self.rotations,))

    def check_kernel_size(self, kernel_size) -> None:
        """Raise ``ValueError`` unless ``kernel_size`` (int or pair) is a square ``k × k`` with a basis."""
        basis_size(kernel_size)

    def position_destinations(self, kernel_size) -> torch.Tensor:
        raise ValueError(f"group {self.name}: most of its elements are no grid symmetries, so they do not permute "
                         f"filter positions; its filters are basis coefficients (C_out, C_in, S_in, B): use "
                         f"GroupConv2d, steerable_conv2d or steerable_bank")

    def act_on_image(self, g: int, x: torch.Tensor) -> torch.Tensor:
        """Rotate / reflect ``x (..., H, W)`` about its centre by element ``g``, which must be a grid symmetry
        (one of :attr:`lattice_elements`); other angles need a resampler, which is approximate."""
        matrix = self.lattice_matrices[g]
        if matrix is None:
            raise ValueError(f"g: element {g} of {self.name} is no symmetry of the pixel grid (expected one of "
                             f"{self.lattice_elements})")
        h, w = x.shape[-2:]
        dest = grid_permutation(matrix, h, w)
        if dest is None:
            raise ValueError(f"input: element {g} of {self.name} rotates by 90 degrees, which needs a square image, "
                             f"got {h}x{w}")
        return x.flatten(-2)[..., torch.argsort(dest).to(x.device)].unflatten(-1, (h, w))


def _snap(t: torch.Tensor) -> torch.Tensor:
    """Round entries within ``_EXACT`` of -1, 0 or 1 to it, so that grid symmetries are exact."""
    rounded = t.round()
    near = ((t - rounded).abs() < _EXACT) & (rounded.abs() <= 1)
    return torch.where(near, rounded, t)


@functools.lru_cache(maxsize=None, typed=True)
def cyclic_group(n: int) -> SteerableGroup:
    """``C_N``: element ``r`` rotates by ``2πr/N`` counter-clockwise (``C_4`` is p4)."""
    return SteerableGroup(n, False)


def dihedral_group(n: int, axis: float = 0.0) -> SteerableGroup:
    """``D_N``: element ``N·m + r`` rotates by ``2πr/N`` then reflects across the line at angle ``axis`` if
    ``m = 1`` (``axis = 0``: the rows reverse; ``D_4`` is p4m).  One object per ``(N, axis)``, however the axis
    is spelt (``dihedral_group(8) is dihedral_group(8, 0.0)``)."""
    if isinstance(axis, bool) or not isinstance(axis, (int, float)):
        raise TypeError(f"axis: expected a float (radians), got {type(axis).__name__} {axis!r}")
    return _dihedral_group(n, float(axis))


@functools.lru_cache(maxsize=None, typed=True)
def _dihedral_group(n: int, axis: float) -> SteerableGroup:
    return SteerableGroup(n, True, axis)


register_group_family("c", cyclic_group)
register_group_family("d", dihedral_group)


# --------------------------------------------------------------------------------------------------- the basis
class SteerableBasis(NamedTuple):
    """e2cnn's default basis of scalar filters, sampled: ``B`` functions ``ψ_b(p) = G_b(|p|) · h_b(angle of p)``.

    Attributes:
        samples: ``(B, k, k)`` float64, ``ψ_b`` at the grid centres (row-major, row 0 on top).
        radius: ``(B,)`` ring radius.  sigma: ``(B,)`` ring width.  frequency: ``(B,)`` angular frequency ``m``.
        kind: ``(B,)`` 0 for ``cos(mθ)``, 1 for ``sin(mθ)``.  scale: ``(B,)`` the normalisation factor.
        kernel_size: ``k``.
    """
    samples: torch.Tensor
    radius: torch.Tensor
    sigma: torch.Tensor
    frequency: torch.Tensor
    kind: torch.Tensor
    scale: torch.Tensor
    kernel_size: int


def _grid_points(k: int) -> torch.Tensor:
    """``(2, k·k)`` e2cnn's sampling points ``(x, y)``, x right, y up, row-major."""
    c = (k - 1) / 2
    rows, cols = torch.meshgrid(torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64),
                                indexing="ij")
    return torch.stack([cols.flatten() - c, c - rows.flatten()])


def _rings(k: int):
    """e2cnn's defaults (``compute_basis_params`` with ``frequencies_cutoff=None``, dilation 1): ring radii, their
    sigma and the cutoff ``_manual_fco1(k // 2)``."""
    n_rings = math.ceil(k / 2)
    radii = torch.linspace(0, (k - 1) // 2, n_rings).tolist()   # float32 linspace, as e2cnn
    sigmas = [0.6] * (n_rings - 1) + [0.4]
    sigmas = [0.005 if r == 0.0 else s for r, s in zip(radii, sigmas)]
    outer = k // 2

    def cutoff(r: float) -> int:
        return 0 if r == 0.0 else int(min(2 * r, 2 if r == outer else 2 * r - (r + 1) % 2))

    return [(r, s, cutoff(r)) for r, s in zip(radii, sigmas)]


def _evaluate(points: torch.Tensor, radius, sigma, frequency, kind) -> torch.Tensor:
    """``ψ_b`` (unnormalised) at ``points (2, P)``: ``(B, P)``.  The harmonic is ``Re`` / ``Im`` of
    ``((x + iy) / |p|)^m`` by repeated complex products, not ``cos(m·atan2)``: on a grid symmetry the products
    only permute and negate exactly, so the sampled functions transform exactly (0 at the origin for ``m > 0``)."""
    x, y = points
    r = torch.sqrt(x * x + y * y)
    safe = torch.where(r > 1e-9, r, torch.ones_like(r))
    ux, uy = torch.where(r > 1e-9, x / safe, torch.zeros_like(x)), torch.where(r > 1e-9, y / safe, torch.zeros_like(y))
    powers = [(torch.ones_like(x), torch.zeros_like(x))]
    for _ in range(int(frequency.max()) if len(frequency) else 0):
        re, im = powers[-1]
        powers.append((re * ux - im * uy, re * uy + im * ux))
    out = torch.empty(len(radius), points.shape[1], dtype=torch.float64)
    for b in range(len(radius)):
        re, im = powers[int(frequency[b])]
        harmonic = im if int(kind[b]) else re
        if int(frequency[b]) > 0:
            harmonic = torch.where(r > 1e-9, harmonic, torch.zeros_like(harmonic))
        out[b] = torch.exp(-0.5 * (r - float(radius[b])) ** 2 / float(sigma[b]) ** 2) * harmonic
    return out


@functools.lru_cache(maxsize=None, typed=True)
def steerable_basis(kernel_size: int) -> SteerableBasis:
    """e2cnn's default band-limited basis for ``k × k`` filters (``R2Conv``'s ``rings``, ``sigma``,
    ``frequencies_cutoff``), ``B = 6, 11, 18`` for ``k = 3, 5, 7``.

    Per ring (radius ``r``, Gaussian width ``σ``, cutoff ``M``): ``cos(mθ)`` for ``0 ≤ m ≤ M`` and ``sin(mθ)`` for
    ``0 < m ≤ M``.  Functions that vanish on the grid are dropped, as e2cnn drops them: for even ``k`` the grid has
    no point at the origin, so the ``r = 0`` ring (``σ = 0.005``) is gone (``B = 5, 12`` for ``k = 4, 6``;
    ``k = 2`` has no basis).  Each ``cos``/``sin`` pair shares one scale, making the pair's squared norms sum to
    2 (a lone function: norm 1), so rotations act by orthogonal 2×2 blocks on the coefficients.
    """
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool):
        raise TypeError(f"kernel_size: expected a positive int, got {type(kernel_size).__name__} {kernel_size!r}")
    if kernel_size < 1:
        raise ValueError(f"kernel_size: expected a positive int, got {kernel_size!r}")
    rows = []
    for r, s, cutoff in _rings(kernel_size):
        for m in range(cutoff + 1):
            rows += [(r, s, m, 0)] + ([(r, s, m, 1)] if m > 0 else [])
    radius, sigma, frequency, kind = (torch.tensor(c, dtype=torch.float64 if i < 2 else torch.long)
                                      for i, c in enumerate(zip(*rows)))
    raw = _evaluate(_grid_points(kernel_size), radius, sigma, frequency, kind)
    keep = raw.square().sum(1) >= 1e-15  # e2cnn's threshold on the variance of a sampled element
    if not bool(keep.any()):
        raise ValueError(f"kernel_size: e2cnn's default basis vanishes on a {kernel_size}x{kernel_size} grid")
    radius, sigma, frequency, kind, raw = radius[keep], sigma[keep], frequency[keep], kind[keep], raw[keep]
    energy = raw.square().sum(1)
    scale = torch.empty_like(energy)
    for b in range(len(radius)):  # one scale per (ring, m): the mean energy of the pair
        pair = (radius == radius[b]) & (frequency == frequency[b])
        scale[b] = energy[pair].mean().rsqrt()
    samples = (raw * scale[:, None]).view(-1, kernel_size, kernel_size)
    return SteerableBasis(samples, radius, sigma, frequency, kind, scale, kernel_size)


def basis_size(kernel_size) -> int:
    """``B``, the number of basis functions of a ``k × k`` filter (``kernel_size`` an int or a square pair);
    ``ValueError`` for a non-square kernel or one without a basis (``k = 2``)."""
    if isinstance(kernel_size, (tuple, list)) and len(kernel_size) == 2:
        if kernel_size[0] != kernel_size[1]:
            raise ValueError(f"kernel_size: steerable filters are square (a k x k grid), got {tuple(kernel_size)}")
        kernel_size = kernel_size[0]
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool):
        steerable_basis(kernel_size)  # its TypeError, naming kernel_size
    return _basis_size(kernel_size)


@functools.lru_cache(maxsize=None)
def _basis_size(kernel_size: int) -> int:
    """:func:`basis_size` of an int, cached: every steerable forward asks for it (in its checks), and leaving the
    tracing modes each time costs more than the rest of the check."""
    with untraced():  # a plain int (and a cache of real tensors) whatever traces the caller
        return len(steerable_basis(kernel_size).radius)


def _element_point_map(group: SteerableGroup) -> torch.Tensor:
    """``(S, 2, 2)``: each element's inverse matrix (the point ``R_g⁻¹ p`` where ``Ψ[g]`` reads ``ψ``)."""
    return group.planar_matrices[group.inverse]


@functools.lru_cache(maxsize=None, typed=True)
def _rotated_basis(group: SteerableGroup, kernel_size: int) -> torch.Tensor:
    basis = steerable_basis(kernel_size)
    points = _grid_points(kernel_size)
    tables = [_evaluate(m @ points, basis.radius, basis.sigma, basis.frequency, basis.kind) * basis.scale[:, None]
              for m in _element_point_map(group)]
    return torch.stack(tables).view(group.order, -1, kernel_size, kernel_size)


def rotated_basis(group: SteerableGroup, kernel_size: int) -> torch.Tensor:
    """``Ψ[g, b] = ψ_b(R_g⁻¹ p)`` on the ``k × k`` grid, shape ``(S, B, k, k)`` float64: the basis re-sampled at
    the rotated points by its closed form (no interpolation).  On grid symmetries it is an exact position permutation
    of ``Ψ[e]``; it equals ``coefficient_rotation(group, k) @ Ψ[e]`` to rounding."""
    _check_group(group, "group")
    return _rotated_basis(group, kernel_size)


def coefficient_rotation(group: SteerableGroup, kernel_size: int) -> torch.Tensor:
    """``D (S, B, B)`` with ``ψ_b(R_g⁻¹ p) = Σ_b' D[g, b, b'] ψ_b'(p)``: the 2×2 rotation of each (ring, m) pair
    by ``m·θ_g`` (a reflection also negates the ``sin`` terms).  Rotating coefficients ``c ↦ D[g]ᵀ c`` rotates the
    filter by ``g``."""
    _check_group(group, "group")
    basis = steerable_basis(kernel_size)
    size = len(basis.radius)
    out = torch.zeros(group.order, size, size, dtype=torch.float64)
    for g, inv in enumerate(_element_point_map(group)):
        # R_g⁻¹ maps angle θ to σθ + φ (σ = det)
        sign = float(torch.linalg.det(inv).round())
        phi = math.atan2(float(inv[1, 0]), float(inv[0, 0]))
        for b in range(size):
            m = int(basis.frequency[b])
            partner = [j for j in range(size) if basis.radius[j] == basis.radius[b] and basis.frequency[j] == m
                       and j != b]
            cos, sin = math.cos(m * phi), math.sin(m * phi)
            if int(basis.kind[b]) == 0:   # cos(m(σθ + φ)) = cos mφ cos mθ − σ sin mφ sin mθ
                out[g, b, b] = cos
                if partner:
                    out[g, b, partner[0]] = -sign * sin
            else:                         # sin(m(σθ + φ)) = σ cos mφ sin mθ + sin mφ cos mθ
                out[g, b, b] = sign * cos
                out[g, b, partner[0]] = sin
    return _snap(out)


def _check_group(group, argument: str) -> None:
    if not isinstance(group, SteerableGroup):
        raise TypeError(f"{argument}: expected a SteerableGroup (cyclic_group(N) or dihedral_group(N)), got "
                        f"{type(group).__name__}")


def _in_group(group: SteerableGroup, in_group) -> Group:
    in_group = get_group(in_group, "in_group")
    if not (in_group.is_trivial or in_group == group):
        raise ValueError(f"in_group: expected 'z2' or the output group {group.name}, got {in_group!r}")
    return in_group


_TABLES: dict = {}


def _tables(group: SteerableGroup, kernel_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``Ψ`` flattened to ``(S, B, k·k)`` in ``dtype`` on ``device``, built once per combination."""
    key = (group, kernel_size, dtype, device)
    if key not in _TABLES:
        with untraced():  # real tensors in the cache, and one constant in a traced graph, whatever traces the call
            _TABLES[key] = _rotated_basis(group, kernel_size).flatten(2).to(dtype=dtype, device=device)
    return _TABLES[key]


def steerable_bank(coefficients: torch.Tensor, group: SteerableGroup, in_group, kernel_size: int,
                   tables: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The filter bank ``(C_out·S_out, C_in·S_in, k, k)`` for ``F.conv2d``:
    ``F[o, g, i, s] = Σ_b c[o, i, index(g⁻¹ s), b] · Ψ[g, b]``.

    Args:
        coefficients: ``(C_out, C_in, S_in, B)``, ``B = len(steerable_basis(kernel_size).radius)``.
        group: the output group (:func:`cyclic_group` / :func:`dihedral_group`).
        in_group: ``'z2'`` (a lifting layer, ``S_in = 1``) or ``group``.
        tables: ``rotated_basis(group, kernel_size).flatten(2)``, ``(S, B, k·k)`` (cast to the coefficients'
            dtype); by default the cached ones.  A steerable ``GroupConv2d`` passes its non-persistent buffer, so
            that ``torch.compile`` and ``torch.export`` see a tensor input rather than a cache to trace.
    One matmul of the coefficients with all the tables and one gather by the stabilizer index
    (:func:`~gconv_triton.reference.steerable_bank_from_tables`); differentiable by autograd.
    """
    _check_group(group, "group")
    in_group = _in_group(group, in_group)
    if tables is None:
        tables = _tables(group, kernel_size, coefficients.dtype, coefficients.device)      # (S, B, k²)
    tables = tables.to(coefficients.dtype)
    # ints also under torch.jit.trace: the tables' and coefficients' sizes are a traced module's constants
    s_out, size = concrete_shape(tables, quiet=True)[:2]
    shape = concrete_shape(coefficients, quiet=True)
    if len(shape) != 4 or shape[2:] != (in_group.order, size):
        raise ValueError(f"coefficients: expected (C_out, C_in, {in_group.order}, {size}) for {in_group.name} -> "
                         f"{group.name} with a {kernel_size}x{kernel_size} basis, got {shape}")
    return steerable_bank_from_tables(coefficients, tables, group.stabilizer_index(in_group).to(coefficients.device))


def steerable_conv2d(input: torch.Tensor, coefficients: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                     group, in_group, kernel_size: int, stride=1, padding=0, dilation=1, groups: int = 1,
                     activation: Optional[str] = None, tables: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Group convolution by :func:`steerable_bank` + ``F.conv2d`` (what :class:`~gconv_triton.GroupConv2d` runs
    for ``C_N`` / ``D_N``), differentiable by autograd.

    Args:
        input: ``(B, C_in, S_in, H, W)`` or flattened ``(B, C_in·S_in, H, W)`` (``(B, C_in, H, W)`` for
            ``in_group='z2'``).
        coefficients: ``(C_out, C_in/groups, S_in, B)``.  bias: ``(C_out,)`` or None.
        group: a :class:`SteerableGroup` or its name (``"c8"``); in_group: ``'z2'`` or ``group``.
        stride, padding (int, pair, ``'same'``, ``'valid'``), dilation, groups, activation: as
            :func:`~gconv_triton.functional.gconv2d`.  ``dilation`` spreads the ``k × k`` filter's window positions (as
            ``nn.Conv2d``); the basis stays e2cnn's dilation-1 one.  tables: as :func:`steerable_bank`.
    Returns ``(B, C_out, S_out, H_out, W_out)``.  Where the Triton kernels serve the call (CUDA tensors on the
    ``'auto'`` backend, any tensor on ``'triton'``) the op ``gconv_triton::steerable_conv2d`` steers the filter
    inside the GEMM, with no bank; elsewhere standard PyTorch ops (:func:`steerable_bank` + ``F.conv2d``)
    differentiated by autograd (``ops/steerable_conv.py``).  The activation follows as ``F.relu`` / ``F.silu`` /
    ``F.gelu``.
    """
    activation = check_activation(activation)
    group = get_group(group, "group")
    _check_group(group, "group")
    in_group = _in_group(group, in_group)
    input, coefficients, bias = autocast_inputs(input, coefficients, bias)
    kernel_size = kernel_size[0] if isinstance(kernel_size, (tuple, list)) else kernel_size
    if not compiling():  # every check of gconv2d's, on the bank's shape, before anything runs
        _check_coefficients(coefficients, group, in_group, kernel_size)
        bank_shape = coefficients.new_empty(()).expand(*concrete_shape(coefficients, quiet=True)[:3], kernel_size,
                                                       kernel_size)
        make_spec(input, bank_shape, bias, group=group, in_group=in_group, stride=stride, padding=padding,
                  dilation=dilation, groups=groups)
    if tables is None:
        tables = _tables(group, kernel_size, coefficients.dtype, coefficients.device)
    x = input if input.dim() == 5 else input.unflatten(1, (-1, in_group.order))
    y = steerable_conv(x, coefficients, bias, tables, group=group, in_group=in_group, kernel_size=kernel_size,
                       stride=stride, padding=padding, dilation=dilation, groups=groups)
    return activate(y, activation)


def steerable_conv_transpose2d(input: torch.Tensor, coefficients: torch.Tensor, bias: Optional[torch.Tensor] = None,
                               *, group, out_group=None, kernel_size: int, stride=1, padding=0, output_padding=0,
                               groups: int = 1, dilation=1, tables: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Transposed steerable group convolution (what :class:`~gconv_triton.GroupConvTranspose2d` runs for ``C_N`` /
    ``D_N``): the adjoint of :func:`steerable_conv2d` from ``out_group`` maps to ``group`` maps with the same
    coefficients, as ``F.conv_transpose2d`` is the adjoint of ``F.conv2d`` (p4's free weights:
    :func:`~gconv_triton.functional.gconv_transpose2d`).

    Args:
        input: ``(B, C_in, S, H, W)`` (``S = |group|``) or flattened ``(B, C_in·S, H, W)``.
        coefficients: ``(C_in, C_out/groups, S_out, B)``, ``S_out = |out_group|``: the matching convolution's
            ``(C_out, C_in/groups, S_in, B)`` (``nn.ConvTranspose2d``'s ``(in, out / groups, ...)`` layout).
        bias: ``(C_out,)`` or None.
        group: a :class:`SteerableGroup` or its name (``"c8"``); out_group: ``group`` (default) or ``'z2'``
            (planes out: the adjoint of a lifting layer).
        kernel_size, tables: as :func:`steerable_conv2d`.
        stride, padding (int or pair), output_padding, groups, dilation: as ``F.conv_transpose2d``.
    Returns ``(B, C_out, S_out, H_out, W_out)``, ``H_out = (H−1)·stride − 2·padding + dilation·(k−1) +
    output_padding + 1``.  Where the Triton kernels serve the call, the convolution's input-gradient op
    ``gconv_triton::steerable_conv2d_input_grad`` (its gradients: the forward op and the coefficient-gradient op,
    no bank); elsewhere :func:`steerable_bank` + ``F.conv_transpose2d``, differentiated by autograd.  Under
    ``torch.autocast`` the input, coefficients and bias are cast first, as for :func:`steerable_conv2d`.
    """
    group, out_group = check_group_pair(group, out_group, "out_group")
    _check_group(group, "group")
    input, coefficients, bias = autocast_inputs(input, coefficients, bias)
    kernel_size = kernel_size[0] if isinstance(kernel_size, (tuple, list)) else kernel_size
    if not compiling():
        _check_coefficients(coefficients, group, out_group, kernel_size, transposed=True)
    if tables is None:
        tables = _tables(group, kernel_size, coefficients.dtype, coefficients.device)
    x, size, geometry = transposed_geometry(input, coefficients, (kernel_size, kernel_size), bias, group=group,
                                            out_group=out_group, stride=stride, padding=padding,
                                            output_padding=output_padding, groups=groups, dilation=dilation)
    y = steerable_conv_transpose(x, coefficients, tables, size, group=group, out_group=out_group,
                                 kernel_size=kernel_size, stride=geometry["stride"], padding=geometry["padding"],
                                 dilation=geometry["dilation"], groups=groups)
    return add_bias(y, bias)


def _check_coefficients(coefficients, group: SteerableGroup, in_group: Group, kernel_size,
                        transposed: bool = False) -> None:
    """``coefficients (C_out, C_in/groups, S_in, B)`` of a convolution from ``in_group`` to ``group`` maps, or
    with ``transposed`` the same tensor read as a transposed convolution's ``(C_in, C_out/groups, S_out, B)``."""
    size = basis_size(kernel_size)
    channels, maps = ("C_in, C_out/groups", f"{group.name} -> {in_group.name}") if transposed else \
        ("C_out, C_in/groups", f"{in_group.name} -> {group.name}")
    expected = f"({channels}, {in_group.order}, {size}) for {maps} with a {kernel_size}x{kernel_size} basis"
    if not isinstance(coefficients, torch.Tensor):
        raise TypeError(f"coefficients: expected a torch.Tensor {expected}, got {type(coefficients).__name__}")
    shape = concrete_shape(coefficients, quiet=True)
    if len(shape) != 4 or shape[2:] != (in_group.order, size):
        raise ValueError(f"coefficients: expected {expected}, got shape {shape}")


def _coefficient_bounds(coefficients: torch.Tensor, kernel_size: int) -> tuple[float, float]:
    """``nn.Conv2d``'s init bounds for coefficients ``(C_out, C_in, S_in, B)``: the coefficients' bound
    ``1 / sqrt(B·C_in·S_in)`` (the tables' squared norms sum to ``B``, so the per-position weights get the variance
    ``1 / (3·fan_in)``, ``fan_in = C_in·S_in·k²``) and the bias' ``1 / sqrt(fan_in)``."""
    per_output = coefficients[0].numel()                                          # C_in·S_in·B
    fan_in = per_output // coefficients.shape[-1] * kernel_size * kernel_size
    return 1.0 / math.sqrt(per_output), 1.0 / math.sqrt(fan_in)


def init_coefficients(out_channels: int, in_channels: int, group: SteerableGroup, in_group, kernel_size: int, *,
                      generator: Optional[torch.Generator] = None, dtype=None, device=None) -> torch.Tensor:
    """Coefficients ``(C_out, C_in, S_in, B)`` drawn uniformly so that the bank's per-position weights have
    ``nn.Conv2d``'s variance ``1 / (3·fan_in)``, ``fan_in = C_in·S_in·k²``: the tables' squared norms sum to ``B``,
    so the bound is ``1 / sqrt(B·C_in·S_in)``."""
    _check_group(group, "group")
    in_group = _in_group(group, in_group)
    size = len(steerable_basis(kernel_size).radius)
    out = torch.empty((out_channels, in_channels, in_group.order, size), dtype=dtype, device=device)
    bound, _ = _coefficient_bounds(out, kernel_size)
    return out.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def reset_coefficients(coefficients: torch.Tensor, bias: Optional[torch.Tensor], kernel_size: int) -> None:
    """:func:`init_coefficients`' draw in place, and the bias uniform in ``±1 / sqrt(C_in·S_in·k²)`` (as
    ``nn.Conv2d``'s): a steerable :class:`~gconv_triton.GroupConv2d`'s ``reset_parameters``."""
    bound, bias_bound = _coefficient_bounds(coefficients, kernel_size)
    coefficients.uniform_(-bound, bound)
    if bias is not None:
        bias.uniform_(-bias_bound, bias_bound)


def coefficients_from_filter(weight: torch.Tensor, kernel_size: Optional[int] = None) -> torch.Tensor:
    """Least-squares coefficients ``(..., B)`` of filters ``weight (..., k, k)`` on ``Ψ[e]`` (float64 solve, the
    result in ``weight``'s dtype).  Exact for filters in the span; :func:`steerable_bank` of the result gives the
    projection otherwise."""
    k = kernel_size or weight.shape[-1]
    if weight.shape[-2:] != (k, k):
        raise ValueError(f"weight: expected (..., {k}, {k}), got {tuple(weight.shape)}")
    basis = steerable_basis(k).samples.flatten(1).to(weight.device)                         # (B, k²)
    solution = torch.linalg.lstsq(basis.T, weight.detach().double().flatten(-2).reshape(-1, k * k).T).solution
    return solution.T.reshape(*weight.shape[:-2], -1).to(weight.dtype)


# ------------------------------------------------------------------------------- approximate equivariance
def smooth_input(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Band-limited noise ``shape (..., H, W)`` (``H``, ``W`` multiples of 4): standard normal noise on a grid 4x
    coarser, upsampled 4x bicubic (drawn in float64 from ``seed``, then cast to ``dtype``)."""
    noise = torch.randn(*shape[:-2], shape[-2] // 4, shape[-1] // 4, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    up = F.interpolate(noise.flatten(0, -3)[None], scale_factor=4, mode="bicubic", align_corners=False)
    return up[0].view(*shape).to(dtype)


def rotate_resampled(group: SteerableGroup, g: int, t: torch.Tensor) -> torch.Tensor:
    """``g·t`` for the rotation ``g < N`` of ``group``, resampled: planes ``(B, C, H, W)`` turn by ``2πg/N``
    counter-clockwise as displayed (bicubic, zeros outside); regular fields ``(B, C, S, H, W)`` also move along the
    group axis (``t[:, :, g⁻¹ s]``)."""
    if not 0 <= g < group.rotations:
        raise ValueError(f"g: expected a rotation of {group.name} (0 <= g < {group.rotations}), got {g}")
    if t.dim() == 5:
        shifted = t[:, :, group.cayley[group.inverse[g]].to(t.device)]
        return rotate_resampled(group, g, shifted.flatten(1, 2)).unflatten(1, shifted.shape[1:3])
    angle = 2 * math.pi * g / group.rotations
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=t.dtype, device=t.device).expand(t.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    return F.grid_sample(t, grid, mode="bicubic", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def resampled_equivariance_error(layer, group: SteerableGroup, g: int, lifting: bool, *, size: int = 64,
                                 channels: int = 2, seed: int = 3, dtype=torch.float64) -> float:
    """The equivariance error of ``layer`` (maps ``(1, channels, H, W)`` for ``lifting``, else ``(1, channels, S,
    H, W)``, to ``(1, C_out, S, H', W')`` with ``H' = H``) under the rotation ``g``, resampled: on a smooth input
    (:func:`smooth_input`, ``size × size``), ``‖layer(g·x) − g·layer(x)‖ / ‖g·layer(x)‖`` over the central disc of
    radius ``size/2 − 8`` (away from the zeros that the rotation brings in at the corners), with
    :func:`rotate_resampled`.  At multiples of 90° the resampler reads pixel centres, so what remains is the
    layer's own error (float rounding); at other angles it also measures the resampler."""
    x = smooth_input(1, channels, *(() if lifting else (group.order,)), size, size, seed=seed, dtype=dtype)
    expected = rotate_resampled(group, g, layer(x))
    got = layer(rotate_resampled(group, g, x))
    centre = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - centre) ** 2 + (xx - centre) ** 2 <= (size / 2 - 8) ** 2).to(torch.float64)
    return float(((got - expected).double() * disc).norm() / (expected.double() * disc).norm())


# ---------------------------------------------------------------------------------------------------- e2cnn
def _e2cnn_matrices(gspace) -> torch.Tensor:
    """Each fiber-group element's matrix on ``(x, y)``, in ``fibergroup.elements`` order: e2cnn's ``(f, r)`` is
    ``R(2πr/N) · F(axis)^f`` (its ``_basespace_action``: reverse the rows, then rotate by ``2πr/N + 2·axis``)."""
    group = gspace.fibergroup
    n = group.rotation_order if hasattr(group, "rotation_order") else group.order()
    mats = []
    for element in group.elements:
        flip, r = (element if isinstance(element, tuple) else (0, element))
        angle = 2 * math.pi * r / n + (2 * gspace.axis if flip else 0.0)
        c, s = math.cos(angle), math.sin(angle)
        rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        mats.append(rot @ torch.tensor([[1.0, 0.0], [0.0, -1.0 if flip else 1.0]], dtype=torch.float64))
    return torch.stack(mats)


def _group_of_gspace(gspace) -> SteerableGroup:
    name = type(gspace.fibergroup).__name__
    if name == "CyclicGroup":
        return cyclic_group(gspace.fibergroup.order())
    if name == "DihedralGroup":
        n = gspace.fibergroup.rotation_order
        ours = dihedral_group(n)  # p4m's axis when it is one of the gspace's reflections, else the gspace's
        theirs = _e2cnn_matrices(gspace)
        if all(bool(((ours.planar_matrices - m).abs().amax((1, 2)) < 1e-9).any()) for m in theirs):
            return ours
        return dihedral_group(n, float(gspace.axis))
    raise ValueError(f"gspace: expected Rot2dOnR2(N) or FlipRot2dOnR2(N) (a cyclic or dihedral fiber group), got "
                     f"{name}")


def e2cnn_permutation(gspace, group: Optional[SteerableGroup] = None) -> list[int]:
    """``perm[s]``: the component of e2cnn's regular field (``gspace.fibergroup.elements`` order) that holds our
    element ``s`` of ``group`` (default: the group :func:`from_e2cnn` picks).  Elements are matched by their 2×2
    matrices.  Feature maps convert with ``ours = theirs.unflatten(1, (C, S))[:, :, perm]``."""
    group = group or _group_of_gspace(gspace)
    theirs = _e2cnn_matrices(gspace)
    perm = []
    for s, mine in enumerate(group.planar_matrices):
        hits = ((theirs - mine).abs().amax((1, 2)) < 1e-9).nonzero().flatten().tolist()
        if len(hits) != 1:
            raise ValueError(f"gspace: no element of {gspace.fibergroup.name} equals element {s} of {group.name}")
        perm.append(hits[0])
    return perm


class SteerableWeights(NamedTuple):
    """What :func:`from_e2cnn` returns: the arguments of :func:`steerable_conv2d`."""
    coefficients: torch.Tensor
    bias: Optional[torch.Tensor]
    group: SteerableGroup
    in_group: Group
    kernel_size: int
    stride: int
    padding: int
    dilation: int


def field_kind(field_type) -> str:
    """``"regular"`` or ``"trivial"``: the kind of every field of an e2cnn / escnn ``FieldType`` (``ValueError``
    for anything else, or a mix)."""
    names = {r.name for r in field_type.representations}
    if names == {"regular"}:
        return "regular"
    if len(names) == 1 and field_type.representations[0].is_trivial():
        return "trivial"
    raise ValueError(f"conv: expected only regular (or, for the input, only trivial) fields, got representations "
                     f"{sorted(names)}")


@torch.no_grad()
def from_e2cnn(conv, *, rtol: float = 1e-5) -> SteerableWeights:
    """Coefficients for an e2cnn ``R2Conv`` between regular fields of ``C_N`` / ``D_N`` (or from trivial fields)
    with the default basis: least squares on the identity slice of ``conv.expand_parameters()``.  Raises
    ``ValueError`` when the rebuilt bank misses e2cnn's filter by more than ``rtol`` of its norm (another basis, or
    fields that are not regular)."""
    group = _group_of_gspace(conv.out_type.gspace)
    if field_kind(conv.out_type) != "regular":
        raise ValueError("conv: expected regular output fields")
    in_group = group if field_kind(conv.in_type) == "regular" else get_group("z2")
    if getattr(conv, "groups", 1) != 1 or getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ValueError("conv: expected groups=1 and padding_mode='zeros'")
    filt, bias = conv.expand_parameters()
    k, s, s_in = conv.kernel_size, group.order, in_group.order
    perm = torch.tensor(e2cnn_permutation(conv.out_type.gspace, group), device=filt.device)
    perm_in = perm if s_in > 1 else torch.zeros(1, dtype=torch.long, device=filt.device)
    bank = filt.unflatten(0, (-1, s)).unflatten(2, (-1, s_in))[:, perm][:, :, :, perm_in]
    coefficients = coefficients_from_filter(bank[:, 0], k)
    rebuilt = steerable_bank(coefficients.double(), group, in_group, k)
    target = bank.flatten(0, 1).flatten(1, 2).double()
    err = float((rebuilt - target).norm() / target.norm().clamp_min(1e-30))
    if err > rtol:
        raise ValueError(f"conv: its filter is not a steerable {in_group.name} -> {group.name} bank on the default "
                         f"basis (relative mismatch {err:.2e} > rtol {rtol:.0e})")
    if bias is not None:
        bias = bias.view(-1, s)[:, 0].contiguous()
    stride, padding, dilation = (v if isinstance(v, int) else v[0] for v in (conv.stride, conv.padding, conv.dilation))
    return SteerableWeights(coefficients, bias, group, in_group, k, stride, padding, dilation)
