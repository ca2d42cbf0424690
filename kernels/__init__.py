"""The fused Triton kernels (installed as ``gconv_triton.kernels``) and their launchers.

``forward``, ``input_grad`` and ``weight_grad`` pick the kernel family for a :class:`~gconv_triton._spec.ConvSpec`:
the implicit GEMM (``group_conv.py``: forward and input gradient; ``group_conv_weight_grad.py``) or, for one input
G-channel per channel group, the elementwise depthwise kernels (``group_conv_depthwise.py``).  The tap
convolutions' kernels are ``tap_conv.py``; what the families share, ``_common.py``; the autotuner, ``tuner.py``.
"""

from . import group_conv, group_conv_depthwise, group_conv_weight_grad
from ._common import INTERPRET, group_tables

__all__ = ["INTERPRET", "forward", "input_copy_shape", "input_grad", "input_grad_weight_shape", "weight_grad",
           "shared_dy", "group_tables"]


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


def input_grad_weight_shape(spec, dtype, x=None):
    """The shape of the input gradient's permuted weight that :func:`forward` of ``x`` builds with the forward's
    when asked (``forward_with_input_grad_weight``), or None where the family builds none (depthwise)."""
    return None if spec.depthwise else group_conv.input_grad_weight_shape(spec, dtype, x)


def forward_with_input_grad_weight(x, weight, bias, spec, activation="none", return_preact=False):
    """:func:`forward` with ``return_input_copy``, and last the input gradient's permuted weight (None where
    :func:`input_grad_weight_shape` is), which :func:`input_grad` then takes instead of re-laying the weight."""
    if spec.depthwise:
        out = forward(x, weight, bias, spec, activation, return_preact, True)
        return (*out, None)
    return group_conv.forward(x, weight, bias, spec, activation, return_preact, True, True)


def input_grad(dy, weight, spec, order, permuted=None):
    """``dy`` -> ``dx (B, C_in, S_in, H, W)`` stored in dim ``order`` (outermost first); ``permuted``: the weight
    as the forward re-laid it for this launch (:func:`forward_with_input_grad_weight`), or None."""
    if spec.depthwise:
        return group_conv_depthwise.input_grad(dy, weight, spec, order)
    return group_conv.input_grad(dy, weight, spec, order, permuted)


def weight_grad(dy, x, spec, weight_shape, x_copy=None, with_bias=False):
    """``dy, x`` -> ``dw`` of ``weight_shape``, reduced over the group copies inside the kernel; ``x_copy``: the copy
    of ``x`` that :func:`forward` returned, read instead of copying ``x`` again.  ``with_bias``: ``(dw, db)``, the
    bias gradient from the same launches, or None where the family does not make it (depthwise)."""
    if spec.depthwise:
        dw = group_conv_depthwise.weight_grad(dy, x, spec, weight_shape, x_copy)
        return (dw, None) if with_bias else dw
    return group_conv_weight_grad.weight_grad(dy, x, spec, weight_shape, x_copy, with_bias)


def shared_dy(dy, spec):
    """``dy`` laid out once for both of a layer's gradients (the implicit GEMM's: see
    :func:`~.group_conv_weight_grad.shared_dy`); as it is for the depthwise kernels."""
    return dy if spec.depthwise else group_conv_weight_grad.shared_dy(dy, spec)
