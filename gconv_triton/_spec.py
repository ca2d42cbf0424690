"""Argument checking and normalisation shared by every backend.

Everything a kernel or the reference path needs about one convolution call lives in a :class:`ConvSpec`,
built (and validated) once, before anything launches.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .groups import Group, get_group


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


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


def _resolve_padding(padding, kernel, dilation, stride):
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding: 'same' is not supported for strided convolutions, got stride={stride}")
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]  # PyTorch puts the odd pixel at the end
            return tuple(out)
        raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding: expected non-negative values, got {padding!r}")
    return (ph, ph, pw, pw)


def _check_tensor(t, name: str, dims: tuple[int, ...], like: Optional[torch.Tensor] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        expected = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name}: expected a {expected} tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if like is not None:
        if t.dtype != like.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match input's dtype {like.dtype}")
        if t.device != like.device:
            raise ValueError(f"{name}: device {t.device} does not match input's device {like.device}")


def make_spec(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, group, in_group,
              stride, padding, dilation, groups: int, shared_weight: bool = False) -> ConvSpec:
    """Validate one call's arguments and resolve them into a :class:`ConvSpec`.  Raises before any launch."""
    group = get_group(group, "group")
    in_group = get_group(in_group, "in_group")
    if not in_group.is_trivial and in_group != group:
        raise ValueError(f"in_group: expected 'z2' (lifting) or the output group {group.name}, got {in_group.name}")
    _check_tensor(input, "input", (4, 5))
    _check_tensor(weight, "weight", (5,), like=input)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    s_in = in_group.order
    w_out, c_in_g, w_s, kh, kw = weight.shape
    if w_s != s_in:
        raise ValueError(f"weight: expected shape (C_out, C_in/groups, {s_in}, kh, kw) for in_group {in_group.name} "
                         f"(S_in = {s_in}), got {tuple(weight.shape)}")
    if w_out < 1 or c_in_g < 1 or kh < 1 or kw < 1:
        raise ValueError(f"weight: every dimension must be at least 1, got shape {tuple(weight.shape)}")
    weight_groups = 1 if shared_weight else groups
    if w_out % weight_groups:
        raise ValueError(f"groups: out_channels = {w_out} (weight.shape[0]) is not divisible by groups = {groups}")
    c_out_g = w_out // weight_groups
    c_in = c_in_g * groups
    if input.dim() == 5:
        b, ci, si, h, w = input.shape
        if si != s_in:
            raise ValueError(f"input: expected group axis of size {s_in} (in_group {in_group.name}) at dim 2, got "
                             f"shape {tuple(input.shape)}")
        if ci != c_in:
            raise ValueError(f"input: expected {c_in} channels (weight.shape[1] = {c_in_g} x groups = {groups}), "
                             f"got {ci} in shape {tuple(input.shape)}")
    else:
        b, cs, h, w = input.shape
        if cs != c_in * s_in:
            raise ValueError(f"input: expected {c_in * s_in} channels (C_in = {c_in} x S_in = {s_in}) in flattened "
                             f"4-D input, got {cs} in shape {tuple(input.shape)}")
    if bias is not None:
        _check_tensor(bias, "bias", (1,), like=input)
        if bias.shape[0] != w_out:
            raise ValueError(f"bias: expected shape ({w_out},), one per output G-channel, got {tuple(bias.shape)}")
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"stride: expected values >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"dilation: expected values >= 1, got {dilation}")
    group.tap_destinations((kh, kw))  # raises for a rotation of a non-square kernel
    pad = _resolve_padding(padding, (kh, kw), dilation, stride)
    ho = (h + pad[0] + pad[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + pad[2] + pad[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input: spatial size {h}x{w} with padding {padding!r}, dilation {dilation} and kernel "
                         f"{kh}x{kw} gives an output of {ho}x{wo}; expected at least 1x1")
    return ConvSpec(group=group, in_group=in_group, batch=b, in_channels=c_in_g, out_channels=c_out_g,
                    groups=groups, weight_groups=weight_groups, height=h, width=w, kernel=(kh, kw), stride=stride,
                    dilation=dilation, padding=pad, out_height=ho, out_width=wo)


def as_5d(input: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """View a flattened ``(B, C·S, H, W)`` input as ``(B, C, S, H, W)`` (channel index ``c·S + s``)."""
    if input.dim() == 5:
        return input
    return input.unflatten(1, (spec.groups * spec.in_channels, spec.s_in))
