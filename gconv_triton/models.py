"""Small model builders: a G-CNN on any group (``"z2"`` gives the ordinary CNN of the same architecture) and a
width search that puts models on different groups at the same parameter budget."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from .groups import Group, get_group
from .nn import GroupBatchNorm, GroupConv2d, GroupMaxPool2d, GroupPool, gcnn_width

__all__ = ["SmallGCNN", "count_parameters", "widths_for_budget", "GroupResNet", "GroupBasicBlock",
           "p4m_resnet18", "p4m_resnet44"]


def _conv3x3(group: Group, c_in: int, c_out: int, lifting: bool, **factory) -> nn.Module:
    """A 3×3, stride 1, padding 1 convolution: exactly equivariant on any square input."""
    if group.is_trivial:
        return nn.Conv2d(c_in, c_out, 3, padding=1, **factory)
    return GroupConv2d(c_in, c_out, 3, group=group, in_group="z2" if lifting else group, padding=1, **factory)


class SmallGCNN(nn.Module):
    """conv-ReLU, conv-ReLU, 2×2 max pool, conv-ReLU, max over the group axis, mean over the plane, linear.

    Args:
        group: the convolutions' group (``"p4"``, ``"p4m"``, ... or a :class:`Group`); ``"z2"`` uses ``nn.Conv2d``.
        widths: G-channels of the three convolutions (a p4 layer of width ``c`` has ``4·c`` planar channels).
        in_channels, num_classes: image channels and logits.

    Shapes: ``(B, in_channels, H, W)`` -> logits ``(B, num_classes)``.  For a non-trivial group the logits are
    exactly invariant to the group's rotations/flips about the image centre when ``H == W`` is even (the 2×2
    pool windows then tile the image, so a rotated image is pooled over rotated windows).
    """

    def __init__(self, group: Union[str, Group] = "p4", widths: Sequence[int] = (8, 8, 16), in_channels: int = 1,
                 num_classes: int = 10, device=None, dtype=None):
        super().__init__()
        self.group = get_group(group, "group")
        widths = tuple(widths)
        if len(widths) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ValueError(f"widths: expected three positive ints, got {widths!r}")
        factory = dict(device=device, dtype=dtype)
        layers = []
        for i, (c_in, c_out) in enumerate(zip((in_channels, *widths), widths)):
            if i == 2:
                layers.append(GroupMaxPool2d(2))
            layers += [_conv3x3(self.group, c_in, c_out, lifting=i == 0, **factory), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.group_pool = nn.Identity() if self.group.is_trivial else GroupPool("max")
        self.classifier = nn.Linear(widths[-1], num_classes, **factory)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = self.group_pool(self.features(input))   # (B, C, H, W)
        return self.classifier(y.mean(dim=(-2, -1)))


def count_parameters(model: nn.Module) -> int:
    """Number of learnable scalars (for a G-CNN: the base weights and biases, never the filter bank)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def widths_for_budget(group: Union[str, Group], budget: int, ratio: Sequence[int] = (1, 1, 2),
                      **kwargs) -> tuple[int, ...]:
    """The widths ``round(scale · ratio)`` whose :class:`SmallGCNN` on ``group`` has the parameter count closest to
    ``budget`` (scales in steps of 1/4, so groups of different orders can meet the same budget)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget: expected a positive int, got {budget!r}")
    best, best_gap = None, None
    scale = 0.25
    while True:
        widths = tuple(max(1, round(scale * r)) for r in ratio)
        # Built on the meta device: counts parameters without allocating or initialising them.
        count = count_parameters(SmallGCNN(group, widths, device="meta", **kwargs))
        if best_gap is None or abs(count - budget) < best_gap:
            best, best_gap = widths, abs(count - budget)
        if count > budget:
            return best
        scale += 0.25


# ----------------------------------------------------------------------------------------------- ResNets
class GroupBasicBlock(nn.Module):
    """ResNet basic block on group feature maps: conv3x3-BN-ReLU-conv3x3-BN, plus the identity (or a strided
    1×1 conv-BN when the shape changes), then ReLU.  ``(B, c_in, S, H, W)`` -> ``(B, c_out, S, H', W')``."""

    def __init__(self, group: Group, c_in: int, c_out: int, stride: int = 1, **factory):
        super().__init__()

        self.conv1 = GroupConv2d(c_in, c_out, 3, group=group, in_group=group, stride=stride, padding=1, bias=False,
                                 **factory)
        self.bn1 = GroupBatchNorm(c_out, **factory)
        self.conv2 = GroupConv2d(c_out, c_out, 3, group=group, in_group=group, padding=1, bias=False, **factory)
        self.bn2 = GroupBatchNorm(c_out, **factory)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                GroupConv2d(c_in, c_out, 1, group=group, in_group=group, stride=stride, bias=False, **factory),
                GroupBatchNorm(c_out, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class GroupResNet(nn.Module):
    """A ResNet of :class:`GroupBasicBlock` stages on ``group`` (Cohen & Welling's P4M-ResNet family).

    Args:
        group: ``"p4m"``, ``"p4"``, ... (``"z2"`` gives the plain CNN of the same architecture, on our kernels).
        blocks: basic blocks per stage; the first stage keeps the resolution, each later one halves it.
        widths: the *CNN* widths of the stages, turned into G-channel widths by
            :func:`~gconv_triton.nn.conv.gcnn_width` (``equal="params"``: ``N/√S``; ``"compute"``: ``N/S``), or
            G-channel widths as they are with ``equal=None``.
        stem: ``"cifar"`` (4×4 lifting conv, padding 2: ``H -> H + 1``) or ``"imagenet"`` (8×8 stride-2 lifting
            conv, padding 4: ``H -> H/2 + 1``, and a 3×3 stride-2 max pool: ``-> H/4 + 1``).
        in_channels, num_classes, device, dtype: image channels, logits, factory arguments.

    Shapes: ``(B, in_channels, H, W)`` -> logits ``(B, num_classes)``, pooled by the mean over the group axis and
    the plane, so exactly invariant to ``group`` in eval mode when every strided layer is exact.  A stride-2
    block (3×3, padding 1, and a 1×1 shortcut) is exact on odd sizes only, so the stems turn the even sizes
    datasets come in into odd ones, where the usual 3×3 (CIFAR) and 7×7 (ImageNet) stems leave them even: with
    ``n`` stride-2 stages (``len(blocks) - 1``) the model is exactly invariant on square inputs whose side is a
    multiple of ``2**n`` (``"cifar"``: CIFAR's 32 -> 33 -> 17 -> 9 for three stages) or of ``2**(n + 2)``
    (``"imagenet"``: 224 -> 113 -> 57 -> 29 -> 15 -> 8 for four).  Other sizes train fine but are equivariant
    only up to the sub-sampling grid (each inexact layer warns once per input size).
    """

    def __init__(self, group: Union[str, Group] = "p4m", blocks: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), equal: Union[str, None] = "params",
                 stem: str = "cifar", in_channels: int = 3, num_classes: int = 10, device=None, dtype=None):
        super().__init__()

        self.group = get_group(group, "group")
        blocks, widths = tuple(blocks), tuple(widths)
        if len(blocks) != len(widths) or not blocks or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ValueError(f"blocks: expected one positive int per stage of widths {widths!r}, got {blocks!r}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem: expected 'cifar' or 'imagenet', got {stem!r}")
        self.widths = widths if equal is None else tuple(gcnn_width(w, self.group, equal) for w in widths)
        factory = dict(device=device, dtype=dtype)
        c0 = self.widths[0]
        # Even kernels with symmetric padding: exact, and they make an even input size odd (see above).
        if stem == "cifar":
            layers = [GroupConv2d(in_channels, c0, 4, group=self.group, in_group="z2", padding=2, bias=False,
                                  **factory)]
        else:
            layers = [GroupConv2d(in_channels, c0, 8, group=self.group, in_group="z2", stride=2, padding=4,
                                  bias=False, **factory)]
        layers += [GroupBatchNorm(c0, **factory), nn.ReLU()]
        if stem == "imagenet":
            layers.append(GroupMaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*layers)
        stages, c_in = [], c0
        for i, (n, c_out) in enumerate(zip(blocks, self.widths)):
            stage = [GroupBasicBlock(self.group, c_in, c_out, 1 if i == 0 else 2, **factory)]
            stage += [GroupBasicBlock(self.group, c_out, c_out, 1, **factory) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stages(self.stem(x))
        return self.fc(y.mean(dim=(2, 3, 4)))  # invariant: mean over the group axis and the plane


def p4m_resnet18(num_classes: int = 1000, equal: str = "params", stem: str = "imagenet", **kwargs) -> GroupResNet:
    """p4m ResNet-18: stages of (2, 2, 2, 2) basic blocks at CNN widths (64, 128, 256, 512) -> G-channel widths
    (23, 45, 91, 181) at equal parameters (``equal="compute"``: (8, 16, 32, 64)).  ImageNet stem by default:
    exactly invariant on square inputs whose side is a multiple of 32 (ImageNet's 224 included); with
    ``stem="cifar"``, a multiple of 8."""
    return GroupResNet("p4m", (2, 2, 2, 2), (64, 128, 256, 512), equal=equal, stem=stem,
                       num_classes=num_classes, **kwargs)


def p4m_resnet44(num_classes: int = 10, equal: str = "params", **kwargs) -> GroupResNet:
    """p4m ResNet-44 (CIFAR): stages of (7, 7, 7) basic blocks at CNN widths (32, 64, 128) -> G-channel widths
    (11, 23, 45) at equal parameters, Cohen & Welling's (2016) P4M-ResNet44, with a 4×4 stem that makes it
    exactly invariant on CIFAR's 32×32 (32 -> 33 -> 17 -> 9), and on any square input whose side is a multiple
    of 4."""
    return GroupResNet("p4m", (7, 7, 7), (32, 64, 128), equal=equal, stem="cifar", num_classes=num_classes,
                       **kwargs)
