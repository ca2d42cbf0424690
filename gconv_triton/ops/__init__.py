"""The package's ``torch.library`` ops and their autograd, one file per op family: ``group_conv``
(``gconv_triton::gconv2d``, ``gconv2d_input_grad``, ``gconv2d_weight_grad``) and ``tap_conv``
(``gconv_triton::tap_conv2d``, ``tap_conv2d_backward``).  Importing this package registers them."""

from . import group_conv, tap_conv

__all__ = ["group_conv", "tap_conv"]
