"""The built-in groups against an independent definition written with ``torch.rot90`` / ``torch.flip``.

``planar(name, g, t)`` below is the package's convention (docs/conventions.md) spelled out by hand (p4m:
``g = 4m + r`` rotates by ``r`` then flips rows if ``m = 1``); the group product is then derived from how the
elements compose on a probe filter, so none of the library's tables is used to check them.  ``test_reference.py``
reuses these helpers.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import gconv_triton
from gconv_triton.groups import Group, get_group

ROTATION_GROUPS = ("p4", "p4m")
GROUP_NAMES = ("z2", "p2", "pm", "p2mm", "p4", "p4m")


def _rot(t: torch.Tensor, r: int) -> torch.Tensor:
    return torch.rot90(t, k=r, dims=(-2, -1))


def _flip(t: torch.Tensor) -> torch.Tensor:
    return torch.flip(t, dims=(-2,))


# Each element as (rotation r, flip m): the planar map is "rotate by r·90°, then flip rows if m" (= M^m R^r).
ELEMENTS = {
    "z2": [(0, 0)],
    "p2": [(0, 0), (2, 0)],
    "pm": [(0, 0), (0, 1)],
    "p2mm": [(0, 0), (2, 0), (0, 1), (2, 1)],
    "p4": [(r, 0) for r in range(4)],
    "p4m": [(r, m) for m in range(2) for r in range(4)],
}


def planar(name: str, g: int, t: torch.Tensor) -> torch.Tensor:
    """Element ``g`` of group ``name`` acting on the last two dims of ``t`` (a filter or an image)."""
    r, m = ELEMENTS[name][g]
    t = _rot(t, r)
    return _flip(t) if m else t


def _probe(h: int = 3, w: int = 3) -> torch.Tensor:
    """A filter with distinct weights at all window positions: two elements act alike on it only if they are equal."""
    return torch.arange(h * w, dtype=torch.float64).view(h, w)


def cayley_from_actions(name: str) -> torch.Tensor:
    """``table[a, b] = index(a·b)`` where ``a·b`` means "act by ``b``, then by ``a``", found by composing the
    planar maps on a probe."""
    probe = _probe()
    images = [planar(name, g, probe) for g in range(len(ELEMENTS[name]))]
    order = len(images)
    table = torch.empty(order, order, dtype=torch.long)
    for a, b in itertools.product(range(order), repeat=2):
        ab = planar(name, a, planar(name, b, probe))
        matches = [c for c in range(order) if torch.equal(images[c], ab)]
        assert len(matches) == 1, f"{name}: elements {a}, {b} compose to {len(matches)} elements"
        table[a, b] = matches[0]
    return table


def inverse_from_table(table: torch.Tensor) -> torch.Tensor:
    """``inv[a]`` with ``a · inv[a] = e`` (element 0 is the identity in every built-in order)."""
    return (table == 0).long().argmax(dim=1)


# ------------------------------------------------------------------------------------------- element order
@pytest.mark.parametrize("name", GROUP_NAMES)
@pytest.mark.parametrize("k", [3, 4])
def test_act_on_filter_is_rot90_flip(name, k):
    group = get_group(name)
    assert group.order == len(ELEMENTS[name]) and group.name == name
    w = torch.randn(2, 3, k, k, dtype=torch.float64)
    for g in range(group.order):
        assert torch.equal(group.act_on_filter(g, w), planar(name, g, w)), f"{name} element {g}, k={k}"


@pytest.mark.parametrize("name", GROUP_NAMES)
@pytest.mark.parametrize("size", [(5, 5), (6, 6)])
def test_act_on_image_is_rot90_flip(name, size):
    group = get_group(name)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for g in range(group.order):
        assert torch.equal(group.act_on_image(g, x), planar(name, g, x)), f"{name} element {g}, {size}"


@pytest.mark.parametrize("name", ["z2", "p2", "pm", "p2mm"])
def test_groups_without_quarter_turns_accept_non_square(name):
    group = get_group(name)
    w = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(1, 2, 4, 7, dtype=torch.float64)
    for g in range(group.order):
        assert torch.equal(group.act_on_filter(g, w), planar(name, g, w))
        assert torch.equal(group.act_on_image(g, x), planar(name, g, x))


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_matrices_move_offsets_like_the_planar_maps(name):
    """The value at offset ``v`` from the centre moves to ``M v`` (R = [[0,-1],[1,0]] is rot90(k=1))."""
    group = get_group(name)
    k = 3
    for g, m in enumerate(group.matrices):
        for r, c in itertools.product(range(k), repeat=2):
            one_hot = torch.zeros(k, k)
            one_hot[r, c] = 1
            moved = planar(name, g, one_hot).nonzero().squeeze(0).tolist()
            v = (r - 1, c - 1)
            mv = (m[0][0] * v[0] + m[0][1] * v[1], m[1][0] * v[0] + m[1][1] * v[1])
            assert moved == [mv[0] + 1, mv[1] + 1], f"{name} element {g}: matrix {m}"


def test_p4_p4m_matrices():
    rot, flip = torch.tensor([[0, -1], [1, 0]]), torch.tensor([[-1, 0], [0, 1]])
    for r in range(4):
        assert torch.equal(torch.tensor(gconv_triton.p4.matrices[r]), torch.linalg.matrix_power(rot, r))
        for m in range(2):
            expected = torch.linalg.matrix_power(flip, m) @ torch.linalg.matrix_power(rot, r)
            assert torch.equal(torch.tensor(gconv_triton.p4m.matrices[4 * m + r]), expected)


# --------------------------------------------------------------------------------------- group structure
@pytest.mark.parametrize("name", GROUP_NAMES)
def test_cayley_table_matches_composition(name):
    group = get_group(name)
    assert torch.equal(group.cayley, cayley_from_actions(name))
    assert group.identity == 0
    for a, b in itertools.product(range(group.order), repeat=2):
        assert group.product(a, b) == int(group.cayley[a, b])


def test_p4_product_rule():
    for r1, r2 in itertools.product(range(4), repeat=2):
        assert gconv_triton.p4.product(r1, r2) == (r1 + r2) % 4


def test_p4m_product_rule():
    """The documented product: ``(m1, r1)(m2, r2) = (m1 + m2 mod 2, (-1)^m2 · r1 + r2 mod 4)``."""
    table = cayley_from_actions("p4m")
    for m1, r1, m2, r2 in itertools.product(range(2), range(4), range(2), range(4)):
        expected = 4 * ((m1 + m2) % 2) + ((-1) ** m2 * r1 + r2) % 4
        assert int(table[4 * m1 + r1, 4 * m2 + r2]) == expected
        assert gconv_triton.p4m.product(4 * m1 + r1, 4 * m2 + r2) == expected


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_inverse_and_identity(name):
    group = get_group(name)
    assert torch.equal(group.inverse, inverse_from_table(cayley_from_actions(name)))
    for a in range(group.order):
        assert group.product(a, group.inv(a)) == group.identity == group.product(group.inv(a), a)
        assert group.product(a, group.identity) == a == group.product(group.identity, a)


def test_p4m_inverse_rule():
    """``(0, r)⁻¹ = (0, -r)``; every flip ``(1, r)`` is its own inverse."""
    for r in range(4):
        assert gconv_triton.p4m.inv(r) == (-r) % 4
        assert gconv_triton.p4m.inv(4 + r) == 4 + r


@pytest.mark.parametrize("name", ["p2", "pm", "p2mm", "p4", "p4m"])
def test_stabilizer_and_input_index(name):
    group = get_group(name)
    table = cayley_from_actions(name)
    inv = inverse_from_table(table)
    t, s_of = group.stabilizer_index(group), group.input_index(group)
    for g, s in itertools.product(range(group.order), repeat=2):
        assert int(t[g, s]) == int(table[inv[g], s])           # t(g, s) = index(g⁻¹ s)
        assert int(s_of[g, s]) == int(table[g, s])             # s(g, u) = index(g u)
        assert int(t[g, s_of[g, s]]) == s                      # the two maps are inverse
    assert torch.equal(group.stabilizer_index(gconv_triton.z2), torch.zeros(group.order, 1, dtype=torch.long))
    other = gconv_triton.p4 if name != "p4" else gconv_triton.p4m
    with pytest.raises(ValueError, match="in_group"):
        group.stabilizer_index(other)


# ------------------------------------------------------------------------------------ action on features
@pytest.mark.parametrize("name", ["p2", "pm", "p2mm", "p4", "p4m"])
@pytest.mark.parametrize("size", [5, 6])
def test_act_on_features_definition(name, size):
    """``(g·y)[:, :, s] = act(g, y[:, :, index(g⁻¹ s)])``."""
    group = get_group(name)
    table = cayley_from_actions(name)
    inv = inverse_from_table(table)
    y = torch.randn(2, 3, group.order, size, size, dtype=torch.float64)
    for g in range(group.order):
        expected = torch.stack([planar(name, g, y[:, :, table[inv[g], s]]) for s in range(group.order)], dim=2)
        assert torch.equal(group.act_on_features(g, y), expected), f"{name} element {g}"


@pytest.mark.parametrize("name", ["p2", "pm", "p2mm", "p4", "p4m"])
@pytest.mark.parametrize("size", [5, 6])
def test_act_on_features_is_a_group_action(name, size):
    group = get_group(name)
    y = torch.randn(2, 3, group.order, size, size, dtype=torch.float64)
    assert torch.equal(group.act_on_features(group.identity, y), y)
    for a, b in itertools.product(range(group.order), repeat=2):
        lhs = group.act_on_features(a, group.act_on_features(b, y))
        assert torch.equal(lhs, group.act_on_features(group.product(a, b), y)), f"{name}: {a}, {b}"
    for a in range(group.order):
        assert torch.equal(group.act_on_features(group.inv(a), group.act_on_features(a, y)), y)


def test_act_on_features_rejects_wrong_group_axis():
    with pytest.raises(ValueError, match="y"):
        gconv_triton.p4.act_on_features(1, torch.randn(1, 2, 8, 5, 5))


# ------------------------------------------------------------------------------------- non-square kernels
@pytest.mark.parametrize("name", ROTATION_GROUPS)
def test_rotation_groups_reject_non_square_kernels(name):
    group = get_group(name)
    with pytest.raises(ValueError, match="kernel_size"):
        group.position_destinations((3, 5))
    with pytest.raises(ValueError, match="kernel_size"):
        group.act_on_filter(1, torch.randn(3, 5))
    with pytest.raises(ValueError, match="kernel_size"):
        gconv_triton.GroupConv2d(2, 3, (3, 5), group=name, in_group=name)
    with pytest.raises(ValueError, match="kernel_size"):
        gconv_triton.functional.gconv2d(torch.randn(1, 2, 7, 7), torch.randn(3, 2, 1, 3, 5), group=name,
                                        in_group="z2")
    with pytest.raises(ValueError, match="input"):
        group.act_on_image(1, torch.randn(1, 1, 5, 6))


# ----------------------------------------------------------------------------------- lookup, constructors
def test_get_group():
    for name in GROUP_NAMES:
        assert get_group(name) is getattr(gconv_triton.groups, name)
        assert get_group(name.upper()) is getattr(gconv_triton.groups, name)
    assert get_group(gconv_triton.p4) is gconv_triton.p4
    with pytest.raises(ValueError, match="group.*'p3'"):
        get_group("p3")
    with pytest.raises(TypeError, match="group"):
        get_group(4)


@pytest.mark.parametrize("name", ["p4", "p4m", "p2mm"])
def test_from_tables_round_trip(name):
    group = get_group(name)
    rebuilt = Group.from_tables(group.cayley, group.position_destinations(3), name=name + "_tables")
    assert rebuilt == group
    assert rebuilt.matrices == group.matrices  # recovered, so the rebuilt group acts on images too
    x = torch.randn(1, 2, group.order, 5, 5)
    for g in range(group.order):
        assert torch.equal(rebuilt.act_on_features(g, x), group.act_on_features(g, x))


def test_constructors_reject_non_groups():
    eye, rot = [[1, 0], [0, 1]], [[0, -1], [1, 0]]
    with pytest.raises(ValueError, match="closed"):
        Group.from_matrices([eye, rot])
    with pytest.raises(ValueError, match="identity"):
        Group.from_matrices([rot, [[0, 1], [-1, 0]]])
    with pytest.raises(ValueError, match="cayley"):
        Group([[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="position_permutations"):  # a 3-cycle of positions squared is not the identity
        Group.from_tables([[0, 1], [1, 0]], [list(range(9)), [1, 2, 0, 3, 4, 5, 6, 7, 8]])
