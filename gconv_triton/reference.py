"""The plain-PyTorch path: build the filter bank explicitly, then ``F.conv2d``.

It is the oracle every test compares against (call it with float64 tensors) and the implementation that serves
CPU tensors.  It computes in the input's dtype and is differentiable by autograd.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F

from ._spec import ConvSpec, as_5d, concrete_shape
from .groups import Group, get_group

__all__ = ["filter_bank", "flat_bank", "bank_conv2d", "bank_conv_transpose2d", "gconv2d_reference"]


def filter_bank(weight: torch.Tensor, group: Union[Group, str], in_group: Union[Group, str]) -> torch.Tensor:
    """``F[o, g, i, s] = act(g, w[o, i, t(g, s)])`` with ``t(g, s) = index(g⁻¹ s)``.

    Args:
        weight: base weight ``(C_out, C_in, S_in, kh, kw)``.
        group, in_group: :class:`~gconv_triton.groups.Group` objects or names (``"p4"``, ``"z2"``).
    Returns:
        the bank ``(C_out, S_out, C_in, S_in, kh, kw)``; flatten to ``(C_out·S_out, C_in·S_in, kh, kw)`` for
        ``F.conv2d``.  One ``index_select`` of the flattened weight (its backward one ``index_add_``).
    """
    group, in_group = get_group(group, "group"), get_group(in_group, "in_group")
    # A traced graph holds the index as a constant for this weight shape, as a traced module's parameters keep it.
    index = bank_index(group, in_group, concrete_shape(weight, quiet=True), weight.device)
    return weight.reshape(-1).index_select(0, index.flatten()).view(index.shape)


# (id(group), id(in_group), weight shape, device) -> (group, in_group, index): keyed by identity, not by
# Group.__hash__, which reads the Cayley table (data-dependent under export tracing); the groups are kept alive
# with the entry, so their ids stay theirs.
_BANK_INDEX: dict = {}


def bank_index(group: Group, in_group: Group, weight_shape: tuple, device: torch.device) -> torch.Tensor:
    """Where each entry of the bank ``(C_out, S_out, C_in, S_in, kh, kw)`` reads the flattened base weight of
    ``weight_shape``: the gather of :func:`filter_bank` applied to ``arange``, built once per shape and device
    (under :func:`untraced`, so that whatever traces the first call, the cache holds a real tensor and a traced
    graph holds it as one constant)."""
    key = (id(group), id(in_group), weight_shape, device)
    entry = _BANK_INDEX.get(key)
    if entry is None:
        with untraced():
            entry = _BANK_INDEX[key] = (group, in_group, _bank_index(group, in_group, weight_shape).to(device))
    return entry[2]


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Build a cached tensor from real tensors, unrecorded, whatever traces the caller.

    * ``torch.onnx.export`` / ``torch.export`` run the model on fake tensors, which the cache must not keep,
      under a mode that records every op: every ``__torch_dispatch__`` mode (fake tensors, graph recording,
      functionalization) is off for the block, so the exported graph holds the cached tensor as one constant
      whether or not the cache was warm, not the ops that built it.
    * ``torch.jit.trace`` records every op: its tracing state is cleared for the block, so that the graph holds
      the cached tensor as one constant whether or not the cache was warm (else the tracer's check that two
      invocations give the same graph fails).  Only while a trace records (its state is set): elsewhere the
      state is left alone, as it must be where PyTorch runs an op's implementation with the tracer's dispatch
      key excluded (``NoTracerDispatchMode``: inside a ``__torch_dispatch__`` mode, as a ``torch.compile``\\ d
      graph runs its custom ops), where setting it at all, even to None, is an internal assert.
    """
    from torch.utils._python_dispatch import _disable_current_modes

    tracing = torch._C._get_tracing_state()
    if tracing is not None:
        torch._C._set_tracing_state(None)
    try:
        with _disable_current_modes():
            yield
    finally:
        if tracing is not None:
            torch._C._set_tracing_state(tracing)


def _bank_index(group: Group, in_group: Group, weight_shape: tuple) -> torch.Tensor:
    c_out, c_in, s_in, kh, kw = weight_shape
    t = group.stabilizer_index(in_group)                                 # (S_out, S_in)
    selected = torch.arange(c_out * c_in * s_in * kh * kw).view(weight_shape)[:, :, t]
    # act(g, f)[dest[g, t]] = f[t], i.e. read f at source = dest⁻¹.
    source = torch.argsort(group.tap_destinations((kh, kw)), dim=1)     # (S_out, T)
    index = source[None, None, :, None, :].expand(c_out, c_in, -1, s_in, -1)
    bank = torch.gather(selected.flatten(-2), -1, index).unflatten(-1, (kh, kw))
    return bank.permute(0, 2, 1, 3, 4, 5).contiguous()


def flat_bank(weight: torch.Tensor, group: Group, in_group: Group, repeats: int = 1) -> torch.Tensor:
    """The bank flattened for ``F.conv2d``: ``(repeats·C_out·S_out, C_in·S_in, kh, kw)``; ``repeats`` copies of
    ``weight`` along the output channels serve a weight shared by every channel group."""
    if repeats != 1:
        weight = weight.repeat(repeats, 1, 1, 1, 1)
    return filter_bank(weight, group, in_group).flatten(0, 1).flatten(1, 2)


def bank_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, group: Group,
                in_group: Group, stride, padding, dilation, groups: int, shared_weight: bool = False) -> torch.Tensor:
    """Group convolution of a 5-D ``input (B, C_in, S_in, H, W)`` by filter bank + ``F.conv2d``; ``padding`` is
    ``(top, bottom, left, right)``, the rest as :func:`~gconv_triton.functional.gconv2d`.  Returns
    ``(B, C_out, S_out, H_out, W_out)``.  Differentiable by autograd (one ``convolution_backward`` for both
    gradients, the bank's gather scatter-added back onto the weight)."""
    repeats = groups if shared_weight else 1  # one weight slice shared by every channel group
    bank = flat_bank(weight, group, in_group, repeats)
    if bias is not None:
        bias = bias.repeat(repeats).repeat_interleave(group.order)
    x = input.flatten(1, 2)
    top, bottom, left, right = padding
    if top != bottom or left != right:
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    y = F.conv2d(x, bank, bias, stride=stride, padding=(top, left), dilation=dilation, groups=groups)
    return y.unflatten(1, (-1, group.order))


def bank_conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, output_size, *, group: Group, in_group: Group,
                          stride, padding, dilation, groups: int) -> torch.Tensor:
    """The adjoint of :func:`bank_conv2d` (``padding`` symmetric, ``(top, bottom, left, right)``): maps
    ``input (B, C_out, S_out, H', W')`` to ``output_size (B, C_in, S_in, H, W)`` by filter bank +
    ``F.conv_transpose2d``, whose ``output_padding`` restores what the conv's floor division dropped."""
    top, bottom, left, right = padding
    if (top, left) != (bottom, right):
        raise ValueError(f"padding: expected a symmetric padding for the transposed convolution, got {padding}")
    kh, kw = weight.shape[-2:]
    natural = [(n - 1) * s - 2 * p + d * (k - 1) + 1
               for n, s, p, d, k in zip(input.shape[-2:], stride, (top, left), dilation, (kh, kw))]
    output_padding = (output_size[-2] - natural[0], output_size[-1] - natural[1])
    y = F.conv_transpose2d(input.flatten(1, 2), flat_bank(weight, group, in_group), None, stride, (top, left),
                           output_padding, groups, dilation)
    return y.unflatten(1, tuple(output_size[1:3]))


def gconv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      spec: ConvSpec) -> torch.Tensor:
    """Group convolution by filter bank + ``F.conv2d``.  Shapes as in :class:`~gconv_triton._spec.ConvSpec`;
    returns ``(B, C_out, S_out, H_out, W_out)``."""
    return bank_conv2d(as_5d(input, spec), weight, bias, group=spec.group, in_group=spec.in_group,
                       stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups,
                       shared_weight=spec.weight_groups != spec.groups)
