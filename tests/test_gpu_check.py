"""``make gpu-check`` on a machine without CUDA (one line, exit 0, nothing written), and its step runner."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perf import gpu_check

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "gpu-check: no CUDA GPU here; nothing to check (run it on a machine with one).\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a CUDA GPU")
def test_without_cuda_one_line_and_exit_0(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "perf.gpu_check", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (0, NO_CUDA), proc.stderr
    assert not list(tmp_path.iterdir())
    make = subprocess.run(["make", "-s", "gpu-check", f"PY={sys.executable}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert (make.returncode, make.stdout) == (0, NO_CUDA), make.stderr


def test_steps_are_limited_in_time_and_failures_recorded():
    log = io.StringIO()
    ok = gpu_check.run_step("ok", [sys.executable, "-c", "print('first'); print('all good')"], 60, log)
    assert (ok["step"], ok["status"], ok["last_line"]) == ("ok", "ok", "all good")
    failed = gpu_check.run_step("bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 60, log)
    assert failed["status"] == "failed (exit 3)" and failed["last_line"] == "boom"
    slow = gpu_check.run_step("slow", [sys.executable, "-c", "import time; print('started', flush=True); "
                                                             "time.sleep(30)"], 2, log)
    assert slow["status"] == "timed out after 2 s" and slow["seconds"] < 20
    text = log.getvalue()
    assert "===== ok:" in text and "all good" in text and "boom" in text and "===== slow:" in text


def test_gpu_slug():
    assert gpu_check.gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_check.gpu_slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"


def test_steerable_networks_of_step_1_build_and_run():
    """Step 1's steerable networks (a lifting layer, then regular ones reading the package's layout) run; here on
    the reference path, on a GPU through the kernels."""
    from gconv_triton import backend

    for _, group, c_in, widths, size in gpu_check.STEERABLE_SAMPLE:
        net = gpu_check.steerable_network(group, c_in, widths)
        x = torch.randn(1, c_in, size, size, requires_grad=True)
        with backend("torch"):
            y = net(x)
        y.sum().backward()
        order = net[-1].group.order
        assert y.shape == (1, widths[-1][0], order, (size + 1) // 2, (size + 1) // 2)
        assert x.grad is not None and all(p.grad is not None for p in net.parameters())
