"""Export to plain ``torch.nn``: every group convolution as an ``nn.Conv2d`` / ``nn.ConvTranspose2d`` holding its
filter bank, every tap convolution as standard operators, so ``torch.export``, ONNX and TensorRT see no
gconv_triton op."""

from __future__ import annotations

import copy
from typing import Optional, Union

import torch
from torch import nn

from .nn.conv import GroupConv2d, GroupConvTranspose2d
from .nn.tap_conv import ExportedTapConv, TapConv1d, TapConv2d

__all__ = ["export_conv", "export_model", "ExportedGroupConv"]

TAP_LAYERS = (TapConv1d, TapConv2d)


def export_conv(module: Union[GroupConv2d, GroupConvTranspose2d]) -> nn.Module:
    """The plain ``nn.Conv2d`` (``nn.ConvTranspose2d`` for the transposed layer) that computes ``module`` on
    flattened maps, holding the materialized filter bank ``(C_out·S_out, C_in·S_in / groups, kh, kw)`` and the
    bias repeated over the group axis; an activation becomes ``nn.Sequential(conv, nn.ReLU/SiLU/GELU())``.

    Reshape: a 5-D input ``x (B, C, S, H, W)`` goes in as ``x.flatten(1, 2)`` (channel ``c·S + s``), and the output
    ``(B, C'·S', H', W')`` comes back to 5-D by ``y.unflatten(1, (C', S'))``; :func:`export_model` does both.
    """
    if not isinstance(module, (GroupConv2d, GroupConvTranspose2d)):
        raise TypeError(f"module: expected a GroupConv2d or GroupConvTranspose2d, got {type(module).__name__}")
    return module.export()


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
    """A copy of ``model`` with every :class:`~gconv_triton.nn.GroupConv2d` and :class:`GroupConvTranspose2d`
    replaced by an :class:`ExportedGroupConv` around its :func:`export_conv`, and every ``TapConv1d``/``TapConv2d``
    by an :class:`~gconv_triton.nn.ExportedTapConv` (unfold, tap, reduce): the same function, built from
    standard PyTorch operators (``torch.export``, ONNX, TensorRT), no gconv_triton op left.  ``model`` is
    unchanged.  A ``ValueError`` naming the layer when a user tap's ``torch_fn`` is not made of standard
    operators."""
    for name, child in model.named_modules():  # before copying: name the first layer that cannot be exported
        if isinstance(child, TAP_LAYERS):
            child.check_standard_ops("export_model", f"layer {name!r}" if name else "the model")
    out = copy.deepcopy(model)

    def exported(layer: nn.Module) -> Optional[nn.Module]:
        if isinstance(layer, (GroupConv2d, GroupConvTranspose2d)):
            order = layer.group.order if isinstance(layer, GroupConv2d) else layer.out_group.order
            return ExportedGroupConv(export_conv(layer), layer.out_channels, order)
        if isinstance(layer, TAP_LAYERS):
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
