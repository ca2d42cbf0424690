"""Export to plain PyTorch modules and weight interop with e2cnn, escnn and GrouPy.

* ``module.export()`` / ``export_model``: plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` holding the materialized bank
  give the layer's outputs on flattened maps (float64, round-off), and the exported model goes through
  ``torch.export``.
* e2cnn and escnn: a real ``R2Conv`` converted by :func:`from_e2cnn` computes the same function, with the group
  axis permuted by :func:`e2cnn_permutation` (found from the gspace's own action, for every reflection axis).
* GrouPy-PyTorch (not installable: NumPy 2 removed ``np.int``): its filter bank is rebuilt here from GrouPy's
  definition, independently of our tables: ``F[g, s](x) = w[g⁻¹s](g⁻¹x)`` with GrouPy's ``D4`` matrices
  ``M^m R^r`` acting on ``(row, col)`` about the filter centre (``groupy/garray/D4_array.py``, ``int2mat``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import clear_caches
from torch import nn

import gconv_triton as gt
from gconv_triton import GroupConv2d, P4MConvP4M, interop
from gconv_triton.interop import e2cnn_permutation, from_e2cnn, from_groupy, weights_from_e2cnn_filter
from gconv_triton.export import ExportedGroupConv, export_model
from gconv_triton.nn import GroupConvTranspose2d
from gconv_triton.models import GroupResNet

ROOT = str(Path(__file__).resolve().parent.parent)
DT = torch.float64
EXACT = 1e-12


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------------- export
EXPORT_CASES = [  # (id, in, out, kernel, group, in_group, kwargs)
    ("lifting-stride2", 2, 3, 3, "p4", "z2", dict(stride=2, padding=1)),
    ("p4m-same-even", 2, 2, 4, "p4m", "p4m", dict(padding="same")),
    ("p4-groups-dilation", 4, 6, 3, "p4", "p4", dict(groups=2, dilation=2, padding=2)),
    ("p4-gelu", 2, 3, 3, "p4", "p4", dict(padding=1, activation="gelu")),
]


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_conv_export_matches(case):
    _, c_in, c_out, k, group, in_group, kwargs = case
    torch.manual_seed(0)
    layer = GroupConv2d(c_in, c_out, k, group=group, in_group=in_group, dtype=DT, **kwargs)
    s_in = layer.in_group.order
    x = torch.randn(2, c_in, s_in, 9, 9, dtype=DT)
    exported = layer.export()
    conv = exported[0] if isinstance(exported, nn.Sequential) else exported
    assert type(conv) is nn.Conv2d and not any(isinstance(m, GroupConv2d) for m in exported.modules())
    y = exported(x.flatten(1, 2)).unflatten(1, (c_out, layer.group.order))  # the documented reshape
    assert _rel(y, layer(x)) < EXACT


def test_transposed_export_matches():
    torch.manual_seed(0)
    layer = GroupConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2, group="p4m", dtype=DT)
    x = torch.randn(2, 4, 8, 5, 5, dtype=DT)
    exported = layer.export()
    assert type(exported) is nn.ConvTranspose2d
    assert _rel(exported(x.flatten(1, 2)).unflatten(1, (2, 8)), layer(x)) < EXACT


def test_export_model_and_torch_export():
    torch.manual_seed(0)
    model = nn.Sequential(GroupResNet("p4m", (1, 1), (8, 8), num_classes=3, dtype=DT))
    model(torch.randn(4, 3, 9, 9, dtype=DT))  # running statistics
    model.eval()
    plain = export_model(model)
    assert not any(isinstance(m, (GroupConv2d, GroupConvTranspose2d)) for m in plain.modules())
    assert sum(isinstance(m, ExportedGroupConv) for m in plain.modules()) == 6
    x = torch.randn(2, 3, 9, 9, dtype=DT)
    assert _rel(plain(x), model(x)) < EXACT
    program = torch.export.export(plain, (x,))
    assert not any("gconv_triton" in str(n.target) for n in program.graph.nodes)
    assert _rel(program.module()(x), model(x)) < EXACT


# ---------------------------------------------------------------------------------------------- jit.trace
def test_jit_trace_of_a_group_model_issues_no_tracer_warning(recwarn):
    """``torch.jit.trace`` records sizes as 0-d tensors; the layers' argument checks read them as ints without
    torch's TracerWarning (a check specialises nothing the graph computes), and the traced graph, recorded on
    cold caches, serves another batch and image size as the eager model does.  The checks stay in eager mode."""
    torch.manual_seed(0)
    model = nn.Sequential(gt.P4ConvZ2(1, 4, 3, padding=1), gt.P4ConvP4(4, 4, 3, padding=1, padding_mode="reflect"),
                          gt.GroupBatchNorm(4), gt.GroupMaxPool2d(2), gt.GroupPool("max"),
                          gt.Conv2d(4, 4, 3, padding=1), gt.SharedKernelConv2d(3, 4, padding=1)).to(DT).eval()
    clear_caches()
    traced = torch.jit.trace(model, torch.randn(2, 1, 8, 8, dtype=DT))
    assert [str(w.message) for w in recwarn if issubclass(w.category, torch.jit.TracerWarning)] == []
    x = torch.randn(3, 1, 10, 10, dtype=DT)
    assert _rel(traced(x), model(x)) < EXACT
    with pytest.raises(ValueError, match="input: expected 1 channels"):
        model(torch.randn(2, 3, 8, 8, dtype=DT))


# ------------------------------------------------------------------------------------------- e2cnn, escnn
def _import_e2cnn():
    e2cnn = pytest.importorskip("e2cnn")
    # e2cnn caches sampled bases by basis equality, and its dihedral basis' __eq__ ignores the reflection axis:
    # without this, an axis=0 layer built after an axis=pi/2 one silently reuses the pi/2 basis.
    from e2cnn.nn.modules.r2_conv import basisexpansion_singleblock

    basisexpansion_singleblock._stored_filters.clear()
    return e2cnn


def _import_escnn():
    """escnn 1.0.11 as ``make test`` installs it, through :func:`gconv_triton.interop.patch_escnn`."""
    if importlib.util.find_spec("escnn") is None:
        pytest.skip("escnn is not installed (make test installs it: pip install --no-deps escnn)")
    return interop.patch_escnn()


def _gspace(library, group, axis):
    if library == "e2cnn":
        from e2cnn import gspaces

        return gspaces.Rot2dOnR2(N=4) if group == "p4" else gspaces.FlipRot2dOnR2(N=4, axis=axis)
    from escnn import gspaces

    return gspaces.rot2dOnR2(N=4) if group == "p4" else gspaces.flipRot2dOnR2(N=4, axis=axis)


E2CNN_CASES = [("e2cnn", "p4", False, None), ("e2cnn", "p4", True, None), ("e2cnn", "p4m", False, math.pi / 2),
               ("e2cnn", "p4m", True, math.pi / 2), ("e2cnn", "p4m", True, 0.0), ("e2cnn", "p4m", True, math.pi / 4),
               ("escnn", "p4", True, None), ("escnn", "p4m", False, 0.0), ("escnn", "p4m", True, 0.0),
               ("escnn", "p4m", True, math.pi / 2)]


@pytest.mark.parametrize("library,group,regular_in,axis", E2CNN_CASES,
                         ids=[f"{lib}-{g}-{'regular' if r else 'lifting'}-axis{a}" for lib, g, r, a in E2CNN_CASES])
def test_from_e2cnn_computes_the_same_function(library, group, regular_in, axis):
    enn = (_import_e2cnn() if library == "e2cnn" else _import_escnn()).nn
    gspace = _gspace(library, group, axis)
    torch.manual_seed(0)
    in_type = enn.FieldType(gspace, 2 * [gspace.regular_repr if regular_in else gspace.trivial_repr])
    out_type = enn.FieldType(gspace, 3 * [gspace.regular_repr])
    conv = enn.R2Conv(in_type, out_type, kernel_size=3, padding=1, stride=1, bias=True).double()
    with torch.no_grad():
        conv.weights.normal_()
        conv.bias.normal_()
    conv.eval()
    ours = from_e2cnn(conv)
    assert ours.group.name == group and ours.in_group.name == ("z2" if not regular_in else group)
    perm = e2cnn_permutation(gspace)
    s, s_in = len(perm), (len(perm) if regular_in else 1)
    x = torch.randn(2, 2, s_in, 7, 7, dtype=DT)                     # ours: (B, C, S_in, H, W)
    x_e2 = torch.empty_like(x)
    x_e2[:, :, perm if regular_in else [0]] = x                      # their component perm[s] holds our s
    y_e2 = conv(enn.GeometricTensor(x_e2.flatten(1, 2), in_type)).tensor.unflatten(1, (3, s))[:, :, perm]
    # e2cnn's bank is equivariant to float64 round-off; escnn's sampled basis only to about 1e-7 (its filter's
    # group copies differ by that much), so our layer, built from one copy, agrees with it to that precision.
    assert _rel(ours(x), y_e2) < (1e-10 if library == "e2cnn" else 1e-6)


def test_e2cnn_wrong_convention_is_rejected():
    _import_e2cnn()
    from e2cnn import gspaces
    from e2cnn import nn as enn

    gspace = gspaces.FlipRot2dOnR2(N=4)
    conv = enn.R2Conv(enn.FieldType(gspace, [gspace.regular_repr]), enn.FieldType(gspace, [gspace.regular_repr]),
                      kernel_size=3).double()
    torch.nn.init.normal_(conv.weights)
    filt, bias = conv.expand_parameters()
    weights_from_e2cnn_filter(filt, bias, e2cnn_permutation(gspace))       # the gspace's own order loads
    other_axis = e2cnn_permutation(gspaces.FlipRot2dOnR2(N=4, axis=0.0))
    with pytest.raises(ValueError, match="not a p4m -> p4m"):
        weights_from_e2cnn_filter(filt, bias, other_axis)                   # another reflection axis' order does not


@pytest.mark.parametrize("library", ["e2cnn", "escnn"])
def test_e2cnn_permutation_values(library):
    (_import_e2cnn if library == "e2cnn" else _import_escnn)()
    assert e2cnn_permutation(_gspace(library, "p4", None)) == [0, 1, 2, 3]
    assert e2cnn_permutation(_gspace(library, "p4m", math.pi / 2)) == [0, 1, 2, 3, 6, 5, 4, 7]
    assert e2cnn_permutation(_gspace(library, "p4m", 0.0)) == [0, 1, 2, 3, 4, 7, 6, 5]
    with pytest.raises(ValueError, match="does not move the pixel grid"):
        e2cnn_permutation(_gspace(library, "p4m", 0.3))                     # a reflection off the grid


def test_e2cnn_p4m_builds_on_numpy2_after_importing_interop():
    """A user's own script: import the interop module, build an e2cnn p4m layer, convert it.  In a fresh process,
    so nothing this test session patched helps."""
    pytest.importorskip("e2cnn")
    script = ("import torch, gconv_triton.interop as interop\n"
              "from e2cnn import gspaces, nn as enn\n"
              "gs = gspaces.FlipRot2dOnR2(N=4)\n"
              "t = enn.FieldType(gs, [gs.regular_repr])\n"
              "conv = enn.R2Conv(t, t, kernel_size=3, padding=1)\n"
              "print(interop.from_e2cnn(conv).group.name)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "p4m"


# ------------------------------------------------------------------------------------------------- GrouPy
def _groupy_matrices(order: int):
    rot, flip = np.array([[0, -1], [1, 0]]), np.array([[-1, 0], [0, 1]])
    mats = [np.linalg.matrix_power(flip, m) @ np.linalg.matrix_power(rot, r) for m in range(2) for r in range(4)]
    return mats[:order]


def _groupy_bank(w: torch.Tensor, s_in: int, s_out: int) -> torch.Tensor:
    """GrouPy's transformed filter ``(C_out·S_out, C_in·S_in, k, k)``: ``F[g, s](x) = w[g⁻¹s](g⁻¹x)``."""
    mats = _groupy_matrices(s_out)
    index = {m.tobytes(): i for i, m in enumerate(mats)}
    k = w.shape[-1]
    c = (k - 1) // 2
    bank = torch.empty(w.shape[0], s_out, w.shape[1], s_in, k, k, dtype=w.dtype)
    for g, mat in enumerate(mats):
        inv = np.round(np.linalg.inv(mat)).astype(mat.dtype)
        for s in range(s_in):
            src = index[(inv @ mats[s]).tobytes()] if s_in > 1 else 0
            for u in range(k):
                for v in range(k):
                    pu, pv = inv @ np.array([u - c, v - c]) + c
                    bank[:, g, :, s, u, v] = w[:, :, src, pu, pv]
    return bank.flatten(0, 1).flatten(1, 2)


@pytest.mark.parametrize("s_in,s_out", [(1, 4), (4, 4), (1, 8), (8, 8)])
def test_from_groupy_matches_groupy_definition(s_in, s_out):
    torch.manual_seed(0)
    stand_in = types.SimpleNamespace(  # SplitGConv2D's attributes, as GrouPy-PyTorch names them
        in_channels=2, out_channels=3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), ksize=3,
        input_stabilizer_size=s_in, output_stabilizer_size=s_out,
        weight=torch.randn(3, 2, s_in, 3, 3, dtype=DT), bias=torch.randn(3, dtype=DT))
    ours = from_groupy(stand_in)
    x = torch.randn(2, 2 * s_in, 7, 7, dtype=DT)                   # GrouPy's input view (B, C_in·S_in, H, W)
    want = F.conv2d(x, _groupy_bank(stand_in.weight, s_in, s_out), padding=1).view(2, 3, s_out, 7, 7)
    want = want + stand_in.bias.view(1, -1, 1, 1, 1)
    assert _rel(ours(x), want) < EXACT


def test_groupy_state_dict_loads_unchanged():
    torch.manual_seed(0)
    state = {"weight": torch.randn(3, 2, 8, 3, 3), "bias": torch.randn(3)}  # a GrouPy P4MConvP4M's state dict
    layer = P4MConvP4M(2, 3, 3, padding=1)
    layer.load_state_dict(state)
    assert torch.equal(layer.weight, state["weight"]) and torch.equal(layer.bias, state["bias"])
    with pytest.raises(ValueError, match="stabilizer"):
        from_groupy(types.SimpleNamespace(input_stabilizer_size=2, output_stabilizer_size=4))
