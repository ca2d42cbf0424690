"""The reference path (filter bank + ``F.conv2d``) against a naive loop written independently here.

``naive_gconv`` loops over output channel o, output element g, input channel i, input element s and the window
positions, with the filter moved by ``torch.rot90`` / ``torch.flip`` (``planar`` from ``test_groups``) and the
stabilizer index from a product table derived by composing those maps; nothing comes from the library's tables.
Everything is float64 on the CPU, so the two must agree to round-off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, torch_backend
from test_groups import ELEMENTS, cayley_from_actions, inverse_from_table, planar

from gconv_triton import groups as G
from gconv_triton.functional import gconv2d
from gconv_triton.reference import filter_bank

DT = torch.float64


def naive_gconv(x, w, b, name, lifting, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """``y[:, o, g] = Σ_{i, s, pos} act(g, w[o, i, t(g, s)])[pos] · x[:, i, s, shifted]``, plus bias.

    x: ``(B, C_in, S_in, H, W)``; w: ``(C_out, C_in / groups, S_in, k, k)``; padding ``(top, bottom, left, right)``.
    """
    order = len(ELEMENTS[name])
    table = cayley_from_actions(name)
    inv = inverse_from_table(table)
    (sh, sw), (dh, dw) = stride, dilation
    xp = F.pad(x, (padding[2], padding[3], padding[0], padding[1]))
    bsz, _, s_in, hp, wp = xp.shape
    c_out, c_in_g, _, kh, kw = w.shape
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    y = torch.zeros(bsz, c_out, order, ho, wo, dtype=x.dtype)
    for o in range(c_out):
        first_in = (o // (c_out // groups)) * c_in_g
        for g in range(order):
            for i in range(c_in_g):
                for s in range(s_in):
                    u = 0 if lifting else int(table[inv[g], s])
                    f = planar(name, g, w[o, i, u])
                    for a in range(kh):
                        for c in range(kw):
                            patch = xp[:, first_in + i, s, a * dh: a * dh + sh * (ho - 1) + 1: sh,
                                       c * dw: c * dw + sw * (wo - 1) + 1: sw]
                            y[:, o, g] += f[a, c] * patch
            if b is not None:
                y[:, o, g] += b[o]
    return y


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _check(name, lifting, k, stride, padding, dilation, bias, size=(7, 7), c_in=2, c_out=3, groups=1):
    order = len(ELEMENTS[name])
    s_in = 1 if lifting else order
    x = torch.randn(2, c_in, s_in, *size, dtype=DT)
    w = torch.randn(c_out, c_in // groups, s_in, k, k, dtype=DT)
    b = torch.randn(c_out, dtype=DT) if bias else None
    ph, pw = _pair(padding)
    expected = naive_gconv(x, w, b, name, lifting, _pair(stride), (ph, ph, pw, pw), _pair(dilation), groups)
    with torch_backend():
        got = gconv2d(x, w, b, group=name, in_group="z2" if lifting else name, stride=stride, padding=padding,
                      dilation=dilation, groups=groups)
    assert_close(got, expected, DT, f"{name} lifting={lifting} k={k}")


# (stride, padding, dilation, bias): plain, strided + padded, dilated + padded, mixed pairs
CONFIGS = [
    (1, 0, 1, True),
    (2, 1, 1, False),
    (1, 2, 2, True),
    ((2, 1), (1, 0), (1, 2), True),
]


@pytest.mark.parametrize("name", ["p4", "p4m"])
@pytest.mark.parametrize("lifting", [True, False], ids=["z2_to_g", "g_to_g"])
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("stride,padding,dilation,bias", CONFIGS)
def test_reference_matches_naive_loop(name, lifting, k, stride, padding, dilation, bias):
    _check(name, lifting, k, stride, padding, dilation, bias)


@pytest.mark.parametrize("name", ["p2", "pm", "p2mm"])
@pytest.mark.parametrize("lifting", [True, False], ids=["z2_to_g", "g_to_g"])
def test_reference_matches_naive_loop_small_groups(name, lifting):
    _check(name, lifting, 3, 2, 1, 1, True, size=(8, 7))


@pytest.mark.parametrize("name", ["p4", "p4m"])
def test_reference_channel_groups(name):
    _check(name, False, 3, 1, 1, 1, True, c_in=4, c_out=6, groups=2)


@pytest.mark.parametrize("k", [3, 4])
def test_same_and_valid_padding(k):
    """``'same'`` pads ``d(k-1)`` in total, the odd pixel at the end (PyTorch's rule); ``'valid'`` pads nothing."""
    x = torch.randn(2, 2, 4, 7, 7, dtype=DT)
    w = torch.randn(3, 2, 4, k, k, dtype=DT)
    with torch_backend():
        same = gconv2d(x, w, group="p4", in_group="p4", padding="same", dilation=2)
        valid = gconv2d(x, w, group="p4", in_group="p4", padding="valid")
    total = 2 * (k - 1)
    pad = (total // 2, total - total // 2) * 2
    assert same.shape[-2:] == x.shape[-2:]
    assert_close(same, naive_gconv(x, w, None, "p4", False, dilation=(2, 2), padding=pad), DT, "same")
    assert_close(valid, naive_gconv(x, w, None, "p4", False), DT, "valid")


@pytest.mark.parametrize("k", [3, 4])
def test_trivial_group_is_conv2d(k):
    """With ``z2`` in and out the layer is an ordinary ``F.conv2d`` (padding semantics included)."""
    x = torch.randn(2, 3, 8, 7, dtype=DT)
    w = torch.randn(4, 3, 1, k, k, dtype=DT)
    b = torch.randn(4, dtype=DT)
    with torch_backend():
        for kwargs in (dict(padding="same", dilation=2), dict(stride=2, padding=(1, 2))):
            got = gconv2d(x, w, b, group="z2", in_group="z2", **kwargs)
            assert_close(got.squeeze(2), F.conv2d(x, w.squeeze(2), b, **kwargs), DT, str(kwargs))


@pytest.mark.parametrize("name", ["p4", "p4m"])
@pytest.mark.parametrize("lifting", [True, False], ids=["z2_to_g", "g_to_g"])
def test_filter_bank(name, lifting):
    """``F[o, g, i, s] = act(g, w[o, i, t(g, s)])`` with ``t(g, s) = index(g⁻¹ s)`` (``t = 0`` for Z2 inputs)."""
    group = getattr(G, name)
    table = cayley_from_actions(name)
    inv = inverse_from_table(table)
    s_in = 1 if lifting else group.order
    w = torch.randn(2, 3, s_in, 4, 4, dtype=DT)
    bank = filter_bank(w, group, G.z2 if lifting else group)
    assert bank.shape == (2, group.order, 3, s_in, 4, 4)
    for g in range(group.order):
        for s in range(s_in):
            u = 0 if lifting else int(table[inv[g], s])
            assert torch.equal(bank[:, g, :, s], planar(name, g, w[:, :, u]))


def test_filter_bank_accepts_group_names():
    """Group names work as everywhere else (case-insensitive, as ``get_group``); anything else is a TypeError."""
    w = torch.randn(2, 3, 4, 3, 3, dtype=DT)
    assert torch.equal(filter_bank(w, "p4", "P4"), filter_bank(w, G.p4, G.p4))
    lifting = torch.randn(2, 3, 1, 3, 3, dtype=DT)
    assert torch.equal(filter_bank(lifting, "p4m", "z2"), filter_bank(lifting, G.p4m, G.z2))
    with pytest.raises(TypeError, match=r"group: expected a Group or a group name \(str\), got int"):
        filter_bank(w, 4, "p4")
    with pytest.raises(TypeError, match=r"in_group: expected a Group or a group name \(str\), got NoneType"):
        filter_bank(w, "p4", None)
    with pytest.raises(ValueError, match=r"in_group: unknown group 'p5'"):
        filter_bank(w, "p4", "p5")


def test_reference_is_differentiable_and_keeps_dtype():
    x = torch.randn(1, 2, 4, 5, 5, dtype=torch.float32, requires_grad=True)
    w = torch.randn(3, 2, 4, 3, 3, dtype=torch.float32, requires_grad=True)
    with torch_backend():
        y = gconv2d(x, w, group="p4", in_group="p4")
    assert y.dtype == torch.float32 and y.shape == (1, 3, 4, 3, 3)
    y.square().sum().backward()
    assert x.grad is not None and w.grad is not None
