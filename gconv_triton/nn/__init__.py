"""The package's ``nn.Module``\\ s, one file per kind: ``conv`` (group, transposed, plain and shared-kernel
convolutions, and ``gcnn_width``), ``tap_conv`` (tap convolutions), ``pool`` (over the plane and the group axis),
``norm`` (batch norm)."""

from .conv import (Conv1d, Conv2d, GroupConv2d, GroupConvTranspose2d, P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2,
                   SharedKernelConv1d, SharedKernelConv2d, gcnn_width)
from .norm import GroupBatchNorm
from .pool import GroupAvgPool2d, GroupMaxPool2d, GroupPool
from .tap_conv import ExportedTapConv, TapConv1d, TapConv2d

__all__ = ["GroupConv2d", "P4ConvZ2", "P4ConvP4", "P4MConvZ2", "P4MConvP4M", "GroupConvTranspose2d", "Conv1d",
           "Conv2d", "SharedKernelConv1d", "SharedKernelConv2d", "TapConv1d", "TapConv2d", "ExportedTapConv",
           "GroupPool", "GroupMaxPool2d", "GroupAvgPool2d", "GroupBatchNorm", "gcnn_width"]
