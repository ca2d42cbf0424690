"""Options of ``pytest perf/`` (pytest-benchmark view of the suite) and the parametrisation they drive."""

from __future__ import annotations

import torch

from gconv_triton.autotune import DTYPES, LAYOUTS, MODELS, model_layers, parse_names

from .providers import PROVIDERS
from .runner import MODES

CUDA = torch.cuda.is_available()


def pytest_addoption(parser):
    group = parser.getgroup("gconv_triton perf", "pytest perf/: the suite as pytest-benchmark tests")
    group.addoption("--perf-sets", default="all", help=f"'all' or a comma-separated subset of {sorted(MODELS)} "
                                                       "(on a CPU: small CPU layers instead)")
    group.addoption("--perf-providers", default="all", help=f"'all' or a subset of {list(PROVIDERS)}")
    group.addoption("--perf-dtypes", default="bf16" if CUDA else "fp32", help=f"'all' or a subset of {list(DTYPES)}")
    group.addoption("--perf-modes", default="forward+backward", help=f"'all' or a subset of {list(MODES)}")
    group.addoption("--perf-layouts", default="contiguous", help=f"'all' or a subset of {list(LAYOUTS)}")


def pytest_generate_tests(metafunc):
    if "perf_case" not in metafunc.fixturenames:
        return

    def option(name, allowed):
        return parse_names(metafunc.config.getoption(name), list(allowed), name)

    providers = option("--perf-providers", PROVIDERS)
    if CUDA:
        sets = {name: model_layers(name) for name in option("--perf-sets", MODELS)}
    else:   # CPU numbers: the package's CPU path against the bank and e2cnn on small layers
        from .smoke import cpu_sets

        sets = cpu_sets()
        providers = [p for p in providers if p in ("gconv_triton", "bank_cudnn", "e2cnn")]
    cases = [(s, layer, p, mode, dtype, layout) for s, layers in sets.items() for layer in layers
             for dtype in option("--perf-dtypes", DTYPES) for mode in option("--perf-modes", MODES)
             for layout in option("--perf-layouts", LAYOUTS) for p in providers]
    metafunc.parametrize("perf_case", cases, ids=["-".join((s, layer.name, p, m, d, lay))
                                                  for s, layer, p, m, d, lay in cases])
