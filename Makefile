# Two commands for a newcomer: `make demo` (the main job) and `make test`.  Both create ./.venv on first use.
# On a CPU-only machine, TORCH=torch==2.13.0 (the default) takes the CPU build where a local wheel provides it;
# elsewhere point TORCH at the build you want, e.g. TORCH="torch --index-url <your CPU or CUDA index>".
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: demo test perf gpu-check clean

# escnn (for the interop tests) goes in without its declared dependencies: py3nj and lie-learn need a Fortran
# compiler and NumPy 1, and its planar layers never call them; the ones it does use come with the test extra.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) -e ".[test,demo]"
	$(PIP) --no-deps "escnn==1.0.11"
	touch $@

# The demo pins the CPU's numeric code paths (ATen's vector kernels, oneDNN's convolutions, MKL's GEMMs) to AVX2, so
# every x86-64 machine with AVX2 sums in the same order and prints the README's table: left to each machine's widest
# paths, 30 epochs of training turn the different round-off into a point or two of accuracy (README, "The demo").
# `make demo PY=python` uses the current environment; DEMO_ARGS are passed on (e.g. DEMO_ARGS="--out /tmp/plots").
DEMO_CPU_PATHS := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2
demo: $(if $(filter command line,$(origin PY)),,$(VENV)/.installed)
	$(DEMO_CPU_PATHS) $(PY) -m gconv_triton.demo $(DEMO_ARGS)

# The lint (ruff, pyproject.toml), then the tests; the kernels run through Triton's CPU interpreter when there is
# no GPU (tests/conftest.py decides).
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

perf: $(VENV)/.installed
	$(PY) -m perf

# On a machine with one CUDA GPU, in under 8 minutes: every kernel compiled for real, the CUDA tests, memcheck and a
# budgeted perf run, written to perf/results/<gpu>-<date>.* (docs/static-analysis.md).  Without CUDA: one line, exit 0.
# `make gpu-check PY=python` uses the current environment instead of ./.venv.
gpu-check: $(if $(filter command line,$(origin PY)),,$(VENV)/.installed)
	$(PY) -m perf.gpu_check

clean:
	rm -rf $(VENV) build *.egg-info
