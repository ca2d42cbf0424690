"""The package's ``torch.library`` ops and their autograd, one file per op family: ``group_conv``
(``gconv_triton::gconv2d``, ``gconv2d_input_grad``, ``gconv2d_weight_grad``), ``tap_conv``
(``gconv_triton::tap_conv2d``, ``tap_conv2d_backward``) and ``steerable_conv`` (``gconv_triton::steerable_conv2d``,
``steerable_conv2d_input_grad``, ``steerable_conv2d_weight_grad``).  Importing this package registers them."""

from . import group_conv, steerable_conv, tap_conv

__all__ = ["group_conv", "steerable_conv", "tap_conv"]
