"""Edge inputs on both backends: empty batches, NaN/Inf, strided and overlapping views, offsets past 2**31.

Both kernel families run: the implicit GEMM (``C_in/groups > 1``) and the depthwise kernels (``C_in/groups == 1``).
Everything is compared against the float64 reference path (backend "torch"), and views against their contiguous
copies bit for bit (the kernels do the same arithmetic whatever the strides).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import DEVICE, assert_close

import gconv_triton
from gconv_triton.functional import gconv2d

# (input shape, weight shape, conv arguments): small, so the interpreter runs them in about a second.
FAMILIES = {
    "gemm": ((2, 2, 4, 5, 5), (3, 2, 4, 3, 3), dict(group="p4", in_group="p4", padding=1)),
    "depthwise": ((2, 2, 2, 5, 5), (2, 1, 2, 3, 3), dict(group="p2", in_group="p2", padding=1, groups=2)),
}


def _data(family, dtype=torch.float32, batch=None, seed=0):
    x_shape, w_shape, conv = FAMILIES[family]
    if batch is not None:
        x_shape = (batch, *x_shape[1:])
    gen = torch.Generator().manual_seed(seed)
    x, w, b = (torch.randn(s, generator=gen, dtype=dtype) for s in (x_shape, w_shape, w_shape[:1]))
    return x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), conv


def _dy(y):
    """The output gradient of every test: fixed (seeded) random values shaped like ``y``, positive so that the bias
    gradient (a plain sum of ``dy``) is well conditioned."""
    return (torch.rand(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype) + 0.5).to(y.device)


def _run(backend, x, w, b, conv, dy=None):
    """``(y, dx, dw, db)`` of ``gconv2d`` on ``backend``; the tensors are used with their strides as given."""
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    with gconv_triton.backend(backend):
        y = gconv2d(x, w, b, **conv)
        grads = torch.autograd.grad(y, (x, w, b), _dy(y) if dy is None else dy)
    return (y.detach(), *grads)


def _reference(x, w, b, conv, dy):
    """The float64 reference on the CPU, for the same values (a view is copied, its values kept)."""
    return _run("torch", *(t.detach().cpu().double() for t in (x, w, b)), conv, dy.detach().cpu().double())


NAMES = ("y", "dx", "dw", "db")


def _assert_close_all(ours, ref, dtype):
    for name, out, expected in zip(NAMES, ours, ref):
        assert_close(out, expected, dtype, name)


# ------------------------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("flat", [False, True], ids=["5d", "4d"])
def test_empty_batch(family, backend, flat):
    x, w, b, conv = _data(family, batch=0)
    x = x.flatten(1, 2) if flat else x
    y, dx, dw, db = _run(backend, x, w, b, conv)
    s_out = gconv_triton.groups.get_group(conv["group"]).order
    assert y.shape == (0, w.shape[0], s_out, 5, 5) and dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


# ------------------------------------------------------------------------------------------------ NaN, Inf
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, inside the interpreter
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_nan_inf_propagate_locally(family, backend):
    """A NaN and an Inf in the input reach exactly the outputs (and gradients) they reach in the reference,
    which is ``F.conv2d``: the NaN/Inf masks agree, the finite values are close, and the damage is local."""
    x, w, b, conv = _data(family)
    x[0, 0, 0, 1, 1] = float("nan")
    x[1, -1, -1, 3, 4] = float("inf")
    x[1, 0, 0, 0, 0] = float("-inf")
    ours = _run(backend, x, w, b, conv)
    ref = _reference(x, w, b, conv, _dy(ours[0]))
    for name, out, expected in zip(NAMES, ours, ref):
        out = out.cpu().double()
        assert torch.equal(out.isnan(), expected.isnan()), f"{name}: NaN mask differs from the reference's"
        assert torch.equal(out.isposinf(), expected.isposinf()) and torch.equal(out.isneginf(), expected.isneginf()), \
            f"{name}: Inf mask differs from the reference's"
        finite = expected.isfinite()
        assert_close(out[finite], expected[finite], x.dtype, f"{name} (finite part)")
    # local: the NaN at pixel (1, 1) of batch entry 0 reaches the 3x3 output pixels around it, nothing else
    reached = ours[0][0].isnan().flatten(0, 1).any(0).cpu()
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[:3, :3] = True
    assert torch.equal(reached, expected), reached


# ------------------------------------------------------------------------------------ strided and overlapping
def _views(x):
    """Views holding the same values as ``x (B, C, S, H, W)`` in other memory layouts."""
    b, c, s, h, w = x.shape
    big = torch.full((b, c, s, 2 * h, w + 3), float("nan"), dtype=x.dtype, device=x.device)
    big[:, :, :, ::2, 3:] = x
    return {
        "channels-last": x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2),
        "group-axis-outer": x.transpose(1, 2).contiguous().transpose(1, 2),
        "sliced": big[:, :, :, ::2, 3:],
        "hw-transposed": x.transpose(-1, -2).contiguous().transpose(-1, -2),
    }


@pytest.mark.parametrize("family", list(FAMILIES))
def test_strided_views_match_contiguous(family):
    """Non-contiguous input, weight and output gradient give bit-identical results to contiguous copies."""
    x, w, b, conv = _data(family)
    base = _run("triton", x, w, b, conv)
    _assert_close_all(base, _reference(x, w, b, conv, _dy(base[0])), x.dtype)
    w_strided = w.transpose(-1, -2).contiguous().transpose(-1, -2)
    for name, view in _views(x).items():
        assert not view.is_contiguous()
        strided_dy = name == "channels-last"  # and a non-contiguous output gradient
        out = _run("triton", view, w_strided if name == "sliced" else w, b, conv,
                   dy=_dy(base[0]).transpose(-1, -2).contiguous().transpose(-1, -2) if strided_dy else None)
        for what, got, expected in zip(NAMES, out, base):
            if what == "db" and strided_dy:  # torch's own dy.sum(): its order follows dy's layout
                assert_close(got, expected, x.dtype, f"{name}: db")
                continue
            assert torch.equal(got, expected), f"{name}: {what} differs from the contiguous input's"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_overlapping_views_match_contiguous(family):
    """Stride-0 (``expand``) and overlapping (``as_strided``) inputs, and the stride-0 output gradient of
    ``y.sum()``, give the results of their contiguous copies."""
    x, w, b, conv = _data(family)
    bsz, c, s, h, wd = x.shape
    cases = {
        "expanded-batch": x[:1].expand(bsz, -1, -1, -1, -1),
        # element (b, c, s, i, j) at offset c*S*(H+W) + s*(H+W) + i + j: sliding windows share memory
        "overlapping-windows": torch.randn(c * s * (h + wd) + h + wd, generator=torch.Generator().manual_seed(2))
        .to(DEVICE).as_strided((bsz, c, s, h, wd), (0, s * (h + wd), h + wd, 1, 1)),
    }
    for name, view in cases.items():
        copy = view.contiguous()
        dy = torch.ones((), device=DEVICE).expand(_run("torch", copy, w, b, conv)[0].shape)  # what y.sum() sends
        got, expected = _run("triton", view, w, b, conv, dy), _run("triton", copy, w, b, conv, dy.contiguous())
        for what, a, e in zip(NAMES, got, expected):
            assert torch.equal(a, e), f"{name}: {what} differs from the contiguous copy's"
        _assert_close_all(got, _reference(copy, w, b, conv, dy), x.dtype)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_strided_bias(family):
    """A strided or expanded bias is read through its strides (the kernels index a contiguous one)."""
    x, w, b, conv = _data(family)
    strided = torch.stack([b, torch.full_like(b, 1e3)], 1)[:, 0]  # stride 2: every other element
    expanded = b[:1].expand(b.shape[0])                             # stride 0
    with gconv_triton.backend("triton"):
        for bias in (strided, expanded):
            assert not bias.is_contiguous()
            y = gconv2d(x, w, bias, **conv)
            assert torch.equal(y, gconv2d(x, w, bias.contiguous(), **conv))


# ------------------------------------------------------------------------------------ offsets past 2**31
LARGE = 2**31 + 4096  # elements of a bf16 storage: 4 GiB + 8 KiB


def _memory_available() -> bool:
    if DEVICE.type == "cuda":
        return torch.cuda.mem_get_info()[0] > 6 * 2**30
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024 > 8 * 2**30  # lazily committed, but leave room
    except (OSError, KeyError, ValueError):
        return False


needs_memory = pytest.mark.skipif(not _memory_available(), reason="needs ~4.3 GB of free memory for a storage "
                                                                  "of more than 2**31 elements")

# (family, the stride that carries an offset past 2**31): (input shape, strides, weight shape, conv arguments)
LARGE_CASES = {
    # batch entry 1 starts at 2**31
    ("gemm", "batch"): ((2, 2, 4, 5, 5), (2**31, 100, 25, 5, 1), (3, 2, 4, 3, 3), dict(group="p4", in_group="p4")),
    ("depthwise", "batch"): ((2, 1, 2, 5, 5), (2**31, 50, 25, 5, 1), (1, 1, 2, 3, 3), dict(group="p2", in_group="p2")),
    # group-axis slice 3 starts at 3 * ceil(2**31 / 3) = 2**31 + 1: an int32 product s * stride would wrap
    ("gemm", "group-axis"): ((2, 2, 4, 5, 5), (200, 100, -(-2**31 // 3), 5, 1), (3, 2, 4, 3, 3),
                             dict(group="p4", in_group="p4")),
    ("depthwise", "group-axis"): ((2, 1, 4, 5, 5), (200, 100, -(-2**31 // 3), 5, 1), (1, 1, 4, 3, 3),
                                  dict(group="p4", in_group="p4")),
    # channels-last (B, H, W, C, S) and unpadded: the kernels read x in place, so the weight gradient's offsets
    # must be int64 too
    ("gemm", "channels-last-batch"): ((2, 2, 4, 5, 5), (2**31, 4, 1, 40, 8), (3, 2, 4, 3, 3),
                                      dict(group="p4", in_group="p4", padding=0)),
}


def _large_offsets_worker(names) -> int:
    """Run in a subprocess (a wrapped offset can crash the process): each case's forward and gradients on
    views of one storage of more than 2**31 elements against the float64 reference on the same views."""
    storage = torch.empty(LARGE, dtype=torch.bfloat16, device=DEVICE)  # never touched but where the views lie
    failures = 0
    for name in names:
        family, axis = name.split(":")
        shape, strides, w_shape, conv = LARGE_CASES[(family, axis)]
        x = storage.as_strided(shape, strides)
        assert x.storage_offset() + sum((n - 1) * s for n, s in zip(shape, strides)) < LARGE
        gen = torch.Generator().manual_seed(0)
        x.copy_(torch.randn(shape, generator=gen))
        w = torch.randn(w_shape, generator=gen).to(DEVICE, torch.bfloat16)
        b = torch.randn(w_shape[:1], generator=gen).to(DEVICE, torch.bfloat16)
        conv = {"padding": 1, **conv}
        ours = _run("triton", x, w, b, conv)
        ref = _reference(x, w, b, conv, _dy(ours[0]))
        for what, out, expected in zip(NAMES, ours, ref):
            try:
                assert_close(out, expected, torch.bfloat16, f"{name} {what}")
            except AssertionError as err:
                print(err, flush=True)
                failures += 1
        print(f"{name}: done", flush=True)
    return 1 if failures else 0


def _run_large_worker(names):
    result = subprocess.run([sys.executable, __file__, *names], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (f"worker exited with {result.returncode}:\n{result.stdout}\n"
                                    f"{result.stderr[-3000:]}")


@needs_memory
def test_offsets_past_2_31():
    """Batch and group-axis offsets past 2**31 for both kernel families: every offset is int64 (an int32 product
    such as ``s * stride`` wraps to a negative offset, which crashed the worker before the depthwise kernels were
    fixed).  The worker inherits TRITON_INTERPRET and the poisoning of outputs."""
    _run_large_worker([f"{family}:{axis}" for family, axis in LARGE_CASES])


if __name__ == "__main__":  # the worker of the tests above
    sys.exit(_large_offsets_worker(sys.argv[1:]))
