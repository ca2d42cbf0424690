"""Building blocks for real G-CNNs: batch norm on group feature maps, the transposed group convolution, width
rules, and export to plain ``torch.nn`` convolutions (inference stacks, ONNX).

Shapes follow the package: group feature maps are ``(B, C, S, H, W)`` (``C`` G-channels, ``S = |stabilizer|``),
flattened channel index ``c·S + s``.
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Union

import torch
from torch import nn

from ._library import _compiling, conv_input_grad
from ._spec import _pair, _positive_int, concrete_shape, make_spec, resolve_geometry
from .exactness import inexact_reasons_transposed, warn_if_inexact
from .groups import Group, get_group
from .modules import (GroupConv2d, _as_group_map, _kernel_pair, _optional_group, check_channels, check_group_pair,
                      reset_conv_parameters)
from .reference import filter_bank

__all__ = ["GroupBatchNorm", "GroupConvTranspose2d", "gconv_transpose2d", "gcnn_width", "export_conv",
           "export_model", "ExportedGroupConv"]


# ------------------------------------------------------------------------------------------------ batch norm
class GroupBatchNorm(nn.Module):
    """Batch normalization of group feature maps ``(B, C, S, H, W)``: one mean and variance per G-channel ``c``,
    over the batch, the group axis and the plane, and one affine ``(weight, bias)`` per G-channel.

    Sharing the statistics over the group axis is what keeps it equivariant (a rotation permutes the group axis
    and the plane, which leaves those statistics unchanged); a per-planar-channel ``BatchNorm2d`` on the
    flattened ``(B, C·S, H, W)`` map would not be.  Also takes plane feature maps ``(B, C, H, W)`` (per-channel
    statistics over B, H, W) and, given ``group``, GrouPy's flattened group maps ``(B, C·S, H, W)`` (normalized as
    the 5-D map, returned flat).

    The statistics are computed by a child ``norm``, an ``nn.BatchNorm3d`` that always receives the 5-D map
    (planes as ``(B, C, 1, H, W)``); ``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``, ``eps``, ``momentum``, ``affine`` and ``track_running_stats`` are the child's, and
    running statistics, ``momentum`` and ``eval()`` behave as in ``torch.nn.BatchNorm3d``.  So
    ``nn.SyncBatchNorm.convert_sync_batchnorm``, which replaces every ``_BatchNorm`` by a plain ``SyncBatchNorm``,
    converts the child for multi-GPU training and leaves this layer, with its reading of the input, in place.
    State-dict keys are ``norm.weight``, ``norm.running_mean``, ...; those of the earlier ``nn.BatchNorm3d``
    subclass (``weight``, ``running_mean``, ...) still load.

    Args:
        num_features: ``C``, the number of G-channels.
        eps, momentum, affine, track_running_stats, device, dtype: as in ``torch.nn.BatchNorm3d``.
        group: the maps' group, for flattened input (a 4-D input with ``C·S`` channels); 5-D input must then
            have ``S = |group|``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *,
                 group: Union[str, Group, None] = None):
        super().__init__()
        self.group = _optional_group(group)
        self.norm = nn.BatchNorm3d(_positive_int(num_features, "num_features"), eps, momentum, affine,
                                   track_running_stats, device=device, dtype=dtype)

    def __setstate__(self, state):
        if "norm" not in state.get("_modules", {}):  # pickled as the nn.BatchNorm3d subclass it used to be
            norm = nn.BatchNorm3d.__new__(nn.BatchNorm3d)
            norm.__setstate__({k: v for k, v in state.items() if k != "group"})
            nn.Module.__init__(self)
            self.training, self.group, self.norm = norm.training, state.get("group"), norm
            return
        super().__setstate__(state)
        self.__dict__.setdefault("group", None)  # pickled before group existed

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if prefix + name in state_dict:  # a state dict of the earlier nn.BatchNorm3d subclass
                state_dict[prefix + "norm." + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_running_stats(self) -> None:
        self.norm.reset_running_stats()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (4, 5):
            raise ValueError(f"input: expected a group feature map (B, C, S, H, W) or a plane map (B, C, H, W), "
                             f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}")
        c, group = self.num_features, self.group
        channels = concrete_shape(input, quiet=True)[1]
        if input.dim() == 5:
            _as_group_map(input, group, type(self).__name__)  # S against the group, when given
        elif group is not None and group.order > 1 and channels == c * group.order:
            return self.norm(_as_group_map(input, group, type(self).__name__)).flatten(1, 2)
        if channels != c:
            flat = ""
            if input.dim() == 4 and group is not None:
                flat = f" or {c * group.order} (C*S, flattened {group.name} map)"
            elif input.dim() == 4 and channels % c == 0:
                flat = (f"; a flattened group map (B, C*S, H, W) with S = {channels // c} needs "
                        f"GroupBatchNorm({c}, group=...)")
            raise ValueError(f"input: expected {c} channels (num_features) at dim 1{flat}, got shape "
                             f"{tuple(input.shape)}")
        return self.norm(input) if input.dim() == 5 else self.norm(input.unsqueeze(2)).squeeze(2)

    def extra_repr(self) -> str:
        return f"{self.num_features}" + (f", group={self.group.name}" if self.group is not None else "")


def _norm_attribute(name: str, settable: bool) -> property:
    """``GroupBatchNorm.<name>``: the child ``norm``'s attribute (also after it became a ``SyncBatchNorm``)."""
    def get(self):
        return getattr(self.norm, name)

    def set(self, value):
        setattr(self.norm, name, value)

    return property(get, set if settable else None, doc=f"``norm.{name}``")


for _name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
    setattr(GroupBatchNorm, _name, _norm_attribute(_name, settable=True))
for _name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
    setattr(GroupBatchNorm, _name, _norm_attribute(_name, settable=False))
del _name


# ------------------------------------------------------------------------------------- transposed convolution
def _output_padding(value, stride, dilation) -> tuple[int, int]:
    pair = _pair(value, "output_padding")
    for p, s, d in zip(pair, stride, dilation):
        if p < 0 or p >= max(s, d):
            raise ValueError(f"output_padding: expected values in [0, max(stride, dilation)) = [0, {max(s, d)}), "
                             f"got {value!r} (stride {stride}, dilation {dilation})")
    return pair


def gconv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                      group: Union[Group, str], out_group: Union[Group, str, None] = None, stride=1, padding=0,
                      output_padding=0, groups: int = 1, dilation=1) -> torch.Tensor:
    """Transposed group convolution: the adjoint of the group convolution from ``out_group`` maps to ``group``
    maps with the same ``weight`` (as ``F.conv_transpose2d`` is the adjoint of ``F.conv2d``).

    Args:
        input: ``(B, C_in, S, H, W)`` (``S = |group|``) or flattened ``(B, C_in·S, H, W)``.
        weight: ``(C_in, C_out / groups, S_out, kh, kw)``, ``S_out = |out_group|``: the base weight of the matching
            convolution (``nn.ConvTranspose2d``'s ``(in, out / groups, kh, kw)`` layout, plus the group axis).
        bias: ``(C_out,)`` or None.
        out_group: the output's group: ``group`` (default, e.g. a U-Net decoder) or ``"z2"`` (projects to planes).
        stride, padding (int or pair), output_padding, groups, dilation: as ``F.conv_transpose2d``.
    Returns:
        ``(B, C_out, S_out, H_out, W_out)`` with ``H_out = (H−1)·stride − 2·padding + dilation·(kh−1) +
        output_padding + 1``.  Exactly equivariant when ``output_padding`` is 0 (at any stride; with stride 2,
        ``kernel_size=4, padding=1`` doubles the size exactly), see ``docs/exactness.md``.

    Runs the input-gradient kernel of the matching convolution; its gradients are the forward kernel (input) and
    the weight-gradient kernel with ``dy`` and ``x`` swapped (weight), so nothing is materialized here either.
    """
    group = get_group(group, "group")
    out_group = group if out_group is None else get_group(out_group, "out_group")
    if isinstance(padding, str):
        raise ValueError(f"padding: expected an int or a pair for a transposed convolution, got {padding!r}")
    if not isinstance(input, torch.Tensor) or input.dim() not in (4, 5):
        raise ValueError(f"input: expected (B, C_in, S, H, W) or (B, C_in·S, H, W), got "
                         f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
    x = input if input.dim() == 5 else input.unflatten(1, (-1, group.order))
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise ValueError(f"weight: expected a 5-D tensor (C_in, C_out/groups, S_out, kh, kw), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    stride, dilation, pad = _pair(stride, "stride"), _pair(dilation, "dilation"), _pair(padding, "padding")
    out_pad = _output_padding(output_padding, stride, dilation)
    # ints, also under torch.jit.trace (which records sizes as tensors): the op takes the output size as ints, so
    # a traced graph is specialised to the input's size (torch's TracerWarning says so), not to the weight's
    shape, (_, c_out_g, _, kh, kw) = concrete_shape(x), concrete_shape(weight, quiet=True)
    size = [shape[0], c_out_g * groups, out_group.order]
    size += [(n - 1) * s - 2 * p + d * (k - 1) + o + 1
             for n, s, p, d, k, o in zip(shape[-2:], stride, pad, dilation, (kh, kw), out_pad)]
    geometry = dict(group=group, in_group=out_group, stride=stride, padding=pad, dilation=dilation, groups=groups)
    if not _compiling():  # validate against the matching convolution before anything launches
        if min(size[-2:]) < 1:
            raise ValueError(f"input: spatial size {tuple(x.shape[-2:])} gives an output of {tuple(size[-2:])}; "
                             f"expected at least 1x1 (less padding)")
        spec = make_spec(weight.new_empty(()).expand(size), weight, None, **geometry)
        if (spec.groups * spec.out_channels, spec.s_out, spec.out_height, spec.out_width) != shape[1:]:
            raise ValueError(f"input: expected shape (B, {spec.groups * spec.out_channels}, {spec.s_out}, "
                             f"{spec.out_height}, {spec.out_width}) for weight {tuple(weight.shape)} and group "
                             f"{group.name}, got {tuple(x.shape)}")
        if bias is not None and (not isinstance(bias, torch.Tensor) or concrete_shape(bias, quiet=True) != (size[1],)):
            raise ValueError(f"bias: expected shape ({size[1]},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    y = conv_input_grad(x, weight, size, **geometry)
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1, 1)


class GroupConvTranspose2d(nn.Module):
    """Transposed group convolution (U-Net decoders): see :func:`gconv_transpose2d`.

    Args:
        in_channels, out_channels: G-channels of the input (on ``group``) and output (on ``out_group``).
        kernel_size, stride, padding, output_padding, groups, bias, dilation, device, dtype: as
            ``torch.nn.ConvTranspose2d`` (padding an int or a pair).
        group: the input's group; out_group: the output's (default ``group``; ``"z2"`` projects to planes).

    Parameters: ``weight (in_channels, out_channels / groups, S_out, kh, kw)``, ``bias (out_channels,)``.
    A nonzero ``output_padding`` makes the layer inexact (one :class:`~gconv_triton.EquivarianceWarning` per
    input size): for a U-Net decoder that doubles the size use ``kernel_size=4, stride=2, padding=1``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, group: Union[str, Group] = "p4",
                 out_group: Union[str, Group, None] = None, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = check_channels(in_channels, out_channels, groups)
        self.group, self.out_group = check_group_pair(group, out_group, "out_group")
        self.kernel_size = _kernel_pair(kernel_size)
        self.group.tap_destinations(self.kernel_size)
        if isinstance(padding, str):
            raise ValueError(f"padding: expected an int or a pair, got {padding!r}")
        self.stride, self.dilation, (top, _, left, _) = resolve_geometry(self.kernel_size, stride, padding, dilation)
        self.padding = (top, left)
        self.output_padding = _output_padding(output_padding, self.stride, self.dilation)
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels // groups, self.out_group.order,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.ConvTranspose2d``'s initialisation with fan-in ``C_out/groups · S_out · kh · kw``."""
        reset_conv_parameters(self.weight, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = gconv_transpose2d(input, self.weight, self.bias, group=self.group, out_group=self.out_group,
                              stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                              groups=self.groups, dilation=self.dilation)
        warn_if_inexact(self, input)  # once per input size: output_padding != 0 is off-centre
        return y

    def _inexact_reasons(self, size: tuple[int, int]) -> tuple[str, list[str]]:
        return self.group.name, inexact_reasons_transposed(self.group, size, self.kernel_size, self.stride,
                                                           self.padding, self.output_padding, self.dilation)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, group={self.group.name}, "
             f"out_group={self.out_group.name}, stride={self.stride}, padding={self.padding}")
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def export(self) -> nn.ConvTranspose2d:
        """A plain ``torch.nn.ConvTranspose2d`` holding the materialized bank: ``(B, C_in·S, H, W)`` ->
        ``(B, C_out·S_out, H', W')`` (flatten/unflatten the group axis as for :meth:`GroupConv2d.export`)."""
        return export_conv(self)


# --------------------------------------------------------------------------------------------------- widths
def gcnn_width(cnn_width: int, group: Union[Group, str], equal: str = "params") -> int:
    """The G-channel width that matches a CNN layer of ``cnn_width`` channels.

    A group-to-group layer of width ``C`` has ``C²·S·k²`` parameters and does ``C²·S²·k²`` multiply-adds per
    pixel (``S = |group|``), against ``N²·k²`` for both in a CNN layer of width ``N``.  So ``equal="params"``
    gives ``N / √S`` (Cohen & Welling's choice: p4m ResNet-44 widths 11, 23, 45 for 32, 64, 128) and
    ``equal="compute"`` gives ``N / S``; rounded to the nearest int, at least 1.
    """
    _positive_int(cnn_width, "cnn_width")
    order = get_group(group, "group").order
    if equal == "params":
        width = cnn_width / math.sqrt(order)
    elif equal == "compute":
        width = cnn_width / order
    else:
        raise ValueError(f"equal: expected 'params' or 'compute', got {equal!r}")
    return max(1, round(width))


# --------------------------------------------------------------------------------------------------- export
_ACTIVATION_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


@torch.no_grad()
def export_conv(module: Union[GroupConv2d, GroupConvTranspose2d]) -> nn.Module:
    """The plain ``nn.Conv2d`` (``nn.ConvTranspose2d`` for the transposed layer) that computes ``module`` on
    flattened maps, holding the materialized filter bank ``(C_out·S_out, C_in·S_in / groups, kh, kw)`` and the
    bias repeated over the group axis; an activation becomes ``nn.Sequential(conv, nn.ReLU/SiLU/GELU())``.

    Reshape: a 5-D input ``x (B, C, S, H, W)`` goes in as ``x.flatten(1, 2)`` (channel ``c·S + s``), and the output
    ``(B, C'·S', H', W')`` comes back to 5-D by ``y.unflatten(1, (C', S'))``; :func:`export_model` does both.
    """
    factory = dict(device=module.weight.device, dtype=module.weight.dtype)
    bias = module.bias is not None
    k = module.kernel_size
    if isinstance(module, GroupConvTranspose2d):
        bank = filter_bank(module.weight, module.group, module.out_group).flatten(0, 1).flatten(1, 2)
        conv = nn.ConvTranspose2d(bank.shape[0], bank.shape[1] * module.groups, k, stride=module.stride,
                                  padding=module.padding, output_padding=module.output_padding,
                                  groups=module.groups, bias=bias, dilation=module.dilation, **factory)
        order = module.out_group.order
    elif isinstance(module, GroupConv2d):
        bank = filter_bank(module.weight, module.group, module.in_group).flatten(0, 1).flatten(1, 2)
        conv = nn.Conv2d(bank.shape[1] * module.groups, bank.shape[0], k, stride=module.stride,
                         padding=module.padding, dilation=module.dilation, groups=module.groups, bias=bias,
                         padding_mode=module.padding_mode, **factory)
        order = module.group.order
    else:
        raise TypeError(f"module: expected a GroupConv2d or GroupConvTranspose2d, got {type(module).__name__}")
    conv.weight.copy_(bank)
    if bias:
        conv.bias.copy_(module.bias.repeat_interleave(order))
    activation = getattr(module, "activation", "none")
    return conv if activation == "none" else nn.Sequential(conv, _ACTIVATION_MODULES[activation]())


class ExportedGroupConv(nn.Module):
    """A layer from :func:`export_conv` between the reshapes: ``(B, C, S, H, W)`` (or already flat 4-D) in,
    ``(B, C', S', H', W')`` out, like the group layer it replaces.  Plain torch ops only."""

    def __init__(self, conv: nn.Module, out_channels: int, out_order: int):
        super().__init__()
        self.conv = conv
        self.out_channels = out_channels
        self.out_order = out_order

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input.flatten(1, 2) if input.dim() == 5 else input
        return self.conv(x).unflatten(1, (self.out_channels, self.out_order))


def export_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`~gconv_triton.modules.GroupConv2d` and :class:`GroupConvTranspose2d`
    replaced by an :class:`ExportedGroupConv` around its :func:`export_conv`, and every ``TapConv1d``/``TapConv2d``
    by an :class:`~gconv_triton.tap_modules.ExportedTapConv` (unfold, tap, reduce): the same function, built from
    standard PyTorch operators (``torch.export``, ONNX, TensorRT), no gconv_triton op left.  ``model`` is
    unchanged.  A ``ValueError`` naming the layer when a user tap's ``torch_fn`` is not made of standard
    operators."""
    from .tap_modules import ExportedTapConv, _TapConvNd

    for name, child in model.named_modules():  # before copying: name the first layer that cannot be exported
        if isinstance(child, _TapConvNd):
            child.check_standard_ops("export_model", f"layer {name!r}" if name else "the model")
    out = copy.deepcopy(model)

    def exported(layer: nn.Module) -> Optional[nn.Module]:
        if isinstance(layer, (GroupConv2d, GroupConvTranspose2d)):
            order = layer.group.order if isinstance(layer, GroupConv2d) else layer.out_group.order
            return ExportedGroupConv(export_conv(layer), layer.out_channels, order)
        if isinstance(layer, _TapConvNd):
            return ExportedTapConv(layer)
        return None

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            new = exported(child)
            if new is not None:
                setattr(parent, name, new)
            else:
                replace(child)

    new = exported(out)
    if new is not None:
        return new
    replace(out)
    return out
