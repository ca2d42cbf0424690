"""The depthwise kernels (one input G-channel per channel group) against the float64 reference, output and every
gradient, on the cases their channels-last vector tiles have to get right: a group order that is not a power of
two (padded runs of channels), several output channels per group (padded output runs), channel counts that are not
a multiple of the vector width, prime image sizes, strided and channels-first inputs, int64 index math, and the
half and double dtypes.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels import CL, CONTIG, check_against_reference, gconv_layer, randn, short

from gconv_triton.groups import Group, get_group
from gconv_triton.kernels import group_conv_depthwise as depthwise


def cycled_positions(order: int) -> Group:
    """Z_order turning ``order`` of the window positions of a 3x3 filter one step along a cycle (the centre and the
    rest stay): a group of any order, acting on filters only (no lattice matrices)."""
    ring = [0, 1, 2, 5, 8, 7, 6, 3][:order]
    perms = []
    for g in range(order):
        dest = list(range(9))
        for j, pos in enumerate(ring):
            dest[pos] = ring[(j + g) % order]
        perms.append(dest)
    cayley = [[(a + b) % order for b in range(order)] for a in range(order)]
    return Group.from_tables(cayley, perms, name=f"cycled{order}")


Z3, Z6 = cycled_positions(3), cycled_positions(6)

# (group, in_group, groups, C_out per group, k, stride, padding, dilation, bias, layout, (B, H, W))
CASES = [
    (Z3, Z3, 5, 1, 3, 1, 1, 1, True, CL, (2, 5, 7)),           # S_in = 3: runs of 3 channels padded to 4
    (Z6, Z6, 3, 2, 3, 2, 1, 1, False, CONTIG, (1, 7, 5)),      # S = 6, two outputs per group: runs of 12 padded
    (Z3, "z2", 7, 3, 3, 1, "same", 1, True, CL, (2, 5, 5)),    # lifting, three outputs per group
    ("p4", "p4", 3, 3, 3, 2, 1, 2, True, CL, (2, 7, 11)),      # R = C_out_g·S_out = 12: padded to 16
    ("p4", "p4", 9, 1, 3, 1, 1, 1, False, CONTIG, (1, 5, 7)),  # channels-first input: one channels-last copy
    ("p4m", "p4m", 5, 1, 2, 1, (0, 1), 1, True, CL, (1, 5, 3)),
    ("z2", "z2", 20, 1, 3, 1, 1, 1, True, CL, (2, 3, 13)),     # 20 channels: vectors of 4, not 8
    ("z2", "z2", 13, 2, 5, 2, 2, 1, False, CONTIG, (1, 11, 7)),
]


def _id(row):
    group, in_group, groups, cog, k, stride, padding, dilation, bias, layout, size = row
    name = lambda g: g if isinstance(g, str) else g.name  # noqa: E731
    return (f"{name(group)}/{name(in_group)}-g{groups}-x{cog}-k{k}-s{stride}-p{short(padding)}-d{dilation}-"
            f"{'bias' if bias else 'nobias'}-{layout}-{'x'.join(map(str, size))}")


def _order(group) -> int:
    return get_group(group).order if isinstance(group, str) else group.order


def _run(row, dtype=torch.float32, x_view=False, dy_layout=None):
    group, in_group, groups, cog, k, stride, padding, dilation, bias, layout, (b, h, w) = row
    s_in = _order(in_group)
    if x_view:  # every other channel group of a wider channels-last tensor: a strided view, not dense
        x = randn((b, 2 * groups, s_in, h, w), dtype, layout)[:, ::2]
    else:
        x = randn((b, groups, s_in, h, w), dtype, layout)
    weight = randn((groups * cog, 1, s_in, k, k), dtype)
    layer = gconv_layer(group, in_group, stride=stride, padding=padding, dilation=dilation, groups=groups)
    check_against_reference(layer, x, weight, randn((groups * cog,), dtype) if bias else None, dy_layout=dy_layout)


@pytest.mark.parametrize("row", CASES, ids=_id)
def test_depthwise_matches_reference(row):
    _run(row)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("row", [CASES[0], CASES[3]], ids=_id)
def test_depthwise_dtypes(row, dtype):
    _run(row, dtype)


@pytest.mark.parametrize("dy_layout", [CL, CONTIG])
def test_depthwise_strided_input_and_either_gradient_layout(dy_layout):
    """A strided view as input, and ``dy`` in either layout (the kernels read both operands channels-last)."""
    _run(CASES[3], x_view=True, dy_layout=dy_layout)


@pytest.mark.parametrize("row", [CASES[1], CASES[3], CASES[6]], ids=_id)
def test_depthwise_int64_offsets(monkeypatch, row):
    """The int64 index math that tensors past 2³¹ elements take, forced on small ones."""
    monkeypatch.setattr(depthwise, "needs_int64", lambda *tensors: True)
    _run(row)
