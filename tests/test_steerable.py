"""Steerable C_N / D_N filters (gconv_triton.steerable): groups, e2cnn's default basis, the float64 reference bank,
exact equivariance on grid symmetries, and parity with e2cnn (span, parameter counts, approximate equivariance,
weights)."""

import math
import warnings

import pytest
import torch

import gconv_triton as gt
from gconv_triton import steerable as st
from gconv_triton.reference import filter_bank

C4, C8, C16 = st.cyclic_group(4), st.cyclic_group(8), st.cyclic_group(16)
D4, D8 = st.dihedral_group(4), st.dihedral_group(8)


def _e2cnn():
    pytest.importorskip("e2cnn")
    import gconv_triton.interop  # noqa: F401  (patches e2cnn for NumPy 2)
    import e2cnn.nn.modules.r2_conv.basisexpansion_singleblock as single
    from e2cnn import gspaces, nn as enn

    single._stored_filters.clear()  # its dihedral cache ignores the reflection axis (interop's docstring)
    return gspaces, enn


def _gspace(gspaces, name: str, axis: float = 0.0):
    n = int(name[1:])
    return gspaces.Rot2dOnR2(n) if name[0] == "C" else gspaces.FlipRot2dOnR2(n, axis=axis)


def _r2conv(enn, gspace, lifting: bool, k: int, fields=(1, 1), **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_type = enn.FieldType(gspace, [gspace.trivial_repr if lifting else gspace.regular_repr] * fields[1])
        out_type = enn.FieldType(gspace, [gspace.regular_repr] * fields[0])
        return enn.R2Conv(in_type, out_type, k, **kwargs)


# ------------------------------------------------------------------------------------------------------ groups
@pytest.mark.parametrize("group, grid_symmetries", [
    (st.cyclic_group(3), 1), (C4, 4), (C8, 4), (C16, 4), (st.dihedral_group(3), 2), (D4, 8), (D8, 8),
    (st.dihedral_group(6, math.pi / 5), 2), (st.dihedral_group(8, math.pi / 16), 4)], ids=repr)
def test_group_tables_match_matrices(group, grid_symmetries):
    mats = group.planar_matrices
    products = torch.einsum("aij,bjk->abik", mats, mats)
    assert torch.allclose(products, mats[group.cayley], atol=1e-14)
    assert torch.allclose(mats[group.inverse] @ mats, torch.eye(2, dtype=torch.float64).expand_as(mats), atol=1e-14)
    assert group.identity == 0 and torch.equal(mats[0], torch.eye(2, dtype=torch.float64))
    # multiples of 90° and, for D_N, flips across the grid axes and diagonals (none when the axis is off-grid)
    assert len(group.lattice_elements) == grid_symmetries


def test_c4_d4_are_p4_p4m():
    assert C4.lattice_matrices == gt.p4.matrices and torch.equal(C4.cayley, gt.p4.cayley)
    assert D4.lattice_matrices == gt.p4m.matrices and torch.equal(D4.cayley, gt.p4m.cayley)
    # C8's multiples of 90° are p4's elements, in order
    assert [C8.lattice_matrices[g] for g in C8.lattice_elements] == gt.p4.matrices
    assert C4 != gt.p4 and gt.p4 != C4 and C4 == st.cyclic_group(4) and D8 != st.dihedral_group(8, math.pi / 2)


# ------------------------------------------------------------------------------------------------------- basis
@pytest.mark.parametrize("k, size", [(3, 6), (4, 5), (5, 11), (6, 12), (7, 18)])
def test_basis_size_rank_and_normalisation(k, size):
    basis = st.steerable_basis(k)
    assert basis.samples.shape == (size, k, k)
    assert int(torch.linalg.matrix_rank(basis.samples.flatten(1))) == size
    assert math.isclose(float(basis.samples.square().sum()), size, rel_tol=1e-12)
    assert bool((basis.frequency[basis.radius == 0] == 0).all())


def test_kernel_size_two_has_no_basis():
    with pytest.raises(ValueError, match="kernel_size"):
        st.steerable_basis(2)


@pytest.mark.parametrize("group", [C4, C8, C16, D4, D8, st.dihedral_group(5, 0.3)], ids=repr)
@pytest.mark.parametrize("k", [3, 4, 5, 7])
def test_rotated_tables_coefficient_rotation_and_grid_symmetries(group, k):
    tables = st.rotated_basis(group, k)
    rotation = st.coefficient_rotation(group, k)
    assert tables.shape == (group.order, len(st.steerable_basis(k).radius), k, k)
    assert torch.equal(tables[0], st.steerable_basis(k).samples)
    by_coefficients = torch.einsum("gbc,cp->gbp", rotation, tables[0].flatten(1)).view_as(tables)
    assert (by_coefficients - tables).abs().max() < 1e-14
    # orthogonal in coefficient space (a pair shares one scale) and a representation of the group
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(rotation.shape[1], dtype=torch.float64),
                          atol=1e-14)
    a, b = torch.meshgrid(torch.arange(group.order), torch.arange(group.order), indexing="ij")
    # ψ(R_(ab)⁻¹ p) = ψ(R_b⁻¹ R_a⁻¹ p): D[ab] = D[b] D[a]
    assert torch.allclose(rotation[group.cayley[a, b]], rotation[b] @ rotation[a], atol=1e-13)
    for g in group.lattice_elements:  # exact position permutations: p4's act_on_filter convention
        assert torch.equal(tables[g], group.act_on_image(g, tables[0]))


def test_c4_rotation_sign_is_p4s():
    tables = st.rotated_basis(C4, 5)
    for g in range(4):
        assert torch.equal(tables[g], gt.p4.act_on_filter(g, tables[0]))
        assert torch.equal(tables[g], torch.rot90(tables[0], k=g, dims=(-2, -1)))


# ------------------------------------------------------------------------------------------------------- banks
@pytest.mark.parametrize("group, free", [(C4, gt.p4), (D4, gt.p4m)], ids=["C4", "D4"])
@pytest.mark.parametrize("lifting", [True, False])
def test_c4_d4_banks_are_p4_p4m_filter_banks(group, free, lifting):
    torch.manual_seed(0)
    in_group = "z2" if lifting else group
    c = torch.randn(3, 2, 1 if lifting else group.order, 11, dtype=torch.float64)
    bank = st.steerable_bank(c, group, in_group, 5).view(3, group.order, 2, -1, 5, 5)
    identity_slice = bank[:, 0].contiguous()
    assert torch.equal(filter_bank(identity_slice, free, gt.z2 if lifting else free), bank)
    direct = torch.einsum("oisb,bp->oisp", c, st.steerable_basis(5).samples.flatten(1)).view_as(identity_slice)
    assert torch.allclose(identity_slice, direct, rtol=0, atol=1e-14)


def test_bank_gradient():
    torch.manual_seed(0)
    c = torch.randn(2, 1, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: st.steerable_bank(c, C8, C8, 3), (c,), fast_mode=True)
    x = torch.randn(1, 1, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda c, x: st.steerable_conv2d(x, c, None, group=C8, in_group=C8, kernel_size=3, padding=1), (c, x),
        fast_mode=True)


def _graph_nodes(tensor: torch.Tensor) -> list[str]:
    """The names of the autograd nodes behind ``tensor``."""
    seen, stack, names = set(), [tensor.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("group, lifting", [(C8, False), (D8, True)])
def test_bank_is_one_matmul_and_one_index_select(group, lifting):
    """A training step rebuilds the bank: one GEMM with all the tables and one index_select (its backward an
    index_add_), no accumulating index_put (advanced indexing's backward) and no copy of the tables per channel."""
    c = st.init_coefficients(3, 2, group, "z2" if lifting else group, 5).requires_grad_()
    nodes = _graph_nodes(st.steerable_bank(c, group, "z2" if lifting else group, 5))
    assert "IndexBackward0" not in nodes and "ExpandBackward0" not in nodes
    assert nodes.count("MmBackward0") == 1 and nodes.count("IndexSelectBackward0") == 1
    assert len(nodes) <= 6, nodes


def test_resampling_protocol_arguments():
    x = st.smooth_input(1, 2, 16, 16, seed=0)
    assert x.shape == (1, 2, 16, 16) and x.dtype == torch.float64
    assert torch.equal(st.rotate_resampled(C8, 0, x), x)  # the identity reads pixel centres
    with pytest.raises(ValueError, match="g: expected a rotation of C8"):
        st.rotate_resampled(C8, 8, x)
    with pytest.raises(ValueError, match="g: expected a rotation of D8"):
        st.rotate_resampled(D8, 9, x)


def _layer_equivariance(group, lifting, k=5, size=9):
    torch.manual_seed(1)
    s_in = 1 if lifting else group.order
    c = torch.randn(3, 2, s_in, len(st.steerable_basis(k).radius), dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    x = torch.randn(2, 2, *(() if lifting else (s_in,)), size, size, dtype=torch.float64)

    def layer(t):
        return st.steerable_conv2d(t, c, bias, group=group, in_group="z2" if lifting else group, kernel_size=k,
                                   padding=k // 2)

    y = layer(x)
    errors = {}
    for g in group.lattice_elements:
        gx = group.act_on_image(g, x) if lifting else group.act_on_features(g, x)
        expected = group.act_on_features(g, y)
        errors[g] = float((layer(gx) - expected).norm() / expected.norm())
    return errors


@pytest.mark.parametrize("group", [C4, C8, C16, D4, D8], ids=repr)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "G-G"])
def test_exact_equivariance_on_grid_symmetries(group, lifting):
    errors = _layer_equivariance(group, lifting)
    assert len(errors) == (8 if group.reflections else 4)
    assert max(errors.values()) < 1e-12, errors


def test_init_has_conv2d_variance():
    group, k, c_in = C8, 5, 16
    coefficients = st.init_coefficients(64, c_in, group, group, k, generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64)
    bank = st.steerable_bank(coefficients, group, group, k)
    fan_in = c_in * group.order * k * k
    assert math.isclose(float(bank.square().mean()), 1 / (3 * fan_in), rel_tol=0.03)


def test_bad_arguments():
    with pytest.raises(ValueError, match="coefficients"):
        st.steerable_bank(torch.zeros(2, 1, 8, 10), C8, C8, 5)
    with pytest.raises(ValueError, match="in_group"):
        st.steerable_bank(torch.zeros(2, 1, 4, 11), C8, C4, 5)
    with pytest.raises(TypeError, match="group"):
        st.steerable_bank(torch.zeros(2, 1, 4, 11), gt.p4, gt.p4, 5)
    with pytest.raises(ValueError, match="N"):
        st.cyclic_group(0)
    for n in (4.0, 8.0):  # also after dihedral_group(4) / cyclic_group(8) are cached
        with pytest.raises(TypeError, match="N"):
            st.dihedral_group(n)
        with pytest.raises(TypeError, match="N"):
            st.cyclic_group(n)
    st.dihedral_group(4, 0.0)
    with pytest.raises(TypeError, match="N"):  # the cache must not take 4.0 for 4
        st.dihedral_group(4.0, 0.0)
    with pytest.raises(TypeError, match="kernel_size"):
        st.steerable_basis(5.0)
    with pytest.raises(TypeError, match="in_group"):
        st.steerable_bank(torch.zeros(2, 1, 8, 11), C8, 8, 5)
    with pytest.raises(ValueError, match="no symmetry of the pixel grid"):
        C8.act_on_image(1, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="input"):
        st.steerable_conv2d(torch.zeros(1, 3, 8, 5, 5), torch.zeros(2, 1, 8, 6), None, group=C8, in_group=C8,
                            kernel_size=3)


# ------------------------------------------------------------------------------------------------ e2cnn parity
def test_parameter_counts_equal_e2cnn():
    gspaces, enn = _e2cnn()
    cases = [(name, k) for name in ("C4", "C8", "C16", "D4", "D8") for k in (3, 5, 7)] + [("D16", 3), ("C4", 4),
                                                                                          ("C4", 6), ("C4", 9)]
    for name, k in cases:
        gspace = _gspace(gspaces, name)
        group = st.cyclic_group(int(name[1:])) if name[0] == "C" else st.dihedral_group(int(name[1:]))
        size = len(st.steerable_basis(k).radius)
        for lifting in (True, False):
            fields = (3, 2)
            ours = fields[0] * fields[1] * (1 if lifting else group.order) * size
            theirs = _r2conv(enn, gspace, lifting, k, fields, initialize=False).weights.numel()
            assert ours == theirs, (name, k, lifting)


def _rows(bank: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` filters (each all its group elements and input slices) as rows."""
    return bank.reshape(count, -1).double()


@pytest.mark.parametrize("name", ["C8", "D8"])
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "G-G"])
def test_span_equals_e2cnns(name, lifting):
    gspaces, enn = _e2cnn()
    gspace = _gspace(gspaces, name)
    conv = _r2conv(enn, gspace, lifting, 5, initialize=False)
    group = st.cyclic_group(8) if name == "C8" else st.dihedral_group(8)
    perm = torch.tensor(st.e2cnn_permutation(gspace, group))
    if name == "C8":
        assert perm.tolist() == list(range(8))  # e2cnn's cyclic order is ours
    s_in = 1 if lifting else group.order
    theirs = []
    with torch.no_grad():
        for j in range(conv.weights.numel()):  # e2cnn's basis: the filter of each one-hot weight vector
            conv.weights.zero_()
            conv.weights[j] = 1.0
            filt = conv.expand_parameters()[0].view(group.order, s_in, 5, 5)
            theirs.append(filt[perm][:, perm if s_in > 1 else [0]])
    theirs = _rows(torch.stack(theirs), len(theirs))
    size = len(st.steerable_basis(5).radius)
    ours = _rows(st.steerable_bank(torch.eye(s_in * size, dtype=torch.float64).view(-1, 1, s_in, size), group,
                                   "z2" if lifting else group, 5), s_in * size)
    assert theirs.shape[0] == ours.shape[0] == s_in * size
    for a, b in ((theirs, ours), (ours, theirs)):
        singular = torch.linalg.svdvals(a)
        assert singular[-1] / singular[0] > 1e-3  # full rank
        q = torch.linalg.qr(b.T).Q
        residual = (a - (a @ q) @ q.T).norm(dim=1) / a.norm(dim=1)
        assert residual.max() < 1e-6  # e2cnn samples its basis in float32


@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "G-G"])
def test_approximate_equivariance_c8_against_e2cnn(lifting, capsys):
    gspaces, enn = _e2cnn()
    from e2cnn.nn import GeometricTensor

    torch.manual_seed(0)
    gspace = _gspace(gspaces, "C8")
    conv = _r2conv(enn, gspace, lifting, 5, fields=(2, 2), padding=2, bias=False).double()
    weights = st.from_e2cnn(conv)
    perm = st.e2cnn_permutation(gspace, C8)

    def theirs(t):
        out = conv(GeometricTensor(t.flatten(1, 2) if t.dim() == 5 else t, conv.in_type)).tensor
        return out.unflatten(1, (-1, 8))[:, :, perm]

    def mapped(t):
        return st.steerable_conv2d(t, weights.coefficients.double(), None, group=C8,
                                   in_group=weights.in_group, kernel_size=5, padding=2)

    own = st.init_coefficients(2, 2, C8, weights.in_group, 5, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64)

    def ours(t):
        return st.steerable_conv2d(t, own, None, group=C8, in_group=weights.in_group, kernel_size=5, padding=2)

    # the protocol is exact at 90° (the resampler hits pixel centres), so what it measures at 45° is the angle
    assert st.resampled_equivariance_error(ours, C8, 2, lifting) < 1e-12
    figures = {name: st.resampled_equivariance_error(f, C8, 1, lifting) for name, f in
               (("ours", ours), ("e2cnn", theirs), ("ours, e2cnn's weights", mapped))}
    with capsys.disabled():
        print(f"\nC8 k=5 {'lifting' if lifting else 'G->G'} equivariance error at 45 degrees: {figures}")
    assert math.isclose(figures["ours, e2cnn's weights"], figures["e2cnn"], rel_tol=1e-4)
    assert max(figures.values()) < 0.1


@pytest.mark.parametrize("name, axis", [("C8", 0.0), ("C16", 0.0), ("D8", 0.0), ("D4", math.pi / 2),
                                        ("D3", math.pi / 2)])
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "G-G"])
def test_from_e2cnn_same_function_fp32(name, axis, lifting):
    gspaces, enn = _e2cnn()
    from e2cnn.nn import GeometricTensor

    torch.manual_seed(0)
    gspace = _gspace(gspaces, name, axis)
    conv = _r2conv(enn, gspace, lifting, 5, fields=(2, 2), padding=1, stride=2)
    with torch.no_grad():
        conv.bias.normal_()
    conv.eval()  # (e2cnn expands its filter and bias here)
    weights = st.from_e2cnn(conv)
    group = weights.group
    if name == "D4":
        assert group == D4  # e2cnn's vertical axis is one of p4m's reflections: our order is kept
    if name == "D3":
        assert group == st.dihedral_group(3, math.pi / 2)
    perm = st.e2cnn_permutation(gspace, group)
    x = torch.randn(2, 2 * (1 if lifting else group.order), 11, 11)
    with torch.no_grad():
        expected = conv(GeometricTensor(x, conv.in_type)).tensor.unflatten(1, (2, group.order))[:, :, perm]
        ours_x = x if lifting else x.unflatten(1, (2, group.order))[:, :, perm]
        got = st.steerable_conv2d(ours_x, weights.coefficients, weights.bias, group=group, in_group=weights.in_group,
                                  kernel_size=weights.kernel_size, stride=weights.stride, padding=weights.padding)
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_from_e2cnn_rejects_other_bases():
    gspaces, enn = _e2cnn()
    conv = _r2conv(enn, _gspace(gspaces, "C8"), True, 5, frequencies_cutoff=3.0)
    with pytest.raises(ValueError, match="not a steerable"):
        st.from_e2cnn(conv)
