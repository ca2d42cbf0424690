"""User-defined symmetry groups (``Group.from_matrices`` / ``Group.from_tables``) and the built-ins p2, pm, p2mm,
p4, p4m in group-convolution layers: equivariance under every element on the Triton kernels and on the reference
path, kernels against the reference for a group that acts on filters only, and invalid tables rejected.
"""

from __future__ import annotations

import pytest
import torch

import gconv_triton
from gconv_triton import GroupConv2d
from gconv_triton.groups import Group, get_group
from helpers import DEVICE, assert_close

EYE, ROT180 = [[1, 0], [0, 1]], [[-1, 0], [0, -1]]
FLIP_ROWS, FLIP_COLS = [[-1, 0], [0, 1]], [[1, 0], [0, -1]]
TRANSPOSE = [[0, 1], [1, 0]]

# Where each window position of a 3x3 filter goes under a quarter turn (torch.rot90(·, 1)), written by hand as 1-based
# (row, col) pairs like a Julia CartesianIndex table: ROT90_CARTESIAN[r][c] is where position (r, c) moves.
ROT90_CARTESIAN = [
    [(3, 1), (2, 1), (1, 1)],
    [(3, 2), (2, 2), (1, 2)],
    [(3, 3), (2, 3), (1, 3)],
]


def cyclic_cayley(order: int) -> list[list[int]]:
    """``cayley[a][b] = a + b mod order``: row ``a`` is the group axis shifted cyclically by ``a``."""
    return [[(a + b) % order for b in range(order)] for a in range(order)]


def rotations_from_cartesian_table() -> Group:
    """p4 from the hand-written quarter-turn table: element ``n`` is the table applied ``n`` times."""
    step = torch.tensor(ROT90_CARTESIAN) - 1                       # (3, 3, 2), 0-based
    tables = [torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"), dim=-1)]
    for _ in range(3):
        tables.append(step[tables[-1][..., 0], tables[-1][..., 1]])  # move by the previous element, then turn
    return Group.from_tables(cyclic_cayley(4), torch.stack(tables), name="rot4_tables")


def ring_rotations() -> Group:
    """Z8 turning the 8 border positions of a 3x3 filter by one step each (a '45° rotation'): a group of position
    permutations with no lattice matrices, so it acts on filters only."""
    ring = [0, 1, 2, 5, 8, 7, 6, 3]                                 # border positions, clockwise from the top left
    perms = []
    for g in range(8):
        dest = list(range(9))
        for j, pos in enumerate(ring):
            dest[pos] = ring[(j + g) % 8]
        perms.append(dest)
    return Group.from_tables(cyclic_cayley(8), perms, name="ring8")


USER_GROUPS = {
    "flip_cols_identity_last": Group.from_matrices([FLIP_COLS, EYE], name="flip_cols_identity_last"),
    "p2mm_shuffled": Group.from_matrices([FLIP_COLS, EYE, FLIP_ROWS, ROT180], name="p2mm_shuffled"),
    "diagonal_flip": Group.from_matrices([EYE, TRANSPOSE], name="diagonal_flip"),
    "rot4_tables": rotations_from_cartesian_table(),
}
GROUPS = {**{name: get_group(name) for name in ("p2", "pm", "p2mm", "p4", "p4m")}, **USER_GROUPS}
# (backend, dtype): the kernels in float32, the reference path in float64 (round-off only)
BACKENDS = [("triton", torch.float32), ("torch", torch.float64)]


def _assert_equivariant(layer: torch.nn.Module, x: torch.Tensor, group: Group, backend: str) -> None:
    """``layer(g·x) == g·layer(x)`` for every element ``g``, each checked on its own."""
    with gconv_triton.backend(backend), torch.no_grad():
        y = layer(x)
        assert y.shape[2] == group.order
        for g in range(group.order):
            assert_close(layer(group.act_on_features(g, x)), group.act_on_features(g, y), x.dtype,
                         f"{group.name}, element {g} ({backend})")


@pytest.mark.parametrize("backend, dtype", BACKENDS, ids=[b for b, _ in BACKENDS])
@pytest.mark.parametrize("lifting", [True, False], ids=["z2-to-G", "G-to-G"])
@pytest.mark.parametrize("name", list(GROUPS))
def test_equivariance_under_every_element(name, lifting, backend, dtype):
    group = GROUPS[name]
    layer = GroupConv2d(2, 3, 3, group=group, in_group="z2" if lifting else group, padding=1, device=DEVICE,
                        dtype=dtype)
    x = torch.randn(1, 2, *(() if lifting else (group.order,)), 7, 7, device=DEVICE, dtype=dtype)
    _assert_equivariant(layer, x, group, backend)


def test_equivariance_even_kernel_non_square_image():
    """p2mm has no quarter turns: any kernel and image shape, here 4x2 kernels on a 6x7 image."""
    group = USER_GROUPS["p2mm_shuffled"]
    layer = GroupConv2d(2, 2, (4, 2), group=group, in_group=group, padding=(2, 1), device=DEVICE)
    _assert_equivariant(layer, torch.randn(1, 2, 4, 6, 7, device=DEVICE), group, "triton")


def test_cartesian_table_group_is_p4():
    group = USER_GROUPS["rot4_tables"]
    p4 = gconv_triton.p4
    assert group == p4 and group.matrices == p4.matrices and group.identity == 0
    assert torch.equal(group.position_destinations(3), p4.position_destinations(3))
    # the same layer with the built-in p4 computes the same thing, on the kernels
    for in_group, x in [("z2", torch.randn(2, 2, 6, 6)), (group, torch.randn(2, 2, 4, 6, 6))]:
        ours = GroupConv2d(2, 3, 3, group=group, in_group=in_group, padding=1, device=DEVICE)
        builtin = GroupConv2d(2, 3, 3, group="p4", in_group="z2" if in_group == "z2" else "p4", padding=1,
                              device=DEVICE)
        builtin.load_state_dict(ours.state_dict())
        with gconv_triton.backend("triton"), torch.no_grad():
            assert torch.equal(ours(x.to(DEVICE)), builtin(x.to(DEVICE)))


def test_group_axis_follows_list_order():
    group = USER_GROUPS["p2mm_shuffled"]
    assert group.matrices == [tuple(map(tuple, m)) for m in (FLIP_COLS, EYE, FLIP_ROWS, ROT180)]
    assert group.identity == 1
    w = torch.randn(2, 3, 3)
    for g, planar in enumerate([lambda t: t.flip(-1), lambda t: t, lambda t: t.flip(-2),
                                lambda t: t.flip(-2, -1)]):
        assert torch.equal(group.act_on_filter(g, w), planar(w)), g
    # the output's group axis is in that order too: element g of a lifting layer sees the filter moved by g
    layer = GroupConv2d(1, 1, 3, group=group, padding=1, bias=False, dtype=torch.float64)
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    with gconv_triton.backend("torch"), torch.no_grad():
        y = layer(x)
        for g in range(4):
            plain = torch.nn.functional.conv2d(x, group.act_on_filter(g, layer.weight[:, :, 0]), padding=1)
            assert_close(y[:, :, g], plain, torch.float64, f"element {g}")


# ------------------------------------------------------------------------ a group that acts on filters only
RING_CASES = [("z2-to-G", "z2", (2, 2, 6, 5)), ("G-to-G", "ring8", (1, 2, 8, 5, 5))]


@pytest.mark.parametrize("case", RING_CASES, ids=[c[0] for c in RING_CASES])
def test_filter_only_group_kernels_match_reference(case):
    """Kernels (float32) against the float64 reference for Z8 on the window positions: forward and every gradient."""
    _, in_group, shape = case
    group = ring_rotations()
    assert group.matrices is None and group.order == 8
    in_group = group if in_group == "ring8" else in_group
    oracle = GroupConv2d(2, 3, 3, group=group, in_group=in_group, padding=1, dtype=torch.float64)
    ours = GroupConv2d(2, 3, 3, group=group, in_group=in_group, padding=1, device=DEVICE)
    ours.load_state_dict(oracle.state_dict())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    with gconv_triton.backend("torch"):
        y = oracle(x)
    dy = torch.randn_like(y)
    expected = (y, *torch.autograd.grad(y, [x, oracle.weight, oracle.bias], dy))
    x = x.detach().to(DEVICE, torch.float32).requires_grad_()
    with gconv_triton.backend("triton"):
        y = ours(x)
    got = (y, *torch.autograd.grad(y, [x, ours.weight, ours.bias], dy.to(y)))
    for what, out, ref in zip(("output", "dx", "dweight", "dbias"), got, expected):
        assert_close(out, ref, torch.float32, f"ring8 {what}")
    with pytest.raises(ValueError, match="acts on filters only"):
        group.act_on_image(1, torch.randn(1, 1, 5, 5))
    with pytest.raises(ValueError, match="kernel_size"):  # its tables are for 3x3 filters
        GroupConv2d(2, 3, 5, group=group)


def test_layers_accept_group_objects_and_check_in_group():
    group = USER_GROUPS["p2mm_shuffled"]
    assert GroupConv2d(2, 3, 3, group=group, in_group=group).weight.shape == (3, 2, 4, 3, 3)
    assert GroupConv2d(2, 3, 3, group=group, in_group="z2").weight.shape == (3, 2, 1, 3, 3)
    with pytest.raises(ValueError, match="in_group"):  # same elements as p2mm, another order: another group axis
        GroupConv2d(2, 3, 3, group=group, in_group="p2mm")
    with pytest.raises(ValueError, match="in_group"):
        gconv_triton.functional.gconv2d(torch.randn(1, 2, 4, 5, 5), torch.randn(3, 2, 4, 3, 3), group=group,
                                        in_group=USER_GROUPS["rot4_tables"])


def test_one_by_one_tables_have_no_matrices():
    """Every symmetry fixes a 1x1 filter, so its tables cannot tell which matrix an element is."""
    group = Group.from_tables(cyclic_cayley(4), [[0]] * 4)
    assert group.order == 4 and group.matrices is None


# ------------------------------------------------------------------------------------- invalid definitions
NON_ASSOCIATIVE_LOOP = [[0, 1, 2, 3, 4], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3], [3, 2, 4, 0, 1], [4, 3, 1, 2, 0]]
IDENTITY_3x3 = list(range(9))
ROT90_FLAT = [6, 3, 0, 7, 4, 1, 8, 5, 2]
ROT180_FLAT = IDENTITY_3x3[::-1]


@pytest.mark.parametrize("cayley, perms, match", [
    ([[0, 1], [1, 2]], [IDENTITY_3x3, ROT180_FLAT], r"cayley: entries must lie in \[0, 2\)"),        # not closed
    ([[0, 2, 1], [2, 1, 0], [1, 0, 2]], [IDENTITY_3x3] * 3, "cayley: no identity"),
    ([[0, 1], [1, 1]], [IDENTITY_3x3, ROT180_FLAT], "cayley: .*no inverse"),
    (NON_ASSOCIATIVE_LOOP, [IDENTITY_3x3] * 5, "cayley: the product is not associative"),
    ([[0, 1, 2]], [IDENTITY_3x3], r"cayley: expected a square \(S, S\) table"),
    (cyclic_cayley(2), [IDENTITY_3x3, [0, 0, 2, 3, 4, 5, 6, 7, 8]],
     "position_permutations: row 1 is not a permutation"),
    (cyclic_cayley(2), [IDENTITY_3x3, ROT90_FLAT], "position_permutations: inconsistent with cayley"),
    (cyclic_cayley(4), [ROT90_FLAT, IDENTITY_3x3, ROT180_FLAT, ROT90_FLAT[::-1]],
     "position_permutations: inconsistent with cayley"),                                        # identity not fixed
    (cyclic_cayley(2), [list(range(8))] * 2, "position_permutations: each row must permute the k\\*k window positions"),
    (cyclic_cayley(3), [IDENTITY_3x3, ROT180_FLAT], r"position_permutations: expected shape \(S, k\*k\)"),
    (cyclic_cayley(2), [[[(0, 0), (0, 1)], [(1, 0), (1, 1)]], [[(0, 0), (0, 2)], [(1, 0), (1, 1)]]],
     r"position_permutations: \(row, col\) coordinates of a 2x2 filter must lie in \[0, 2\)"),
], ids=["not-closed", "no-identity", "no-inverse", "not-associative", "not-square", "non-permutation-row",
        "inconsistent", "identity-moves-positions", "not-square-filter", "wrong-order", "coordinates-out-of-range"])
def test_from_tables_rejects(cayley, perms, match):
    with pytest.raises(ValueError, match=match):
        Group.from_tables(cayley, perms)


@pytest.mark.parametrize("matrices, match", [
    ([EYE, [[0, -1], [1, 0]]], "not closed under products"),
    ([ROT180], r"the identity \[\[1, 0\], \[0, 1\]\] is missing"),
    ([EYE, [[1, 1], [0, 1]]], "not a symmetry of the square lattice"),                           # shear
    ([EYE, [[2, 0], [0, 1]]], "not a symmetry of the square lattice"),                           # scaling
    ([EYE, [[0.5, 0.0], [0.0, 1.0]]], "expected 2x2 integer matrices"),
    ([EYE, [[1, 0, 0], [0, 1, 0], [0, 0, 1]]], "expected 2x2 integer matrices"),
    ([EYE, ROT180, EYE], "repeats an element"),
    ([], "at least one matrix"),
], ids=["not-closed", "no-identity", "shear", "scaling", "non-integer", "3x3", "duplicate", "empty"])
def test_from_matrices_rejects(matrices, match):
    with pytest.raises(ValueError, match=f"matrices: .*{match}|matrices: {match}"):
        Group.from_matrices(matrices)
