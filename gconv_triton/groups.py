"""Finite groups of lattice symmetries, given by two small tables.

A group ``G`` of order ``S`` is stored as

* its Cayley table ``cayley[a, b] = index(a · b)``, shape ``(S, S)``;
* for every element the permutation of the window positions of a filter (``act`` on a filter), derived from the
  element's 2×2 integer matrix acting on ``(row, col)`` offsets from the filter's centre, or given by hand.

Everything else (inverses, the stabilizer index ``t(g, s) = index(g⁻¹ s)``, the action on filters and on
feature maps) is derived from those two tables, so ``p4``, ``p4m`` and user groups share one mechanism.

Conventions (GrouPy's and e2cnn's):

* ``R = [[0, -1], [1, 0]]`` is ``torch.rot90(·, k=1, dims=(-2, -1))``: the value at offset ``v`` moves to ``R v``.
* ``M = [[-1, 0], [0, 1]]`` is ``torch.flip(·, dims=(-2,))`` (rows reversed).
* ``p4``: element ``r`` is ``R^r``.  ``p4m``: element ``4m + r`` is ``M^m R^r`` (rotate by ``r``, then flip if
  ``m = 1``), so ``(m1, r1)(m2, r2) = (m1 + m2 mod 2, (-1)^m2 · r1 + r2 mod 4)``.
"""

from __future__ import annotations

import itertools
import re
from typing import Optional, Sequence

import torch

from ._support import GROUPS

__all__ = ["Group", "z2", "p2", "pm", "p2mm", "p4", "p4m", "get_group"]

_ROT = ((0, -1), (1, 0))
_FLIP = ((-1, 0), (0, 1))
_EYE = ((1, 0), (0, 1))

Matrix = tuple[tuple[int, int], tuple[int, int]]


def _matmul(a: Matrix, b: Matrix) -> Matrix:
    return tuple(tuple(sum(a[i][k] * b[k][j] for k in range(2)) for j in range(2)) for i in range(2))  # type: ignore


def _as_matrix(m) -> Matrix:
    t = torch.as_tensor(m)
    if t.shape != (2, 2) or t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError(f"matrices: expected 2x2 integer matrices, got {m!r}")
    return tuple(tuple(int(v) for v in row) for row in t.tolist())  # type: ignore


def _is_lattice_symmetry(m: Matrix) -> bool:
    """True for the 8 signed permutation matrices: the symmetries of the square lattice fixing the origin."""
    cols = [(m[0][j], m[1][j]) for j in range(2)]
    return all(sorted(map(abs, c)) == [0, 1] for c in cols) and abs(m[0][0] * m[1][1] - m[0][1] * m[1][0]) == 1


def grid_permutation(m: Matrix, h: int, w: int) -> Optional[torch.Tensor]:
    """Where each cell of an ``h × w`` grid goes under ``m``, acting on offsets from the grid's centre.

    Returns ``dest`` with ``dest[r * w + c]`` the flat index the value at ``(r, c)`` moves to, or None when ``m``
    does not map the grid onto itself (a 90° rotation of a non-square grid).  Doubled coordinates
    ``2r - (h - 1)`` keep even sizes, whose centre lies between cells, in integers.
    """
    dest = torch.empty(h * w, dtype=torch.long)
    for r in range(h):
        for c in range(w):
            y, x = 2 * r - (h - 1), 2 * c - (w - 1)
            y2, x2 = m[0][0] * y + m[0][1] * x, m[1][0] * y + m[1][1] * x
            r2, c2 = (y2 + h - 1) // 2, (x2 + w - 1) // 2
            if not (0 <= r2 < h and 0 <= c2 < w):
                return None
            dest[r * w + c] = r2 * w + c2
    return dest


class Group:
    """A finite group acting on filters (and, when it has matrices, on images) by lattice symmetries.

    Attributes:
        name: a short name (``"p4"``).
        order: ``S``, the number of elements; the size of the group axis of a feature map.
        cayley: ``(S, S)`` long tensor, ``cayley[a, b] = index(a · b)``.
        inverse: ``(S,)`` long tensor, ``inverse[a] = index(a⁻¹)``.
        matrices: the elements' 2×2 integer matrices, or None for a group given only by position permutations.
    """

    def __init__(self, cayley, *, matrices: Optional[Sequence[Matrix]] = None,
                 position_permutations=None, name: Optional[str] = None):
        cayley = torch.as_tensor(cayley, dtype=torch.long)
        if cayley.dim() != 2 or cayley.shape[0] != cayley.shape[1] or cayley.shape[0] < 1:
            raise ValueError(f"cayley: expected a square (S, S) table with S >= 1, got shape {tuple(cayley.shape)}")
        order = cayley.shape[0]
        if cayley.min() < 0 or cayley.max() >= order:
            raise ValueError(f"cayley: entries must lie in [0, {order}), got values in "
                             f"[{int(cayley.min())}, {int(cayley.max())}]")
        identity = _find_identity(cayley)
        rows_ok = all(len(set(row.tolist())) == order for row in cayley)
        cols_ok = all(len(set(col.tolist())) == order for col in cayley.t())
        if not (rows_ok and cols_ok):
            raise ValueError("cayley: not a group table: some element has no inverse (a row or column repeats an "
                             "entry)")
        a, b, c = torch.meshgrid(*(torch.arange(order),) * 3, indexing="ij")
        if not torch.equal(cayley[cayley[a, b], c], cayley[a, cayley[b, c]]):
            raise ValueError("cayley: the product is not associative")
        self.name = name or f"group{order}"
        self.order = order
        self.cayley = cayley
        self.identity = identity
        self.inverse = (cayley == identity).long().argmax(dim=1)
        self.matrices = None if matrices is None else [tuple(map(tuple, m)) for m in matrices]
        self._position_permutations = None
        self._position_size = None
        if position_permutations is not None:
            self._position_permutations = torch.as_tensor(position_permutations).long()
            self._position_size = int(round(self._position_permutations.shape[1] ** 0.5))
        self._cache: dict = {}
        GROUPS.register(self)  # now, outside any trace: a compiled first call finds it

    # A group is an immutable description (its caches aside): copies share it, a pickle holds a built-in group's
    # name, and an unpickled user group registers itself (the ops name groups by their registry key).
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce_ex__(self, protocol):
        if _BUILTINS.get(self.name) is self:
            return get_group, (self.name,)
        return super().__reduce_ex__(protocol)

    def __setstate__(self, state):
        self.__dict__.update(state)
        GROUPS.register(self)

    # ----------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_matrices(cls, matrices, name: Optional[str] = None) -> "Group":
        """The group of the given 2×2 integer matrices, its axis in the order of the list.

        Each matrix must be a symmetry of the square lattice (a signed permutation matrix), the set must hold
        the identity and be closed under products (and so under inverses).
        """
        mats = [_as_matrix(m) for m in matrices]
        if not mats:
            raise ValueError("matrices: expected at least one matrix, got an empty list")
        for m in mats:
            if not _is_lattice_symmetry(m):
                raise ValueError(f"matrices: {m} is not a symmetry of the square lattice (expected a signed "
                                 "permutation matrix)")
        if len(set(mats)) != len(mats):
            raise ValueError(f"matrices: the list repeats an element: {mats}")
        if _EYE not in mats:
            raise ValueError(f"matrices: the identity [[1, 0], [0, 1]] is missing from {mats}")
        index = {m: i for i, m in enumerate(mats)}
        cayley = torch.empty(len(mats), len(mats), dtype=torch.long)
        for (i, a), (j, b) in itertools.product(enumerate(mats), repeat=2):
            ab = _matmul(a, b)
            if ab not in index:
                raise ValueError(f"matrices: not closed under products: {a} @ {b} = {ab} is not in the list")
            cayley[i, j] = index[ab]
        return cls(cayley, matrices=mats, name=name)

    @classmethod
    def from_tables(cls, cayley, position_permutations, name: Optional[str] = None) -> "Group":
        """A group given by its Cayley table and, per element, a permutation of the window positions of a ``k × k``
        filter.

        Args:
            cayley: ``(S, S)`` integers, ``cayley[a, b] = index(a · b)``.
            position_permutations: ``(S, k·k)`` integers (or ``(S, k, k)``): ``position_permutations[g][t]`` is the
                flat index of the window position that position ``t`` moves to under ``g``; or ``(S, k, k, 2)``
                coordinates: ``position_permutations[g][r][c] = (r', c')``, where position ``(r, c)`` moves to under
                ``g``.  0-based (a Julia ``CartesianIndex`` table becomes the coordinate form by subtracting 1).

        The permutations must form a representation of the table: ``perm[a·b] = perm[a] ∘ perm[b]``.  When every
        permutation is a lattice symmetry of the filter the group also gets its matrices and so acts on images
        (equivariance can be checked); otherwise it acts on filters only.
        """
        perms = torch.as_tensor(position_permutations, dtype=torch.long)
        cayley = torch.as_tensor(cayley, dtype=torch.long)
        if perms.dim() == 4 and perms.shape[1] == perms.shape[2] and perms.shape[3] == 2:
            k = perms.shape[1]
            if perms.min() < 0 or perms.max() >= k:  # else (r, c) -> r·k + c could alias another position
                raise ValueError(f"position_permutations: (row, col) coordinates of a {k}x{k} filter must lie in "
                                 f"[0, {k}), got values in [{int(perms.min())}, {int(perms.max())}]")
            perms = perms[..., 0] * k + perms[..., 1]
        if perms.dim() == 3:
            perms = perms.flatten(1)
        if perms.dim() != 2 or perms.shape[0] != cayley.shape[0]:
            raise ValueError(f"position_permutations: expected shape (S, k*k), (S, k, k) or (S, k, k, 2) with "
                             f"S = {cayley.shape[0]}, got {tuple(torch.as_tensor(position_permutations).shape)}")
        n_pos = perms.shape[1]
        k = int(round(n_pos ** 0.5))
        if k * k != n_pos:
            raise ValueError(f"position_permutations: each row must permute the k*k window positions of a square "
                             f"filter, got rows of length {n_pos}")
        for g, row in enumerate(perms):
            if sorted(row.tolist()) != list(range(n_pos)):
                raise ValueError(f"position_permutations: row {g} is not a permutation of 0..{n_pos - 1}: "
                                 f"{row.tolist()}")
        group = cls(cayley, position_permutations=perms, name=name)
        for a, b in itertools.product(range(group.order), repeat=2):
            ab = int(cayley[a, b])
            if not torch.equal(perms[ab], perms[a][perms[b]]):
                raise ValueError(f"position_permutations: inconsistent with cayley: moving the positions by element "
                                 f"{b} then by {a} must equal moving them by cayley[{a}, {b}] = {ab}")
        if not torch.equal(perms[group.identity], torch.arange(n_pos)):
            raise ValueError(f"position_permutations: the identity element {group.identity} must leave the positions "
                             f"in place")
        group.matrices = _matrices_of_permutations(perms, k)
        group._position_size = k
        return group

    # ------------------------------------------------------------------------------------- group structure
    def __len__(self) -> int:
        return self.order

    def __repr__(self) -> str:
        return f"Group({self.name!r}, order={self.order})"

    def __eq__(self, other) -> bool:
        if self is other:  # also keeps torch.compile from tracing torch.equal on the tables
            return True
        if not (isinstance(other, Group) and self.order == other.order and torch.equal(self.cayley, other.cayley)):
            return False
        if self.matrices is not None and other.matrices is not None:
            return self.matrices == other.matrices
        size = self._position_size or other._position_size
        return torch.equal(self.position_destinations(size), other.position_destinations(size))

    def __hash__(self) -> int:
        return hash((self.order, tuple(self.cayley.flatten().tolist())))

    @property
    def is_trivial(self) -> bool:
        return self.order == 1

    def product(self, a: int, b: int) -> int:
        """``index(a · b)``."""
        return int(self.cayley[a, b])

    def inv(self, a: int) -> int:
        """``index(a⁻¹)``."""
        return int(self.inverse[a])

    def stabilizer_index(self, in_group: "Group") -> torch.Tensor:
        """``t[g, s] = index(g⁻¹ s)``, shape ``(S, S_in)``: which slice of the base weight element ``g`` reads for
        input stabilizer index ``s``.  For a trivial (Z2) input group ``S_in = 1`` and ``t = 0``."""
        if in_group.is_trivial:
            return torch.zeros(self.order, 1, dtype=torch.long)
        self._check_in_group(in_group)
        return self.cayley[self.inverse]

    def input_index(self, in_group: "Group") -> torch.Tensor:
        """``s[g, u] = index(g · u)``, shape ``(S, S_in)``: the input stabilizer slice that weight slice ``u``
        meets under output element ``g`` (the inverse map of :meth:`stabilizer_index`)."""
        if in_group.is_trivial:
            return torch.zeros(self.order, 1, dtype=torch.long)
        self._check_in_group(in_group)
        return self.cayley.clone()

    def _check_in_group(self, in_group: "Group") -> None:
        if in_group != self:
            raise ValueError(f"in_group: expected the trivial group 'z2' or the output group {self.name}, got "
                             f"{in_group.name}")

    # ---------------------------------------------------------------------------------------- spatial action
    def position_destinations(self, kernel_size) -> torch.Tensor:
        """``dest[g, t]``: the flat index of the window position that position ``t`` of a ``kh × kw`` filter moves
        to under ``g``.

        Shape ``(S, kh·kw)``.  Raises ``ValueError`` when some element does not map the filter onto itself
        (a rotation of a non-square filter) or the group's hand-written tables are for another size.
        """
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        key = ("dest", kh, kw)
        if key not in self._cache:
            self._cache[key] = self._compute_position_destinations(kh, kw)
        return self._cache[key]

    def _compute_position_destinations(self, kh: int, kw: int) -> torch.Tensor:
        if self._position_permutations is not None and (kh, kw) == (self._position_size, self._position_size):
            return self._position_permutations
        if self.matrices is None:
            raise ValueError(f"kernel_size: group {self.name} was given position permutations for "
                             f"{self._position_size}x{self._position_size} filters only, got {kh}x{kw}")
        rows = []
        for m in self.matrices:
            dest = grid_permutation(m, kh, kw)
            if dest is None:
                raise ValueError(f"kernel_size: group {self.name} rotates filters by 90 degrees, which needs a square "
                                 f"kernel, got {kh}x{kw}")
            rows.append(dest)
        return torch.stack(rows)

    def check_kernel_size(self, kernel_size) -> None:
        """Raise ``ValueError`` when the group's filters cannot be ``kernel_size`` (int or ``(kh, kw)``) large:
        here, when some element does not map the filter onto itself (:meth:`position_destinations`)."""
        self.position_destinations(kernel_size)

    def act_on_filter(self, g: int, w: torch.Tensor) -> torch.Tensor:
        """``act(g, w)``: move the window positions of ``w`` (..., kh, kw) as element ``g`` does."""
        kh, kw = w.shape[-2:]
        source = torch.argsort(self.position_destinations((kh, kw))[g]).to(w.device)
        return w.flatten(-2)[..., source].unflatten(-1, (kh, kw))

    def act_on_image(self, g: int, x: torch.Tensor) -> torch.Tensor:
        """The planar part of ``g``'s action on an image (..., H, W): rotate/flip about the image's centre."""
        if self.matrices is None:
            raise ValueError(f"group {self.name} acts on filters only (it has no matrices), not on images")
        h, w = x.shape[-2:]
        dest = grid_permutation(self.matrices[g], h, w)
        if dest is None:
            raise ValueError(f"input: element {g} of {self.name} rotates by 90 degrees, which needs a square image, "
                             f"got {h}x{w}")
        return x.flatten(-2)[..., torch.argsort(dest).to(x.device)].unflatten(-1, (h, w))

    def act_on_features(self, g: int, y: torch.Tensor) -> torch.Tensor:
        """``(g·y)[:, :, s] = act(g, y[:, :, index(g⁻¹ s)])`` for a feature map ``y`` of shape (B, C, S, H, W).

        A 4-D ``y`` (B, C, H, W) is a feature map on the plane (Z2): only the planar action applies.
        """
        if y.dim() == 4:
            return self.act_on_image(g, y)
        if y.dim() != 5 or y.shape[2] != self.order:
            raise ValueError(f"y: expected (B, C, {self.order}, H, W) for group {self.name}, got {tuple(y.shape)}")
        source = self.cayley[self.inverse[g]].to(y.device)  # s -> index(g⁻¹ s)
        return self.act_on_image(g, y[:, :, source])


def _find_identity(cayley: torch.Tensor) -> int:
    order = cayley.shape[0]
    for e in range(order):
        if torch.equal(cayley[e], torch.arange(order)) and torch.equal(cayley[:, e], torch.arange(order)):
            return e
    raise ValueError("cayley: no identity element (no row e with cayley[e, b] = b and cayley[b, e] = b for all b)")


def _matrices_of_permutations(perms: torch.Tensor, k: int) -> Optional[list]:
    """The lattice-symmetry matrix of each position permutation, or None if some permutation is not one.

    A 1×1 filter is fixed by all 8 symmetries, so its (identity) permutations say nothing about the matrices.
    """
    if k < 2:
        return None
    rows = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    candidates = [m for m in itertools.product(rows, rows) if _is_lattice_symmetry(m)]
    matrices = []
    for row in perms:
        match = [m for m in candidates if torch.equal(grid_permutation(m, k, k), row)]
        if not match:
            return None
        matrices.append(match[0])
    return matrices


def _power(m: Matrix, n: int) -> Matrix:
    out = _EYE
    for _ in range(n):
        out = _matmul(m, out)
    return out


z2 = Group.from_matrices([_EYE], name="z2")
p2 = Group.from_matrices([_EYE, _power(_ROT, 2)], name="p2")
pm = Group.from_matrices([_EYE, _FLIP], name="pm")
p2mm = Group.from_matrices([_EYE, _power(_ROT, 2), _FLIP, _matmul(_FLIP, _power(_ROT, 2))], name="p2mm")
p4 = Group.from_matrices([_power(_ROT, r) for r in range(4)], name="p4")
p4m = Group.from_matrices([_matmul(_power(_FLIP, m), _power(_ROT, r)) for m in range(2) for r in range(4)],
                          name="p4m")

_BUILTINS = {g.name: g for g in (z2, p2, pm, p2mm, p4, p4m)}


# "c" and "d": C_N and D_N on steerable filters, registered by gconv_triton.steerable (which the package imports)
_FAMILIES: dict = {}


def register_group_family(letter: str, build) -> None:
    """Let :func:`get_group` read ``"<letter>N"`` (``N >= 1``) as ``build(N)``."""
    _FAMILIES[letter] = build


def get_group(group, argument: str = "group") -> Group:
    """Accept a :class:`Group`, the name of a built-in one, or ``"cN"`` / ``"dN"`` (``N >= 1``): ``C_N`` / ``D_N``
    on steerable filters (:func:`~gconv_triton.steerable.cyclic_group`, :func:`~gconv_triton.steerable.dihedral_group`
    with its default axis; ``"c4"`` / ``"d4"`` are those, not p4 / p4m with their free per-position weights)."""
    if isinstance(group, Group):
        return group
    if isinstance(group, str):
        key = group.lower()
        if key in _BUILTINS:
            return _BUILTINS[key]
        family = re.fullmatch(r"([a-z])([0-9]+)", key)
        if family is not None and family[1] in _FAMILIES and int(family[2]) >= 1:
            return _FAMILIES[family[1]](int(family[2]))
        raise ValueError(f"{argument}: unknown group {group!r}, expected a Group or one of {sorted(_BUILTINS)}, or "
                         f"'cN' / 'dN' with N >= 1 (C_N / D_N on steerable filters, e.g. 'c8', 'd16')")
    raise TypeError(f"{argument}: expected a Group or a group name (str), got {type(group).__name__}")
