"""The layout kernels (``kernels/group_conv_layouts.py``) against the torch code they replace: each re-layout is
one launch that writes every element (zeros included), and its result equals the torch copy exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, triton_backend

from gconv_triton._spec import make_spec
from gconv_triton.kernels import _common, group_conv as gconv, group_conv_layouts as layouts
from gconv_triton.kernels.group_conv_weight_grad import wgrad_block_r
from perf.static import capturing

CL_ORDER = (0, 3, 4, 1, 2)   # (B, C, S, H, W) stored (B, H, W, C, S)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _input(shape, channels_last: bool, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(shape, device=DEVICE).to(dtype)
    return x.permute(CL_ORDER).contiguous().permute(0, 3, 4, 1, 2) if channels_last else x


def _launches(fn):
    """``fn()``'s result and the names of the Triton kernels it launched: the launches are recorded, then run in
    their order."""
    launches = []
    with capturing(launches):
        out = fn()
    for launch in launches:
        launch.runner[launch.grid](*launch.args, **launch.kwargs)
    return out, [launch.kernel for launch in launches]


# ------------------------------------------------------------------------------------------ the halo copy
def _halo_reference(x, spec, channels):
    """The torch code the kernel replaces: a zero buffer, the interior copied in."""
    b, _, _, h, w = x.shape
    top, left = spec.padding[0], spec.padding[2]
    hp, wp = gconv.halo_size(spec)
    per_group = spec.in_channels * spec.s_in
    out = x.new_zeros((b, hp, wp, spec.groups, channels))
    out[:, top:top + h, left:left + w, :, :per_group] = (
        x.permute(0, 3, 4, 1, 2).reshape(b, h, w, spec.groups, per_group))
    return out.view(b, hp, wp, spec.groups * channels)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("group, in_group, cin, groups, padding, stride", [
    ("p4", "p4", 3, 1, 1, 1),
    ("p4", "p4", 2, 2, (1, 2), 2),      # asymmetric halo, two channel groups, stride 2
    ("p4m", "z2", 3, 1, 2, 1),          # a narrow lifting input: padded to 8 channels
    ("p4", "p4", 2, 1, 0, 1),           # no padding, contiguous input: a plain channels-last copy
])
def test_halo_copy_is_one_launch_equal_to_the_torch_copy(group, in_group, cin, groups, padding, stride,
                                                         channels_last):
    s_in = 1 if in_group == "z2" else 4
    x = _input((2, groups * cin, s_in, 5, 6), channels_last)
    weight = torch.empty((groups * 2, cin, s_in, 3, 3), device=DEVICE)
    spec = make_spec(x, weight, None, group=group, in_group=in_group, stride=stride, padding=padding, dilation=1,
                     groups=groups)
    channels = gconv.vector_channels(cin * s_in, groups, s_in)
    with triton_backend():
        out, names = _launches(lambda: gconv.halo_channels_last(x, spec, channels))
    in_place = padding == 0 and channels_last and channels == cin * s_in   # its own halo: a view of x
    assert names == ([] if in_place else ["group_conv_layouts._padded_copy_kernel"])
    assert (out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()) == in_place
    assert torch.equal(out, _halo_reference(x, spec, channels))


# ---------------------------------------------------------------------------------------- the permuted weights
def _weight_reference(weight, spec, group_on_n, rows_pad, k_major):
    """The torch code the kernel replaces: a zero buffer in the final memory order, the permuted weight copied in."""
    kh, kw = spec.kernel
    c_out, c_in, s_in = spec.out_channels, spec.in_channels, spec.s_in
    rows, cols = (c_in, c_out) if group_on_n else (c_out, c_in)
    w = weight.reshape(spec.weight_groups, c_out, c_in, s_in, kh * kw)
    w = w.permute(0, 4, 2, 3, 1) if group_on_n else w.permute(0, 4, 1, 3, 2)
    out = weight.new_zeros((spec.weight_groups, kh * kw, max(rows, rows_pad), s_in, _common.vector_padding(cols)))
    out[:, :, :rows, :, :cols] = w
    if not k_major:
        return out
    # K-major: the forward's (kh·kw, cols, rows, S_in); the input gradient's element-major (kh·kw, S_in, cols·rows)
    return out.permute(0, 1, 4, 2, 3) if group_on_n else out.permute(0, 1, 3, 4, 2).flatten(3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c_out, c_in, weight_groups, s_in, rows_pad", [
    (5, 3, 1, 4, 0),       # padded columns both ways (5 -> 8, 3 -> 4)
    (8, 16, 2, 4, 0),      # no padding, two weight groups
    (6, 1, 1, 1, 8),       # a lifting layer: extra zero rows for the padded input channels
])
def test_permuted_weights_in_one_launch_equal_the_torch_copies(c_out, c_in, weight_groups, s_in, rows_pad, dtype):
    in_group = "z2" if s_in == 1 else "p4"
    weight = torch.randn((weight_groups * c_out, c_in, s_in, 3, 3), device=DEVICE)
    x = torch.empty((1, weight_groups * c_in, s_in, 5, 5), device=DEVICE)
    spec = make_spec(x, weight, None, group="p4", in_group=in_group, stride=1, padding=1, dilation=1,
                     groups=weight_groups)
    for k_fwd in (False, True):
        for k_ig in (False, True):
            with triton_backend():
                (fwd, ig), names = _launches(lambda: gconv.permuted_weights(weight, spec, dtype, (rows_pad, k_fwd),
                                                                           (0, k_ig)))
            assert names == ["group_conv_layouts._permute_weight_kernel"]
            want_fwd = _weight_reference(weight.to(dtype), spec, True, rows_pad, k_fwd)
            want_ig = _weight_reference(weight.to(dtype), spec, False, 0, k_ig)
            assert fwd.dtype == ig.dtype == dtype
            # as the kernel reads them: dense in that order (K-major: the reduction axes innermost)
            assert torch.equal(fwd, want_fwd) and fwd.is_contiguous()
            assert torch.equal(ig, want_ig) and ig.is_contiguous()
    with triton_backend():   # one layout alone
        ig = gconv.permuted_weight(weight, spec, False, 0, False)
    assert torch.equal(ig, _weight_reference(weight, spec, False, 0, False))


# ------------------------------------------------------------------------------------ dy for the weight gradient
def _dy_spec(dy, groups, c_out):
    weight = torch.empty((groups * c_out, 2, 4, 3, 3), device=DEVICE)
    x = torch.empty((dy.shape[0], groups * 2, 4, dy.shape[3], dy.shape[4]), device=DEVICE)
    return make_spec(x, weight, None, group="p4", in_group="p4", stride=1, padding=1, dilation=1, groups=groups)


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("groups, c_out, size", [(1, 3, (2, 5, 7)), (2, 8, (1, 8, 9))])
def test_weight_grad_dy_relayout_equals_the_torch_copy(groups, c_out, size, channels_last, with_bias):
    """``dy (B, groups·C_out, S, H, W)`` -> ``(R_alloc, groups, S, O_PAD)``: the rows past the last pixel zero, the
    padded channels not written (NaN-poisoned), in one launch; with the bias, its per-program column sums too."""
    b, h, w = size
    dy = _input((b, groups * c_out, 4, h, w), channels_last)
    spec = _dy_spec(dy, groups, c_out)
    o_pad = _common.vector_padding(c_out)
    r_total = b * h * w
    r_alloc = _common.round_up(r_total, wgrad_block_r(dy.dtype))
    with triton_backend():
        (out, part, rows), names = _launches(lambda: layouts.relayout_dy(dy, spec, r_alloc, o_pad, with_bias))
    assert names == ["group_conv_layouts._dy_relayout_kernel"]
    want = dy.new_zeros((r_alloc, groups, 4, o_pad))     # the torch code the kernel replaces
    want[:r_total].view(b, h, w, groups, 4, o_pad)[..., :c_out] = (
        dy.view(b, groups, c_out, 4, h, w).permute(0, 4, 5, 1, 3, 2))
    assert torch.equal(out[..., :c_out], want[..., :c_out])
    assert out[..., c_out:].isnan().all()      # the tests poison outputs: the launch leaves these alone
    if with_bias:
        blocks = want.view(-1, layouts.DY_BLOCK_P, groups, 4, o_pad).double().sum(1)
        assert part.shape == blocks.shape
        torch.testing.assert_close(part.double(), blocks, rtol=1e-6, atol=1e-5)
    else:
        assert part is None
    assert rows is None


def test_dy_relayout_resolves_the_in_place_table_in_the_same_launch():
    """With an input read in place, the launch that re-lays ``dy`` also writes the weight gradient's row table,
    ``where(table < 0, zero_delta, table)`` (``(kh·kw, R_alloc)`` int64, -1 in the padding): no launch of its own."""
    dy = _input((2, 3, 4, 5, 7), False)
    spec = _dy_spec(dy, 1, 3)
    r_alloc = _common.round_up(2 * 5 * 7, 64)
    gen = torch.Generator().manual_seed(3)
    table = torch.randint(0, 2**40, (9, r_alloc), generator=gen)
    table[torch.rand((9, r_alloc), generator=gen) < 0.3] = -1
    delta = -(2**35) - 5
    with triton_backend():
        (_, _, rows), names = _launches(lambda: layouts.relayout_dy(dy, spec, r_alloc, 8, False, (table, delta)))
    assert names == ["group_conv_layouts._dy_relayout_kernel"]
    assert rows.equal(torch.where(table < 0, delta, table))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("split, groups, weight_groups, with_bias", [
    (3, 1, 1, True), (2, 3, 1, True), (1, 2, 2, True), (3, 1, 1, False), (1, 1, 1, False)])
def test_finish_adds_the_split_and_the_bias_in_one_launch(split, groups, weight_groups, with_bias, dtype):
    """The split's partial sums (fp32 at least) and the bias's per-program partial sums, added up by one launch
    (none when there is neither), against float64 sums: ``db`` as ``ops.bias_grad`` of the same ``dy``."""
    from gconv_triton.ops.group_conv import bias_grad

    c_out, b, h, w = 5, 2, 6, 7
    dy = torch.randn((b, groups * c_out, 4, h, w), device=DEVICE).to(dtype)
    weight = torch.empty((weight_groups * c_out, 2, 4, 3, 3), device=DEVICE)
    x = torch.empty((b, groups * 2, 4, h, w), device=DEVICE)
    spec = make_spec(x, weight, None, group="p4", in_group="p4", stride=1, padding=1, dilation=1, groups=groups,
                     shared_weight=groups != weight_groups)
    partial_dtype = torch.promote_types(dtype, torch.float32) if split > 1 else dtype
    partial = torch.randn((split, *weight.shape), device=DEVICE).to(partial_dtype)
    with triton_backend():
        _, bias_part, _ = layouts.relayout_dy(dy, spec, _common.round_up(b * h * w, 64), 8, with_bias)
        (dw, db), names = _launches(lambda: layouts.finish_weight_grad(partial, dtype, bias_part, spec))
    assert names == ([] if split == 1 and not with_bias else ["group_conv_layouts._finish_kernel"])
    assert dw.dtype == dtype and dw.shape == weight.shape
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(dw.double(), partial.double().sum(0).to(dtype).double(), **tol)
    if with_bias:
        want = bias_grad(dy.double(), groups, weight_groups)
        torch.testing.assert_close(db.double(), want.to(dtype).double(), **tol)
    else:
        assert db is None


def test_padded_copy_shifts_pads_and_checks_its_arguments():
    """Any strides, shifts on several dims, zero rows past the source on dim 0."""
    src = torch.randn((3, 4, 2, 5), device=DEVICE).permute(2, 0, 3, 1)     # (2, 3, 5, 4), permuted strides
    out = torch.empty((4, 5, 7, 4), device=DEVICE)
    with triton_backend():
        layouts.padded_copy(out, src, (1, 0, 2, 0))
    want = torch.zeros_like(out)
    want[1:3, :3, 2:7, :] = src
    assert torch.equal(out, want)
    with pytest.raises(ValueError, match="padded_copy: expected a contiguous out"):
        layouts.padded_copy(out.transpose(0, 1), src)


@pytest.mark.parametrize("padding, channels_last", [(1, False), (1, True), (0, True)],
                         ids=["halo-contiguous", "halo-channels-last", "in-place"])
def test_forward_writes_its_halo_copy_and_both_weights_in_one_launch(padding, channels_last):
    """The forward's re-layouts (the zero-halo copy of ``x``, its permuted weight and the input gradient's) are one
    launch; an input read in place leaves the weights' launch alone."""
    x = _input((2, 3, 4, 5, 6), channels_last)
    weight = torch.randn((5, 3, 4, 3, 3), device=DEVICE)
    spec = make_spec(x, weight, None, group="p4", in_group="p4", stride=1, padding=padding, dilation=1, groups=1)
    with triton_backend():
        (fwd, ig, copy), names = _launches(lambda: gconv.permuted_weights(
            weight, spec, torch.float32, (0, False), (0, False), (x, spec, 12)))
    in_place = padding == 0
    assert names == [f"group_conv_layouts._{'permute_weight' if in_place else 'padded_copy'}_kernel"]
    assert torch.equal(copy, _halo_reference(x, spec, 12))
    assert torch.equal(fwd, _weight_reference(weight, spec, True, 0, False))
    assert torch.equal(ig, _weight_reference(weight, spec, False, 0, False))
