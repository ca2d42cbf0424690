"""Test set-up: with no CUDA GPU the Triton kernels run through Triton's CPU interpreter.

TRITON_INTERPRET is read when a @triton.jit function is defined, so it is set here, before any test imports
gconv_triton.kernels.  GCONV_TRITON_POISON makes every kernel launcher fill its outputs with NaN first, so an
element a kernel forgets to write fails the comparison.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("GCONV_TRITON_POISON", "1")
