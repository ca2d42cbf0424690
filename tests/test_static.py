"""``python -m perf.static``: the SASS/TTGIR readers on small texts, and the CI sample: every kernel (the group
convolutions' and the tap convolutions'), every dtype, compiled for sm_90 and sm_80 without a GPU, with no compile
error and no spill or shared-memory overflow in a config the autotuner keeps or a launcher fixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gconv_triton.kernels.tuner import KERNEL_TUNERS, TuneConfig
from perf import static_sass as sass

ROOT = Path(__file__).resolve().parents[1]

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   MOV R2, RZ ;
.L_x_1:
        /*0020*/                   LDGSTS.E.BYPASS.128 [R12], desc[UR14][R6.64], P2 ;
        /*0030*/                   IMAD.WIDE R4, R3, 0x2, R8 ;
        /*0040*/                   IADD3.X R5, RZ, R9, RZ, P0, !PT ;
.L_x_0:
        /*0050*/                   LDG.E.U16 R7, desc[UR14][R4.64] ;
        /*0060*/                   ISETP.GE.AND P0, PT, R7, 0x4, PT ;
        /*0070*/              @!P0 BRA `(.L_x_0) ;
        /*0080*/                   WARPGROUP.ARRIVE ;
        /*0090*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspA, R24 ;
        /*00a0*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspA, R24, gsb0 ;
        /*00b0*/              @!P1 BRA `(.L_x_1) ;
        /*00c0*/                   EXIT ;
.L_x_2:
        /*00d0*/                   BRA `(.L_x_2);
"""


def test_hot_loop_is_the_innermost_loop_holding_the_mma():
    instrs, labels = sass.parse_sass(SASS)
    assert len(instrs) == 14 and labels == {".L_x_1": 2, ".L_x_0": 5, ".L_x_2": 13}
    assert sorted(sass.loops(instrs, labels)) == [(2, 11), (5, 7), (13, 13)]
    loop = sass.hot_loop(instrs, labels)
    assert (loop.instructions, loop.mma, loop.mma_count) == (10, "HGMMA", 2)
    assert loop.counts["LDGSTS"] == 1 and loop.counts["LDG"] == 1 and loop.counts["IMAD.WIDE"] == 1
    assert loop.counts["carry"] == 1
    # Two 64x128x16 wgmmas per warp group; 8 warps = 2 warp groups: 2 * 131072 * 2 MACs per iteration.
    assert loop.macs(8) == 2 * 64 * 128 * 16 * 2
    assert loop.per_1024_macs(8) == pytest.approx(10 * 8 * 1024 / loop.macs(8))


def test_mma_shapes():
    assert sass.mma_shape("HGMMA.64x256x8.F32.TF32") == (64, 256, 8)
    assert sass.mma_shape("HMMA.16816.F32.BF16") == (16, 8, 16)
    assert sass.mma_shape("HMMA.1688.F32.TF32") == (16, 8, 8)
    assert sass.mma_shape("DMMA.884") == (8, 8, 4)
    assert sass.mma_shape("FFMA") is None
    # mma.sync is issued per warp: 4 warps each do their own m16n8k16.
    instrs, labels = sass.parse_sass(SASS.replace("HGMMA.64x128x16.F32.BF16", "HMMA.16816.F32.BF16"))
    assert sass.hot_loop(instrs, labels).macs(4) == 2 * 16 * 8 * 16 * 4


def test_no_mma_falls_back_to_the_fma_loop():
    text = """
        /*0000*/                   MOV R2, RZ ;
.L_x_3:
        /*0010*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0020*/                   FFMA R5, R4, R6, R5 ;
        /*0030*/                   FFMA R7, R4, R8, R7 ;
        /*0040*/              @P0 BRA `(.L_x_3) ;
        /*0050*/                   EXIT ;
"""
    loop = sass.hot_loop(*sass.parse_sass(text))
    assert (loop.instructions, loop.mma, loop.counts["FMA"]) == (4, "none", 2)
    assert sass.hot_loop(*sass.parse_sass("        /*0000*/                   EXIT ;")) is None



def test_register_constants_are_not_fmas():
    """ptxas sets a register to a constant with ``HFMA2.MMA Rx, -RZ, RZ, imm, imm``: not a multiply-add, so a loop
    of those does not pass for the hot loop of an elementwise kernel (it did, in a depthwise weight gradient)."""
    text = """
.L_x_1:
        /*0000*/                   HFMA2.MMA R5, -RZ, RZ, 0, 0 ;
        /*0010*/                   HFMA2.MMA R6, -RZ, RZ, 1.875, 0 ;
        /*0020*/                   HFMA2.MMA R7, -RZ, RZ, 0, 0 ;
.L_x_2:
        /*0030*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0040*/                   FFMA R8, R4, R9, R8 ;
        /*0050*/                   FFMA R10, R4, R11, R10 ;
        /*0060*/              @P0 BRA `(.L_x_2) ;
        /*0070*/              @P1 BRA `(.L_x_1) ;
        /*0080*/                   EXIT ;
"""
    loop = sass.hot_loop(*sass.parse_sass(text))
    assert (loop.instructions, loop.counts["FMA"]) == (4, 2)


def test_an_unrolled_mma_loop_is_read_whole():
    """A loop with a short constant trip count can be unrolled away: the whole kernel is then the hot loop (its
    figure an upper bound), not "no MMA"."""
    text = """
        /*0000*/                   LDGSTS.E.BYPASS.128 [R12], desc[UR14][R6.64] ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;
        /*0030*/                   STG.E desc[UR4][R2.64], R24 ;
        /*0040*/                   EXIT ;
.L_x_9:
        /*0050*/                   BRA `(.L_x_9);
"""
    loop = sass.hot_loop(*sass.parse_sass(text))
    assert (loop.instructions, loop.mma, loop.mma_count) == (6, "HGMMA", 2)
    assert loop.macs(4) == 2 * 64 * 64 * 16

TTIR = ("%acc_127 = tt.dot %a_114, %bw_126, %acc_56, inputPrecision = tf32 : tensor<128x32xf32> * "
        "tensor<32x64xf32> -> tensor<128x64xf32> loc(#loc171)")

TTGIR = """
    %buf = ttg.local_alloc : () -> !ttg.memdesc<3x32x128xbf16, #shared, #smem, mutable> loc(#loc1)
    %v0 = ttg.memdesc_index %buf[%c0_i32] : !ttg.memdesc<3x32x128xbf16> -> !ttg.memdesc<32x128xbf16> loc(#loc1)
    %t0 = ttg.async_copy_global_to_local %ptrs, %v0 mask %m other %cst : tensor<32x128x!tt.ptr<bf16>> -> <32x128xbf16>
    %r:2 = scf.for %i = %c0 to %K step %c32 iter_args(%acc = %cst, %tok = %t0) -> (tensor<128x128xf32>, i32) {
      %a = tt.load %aptrs, %ok, %cst_1 : tensor<128x32x!tt.ptr<bf16>, #blocked1> loc(#loc157)
      %a_s = ttg.local_alloc %a : (tensor<128x32xbf16, #blocked1>) -> !ttg.memdesc<128x32xbf16, #shared1, #smem>
      %b_s = ttg.memdesc_index %buf[%idx] : !ttg.memdesc<3x32x128xbf16> -> !ttg.memdesc<32x128xbf16>
      %d = ttng.warp_group_dot %a_s, %b_s, %acc {isAsync = true} : !ttg.memdesc<128x32xbf16> * !ttg.memdesc<32x128xbf16> -> tensor<128x128xf32, #mma>
      %w:3 = ttng.warp_group_dot_wait %d, %a_s, %b_s {pendings = 1 : i32} : tensor<128x128xf32, #mma>
      scf.yield %w#0, %tok : tensor<128x128xf32>, i32
    }
"""


def test_dot_shapes_and_operand_sources():
    (dot,) = sass.dots(TTIR)
    assert (dot.m, dot.n, dot.k, dot.a_type, dot.precision, dot.macs) == (128, 64, 32, "f32", "tf32", 128 * 64 * 32)
    assert sass.operand_sources(TTGIR) == ["LDG", "cp.async"]
    tma = TTGIR.replace("%t0 = ttg.async_copy_global_to_local %ptrs, %v0 mask %m other %cst",
                        "ttng.async_tma_copy_global_to_local %desc[%c0, %c0] %v0, %bar, %true")
    assert sass.operand_sources(tma) == ["LDG", "TMA"]
    assert sass.wgmma_pendings(TTGIR) == 1
    assert sass.operand_sources("%x = arith.constant 0 : i32") == []


def test_operand_sources_read_the_dots_own_definitions():
    """A name that a later region defines again (the pipelined loop's peeled tail: a plain load under the same
    name as the loop's shared-memory view) does not change how the loop's dot is fed."""
    tail = """
    scf.if %last {
      %b_s = tt.load %tail_ptrs : tensor<32x128x!tt.ptr<bf16>, #blocked1>
      %v9 = ttg.memdesc_index %buf[%c1_i32] : !ttg.memdesc<3x32x128xbf16> -> !ttg.memdesc<32x128xbf16>
    }
"""
    assert sass.operand_sources(TTGIR + tail) == ["LDG", "cp.async"]


def _run_static(tmp_path: Path, *args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    """``python -m perf.static`` in a fresh process without TRITON_INTERPRET (interpreted kernels cannot be
    compiled), with its own analysis cache."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), GCONV_TRITON_STATIC_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "perf.static", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _compile_sample(tmp_path: Path, roles: str) -> dict:
    """``perf.static --resources-only`` over the sample layers, every dtype, sm_90 and sm_80, for ``roles``; checks
    what every gate needs (no compile error, and no spill or shared-memory overflow in a config the autotuner
    keeps, a launcher's fixed config counting as kept) and returns the JSON for the caller's coverage checks."""
    proc = _run_static(tmp_path, "--sets", "sample", "--archs", "90,80", "--resources-only", "--jobs", "2",
                       "--roles", roles, "--no-progress", "--out", str(tmp_path / "sample"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sample.json").read_text())
    rows = result["rows"]
    assert {r["dtype"] for r in rows} == {"fp32", "tf32", "fp16", "bf16", "fp64"}
    assert {r["arch"] for r in rows} == {90, 80}
    assert {"triton", "torch", "ptxas"} <= set(result["versions"])
    errors = [(r["kernel"], r["dtype"], r["arch"], r["config"], r["error"]) for r in rows if r["status"] != "ok"]
    assert not errors, f"compile errors: {errors}"
    assert all(r["registers"] > 0 and r["spills"] is not None for r in rows)
    bad = [(r["layer"], r["kernel"], r["dtype"], r["arch"], r["config"], f"spills {r['spills']} B",
            f"shared {r['shared']} of {r['shared_limit']} B") for r in rows
           if r["kept"] and (r["spills"] or r["overflow"])]
    assert not bad, f"kept configs (tuned or fixed by a launcher) spill registers or overflow shared memory: {bad}"
    # Every problem keeps a config.
    problems = {(r["layer"], r["role"], r["kernel"], r["dtype"], r["arch"]) for r in rows}
    assert problems == {(r["layer"], r["role"], r["kernel"], r["dtype"], r["arch"]) for r in rows if r["kept"]}
    assert "perf.static:" in proc.stdout and "PASS compile" in proc.stdout
    return result


def test_sample_compiles_for_sm90_and_sm80_without_spills_in_kept_configs(tmp_path):
    """The group-convolution kernels (implicit GEMM and depthwise; the weight gradient with ``dy`` re-laid and read
    in place)."""
    rows = _compile_sample(tmp_path, "forward,input_grad,weight_grad,weight_grad_package")["rows"]
    # Every kernel of both families: each one the package tunes, and the untuned depthwise weight gradient.
    tuned = {n.split("kernels.", 1)[1] for n in KERNEL_TUNERS
             if n.startswith("gconv_triton.kernels.group_conv")}   # group_conv, _weight_grad, _depthwise
    compiled = {r["kernel"] for r in rows}
    assert tuned <= compiled and len(compiled - tuned) >= 1, (tuned, compiled)


def test_tap_kernels_compile_for_sm90_and_sm80_without_spills(tmp_path):
    """The tap convolutions (fixed tiles, no tuning): the three kernels with a sum (adder) and with an arg-extreme
    (max-plus), on both sample layers (a dense and a depthwise one)."""
    roles = [f"tap_{tap}_{kernel}" for tap in ("adder", "maxplus")
             for kernel in ("forward", "input_grad", "weight_grad")]
    rows = _compile_sample(tmp_path, ",".join(roles))["rows"]
    assert {r["role"] for r in rows} == set(roles)
    assert {r["kernel"] for r in rows} == {f"tap_conv._{k}_kernel" for k in ("forward", "input_grad", "weight_grad")}
    assert {r["layer"] for r in rows} == {"gemm", "depthwise", "lifting"}


def test_hot_loop_of_a_real_compile(tmp_path):
    """One bf16 forward on sm_90 read to the end: a tensor-core hot loop, a figure per MAC beside the matmul's,
    both operand sources, the bytes of the launch and of the dense GEMM."""
    proc = _run_static(tmp_path, "--sets", "sample", "--layers", "gemm", "--roles", "forward", "--dtypes", "bf16",
                       "--archs", "90", "--jobs", "1", "--no-progress", "--out", str(tmp_path / "one"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(r for r in json.loads((tmp_path / "one.json").read_text())["rows"]
               if r["kept"] and r["kernel"] == "group_conv._conv_gemm_kernel")   # not the forward's layout launch
    assert row["status"] == "ok" and row["mma"] == ("HGMMA" if row["warps"] >= 4 else "HMMA")
    assert row["loop_instructions"] > 0 and row["per_1024_macs"] > 0 and row["matmul_per_1024_macs"] > 0
    assert row["ratio"] == pytest.approx(row["per_1024_macs"] / row["matmul_per_1024_macs"])
    assert all(src in ("cp.async", "TMA", "LDG") for src in row["operands"]) and len(row["operands"]) == 2
    assert row["dot"]["a_type"] == "bf16" and row["bytes"] > 0 and row["dense_bytes"] > 0
    text = (tmp_path / "one.md").read_text()
    assert "## Targets" in text and "### group_conv._conv_gemm_kernel" in text and "HGMMA" in text


def test_forward_and_input_grad_roles_measure_both_layouts():
    """``forward`` and ``input_grad`` hand the launcher a contiguous ``x`` / ``dy`` (a network's first layer and
    the loss's gradient: read in place channels-first where the rules allow, channel stride ``H·W``),
    ``forward_package`` and ``input_grad_package`` ones stored ``(B, H, W, C, S)`` (as every layer after the first
    meets them: read in place channels-last, channel stride 1; ``dx`` written so too); captured, not compiled."""
    import torch

    from gconv_triton.autotune import Layer
    from perf.static import ROLES, capturing, set_layers

    small = Layer("igrad", group="p4", in_group="p4", c_in=4, c_out=4, height=16, width=8, padding=(1, 1))
    groups4 = next(layer for layer in set_layers("grouped") if layer.name == "p4.groups4")   # compiled below
    for layer, pixels in ((small, 16 * 8), (groups4, 32 * 32)):
        for role, channel_stride in (("forward", pixels), ("forward_package", 1), ("input_grad", pixels),
                                     ("input_grad_package", 1)):
            out = []
            with capturing(out):
                ROLES[role].run(layer, torch.float32)
            gemm = next(launch for launch in out if launch.kernel == "group_conv._conv_gemm_kernel")
            assert gemm.bound()["stride_a_c"] == channel_stride, (layer.name, role)
            if role.startswith("input_grad"):   # dx in x's layout: the package's with input_grad_package
                dx_pixel_stride = 1 if channel_stride != 1 else layer.c_in * 4
                assert gemm.bound()["stride_out_w"] == dx_pixel_stride, (layer.name, role)


def test_channels_first_input_grad_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    """The input gradient reading a channels-first ``dy`` in place (pixel-major A; no sample layer qualifies), tf32
    on a p4 layer of 32x32 maps: every config compiles, none the tuner keeps spills."""
    proc = _run_static(tmp_path, "--sets", "grouped", "--layers", "p4.groups4", "--roles", "input_grad", "--dtypes",
                       "tf32", "--archs", "90,80", "--resources-only", "--jobs", "2", "--no-progress", "--out",
                       str(tmp_path / "igrad"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "igrad.json").read_text())["rows"]
    assert {r["arch"] for r in rows} == {90, 80} and all(r["status"] == "ok" for r in rows)
    assert any(r["kept"] for r in rows) and not [r["config"] for r in rows if r["kept"] and r["spills"]]


def test_shared_memory_estimate():
    # fp16: stages * (BM*BK + BK*BN) * 2 bytes; an operand size the launch passes as a constexpr (BLOCK_R).
    from perf.static import shared_memory_bytes

    config = TuneConfig.make(dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32), 8, 3)
    assert shared_memory_bytes(config, [("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N")], 2) == \
        3 * (128 * 32 + 32 * 128) * 2
    config = TuneConfig.make(dict(BLOCK_M=64, BLOCK_N=64), 4, 2)
    assert shared_memory_bytes(config, [("BLOCK_M", "BLOCK_R"), ("BLOCK_R", "BLOCK_N")], 4, {"BLOCK_R": 32}) == \
        2 * (64 * 32 + 32 * 64) * 4


def test_merge_reads_gzipped_results(tmp_path):
    """``--merge`` reads the gzipped JSON kept under perf/results/ as well as plain JSON."""
    import gzip

    from perf.static import read_result

    result = {"kind": "static", "rows": [], "config": {}, "seconds": 1.0, "date": "d", "versions": {}}
    (tmp_path / "a.json").write_text(json.dumps(result))
    with gzip.open(tmp_path / "b.json.gz", "wt", encoding="utf-8") as f:
        json.dump(result, f)
    assert read_result(tmp_path / "a.json") == read_result(tmp_path / "b.json.gz") == result
    kept = sorted(ROOT.glob("perf/results/static-*.json.gz"))
    assert kept and all(read_result(path)["kind"] == "static" for path in kept)


def test_cli_rejects_interpreted_kernels_and_bad_archs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "perf.static", "--sets", "sample"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr
    proc = _run_static(tmp_path, "--sets", "sample", "--archs", "91", timeout=300)
    assert proc.returncode == 2 and "--archs" in proc.stderr


def test_steerable_sets_cover_k3_k5_k7_and_only_the_steerable_roles():
    from perf.static import ROLES, applies, set_layers

    for name in ("c8", "c16", "d8"):
        assert {layer.kernel[0] for layer in set_layers(name)} == {3, 5, 7}
        assert any(layer.kernel[0] == 7 and layer.input_grad for layer in set_layers(name))
    steer = {role for role in ROLES if role.startswith("steer_")}
    assert steer == {"steer_forward", "steer_input_grad", "steer_weight_grad"}
    assert all(applies(role, "c8") == (role in steer) for role in ROLES)
    assert all(applies(role, "wide") == (role not in steer) for role in ROLES)


def test_steerable_kernels_read_per_mac_of_their_main_dot(tmp_path):
    """The three steerable kernels on a 7 x 7 and a 5 x 5 C8 layer, bf16, sm_90 (all three channels-last):
    compiled without a spill, wgmma, judged per MAC of the window's dot (at k = 7: K = 32 positions x 8 elements
    for the forward, 32 positions x 8 output channels for the input gradient, N = 16 positions x 8 input elements
    for the coefficient gradient; at k = 5 the forward's two unrolled chunks are two dots per iteration), not the
    steering dot's, and their bytes beside the dense implicit GEMM's, with the forward-bytes target line."""
    proc = _run_static(tmp_path, "--sets", "c8", "--layers", "mnist.l3.k7,mnist.l3", "--roles",
                       "steer_forward,steer_input_grad,steer_weight_grad", "--dtypes", "bf16", "--archs", "90",
                       "--jobs", "1", "--no-progress", "--out", str(tmp_path / "steer"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "steer.json").read_text())["rows"]
    # the zero-padded channels-last copy of a channels-first x (the forward's and the coefficient gradient's) is a
    # launch of its role too, with no dot
    copies = [r for r in rows if r["kernel"] == "group_conv_layouts._padded_copy_kernel"]
    assert {r["role"] for r in copies} == {"steer_forward", "steer_weight_grad"}
    assert all(r["status"] == "ok" and r["spills"] == 0 and not r.get("dot") for r in copies)
    rows = [r for r in rows if r not in copies]
    assert {r["kernel"] for r in rows} == {f"steerable_conv._{k}_channels_last_kernel"
                                           for k in ("forward", "input_grad", "weight_grad")}
    for r in rows:
        assert r["status"] == "ok" and r["kept"] and r["spills"] == 0 and r["mma"] == "HGMMA"
        if r["layer"] == "mnist.l3":   # 5 x 5: the forward's two window chunks unrolled, two main dots per iteration
            if r["role"] == "steer_forward":
                macs = 2 * r["dot"]["m"] * r["dot"]["n"] * r["dot"]["k"]
                assert r["per_1024_macs"] == pytest.approx(r["loop_instructions"] * r["warps"] * 1024 / macs)
            continue
        window = {"steer_forward": 32 * 8, "steer_input_grad": 32 * 8, "steer_weight_grad": 16 * 8}[r["role"]]
        assert (r["dot"]["n"] if r["role"] == "steer_weight_grad" else r["dot"]["k"]) == window
        assert r["ratio"] > 0 and r["bytes"] > 0 and r["dense_bytes"] > 0
    assert "steer forward bytes sm_90" in proc.stdout


def test_steerable_lifting_forward_is_read_per_mac_with_its_bytes(tmp_path):
    """The lifting forward (the MNIST stem, 7 x 7, one input channel, bf16, sm_90): compiled without a spill, its
    tile loop on wgmma judged per MAC of the folded window dot (K = 7 rows x 8 padded columns = 64), within the
    issue's 1.5x the matmul, and its bytes counted though it binds neither P_PAD nor NBASIS."""
    proc = _run_static(tmp_path, "--sets", "c8", "--layers", "mnist.l1", "--roles", "steer_forward", "--dtypes",
                       "bf16", "--archs", "90", "--jobs", "1", "--no-progress", "--out", str(tmp_path / "lift"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "lift.json").read_text())["rows"]
    assert row["kernel"] == "steerable_conv._forward_lifting_kernel" and row["status"] == "ok" and row["kept"]
    assert row["spills"] == 0 and row["mma"] == "HGMMA" and row["dot"]["k"] == 64
    assert 0 < row["ratio"] <= 1.5 and row["bytes"] > 0 and row["dense_bytes"] > 0


def test_forward_epilogue_keeps_the_wide_tiles(tmp_path):
    """The forward's epilogue needs few registers, so the widest tiles compile for sm_90 without a spill and the
    autotuner keeps them: the ``conv1d`` layer's 128 x 256 (one group element on N, whose index the kernel knows is 0:
    the output columns provably aligned, the stores vectors) and P4CNN's ``l2`` 128 x 64 (``LINEAR_OUT``: the output
    pixel grid is the M grid, stored densely, so a row's offset is its flat index times the pixel stride).  Before,
    the store's layout gave each thread a column of many rows, with a division per row (the ``conv1d`` tile spilled
    8 bytes, the ``l2`` one 224)."""
    proc = _run_static(tmp_path, "--sets", "grouped,p4cnn", "--layers", "conv1d,l2", "--roles", "forward_package",
                       "--dtypes", "bf16", "--archs", "90", "--resources-only", "--jobs", "2", "--no-progress", "--out",
                       str(tmp_path / "wide_tiles"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "wide_tiles.json").read_text())["rows"]
    for layer, tile in (("conv1d", "BLOCK_M=128, BLOCK_N=256"), ("l2", "BLOCK_K=32, BLOCK_M=128, BLOCK_N=64")):
        found = [r for r in rows if r["layer"] == layer and r["kernel"].endswith("_conv_gemm_kernel")
                 and tile in r["config"]]
        assert found and all(r["status"] == "ok" and r["spills"] == 0 and r["kept"] for r in found), (layer, found)
