"""The geometry of one convolution call, checked and resolved, shared by every backend.

Everything a kernel or the reference path needs about one convolution call lives in a :class:`ConvSpec`,
built (and validated) once, before anything launches.  Every error names the argument, the value given and
what was expected (the table is in ``docs/errors.md``): ``TypeError`` for a wrong type or dtype, ``ValueError``
for a wrong value, shape or device.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import torch

from ._args import output_padding_pair, pair, positive_int, resolve_padding
from ._support import GROUPS, compiling
from .groups import Group, get_group

#: dtypes the kernels and the reference path compute in (fp8 and integer types are rejected, not cast).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: the kernels index pixels (``B·H·W``, ``B·H_out·W_out``) in int32 and every memory offset in int64.
MAX_PIXELS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One group convolution, fully resolved.

    Shapes: input ``(B, groups·C_in_g, S_in, H, W)``, weight ``(weight_groups·C_out_g, C_in_g, S_in, kh, kw)``,
    output ``(B, groups·C_out_g, S_out, H_out, W_out)``.  ``weight_groups`` is ``groups`` for an ordinary
    grouped convolution and 1 when one weight slice is shared by every channel group (its gradient is then
    the sum over the groups).
    """

    group: Group
    in_group: Group
    batch: int
    in_channels: int          # per channel group
    out_channels: int         # per channel group
    groups: int
    weight_groups: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    out_height: int
    out_width: int

    @property
    def s_in(self) -> int:
        return self.in_group.order

    @property
    def s_out(self) -> int:
        return self.group.order

    @property
    def depthwise(self) -> bool:
        """One input G-channel per channel group: a 1-wide reduction that a GEMM would pad to 16."""
        return self.in_channels == 1

    def bank_numel(self) -> int:
        """Elements of the filter bank that this package never builds (the reference path does)."""
        kh, kw = self.kernel
        return (self.groups * self.out_channels * self.s_out) * (self.in_channels * self.s_in) * kh * kw


def resolve_geometry(kernel: tuple[int, int], stride, padding, dilation):
    """Check ``stride``, ``padding`` and ``dilation`` as ``torch.nn.Conv2d`` takes them and resolve them.

    Returns ``(stride, dilation, padding)``: two pairs and the 4-tuple ``(top, bottom, left, right)``.  Shared by
    :func:`make_spec` and the layers' constructors, so a bad value fails when the layer is built.
    """
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"stride: expected values >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"dilation: expected values >= 1, got {dilation}")
    return stride, dilation, resolve_padding(padding, kernel, dilation, stride)


def concrete_shape(t: torch.Tensor, quiet: bool = False) -> tuple:
    """``t.shape`` as ints, also under ``torch.jit.trace``, which records sizes as 0-d tensors: their traced
    values are taken, specialising the trace to them, which torch's ``TracerWarning`` says.  ``quiet`` drops that
    warning where the size specialises nothing a traced module varies: a size read only to decide whether to
    raise or warn, or a weight's shape (a traced module's parameters keep theirs)."""
    if not torch.jit.is_tracing():
        return tuple(t.shape)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(n) for n in t.shape)


def _check_tensor(t, name: str, dims: tuple[int, ...], like: Optional[torch.Tensor] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        expected = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name}: expected a {expected} tensor, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise TypeError(f"{name}: expected a floating-point tensor ({names}), got dtype {t.dtype}")
    if like is not None:
        if t.dtype != like.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match input's dtype {like.dtype}; expected the same "
                            f"dtype (cast one of them)")
        if t.device != like.device:
            raise ValueError(f"{name}: device {t.device} does not match input's device {like.device}; expected "
                             f"tensors on one device")


def make_spec(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, group, in_group,
              stride, padding, dilation, groups: int, shared_weight: bool = False) -> ConvSpec:
    """Validate one call's arguments and resolve them into a :class:`ConvSpec`.  Raises before any launch."""
    group = get_group(group, "group")
    in_group = get_group(in_group, "in_group")
    if not in_group.is_trivial and in_group != group:
        raise ValueError(f"in_group: expected 'z2' (lifting) or the output group {group.name}, got {in_group.name}")
    _check_tensor(input, "input", (4, 5))
    _check_tensor(weight, "weight", (5,), like=input)
    groups = positive_int(groups, "groups")
    s_in = in_group.order
    w_out, c_in_g, w_s, kh, kw = concrete_shape(weight, quiet=True)
    if w_s != s_in:
        raise ValueError(f"weight: expected shape (C_out, C_in/groups, {s_in}, kh, kw) for in_group {in_group.name} "
                         f"(S_in = {s_in}), got {tuple(weight.shape)}")
    if w_out < 1 or c_in_g < 1 or kh < 1 or kw < 1:
        raise ValueError(f"weight: expected every dimension to be at least 1, got shape {tuple(weight.shape)}")
    try:
        group.check_kernel_size((kh, kw))
    except ValueError as err:  # a 90-degree rotation of a non-square kernel (or a table for another size)
        reason = str(err).removeprefix("kernel_size: ")
        raise ValueError(f"weight: kernel_size {kh}x{kw} (weight shape {tuple(weight.shape)}) does not fit group "
                         f"{group.name}: {reason}") from err
    weight_groups = 1 if shared_weight else groups
    if w_out % weight_groups:
        raise ValueError(f"groups: out_channels = {w_out} (weight.shape[0]) is not divisible by groups = {groups}")
    c_out_g = w_out // weight_groups
    c_in = c_in_g * groups
    if input.dim() == 5:
        b, ci, si, h, w = concrete_shape(input, quiet=True)
        if si != s_in:
            raise ValueError(f"input: expected group axis of size {s_in} (in_group {in_group.name}) at dim 2, got "
                             f"shape {tuple(input.shape)}")
    else:
        b, cs, h, w = concrete_shape(input, quiet=True)
        if cs % s_in:
            raise ValueError(f"input: expected a multiple of S_in = {s_in} (in_group {in_group.name}) channels in "
                             f"flattened 4-D input (B, C_in*S_in, H, W), got {cs} in shape {tuple(input.shape)}")
        ci = cs // s_in
    if ci < 1 or h < 1 or w < 1:
        raise ValueError(f"input: expected non-zero channel and spatial sizes (only the batch may be 0), got shape "
                         f"{tuple(input.shape)}")
    if ci % groups:
        raise ValueError(f"groups: in_channels = {ci} (input shape {tuple(input.shape)}) is not divisible by "
                         f"groups = {groups}")
    if ci != c_in:
        flat = ""
        if input.dim() == 4 and s_in > 1:  # GrouPy's flattened (B, C_in*S_in, H, W): count in planar channels
            flat = (f" (the flattened map (B, C_in*S_in, H, W) of in_group {in_group.name} needs "
                    f"{c_in} x {s_in} = {c_in * s_in} channels, got {ci * s_in})")
        raise ValueError(f"input: expected {c_in} channels (weight.shape[1] = {c_in_g} x groups = {groups}), got "
                         f"{ci}{flat} in shape {tuple(input.shape)}")
    if bias is not None:
        _check_tensor(bias, "bias", (1,), like=input)
        if concrete_shape(bias, quiet=True)[0] != w_out:
            raise ValueError(f"bias: expected shape ({w_out},), one per output G-channel, got {tuple(bias.shape)}")
    stride, dilation, pad = resolve_geometry((kh, kw), stride, padding, dilation)
    ho = conv_out_size(h, kh, stride[0], pad[0] + pad[1], dilation[0])
    wo = conv_out_size(w, kw, stride[1], pad[2] + pad[3], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(f"input: spatial size {h}x{w} with kernel {kh}x{kw}, padding {padding!r}, dilation "
                         f"{dilation} and stride {stride} gives an output of {ho}x{wo}; expected at least 1x1 (a "
                         f"larger input or more padding)")
    return ConvSpec(group=group, in_group=in_group, batch=b, in_channels=c_in_g, out_channels=c_out_g,
                    groups=groups, weight_groups=weight_groups, height=h, width=w, kernel=(kh, kw), stride=stride,
                    dilation=dilation, padding=pad, out_height=ho, out_width=wo)


def check_index_range(spec: ConvSpec) -> None:
    """Reject, before a launch, a call whose pixel count overflows the kernels' int32 pixel index.

    Memory offsets are int64 everywhere, so any tensor size and stride is fine; only ``B·H·W`` and
    ``B·H_out·W_out`` (the GEMMs' M and reduction extents) must stay under 2³¹.  The reference path has no limit.
    """
    pixels = spec.batch * max(spec.height * spec.width, spec.out_height * spec.out_width)
    if pixels > MAX_PIXELS:
        raise ValueError(f"input: batch x pixels = {spec.batch} x {spec.height}x{spec.width} (output "
                         f"{spec.out_height}x{spec.out_width}) = {pixels} exceeds the Triton kernels' limit of "
                         f"2**31 - 1 pixels; expected a smaller batch (split it) or the 'torch' backend")


def as_5d(input: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """View a flattened ``(B, C·S, H, W)`` input as ``(B, C, S, H, W)`` (channel index ``c·S + s``)."""
    if input.dim() == 5:
        return input
    return input.unflatten(1, (spec.groups * spec.in_channels, spec.s_in))


# ------------------------------------------------------------------------------- across the ops' boundary
def op_geometry(weight: torch.Tensor, group: Group, in_group: Group, stride, padding, dilation, groups: int,
                shared_weight: bool) -> tuple:
    """A call's geometry as op arguments (plain Python, traceable by torch.compile): ``(group key, in_group key,
    stride, padding (top, bottom, left, right), dilation, groups, weight_groups)``."""
    kernel = tuple(weight.shape[-2:])
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    pad = resolve_padding(padding, kernel, dilation, stride)
    return (GROUPS.key(group), GROUPS.key(in_group), list(stride), list(pad), list(dilation), groups,
            1 if shared_weight else groups)


def spec_from_op_args(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], group: str,
                      in_group: str, stride, padding, dilation, groups: int, weight_groups: int) -> ConvSpec:
    """Rebuild the :class:`ConvSpec` from an op's arguments (:func:`op_geometry`'s)."""
    top, bottom, left, right = padding
    # Only 'same' resolves to an asymmetric padding, and it resolves the same way again.
    pad = (top, left) if (top, left) == (bottom, right) else "same"
    spec = make_spec(x, weight, bias, group=GROUPS[group], in_group=GROUPS[in_group], stride=tuple(stride),
                     padding=pad, dilation=tuple(dilation), groups=groups, shared_weight=weight_groups != groups)
    if spec.padding != tuple(padding):
        raise ValueError(f"padding: expected a symmetric padding or 'same', got {tuple(padding)}")
    return spec


def transposed_geometry(input, weight: torch.Tensor, kernel: tuple[int, int], bias, *, group: Group,
                        out_group: Group, stride, padding, output_padding, groups: int, dilation):
    """A transposed convolution's call, checked: ``(x, size, geometry)`` with ``x`` the input as ``(B, C_in, S,
    H, W)``, ``size`` the output's ``[B, C_out, S_out, H_out, W_out]`` (ints) and ``geometry`` the matching
    convolution's (``out_group`` maps of ``size`` to ``group`` maps: ``group``, ``in_group``, ``stride``,
    ``padding`` (a pair), ``dilation``, ``groups``).

    ``weight`` is ``(C_in, C_out / groups, S_out, ...)``: the base weight ``(..., kh, kw)`` or the steerable
    coefficients ``(..., B)``; ``kernel`` is ``(kh, kw)``.  Every check (the input against the matching
    convolution's output, the bias) runs before anything launches, except under ``torch.compile``.
    """
    if isinstance(padding, str):
        raise ValueError(f"padding: expected an int or a pair for a transposed convolution, got {padding!r}")
    if not isinstance(input, torch.Tensor) or input.dim() not in (4, 5):
        raise ValueError(f"input: expected (B, C_in, S, H, W) or (B, C_in·S, H, W), got "
                         f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
    x = input if input.dim() == 5 else input.unflatten(1, (-1, group.order))
    stride, dilation, pad = pair(stride, "stride"), pair(dilation, "dilation"), pair(padding, "padding")
    out_pad = output_padding_pair(output_padding, stride, dilation)
    # ints, also under torch.jit.trace (which records sizes as tensors): the op takes the output size as ints, so
    # a traced graph is specialised to the input's size (torch's TracerWarning says so), not to the weight's
    shape, weight_shape = concrete_shape(x), concrete_shape(weight, quiet=True)
    size = [shape[0], weight_shape[1] * groups, out_group.order]
    size += [(n - 1) * s - 2 * p + d * (k - 1) + o + 1
             for n, s, p, d, k, o in zip(shape[-2:], stride, pad, dilation, kernel, out_pad)]
    geometry = dict(group=group, in_group=out_group, stride=stride, padding=pad, dilation=dilation, groups=groups)
    if not compiling():  # validate against the matching convolution before anything launches
        if min(size[-2:]) < 1:
            raise ValueError(f"input: spatial size {tuple(x.shape[-2:])} gives an output of {tuple(size[-2:])}; "
                             f"expected at least 1x1 (less padding)")
        bank = weight.new_empty(()).expand(*weight_shape[:3], *kernel)
        spec = make_spec(weight.new_empty(()).expand(size), bank, None, **geometry)
        if (spec.groups * spec.out_channels, spec.s_out, spec.out_height, spec.out_width) != shape[1:]:
            raise ValueError(f"input: expected shape (B, {spec.groups * spec.out_channels}, {spec.s_out}, "
                             f"{spec.out_height}, {spec.out_width}) for weight {tuple(weight.shape)} and group "
                             f"{group.name}, got {tuple(x.shape)}")
        if bias is not None and (not isinstance(bias, torch.Tensor) or concrete_shape(bias, quiet=True) != (size[1],)):
            raise ValueError(f"bias: expected shape ({size[1]},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    return x, size, geometry


def conv_out_size(size: int, kernel_size: int, stride: int, total_padding: int, dilation: int) -> int:
    """One axis of a convolution's output: ``(size + total_padding − dilation·(k − 1) − 1) // stride + 1``, with
    ``total_padding`` the padding before and after together (``nn.Conv2d``'s formula)."""
    return (size + total_padding - dilation * (kernel_size - 1) - 1) // stride + 1


def op_out_shape(x: torch.Tensor, weight: torch.Tensor, group: str, stride, padding, dilation, groups: int,
                 weight_groups: int) -> tuple:
    """The output shape ``(B, C_out, S_out, H_out, W_out)`` of an op's arguments, without checking them (what a
    fake kernel returns)."""
    kh, kw = weight.shape[-2:]
    ho = conv_out_size(x.shape[3], kh, stride[0], padding[0] + padding[1], dilation[0])
    wo = conv_out_size(x.shape[4], kw, stride[1], padding[2] + padding[3], dilation[1])
    return (x.shape[0], groups * (weight.shape[0] // weight_groups), GROUPS[group].order, ho, wo)
