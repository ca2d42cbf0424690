"""A user's tap function, ``Π tan(x + w)`` under ``reduce="prod"``, in a module of its own: a pickle refers to its
functions by module and name, so a fresh process (tests run one with ``tests/`` on its path) loads it back."""

import torch
import triton
import triton.language as tl

from gconv_triton import TapFunction


@triton.jit
def tan_fn(x, w):
    return tl.sin(x + w) / tl.cos(x + w)


@triton.jit
def tan_d(x, w):
    c = tl.cos(x + w)
    return 1.0 / (c * c)


def torch_tan(x, w):
    return torch.tan(x + w)


TAN = TapFunction("tan", torch_tan, tan_fn, tan_d, tan_d)
