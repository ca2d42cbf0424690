"""The fused Triton kernels (installed as ``gconv_triton.kernels``) and their launchers.

``forward``, ``input_grad`` and ``weight_grad`` pick the kernel family for a :class:`~gconv_triton._spec.ConvSpec`:
the implicit GEMM (``group_conv.py``: forward and input gradient; ``group_conv_weight_grad.py``) or, for one input
G-channel per channel group, the elementwise depthwise kernels (``group_conv_depthwise.py``).  The tap
convolutions' kernels are ``tap_conv.py``; what the families share, ``_common.py``; the autotuner, ``tuner.py``.
"""

from . import group_conv, group_conv_depthwise, group_conv_weight_grad
from ._common import INTERPRET, group_tables

__all__ = ["INTERPRET", "forward", "input_copy_shape", "input_grad", "weight_grad", "group_tables"]


def _family(spec, gemm=group_conv):
    """The module whose launchers serve ``spec``: the depthwise kernels, else the implicit GEMM's ``gemm``."""
    return group_conv_depthwise if spec.depthwise else gemm


def forward(x, weight, bias, spec, activation="none", return_preact=False, return_input_copy=False):
    """``x (B, C_in, S_in, H, W)`` -> ``y (B, C_out, S_out, H_out, W_out)``, bias and ``activation`` (``"none"``,
    ``"relu"``, ``"silu"``, ``"gelu"``) fused; ``return_preact`` adds the pre-activation (or None),
    ``return_input_copy`` the channels-last copy of ``x`` the kernel read (or None, see :func:`input_copy_shape`):
    ``y``, or the tuple of ``y`` and what was asked for, in that order."""
    return _family(spec).forward(x, weight, bias, spec, activation, return_preact, return_input_copy)


def input_copy_shape(x, spec):
    """The shape of the copy :func:`forward` returns with ``return_input_copy`` (a contiguous ``(B, H', W', C')``
    channels-last form of ``x``), or None when it makes none (a fake kernel's answer without running it)."""
    return _family(spec).input_copy_shape(x, spec)


def input_grad(dy, weight, spec, order):
    """``dy`` -> ``dx (B, C_in, S_in, H, W)`` stored in dim ``order`` (outermost first)."""
    return _family(spec).input_grad(dy, weight, spec, order)


def weight_grad(dy, x, spec, weight_shape, x_copy=None):
    """``dy, x`` -> ``dw`` of ``weight_shape``, reduced over the group copies inside the kernel; ``x_copy``: the copy
    of ``x`` that :func:`forward` returned, read instead of copying ``x`` again."""
    return _family(spec, group_conv_weight_grad).weight_grad(dy, x, spec, weight_shape, x_copy)
