"""Argument normalisers shared by every layer and function: ints and int tuples, channel counts, the pair of groups
on a layer's two sides, padding and padding modes, activations; and the names they accept.

Every error names the argument, the value given and what was expected (``docs/errors.md``): ``TypeError`` for a
wrong type, ``ValueError`` for a wrong value.
"""

from __future__ import annotations

from typing import Optional

from .groups import Group, get_group

#: the activations the group convolution fuses after its bias (``None`` is ``"none"``)
ACTIVATIONS = ("none", "relu", "silu", "gelu")
#: the padding modes of ``torch.nn.Conv2d`` (each is exactly equivariant: it commutes with rotations and flips)
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: a tap convolution's: torch's, and ``"ignore"`` (window positions outside the image left out of the reduction)
TAP_PADDING_MODES = ("zeros", "ignore") + PADDING_MODES[1:]

_TUPLE_WORDS = {1: "a 1-tuple of ints", 2: "a pair of ints"}


def int_tuple(value, n: int, name: str, minimum: Optional[int] = None) -> tuple[int, ...]:
    """An int (repeated ``n`` times) or an ``n``-tuple/list of ints (not bools: a shifted positional argument),
    each ``>= minimum`` when given -> the ``n``-tuple.  Errors show ``value`` as given."""
    words = _TUPLE_WORDS.get(n, f"a tuple of {n} ints")
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        raise TypeError(f"{name}: expected an int or {words}, got {value!r}")
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise TypeError(f"{name}: expected an int or {words}, got {value!r}")
    if minimum is not None and min(out) < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {value!r}")
    return out


def pair(value, name: str, minimum: Optional[int] = None) -> tuple[int, int]:
    """An int or a pair of ints -> the pair (see :func:`int_tuple`)."""
    return int_tuple(value, 2, name, minimum)  # type: ignore[return-value]


def single(value, name: str, minimum: int) -> int:
    """An int ``>= minimum`` or a 1-tuple of one (what ``torch.nn.Conv1d`` stores) -> the int."""
    return int_tuple(value, 1, name, minimum)[0]


def kernel_pair(kernel_size) -> tuple[int, int]:
    """``kernel_size`` as a 2-D layer takes it: a positive int or a pair of them."""
    out = pair(kernel_size, "kernel_size")
    if min(out) < 1:
        raise ValueError(f"kernel_size: expected a positive int or a pair of positive ints, got {kernel_size!r}")
    return out


def as_2d_args(stride, padding, dilation):
    """1-D ``stride, padding, dilation`` (checked here, so errors name what the caller passed) -> those of the
    same convolution on a height-1 image."""
    padding = padding if isinstance(padding, str) else (0, single(padding, "padding", 0))
    return (1, single(stride, "stride", 1)), padding, (1, single(dilation, "dilation", 1))


def positive_int(value, name: str) -> int:
    """``value`` as ``nn.Conv2d`` takes a count: an int (not a bool: a shifted positional argument), at least 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def check_channels(in_channels, out_channels, groups) -> tuple[int, int, int]:
    """``in_channels``, ``out_channels`` and ``groups`` as ``nn.Conv2d`` takes them: positive ints, both channel
    counts divisible by ``groups``."""
    in_channels = positive_int(in_channels, "in_channels")
    out_channels = positive_int(out_channels, "out_channels")
    groups = positive_int(groups, "groups")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                         f"divisible by groups ({groups})")
    return in_channels, out_channels, groups


def check_group_pair(group, other, other_name: str) -> tuple[Group, Group]:
    """``group`` and the group on the layer's other side (``in_group`` of a convolution, ``out_group`` of a
    transposed one): the other is ``'z2'`` (a lifting or projecting layer) or ``group`` itself."""
    group = get_group(group, "group")
    other = group if other is None else get_group(other, other_name)
    if not other.is_trivial and other != group:
        side = "output" if other_name == "in_group" else "input"
        raise ValueError(f"{other_name}: expected 'z2' or the {side} group {group.name}, got {other.name}")
    return group, other


def optional_group(group) -> Optional[Group]:
    """``group`` (a name or a :class:`Group`) as a :class:`Group`, or None."""
    return None if group is None else get_group(group, "group")


def check_activation(activation) -> str:
    """``None`` or a name in :data:`ACTIVATIONS` -> the name (``None`` -> ``"none"``)."""
    if activation is None:
        return "none"
    if not isinstance(activation, str):
        raise TypeError(f"activation: expected None or one of {ACTIVATIONS[1:]}, got {activation!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected None or one of {ACTIVATIONS[1:]}, got {activation!r}")
    return activation


def check_padding_mode(padding_mode, allowed: tuple[str, ...] = PADDING_MODES) -> str:
    """``padding_mode`` if it is one of ``allowed`` (:data:`PADDING_MODES` or :data:`TAP_PADDING_MODES`)."""
    if not isinstance(padding_mode, str) or padding_mode not in allowed:
        raise ValueError(f"padding_mode: expected one of {allowed}, got {padding_mode!r}")
    return padding_mode


def resolve_padding(padding, kernel, dilation, stride) -> tuple[int, int, int, int]:
    """``padding`` (an int, a pair, ``"valid"`` or ``"same"``) -> ``(top, bottom, left, right)``; ``"same"``
    puts the odd pixel at the end, as PyTorch, and takes stride 1 only."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding: 'same' is not supported for strided convolutions, got stride={stride}; "
                                 f"expected stride 1 (or an explicit padding)")
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]  # PyTorch puts the odd pixel at the end
            return tuple(out)
        raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding: expected non-negative values, got {padding!r}")
    return (ph, ph, pw, pw)


def output_padding_pair(value, stride, dilation) -> tuple[int, int]:
    """A transposed convolution's ``output_padding``: a pair of values in ``[0, max(stride, dilation))``."""
    out = pair(value, "output_padding")
    for p, s, d in zip(out, stride, dilation):
        if p < 0 or p >= max(s, d):
            raise ValueError(f"output_padding: expected values in [0, max(stride, dilation)) = [0, {max(s, d)}), "
                             f"got {value!r} (stride {stride}, dilation {dilation})")
    return out
