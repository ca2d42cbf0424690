"""``pytest perf/``: each layer x provider as a pytest-benchmark test (options in ``perf/conftest.py``).

On a CUDA GPU every round ends with ``torch.cuda.synchronize()`` so that wall-clock time covers the GPU work;
``python -m perf`` (``triton.testing.do_bench``) is the reference measurement.  Without a GPU the tests time the
CPU path against the bank and e2cnn on small layers, grouped as CPU numbers.
"""

from __future__ import annotations

import pytest
import torch

from gconv_triton.autotune import dtype_setting

from .conftest import CUDA
from .providers import make_case, provider
from .runner import mode_runner

pytest.importorskip("pytest_benchmark")


def test_layer(benchmark, perf_case):
    set_name, layer, name, mode, dtype, layout = perf_case
    device = "cuda" if CUDA else "cpu"
    prov = provider(name, device)
    why = prov.unsupported(layer)
    if why:
        pytest.skip(why)
    with dtype_setting(dtype):
        run = mode_runner(prov.build(make_case(layer, dtype, layout, device)), mode)

        def call():
            run()
            if CUDA:
                torch.cuda.synchronize()

        where = torch.cuda.get_device_name() if CUDA else "CPU numbers (not the kernels)"
        benchmark.group = f"{where}: {set_name}/{layer.name} {dtype} {mode} {layout}"
        benchmark.extra_info.update(provider=name, device=where, flops=layer.flops(mode), gemm=list(layer.gemm()))
        benchmark.pedantic(call, rounds=20 if CUDA else 5, warmup_rounds=3 if CUDA else 1, iterations=1)
    median = getattr(getattr(benchmark, "stats", None), "stats", None)
    if median is not None and median.median > 0:
        benchmark.extra_info["tflops"] = layer.flops(mode) / median.median / 1e12
