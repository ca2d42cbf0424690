"""The steerable (C_N / D_N) kernels of ``kernels/steerable_conv.py`` against the float64 reference
(``steerable.steerable_conv2d`` + autograd): forward, input gradient, coefficient gradient and the bias gradient the
caller sums; a gradcheck, determinism, argument errors, and an allocation record proving that no tensor of the
filter bank's size (``C_out·S_out·C_in·S_in·k²``) is created.  Shapes are odd or prime so that every tile has a
ragged edge."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from gconv_triton import steerable as st
from gconv_triton.groups import get_group
from gconv_triton.kernels import steerable_conv as kernels

from helpers import DEVICE, assert_close

C4, C8, C16, D8 = st.cyclic_group(4), st.cyclic_group(8), st.cyclic_group(16), st.dihedral_group(8)


def _inputs(group, lifting: bool, k: int, dtype, *, batch=2, c_in=3, c_out=5, height=7, width=9, seed=0):
    """``x (B, C_in, S_in, H, W)``, ``c (C_out, C_in, S_in, B)``, ``bias (C_out,)`` in ``dtype`` on the device
    (drawn in float64, then rounded: the reference sees exactly the kernel's inputs), with the in_group."""
    in_group = get_group("z2") if lifting else group
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, in_group.order, height, width, generator=gen, dtype=torch.float64)
    c = torch.randn(c_out, c_in, in_group.order, st.basis_size(k), generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    return [t.to(dtype).to(DEVICE) for t in (x, c, bias)], in_group


def _geometry_kwargs(stride, padding, dilation) -> dict:
    return dict(stride=stride, padding=padding, dilation=dilation)


# (group, lifting, k, stride, padding, dilation, dtype, sizes)
CASES = [
    (C4, True, 3, 1, 1, 1, torch.float32, {}),
    (C4, False, 7, 1, 3, 1, torch.float32, dict(c_in=2, c_out=3)),
    (C8, False, 5, 1, 2, 1, torch.float32, {}),
    (C8, False, 5, 2, 2, 1, torch.float32, {}),
    (C8, True, 3, (1, 2), (2, 1), 1, torch.float32, {}),
    (C16, True, 7, 2, 3, 1, torch.float32, {}),
    (C16, False, 3, 1, 1, 1, torch.float32, dict(c_in=2, c_out=3, height=5, width=7)),
    (D8, False, 3, 1, 0, 2, torch.float32, dict(c_in=2, c_out=3, height=7, width=7)),
    (D8, True, 5, 2, 1, 1, torch.float32, {}),
    (C8, False, 3, 2, 1, 1, torch.float64, dict(c_in=2, c_out=3)),
    (C8, True, 5, 1, 2, 1, torch.float16, {}),
    (D8, False, 3, 1, 1, 1, torch.bfloat16, dict(c_in=2, c_out=3, height=5, width=7)),
]


def _case_id(case) -> str:
    group, lifting, k, stride, padding, dilation, dtype, _ = case
    return (f"{group.name}-{'lift' if lifting else 'regular'}-k{k}-s{stride}-p{padding}-d{dilation}-"
            f"{str(dtype).split('.')[-1]}").replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_forward_and_gradients_match_float64_reference(case):
    group, lifting, k, stride, padding, dilation, dtype, sizes = case
    (x, c, bias), in_group = _inputs(group, lifting, k, dtype, **sizes)
    geometry = _geometry_kwargs(stride, padding, dilation)
    xr, cr, br = (t.detach().double().requires_grad_() for t in (x, c, bias))
    ref = st.steerable_conv2d(xr, cr, br, group=group, in_group=in_group, kernel_size=k, **geometry)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dy = dy.to(dtype).to(DEVICE)
    ref.backward(dy.double())
    tables = st._tables(group, k, dtype, x.device)
    index = group.stabilizer_index(in_group)

    y = kernels.forward(x, c, bias, tables, index, **geometry)
    assert y.dtype == dtype
    assert_close(y, ref, dtype, "y")
    dx = kernels.input_grad(dy, c, tables, index, x.shape, **geometry)
    assert_close(dx, xr.grad, dtype, "dx")
    dc = kernels.weight_grad(dy, x, tables, index, c.shape, **geometry)
    assert_close(dc, cr.grad, dtype, "dc")
    assert_close(dy.double().sum((0, 2, 3, 4)), br.grad, torch.float64, "dbias")


def test_int64_offsets(monkeypatch):
    """The int64 offsets that tensors beyond 2³¹ elements get (forced here on small ones) give the same results."""
    import triton.language as tl

    monkeypatch.setattr(kernels, "_offset_type", lambda *tensors: tl.int64)
    test_forward_and_gradients_match_float64_reference((C8, False, 3, 2, 1, 1, torch.float32, dict(c_in=2, c_out=3)))


@pytest.mark.parametrize("group, k, dtype, stride, padding",
                         [(C8, 3, torch.bfloat16, 1, 1), (C16, 5, torch.float16, 2, 2), (D8, 3, torch.bfloat16, 1, 0),
                          (C8, 7, torch.float32, 1, 3), (C8, 7, torch.bfloat16, 1, 2), (C16, 5, torch.float32, 1, 2),
                          (D8, 7, torch.float32, 2, 3)],
                         ids=["c8-k3-bf16", "c16-k5-s2-fp16", "d8-k3-valid-bf16", "c8-k7-fp32", "c8-k7-bf16",
                              "c16-k5-fp32", "d8-k7-s2-fp32"])
def test_forward_channels_last_window_both_layouts(group, k, dtype, stride, padding):
    """The channels-last forward (regular C_8 / C_16 / D_8 fields): on an input in ``(B, C, S, H, W)`` memory order
    (copied channels-last with the zeros padding by the launcher: an unmasked window) and on one already
    channels-last (``(B, H, W, C, S)`` in memory, no copy: a masked window), the same result, matching the float64
    reference."""
    assert kernels.channels_last_window(group.order, dtype, k) and not kernels.channels_last_window(1, dtype, k)
    assert not kernels.channels_last_window(group.order, torch.float64, k)
    with torch.backends.cudnn.flags(allow_tf32=False):   # exact fp32 dots: the (B, C, S, H, W) kernel
        assert not kernels.channels_last_window(8, torch.float32, k)
    (x, c, bias), in_group = _inputs(group, False, k, dtype, c_in=2, c_out=19, height=6, width=7)
    tables, index = st._tables(group, k, dtype, x.device), group.stabilizer_index(in_group)
    ref = st.steerable_conv2d(x.double(), c.double(), bias.double(), group=group, in_group=in_group, kernel_size=k,
                              stride=stride, padding=padding)
    x_last = x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    assert x_last.stride(2) == 1 and x_last.stride(1) == group.order
    y = kernels.forward(x, c, bias, tables, index, stride, padding, 1)
    y_last = kernels.forward(x_last, c, bias, tables, index, stride, padding, 1)
    assert y.is_contiguous() and y_last.is_contiguous()
    assert_close(y, ref, dtype, "y")
    assert torch.equal(y, y_last)


# (group, lifting, k, stride, padding, dilation, dtype, sizes): channel counts 1, 3, 4 and beyond a tile (17 > the
# interpreter's 16 input channels and 16 lifting output channels, 9 > 8 output channels per 16-byte vector and 4
# per C_16 / D_8 row block), odd maps, strides, dilations, lifting layers
GRADIENT_CASES = [
    (C4, False, 3, 2, 1, 1, torch.bfloat16, dict(c_in=1, c_out=1, height=7, width=5)),
    (C8, False, 5, 1, 2, 2, torch.float16, dict(c_in=3, c_out=4, height=9, width=7)),
    (C16, False, 3, 1, 0, 1, torch.bfloat16, dict(c_in=4, c_out=3, height=5, width=6)),
    (D8, False, 7, 2, 3, 1, torch.float32, dict(batch=1, c_in=3, c_out=9, height=7, width=5)),
    (C8, True, 3, (2, 1), 1, (1, 2), torch.float32, dict(c_in=17, c_out=17, height=5, width=4)),
    (C16, True, 5, 1, 2, 1, torch.bfloat16, dict(c_in=1, c_out=3)),
    (C4, False, 5, 1, 2, 1, torch.float64, dict(c_in=3, c_out=4)),
]


def _gradient_case(case, seed: int):
    """``(x, c, dy, (xr, cr), tables, index, geometry)`` of a gradient case: the inputs, ``dy`` on the device, and
    the float64 reference's leaves holding the reference gradients."""
    group, lifting, k, stride, padding, dilation, dtype, sizes = case
    (x, c, _), in_group = _inputs(group, lifting, k, dtype, **sizes)
    geometry = _geometry_kwargs(stride, padding, dilation)
    xr, cr = x.double().requires_grad_(), c.double().requires_grad_()
    ref = st.steerable_conv2d(xr, cr, None, group=group, in_group=in_group, kernel_size=k, **geometry)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    ref.backward(dy.double())
    tables, index = st._tables(group, k, dtype, x.device), group.stabilizer_index(in_group)
    return x, c, dy.to(DEVICE), (xr, cr), tables, index, geometry


@pytest.mark.parametrize("case", GRADIENT_CASES, ids=[_case_id(c) for c in GRADIENT_CASES])
def test_gradients_channels_last_both_layouts(case):
    """The input and coefficient gradients (channels-last for fp16 / bf16 / tf32: ``dy`` gathered with ``O_STEP``
    output channels contiguous, ``x`` with its ``S_in`` elements contiguous; the ``(B, C, S, H, W)`` kernels for
    fp64): ``dy`` and ``x`` in ``(B, C, S, H, W)`` memory order and channels-last (``(B, H, W, C, S)`` in memory)
    give the same gradients, matching the float64 reference."""
    dtype = case[6]
    assert kernels.channels_last_gradients(dtype) == (dtype != torch.float64)
    with torch.backends.cudnn.flags(allow_tf32=False):   # exact fp32 dots: the (B, C, S, H, W) kernels
        assert not kernels.channels_last_gradients(torch.float32)
    x, c, dy, (xr, cr), tables, index, geometry = _gradient_case(case, seed=3)
    dy_last, x_last = (t.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2) for t in (dy, x))
    dx = kernels.input_grad(dy, c, tables, index, x.shape, **geometry)
    assert dx.is_contiguous() and dx.dtype == dtype
    assert_close(dx, xr.grad, dtype, "dx")
    assert torch.equal(dx, kernels.input_grad(dy_last, c, tables, index, x.shape, **geometry))
    dc = kernels.weight_grad(dy, x, tables, index, c.shape, **geometry)
    assert dc.is_contiguous() and dc.dtype == dtype
    assert_close(dc, cr.grad, dtype, "dc")
    assert torch.equal(dc, kernels.weight_grad(dy_last, x_last, tables, index, c.shape, **geometry))


def test_gradient_tiles_by_architecture(monkeypatch):
    """The channels-last gradients' tiles as a GPU build chooses them: sm_90's as tuned there (the loop over
    ``(g, o)`` split in two but for 16-bit at k = 7), smaller ones below sm_90 (one stage, 32 pixels, at most 64
    window columns at k = 7, 8 positions in lifting layers, the flat loop, the ``(B, C, S, H, W)`` input gradient
    from k = 7 on): without them sm_80 spills (perf.static --archs 80).  On sm_90 the coefficient gradient's
    regular layers take 128 rows where C_out fills more than 64, and tf32's window goes through registers."""
    monkeypatch.setattr(kernels, "INTERPRET", False)
    half, fp32 = torch.bfloat16, torch.float32
    tile = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
    assert kernels._input_grad_channels_last_config(5, half, 90) == dict(tile, O_STEP=8, P_CHUNK=32, NESTED=True)
    assert kernels._input_grad_channels_last_config(7, half, 90) == dict(tile, O_STEP=8, P_CHUNK=32, NESTED=False)
    assert kernels._input_grad_channels_last_config(7, fp32, 90) == dict(tile, O_STEP=4, P_CHUNK=32, NESTED=True)
    assert kernels._input_grad_channels_last_config(3, fp32, 80) == dict(tile, O_STEP=4, P_CHUNK=16, NESTED=False)
    assert kernels._channels_last_input_grad(7, half, 90) and kernels._channels_last_input_grad(5, half, 80)
    assert not kernels._channels_last_input_grad(7, half, 80)
    wide = dict(num_warps=8, num_stages=2, X_IN_REGISTERS=False)
    # regular layers: 128 rows (two warp groups' 64 x 128 wgmma) where C_out fills more than 64, 64 pixels
    config = kernels._weight_grad_channels_last_config
    assert config(5, half, 8, 8, 90, 48) == dict(wide, BLOCK_M=64, BLOCK_O=16, P_CHUNK=16)
    assert config(5, half, 8, 8, 90, 8) == dict(wide, BLOCK_M=64, BLOCK_O=8, P_CHUNK=16)
    assert config(7, half, 16, 16, 90, 34) == dict(wide, BLOCK_M=64, BLOCK_O=8, P_CHUNK=8)
    assert config(7, half, 16, 16, 90, 4) == dict(wide, BLOCK_M=64, BLOCK_O=4, P_CHUNK=8)
    # lifting layers: 16 channels (the projection's dot), 32 pixels at 256 rows in 16 bits, one stage in fp32
    assert config(7, half, 1, 8, 90, 24) == dict(wide, BLOCK_M=64, BLOCK_O=16, P_CHUNK=16)
    assert config(7, half, 1, 16, 90, 17) == dict(wide, BLOCK_M=32, BLOCK_O=16, P_CHUNK=16)
    assert config(7, fp32, 1, 16, 90, 17) == dict(wide, BLOCK_M=64, BLOCK_O=16, P_CHUNK=16, num_stages=1)
    # tf32 regular layers: the window through registers (16-byte loads), three stages
    assert config(5, fp32, 16, 16, 90, 34) == dict(wide, BLOCK_M=64, BLOCK_O=8, P_CHUNK=8, num_stages=3,
                                                   X_IN_REGISTERS=True)
    small = dict(BLOCK_M=32, num_warps=8, num_stages=1, X_IN_REGISTERS=False)
    assert config(5, half, 8, 8, 80, 48) == dict(small, BLOCK_O=8, P_CHUNK=16)
    assert config(7, half, 16, 16, 80, 34) == dict(small, BLOCK_O=4, P_CHUNK=4)
    assert config(7, fp32, 1, 16, 80, 17) == dict(small, BLOCK_O=16, P_CHUNK=8)


# (group, lifting, k, stride, padding, dilation, dtype, sizes)
BELOW_SM90_CASES = [
    (C8, False, 3, 1, 1, 1, torch.bfloat16, dict(c_in=3, c_out=9, height=5, width=6)),
    (C8, False, 7, 2, 3, 1, torch.float16, dict(batch=1, c_in=2, c_out=3, height=7, width=5)),
    (D8, False, 3, 1, 0, 2, torch.float32, dict(c_in=2, c_out=5, height=7, width=7)),
    (C16, True, 5, 1, 2, 1, torch.bfloat16, dict(c_in=1, c_out=3)),
]


@pytest.mark.parametrize("case", BELOW_SM90_CASES, ids=[_case_id(c) for c in BELOW_SM90_CASES])
def test_gradients_below_sm90(monkeypatch, case):
    """The gradients as an sm_80 GPU runs them (its chunking and loops, run by the interpreter here): the
    channels-last input gradient's flat loop over ``(g, o)`` (the ``(B, C, S, H, W)`` kernel at k = 7), the
    coefficient gradient's narrower window chunks; all matching the float64 reference."""
    monkeypatch.setattr(kernels, "_target_arch", lambda device: 80)
    x, c, dy, (xr, cr), tables, index, geometry = _gradient_case(case, seed=4)
    assert_close(kernels.input_grad(dy, c, tables, index, x.shape, **geometry), xr.grad, x.dtype, "dx")
    assert_close(kernels.weight_grad(dy, x, tables, index, c.shape, **geometry), cr.grad, x.dtype, "dc")


def test_flattened_input_and_no_bias():
    """``x (B, C_in·S_in, H, W)`` is taken as ``(B, C_in, S_in, H, W)``; ``bias=None`` adds nothing."""
    (x, c, _), in_group = _inputs(C8, False, 3, torch.float32, c_in=2, c_out=3, height=5, width=6)
    tables, index = st._tables(C8, 3, x.dtype, x.device), C8.stabilizer_index(in_group)
    ref = st.steerable_conv2d(x.double(), c.double(), None, group=C8, in_group=in_group, kernel_size=3, padding=1)
    y = kernels.forward(x.flatten(1, 2), c, None, tables, index, 1, 1, 1)
    assert_close(y, ref, torch.float32, "y")
    dx = kernels.input_grad(y, c, tables, index, x.flatten(1, 2).shape, 1, 1, 1)
    assert dx.shape == x.flatten(1, 2).shape


class _SteeredConv(torch.autograd.Function):
    """The three launchers as one differentiable op (what the package's op will wire)."""

    @staticmethod
    def forward(ctx, x, c, bias, tables, index, stride, padding):
        ctx.save_for_backward(x, c)
        ctx.geometry = (tables, index, stride, padding)
        return kernels.forward(x, c, bias, tables, index, stride, padding, 1)

    @staticmethod
    def backward(ctx, dy):
        x, c = ctx.saved_tensors
        tables, index, stride, padding = ctx.geometry
        dy = dy.contiguous()
        dx = kernels.input_grad(dy, c, tables, index, x.shape, stride, padding, 1)
        dc = kernels.weight_grad(dy, x, tables, index, c.shape, stride, padding, 1)
        return dx, dc, dy.sum((0, 2, 3, 4)), None, None, None, None


@pytest.mark.parametrize("group, lifting, stride", [(C8, True, 2), (C4, False, 1)], ids=["c8-lift-s2", "c4-regular"])
def test_gradcheck_float64(group, lifting, stride):
    (x, c, bias), in_group = _inputs(group, lifting, 3, torch.float64, batch=1, c_in=1, c_out=2, height=3, width=4)
    tables, index = st._tables(group, 3, torch.float64, x.device), group.stabilizer_index(in_group)
    args = tuple(t.requires_grad_() for t in (x, c, bias))
    # fast mode (random projections of the Jacobian): a few launches instead of one backward per output element
    assert torch.autograd.gradcheck(lambda *a: _SteeredConv.apply(*a, tables, index, stride, 1), args,
                                    fast_mode=True)


def test_deterministic():
    """Two runs of every launcher give bitwise-equal results (the coefficient gradient sums over pixels and group
    copies in a fixed order, no atomics)."""
    (x, c, bias), in_group = _inputs(C8, False, 5, torch.float32, batch=1, c_in=2, c_out=3, height=5, width=7)
    tables, index = st._tables(C8, 5, x.dtype, x.device), C8.stabilizer_index(in_group)
    y = kernels.forward(x, c, bias, tables, index, 2, 2, 1)
    dy = torch.randn_like(y)
    for run in (lambda: kernels.forward(x, c, bias, tables, index, 2, 2, 1),
                lambda: kernels.input_grad(dy, c, tables, index, x.shape, 2, 2, 1),
                lambda: kernels.weight_grad(dy, x, tables, index, c.shape, 2, 2, 1)):
        assert torch.equal(run(), run())


@pytest.mark.parametrize("group, lifting, stride", [(C8, True, 2), (C4, False, 1)], ids=["c8-lift-s2", "c4-regular"])
@pytest.mark.parametrize("tf32", [True, False], ids=["channels-last", "exact-fp32"])
def test_weight_grad_pixel_split(monkeypatch, group, lifting, stride, tf32):
    """Few coefficient-gradient programs (a lifting layer) split the pixels into parts: the same gradient, bitwise
    the same on a rerun, and partial sums under half the bank; in both kernels (tf32 dots: channels-last)."""
    monkeypatch.setattr(kernels, "MIN_PROGRAMS", 64)                    # a GPU asks for 4 per SM anyway
    small = dict(BLOCK_M=16, BLOCK_O=16, num_warps=4, num_stages=1)     # several pixel chunks on a small image
    monkeypatch.setattr(kernels, "_weight_grad_config", lambda kernel_size, dtype: dict(small))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    assert kernels.channels_last_gradients(torch.float32) == tf32
    k = 3
    (x, c, bias), in_group = _inputs(group, lifting, k, torch.float32, c_in=2, c_out=3)
    xr, cr = x.double().requires_grad_(), c.double().requires_grad_()
    ref = st.steerable_conv2d(xr, cr, None, group=group, in_group=in_group, kernel_size=k, stride=stride, padding=1)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ref.backward(dy.double())
    tables, index = st._tables(group, k, x.dtype, x.device), group.stabilizer_index(in_group)
    with _CreatedTensors() as created:
        dc = kernels.weight_grad(dy, x, tables, index, c.shape, stride, 1, 1)
    parts = [n for name, n in created.sizes if name == "aten.empty.memory_format"]
    assert parts and max(parts) > c.numel(), "no partial sums: the split did not happen"
    # the partial sums (the channels-last kernel also copies dy and x: activations, not sums)
    assert max(parts) * 2 <= c.shape[0] * group.order * c.shape[1] * c.shape[2] * k * k
    assert_close(dc, cr.grad, torch.float32, "dc")
    assert torch.equal(dc, kernels.weight_grad(dy, x, tables, index, c.shape, stride, 1, 1))


class _CreatedTensors(TorchDispatchMode):
    """Records ``(op, element count)`` of every tensor an op returns in new memory (not a view or a re-wrap of an
    argument's storage, as the interpreter's ``set_`` of a launch argument is)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = pytree.tree_leaves((args, kwargs))
        known = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        known |= {t.data_ptr() for t in inputs if isinstance(t, (torch.UntypedStorage, torch.TypedStorage))}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in known:
                self.sizes.append((str(func), t.numel()))
        return out


def test_weight_grad_tables_built_once_per_geometry_and_index(monkeypatch):
    """The channels-last coefficient gradient's window-corner table (a function of the geometry) and the inverse
    permutations of ``index`` (``argsort``, per index tensor, as the ops pass one) are built by the first call
    only: a second call builds neither; another geometry builds its own table, and calls alternating between the
    two stay correct."""
    from gconv_triton.kernels import _common

    (x, c, _), in_group = _inputs(C8, False, 3, torch.bfloat16, c_in=2, c_out=3, height=6, width=7)
    tables = st._tables(C8, 3, x.dtype, x.device)
    index = C8.stabilizer_index(in_group).to(device=x.device, dtype=torch.int32)
    dys, refs = {}, {}
    for stride in (1, 2):
        cr = c.double().requires_grad_()
        ref = st.steerable_conv2d(x.double(), cr, None, group=C8, in_group=in_group, kernel_size=3, stride=stride,
                                  padding=1)
        dys[stride] = torch.randn(ref.shape, generator=torch.Generator().manual_seed(stride)).to(x.dtype)
        ref.backward(dys[stride].double())
        refs[stride] = cr.grad
    _common._GEOMETRY_TABLES.clear()
    built = {"argsort": 0, "corners": 0}

    def counted(name, build):
        def run(*args, **kwargs):
            built[name] += 1
            return build(*args, **kwargs)
        return run

    monkeypatch.setattr(torch, "argsort", counted("argsort", torch.argsort))
    monkeypatch.setattr(kernels, "_build_window_corners", counted("corners", getattr(kernels, "_build_window_corners",
                                                                                     None)), raising=False)
    dc = kernels.weight_grad(dys[1], x, tables, index, c.shape, 1, 1, 1)
    assert built == {"argsort": 1, "corners": 1}
    assert torch.equal(kernels.weight_grad(dys[1], x, tables, index, c.shape, 1, 1, 1), dc)
    assert built == {"argsort": 1, "corners": 1}, "a second call with the same geometry built a table"
    assert_close(dc, refs[1], x.dtype, "dc stride 1")
    assert_close(kernels.weight_grad(dys[2], x, tables, index, c.shape, 2, 1, 1), refs[2], x.dtype, "dc stride 2")
    assert built == {"argsort": 1, "corners": 2}
    assert torch.equal(kernels.weight_grad(dys[1], x, tables, index, c.shape, 1, 1, 1), dc)
    assert built == {"argsort": 1, "corners": 2}


def test_no_tensor_of_the_bank_size_is_created():
    """C8 regular, 4 -> 4 channels, k = 5: the bank has 4·8·4·8·25 = 25600 elements, every activation 1152.  The
    reference path creates it (so the recorder sees such tensors); the three launchers create nothing that
    large."""
    group, k = C8, 5
    (x, c, bias), in_group = _inputs(group, False, k, torch.float32, batch=1, c_in=4, c_out=4, height=6, width=6)
    bank_numel = c.shape[0] * group.order * c.shape[1] * c.shape[2] * k * k
    assert bank_numel > 20 * x.numel()
    tables, index = st._tables(group, k, x.dtype, x.device), group.stabilizer_index(in_group)
    with _CreatedTensors() as reference:
        st.steerable_conv2d(x, c, bias, group=group, in_group=in_group, kernel_size=k, padding=2)
    assert max(n for _, n in reference.sizes) >= bank_numel
    dy = torch.randn(1, 4, group.order, 6, 6, device=DEVICE)
    with _CreatedTensors() as kernel_ops:
        kernels.forward(x, c, bias, tables, index, 1, 2, 1)
        kernels.input_grad(dy, c, tables, index, x.shape, 1, 2, 1)
        kernels.weight_grad(dy, x, tables, index, c.shape, 1, 2, 1)
    assert kernel_ops.sizes, "the recorder saw no op at all"
    largest = max(kernel_ops.sizes, key=lambda entry: entry[1])
    assert largest[1] < bank_numel, f"{largest[0]} created {largest[1]} elements (bank: {bank_numel})"


def test_argument_errors_name_the_argument():
    (x, c, bias), in_group = _inputs(C4, False, 3, torch.float32, c_in=2, c_out=3, height=5, width=5)
    tables, index = st._tables(C4, 3, x.dtype, x.device), C4.stabilizer_index(in_group)
    y = kernels.forward(x, c, bias, tables, index)
    with pytest.raises(ValueError, match="groups"):
        kernels.forward(x, c, bias, tables, index, groups=2)
    with pytest.raises(ValueError, match="groups"):
        kernels.input_grad(y, c, tables, index, x.shape, groups=2)
    with pytest.raises(ValueError, match="groups"):
        kernels.weight_grad(y, x, tables, index, c.shape, groups=2)
    with pytest.raises(ValueError, match="coefficients"):
        kernels.forward(x, c.double(), bias, tables, index)
    with pytest.raises(TypeError, match="x"):
        kernels.forward(x.long(), c, bias, tables, index)
    with pytest.raises(ValueError, match="x"):
        kernels.forward(x[:, :1], c, bias, tables, index)
    with pytest.raises(ValueError, match="coefficients"):
        kernels.forward(x, c[..., :5], bias, tables, index)
    with pytest.raises(ValueError, match="tables"):
        kernels.forward(x, c, bias, tables[..., :8], index)
    with pytest.raises(ValueError, match="index"):
        kernels.forward(x, c, bias, tables, index[:, :2])
    with pytest.raises(ValueError, match="index"):
        kernels.forward(x, c, bias, tables, torch.zeros_like(index))
    with pytest.raises(TypeError, match="index"):
        kernels.forward(x, c, bias, tables, index.float())
    with pytest.raises(ValueError, match="bias"):
        kernels.forward(x, c, bias[:2], tables, index)
    with pytest.raises(TypeError, match="padding"):
        kernels.forward(x, c, bias, tables, index, padding="same")
    with pytest.raises(ValueError, match="stride"):
        kernels.forward(x, c, bias, tables, index, stride=0)
    with pytest.raises(TypeError, match="dilation"):
        kernels.forward(x, c, bias, tables, index, dilation=1.5)
    with pytest.raises(ValueError, match="x"):
        kernels.forward(x, c, bias, tables, index, dilation=3)          # a 5x5 input, a 7x7 dilated window
    with pytest.raises(ValueError, match="dy"):
        kernels.input_grad(y[..., :2], c, tables, index, x.shape)
    with pytest.raises(ValueError, match="x_shape"):
        kernels.input_grad(y, c, tables, index, (2, 3, 4, 5, 5))
    with pytest.raises(ValueError, match="coeff_shape"):
        kernels.weight_grad(y, x, tables, index, (3, 2, 4))
    with pytest.raises(ValueError, match="x"):
        kernels.weight_grad(y, x.double(), tables, index, c.shape)
    with pytest.raises(ValueError, match="coeff_shape"):
        kernels.weight_grad(y, x, tables, index, (3, 2, 4, 5))


def test_empty_batch():
    """A batch of none: empty outputs, and a coefficient gradient of zeros (a sum over no pixels)."""
    (x, c, bias), in_group = _inputs(C4, False, 3, torch.float32, batch=0, c_in=2, c_out=3, height=5, width=5)
    tables, index = st._tables(C4, 3, x.dtype, x.device), C4.stabilizer_index(in_group)
    y = kernels.forward(x, c, bias, tables, index, 1, 1, 1)
    assert y.shape == (0, 3, 4, 5, 5)
    assert kernels.input_grad(y, c, tables, index, x.shape, 1, 1, 1).shape == x.shape
    assert torch.equal(kernels.weight_grad(y, x, tables, index, c.shape, 1, 1, 1), torch.zeros_like(c))


# (group, lifting, C_out, dtype, k, stride, forced (BLOCK_N, BLOCK_G)): programs of several output elements,
# (elements × channels) splits that leave ragged channel blocks (C_out = 3, 5, 17 on blocks of 2, 4, 16), ragged
# element blocks (C_5, D_3) and element blocks wider than S_out (16 elements of C_8); lifting and regular fields,
# both forward kernels
ELEMENT_SPLITS = [
    (C4, True, 1, torch.float32, 3, 1, (32, 2)),
    (C8, True, 3, torch.float16, 5, 2, (64, 4)),
    (C16, True, 17, torch.bfloat16, 3, 1, (64, 2)),
    (C16, False, 4, torch.bfloat16, 3, 1, (64, 16)),
    (C8, False, 3, torch.bfloat16, 3, 2, (32, 16)),
    (D8, False, 3, torch.float16, 5, 1, (32, 8)),
    (C16, False, 1, torch.float32, 3, 1, (16, 8)),
    (C8, False, 5, torch.float32, 7, 1, (32, 4)),
    (C4, False, 17, torch.float64, 3, 2, (32, 2)),
    (D8, False, 3, torch.float64, 3, 1, (64, 4)),
    (st.cyclic_group(5), False, 3, torch.float32, 3, 1, (32, 2)),
    (st.dihedral_group(3), True, 2, torch.bfloat16, 5, 1, (64, 4)),
]


def _split_id(case) -> str:
    group, lifting, c_out, dtype, k, stride, (block_n, block_g) = case
    return (f"{group.name}-{'lift' if lifting else 'regular'}-cout{c_out}-k{k}-s{stride}-{str(dtype).split('.')[-1]}"
            f"-n{block_n}g{block_g}")


@pytest.mark.parametrize("case", ELEMENT_SPLITS, ids=[_split_id(c) for c in ELEMENT_SPLITS])
def test_forward_several_elements_per_program(monkeypatch, case):
    """The forward with a program's columns split into ``BLOCK_G`` output elements × ``BLOCK_N / BLOCK_G``
    channels, forced: matches the float64 reference, on ``(B, C, S, H, W)`` and on channels-last inputs."""
    group, lifting, c_out, dtype, k, stride, split = case
    monkeypatch.setattr(kernels, "_element_block", lambda *args: split)
    (x, c, bias), in_group = _inputs(group, lifting, k, dtype, batch=1, c_in=2, c_out=c_out, height=7, width=5)
    tables, index = st._tables(group, k, dtype, x.device), group.stabilizer_index(in_group)
    padding = k // 2
    ref = st.steerable_conv2d(x.double(), c.double(), bias.double(), group=group, in_group=in_group, kernel_size=k,
                              stride=stride, padding=padding)
    y = kernels.forward(x, c, bias, tables, index, stride, padding, 1)
    assert_close(y, ref, dtype, "y")
    if kernels.channels_last_window(in_group.order, dtype, k):
        x_last = x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
        assert torch.equal(kernels.forward(x_last, c, bias, tables, index, stride, padding, 1), y)


# (group, C_in, C_out, k, stride, padding, dilation, dtype, bias, (height, width), batch, lifting kernel): the
# folded lifting forward (C_in = 1 and 3; under the interpreter 16-pixel tiles, 3 per program) with an image's last
# tile overlapping the one before, a ragged last program, channel columns past C_out (masked: C_8 with 5 channels,
# C_16 with 17), masked pixels (an image smaller than a tile), element blocks narrower than S_out (C_8 with 5
# channels: 4 of 8 elements; D_3 with 16: 2 of 6) and wider (D_3 with 3: 8 of 6, masked), pixel rows of C_out·S_out
# = 272, 40, 18 and 15 elements (aligned to 16, 8, 2, 1), the bias in the dot (kw padding) or added (tf32, k = 4
# fills its kw padding); and a reduction too wide for it (C_in = 3 at k = 5), which steps over input channels in
# _forward_kernel
LIFTING = [
    (C8, 1, 5, 7, 1, 1, 1, torch.bfloat16, True, (11, 11), 2, True),
    (C4, 3, 4, 3, 2, 1, 1, torch.float16, True, (9, 10), 2, True),
    (D8, 2, 3, 5, (1, 2), 2, (2, 1), torch.float32, True, (8, 9), 1, True),
    (C8, 1, 2, 3, 1, 0, 1, torch.float64, False, (4, 4), 3, True),
    (C16, 1, 17, 4, 1, 2, 1, torch.bfloat16, True, (6, 5), 1, True),
    (C8, 1, 5, 3, 1, 1, 1, torch.float32, True, (7, 6), 2, True),
    (st.dihedral_group(3), 1, 16, 3, 1, 1, 1, torch.float16, False, (5, 7), 2, True),
    (st.cyclic_group(5), 1, 3, 3, 1, 1, 1, torch.float32, True, (6, 6), 1, True),
    (st.dihedral_group(3), 1, 3, 5, 2, 2, 1, torch.bfloat16, True, (9, 8), 2, True),
    (C8, 3, 2, 5, 1, 2, 1, torch.float32, True, (6, 7), 1, False),
]


@pytest.mark.parametrize("case", LIFTING, ids=[f"{c[0].name}-cin{c[1]}-k{c[3]}-s{c[4]}-d{c[6]}-"
                                              f"{str(c[7]).split('.')[-1]}-{'bias' if c[8] else 'nobias'}"
                                              for c in LIFTING])
def test_lifting_forward_folds_the_window(monkeypatch, case):
    """A lifting layer's forward: the window and input channels folded into one reduction, the filter steered
    once per program for several pixel tiles, stored channels-last (``(B, H', W', C_out, S_out)`` in memory: a
    pixel's outputs contiguous); matches the float64 reference."""
    group, c_in, c_out, k, stride, padding, dilation, dtype, with_bias, (height, width), batch, folded = case
    recorder = _LaunchRecorder(kernels._forward_lifting_kernel)
    monkeypatch.setattr(kernels, "_forward_lifting_kernel", recorder)
    (x, c, bias), in_group = _inputs(group, True, k, dtype, batch=batch, c_in=c_in, c_out=c_out, height=height,
                                     width=width)
    bias = bias if with_bias else None
    tables, index = st._tables(group, k, dtype, x.device), group.stabilizer_index(in_group)
    ref = st.steerable_conv2d(x.double(), c.double(), None if bias is None else bias.double(), group=group,
                              in_group=in_group, kernel_size=k, stride=stride, padding=padding, dilation=dilation)
    y = kernels.forward(x, c, bias, tables, index, stride, padding, dilation)
    assert len(recorder.grids) == int(folded)
    assert kernels.lifting_layout(1, c_in, k, 1) == folded
    assert y.dtype == dtype and y.shape == ref.shape
    assert (y.permute(0, 3, 4, 1, 2) if folded else y).is_contiguous()
    assert_close(y, ref, dtype, "y")


def test_lifting_tiles_per_program():
    """Up to 8 pixel tiles per lifting program, about 256 programs where there are enough tiles (3 under the
    interpreter, so that the tests' programs cover several tiles)."""
    expected = 3 if kernels.INTERPRET else 8
    assert kernels._tiles_per_program(10_000, 4) == expected
    assert kernels._tiles_per_program(2, 1) == (3 if kernels.INTERPRET else 1)


def test_element_block_fills_the_tile_with_least_padding():
    """The (elements × channels) split: narrow C_out takes several elements (ReResNet stage 1: 4 C_16 fields fill
    64 columns with all 16 elements), a C_out of 2·17 takes blocks of 2 channels, the steering dot's minimum
    channel block holds, and a tile wider than every element's channels shrinks to them."""
    assert kernels._element_block(4, 16, 64, 1) == (64, 16)
    assert kernels._element_block(8, 8, 64, 2) == (64, 8)
    assert kernels._element_block(34, 16, 32, 1) == (32, 16)
    assert kernels._element_block(64, 8, 64, 2) == (64, 1)
    assert kernels._element_block(17, 16, 256, 16) == (256, 8)
    assert kernels._element_block(34, 16, 64, 1, 8) == (64, 8)
    assert kernels._element_block(1, 4, 64, 16) == (64, 4)
    assert kernels._element_block(1, 4, 256, 2) == (16, 4)


class _LaunchRecorder:
    """Stands for a Triton kernel: records each launch's grid and arguments, then launches the kernel."""

    def __init__(self, kernel):
        self.kernel, self.grids, self.launches = kernel, [], []

    def __getitem__(self, grid):
        self.grids.append(grid)

        def launch(*args, **kwargs):
            self.launches.append((args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


# (group, lifting, dtype, k, groups, C_in and C_out per group, forced (BLOCK_N, BLOCK_G) or None, kernel)
CHANNEL_GROUPS = [
    (C8, False, torch.bfloat16, 3, 2, 2, 3, None, "_forward_channels_last_kernel"),
    (C16, False, torch.float16, 3, 3, 1, 4, (64, 16), "_forward_channels_last_kernel"),
    (C4, False, torch.float64, 3, 2, 2, 5, (32, 2), "_forward_kernel"),
    (C8, True, torch.float32, 5, 3, 1, 2, None, "_forward_kernel"),
]


@pytest.mark.parametrize("case", CHANNEL_GROUPS, ids=[f"{c[0].name}-{'lift' if c[1] else 'regular'}-"
                                                      f"{str(c[2]).split('.')[-1]}-groups{c[4]}"
                                                      for c in CHANNEL_GROUPS])
def test_forward_channel_groups_in_one_launch(monkeypatch, case):
    """``groups > 1``: one launch for all channel groups (output channels of group ``j`` read its input channels
    only), matching the float64 reference per group, bias included."""
    group, lifting, dtype, k, groups, c_in, c_out, split, kernel_name = case
    if split is not None:
        monkeypatch.setattr(kernels, "_element_block", lambda *args: split)
    recorder = _LaunchRecorder(getattr(kernels, kernel_name))
    monkeypatch.setattr(kernels, kernel_name, recorder)
    (x, c, bias), in_group = _inputs(group, lifting, k, dtype, batch=2, c_in=groups * c_in, c_out=groups * c_out,
                                     height=6, width=5)
    c = c[:, :c_in].contiguous()
    tables, index = st._tables(group, k, dtype, x.device), group.stabilizer_index(in_group)
    ref = torch.cat([st.steerable_conv2d(xg.double(), cg.double(), bg.double(), group=group, in_group=in_group,
                                         kernel_size=k, padding=k // 2)
                     for xg, cg, bg in zip(x.chunk(groups, 1), c.chunk(groups), bias.chunk(groups))], 1)
    y = kernels.forward(x, c, bias, tables, index, 1, k // 2, 1, groups=groups)
    assert len(recorder.grids) == 1
    assert_close(y, ref, dtype, "y")
    with pytest.raises(ValueError, match="groups"):
        kernels.forward(x, c, bias, tables, index, 1, k // 2, 1, groups=groups + 1)
    with pytest.raises(ValueError, match="x"):
        kernels.forward(x[:, :-1], c, bias, tables, index, 1, k // 2, 1, groups=groups)


@pytest.mark.parametrize("in_place", [False, True], ids=["copied", "in-place"])
def test_weight_grad_windows_lie_inside_x(monkeypatch, in_place):
    """The channels-last coefficient gradient reads its window unmasked but for the padded positions: ``x`` is
    copied channels-last with the zeros padding in place unless it already is channels-last and unpadded (then read
    in place), and every pixel's window corner, the padding pixels' (offset 0) included, keeps every position of
    the window inside ``x``: stride 2 and dilation 2 on a ragged pixel count."""
    k, (sh, sw), (dh, dw) = 3, (2, 1), (2, 2)
    (x, c, _), in_group = _inputs(C8, False, k, torch.float32, c_in=3, c_out=2, height=9, width=8)
    pad = (0, 0) if in_place else (1, 2)
    if in_place:
        x = x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    nb, c_in, s_in, h, w = x.shape
    recorder = _LaunchRecorder(kernels._weight_grad_channels_last_kernel)
    monkeypatch.setattr(kernels, "_weight_grad_channels_last_kernel", recorder)
    tables, index = st._tables(C8, k, x.dtype, x.device), C8.stabilizer_index(in_group)
    cr = c.double().requires_grad_()
    ref = st.steerable_conv2d(x.double(), cr, None, group=C8, in_group=in_group, kernel_size=k, stride=(sh, sw),
                              padding=pad, dilation=(dh, dw))
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref.backward(dy)
    dc = kernels.weight_grad(dy.to(x.dtype).to(x.device), x, tables, index, c.shape, (sh, sw), pad, (dh, dw))
    assert_close(dc, cr.grad, x.dtype, "dc")
    (args, kwargs), = recorder.launches
    x_read, pixel = args[1], args[4]
    assert (x_read.data_ptr() == x.data_ptr()) == in_place
    assert x_read.shape == (nb, c_in, s_in, h + 2 * pad[0], w + 2 * pad[1])
    if not in_place:   # the zeros padding around x, x inside it
        border = x_read.clone()
        assert torch.equal(border[..., pad[0]:pad[0] + h, pad[1]:pad[1] + w], x)
        border[..., pad[0]:pad[0] + h, pad[1]:pad[1] + w] = 0
        assert not border.any()
    sxn, sxh, sxw = x_read.stride(0), x_read.stride(3), x_read.stride(4)
    ho, wo = ref.shape[-2:]
    m = torch.arange(nb * ho * wo)
    corner = m // (ho * wo) * sxn + (m // wo) % ho * sh * sxh + m % wo * sw * sxw
    assert torch.equal(pixel[:m.numel()].long() * s_in, corner)
    assert (pixel[m.numel():] == 0).all() and pixel.numel() % kwargs["BLOCK_M"] == 0
    last = pixel.long().max() * s_in + (k - 1) * (dh * sxh + dw * sxw) + c_in * s_in - 1
    assert last < x_read.untyped_storage().nbytes() // x_read.element_size()


def test_coefficient_gradient_within_1_5x_the_matmul_on_sm90(tmp_path):
    """perf.static (compiled for sm_90 without a GPU) on the coefficient gradient's worst layers before the window
    was read unmasked: the C8 lifting layer (k = 7) in bf16 and a C16 regular layer (k = 5) in tf32, both at most
    1.5x Triton's matmul's hot-loop instructions per MAC at the same tile, without a spill."""
    from test_static import _run_static

    for set_name, layer, dtype in (("c8", "mnist.l1", "bf16"), ("c16", "mnist.l2", "tf32")):
        out = tmp_path / f"{set_name}-{dtype}"
        proc = _run_static(tmp_path, "--sets", set_name, "--layers", layer, "--roles", "steer_weight_grad",
                           "--dtypes", dtype, "--archs", "90", "--jobs", "1", "--no-progress", "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        row, = [r for r in json.loads(out.with_suffix(".json").read_text())["rows"]
                if r["kernel"] == "steerable_conv._weight_grad_channels_last_kernel"]
        assert row["status"] == "ok" and row["spills"] == 0 and row["mma"] == "HGMMA"
        assert row["ratio"] <= 1.5, (set_name, layer, dtype, row["ratio"])
