"""gconv_triton: group-equivariant convolutions (p4, p4m, user groups) on fused Triton kernels."""

import os as _os

# Running from a source checkout (PYTHONPATH=.): the kernels live in ../kernels, installed as
# gconv_triton.kernels by setuptools' package-dir mapping; let the import system find them here too.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "kernels")) and _os.path.isfile(
        _os.path.join(_here, _os.pardir, "kernels", "__init__.py")):
    __path__.append(_os.path.join(_here, _os.pardir))  # noqa: F821  (the package's own __path__)

from . import functional, groups, nn  # noqa: E402
from ._backend import backend, current_backend  # noqa: E402
from .equivariance import check_equivariance  # noqa: E402
from .exactness import EquivarianceWarning  # noqa: E402
from .export import export_model  # noqa: E402
from .groups import Group, p2, p2mm, p4, p4m, pm, z2  # noqa: E402
from .nn import (Conv1d, Conv2d, ExportedTapConv, GroupAvgPool2d, GroupBatchNorm, GroupConv2d,  # noqa: E402
                 GroupConvTranspose2d, GroupMaxPool2d, GroupPool, P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2,
                 SharedKernelConv1d, SharedKernelConv2d, TapConv1d, TapConv2d, gcnn_width)
from .tap_functions import TapFunction, check_tap  # noqa: E402

__version__ = "0.1.0"

# The public names (docs/api.md documents each); the lazily imported submodules below are public too.
__all__ = [
    "functional", "groups", "nn", "backend", "current_backend", "Conv1d", "Conv2d", "SharedKernelConv1d",
    "SharedKernelConv2d", "check_equivariance", "EquivarianceWarning", "Group", "p2", "p2mm", "p4", "p4m", "pm", "z2",
    "GroupBatchNorm", "GroupConvTranspose2d", "export_model", "gcnn_width", "TapFunction", "check_tap",
    "ExportedTapConv", "TapConv1d", "TapConv2d", "GroupAvgPool2d", "GroupConv2d", "GroupMaxPool2d", "GroupPool",
    "P4ConvP4", "P4ConvZ2", "P4MConvP4M", "P4MConvZ2",
]

# Submodules reached as attributes (``gt.models``) but imported on first use: autotune and interop pull in optional
# packages (e2cnn when installed) and models is not needed to build layers, so ``import gconv_triton`` stays fast
# (steerable, the C_N / D_N filters, is imported by the layers and listed here for ``dir(gt)``).
_LAZY_SUBMODULES = ("autotune", "demo", "interop", "models", "steerable")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
