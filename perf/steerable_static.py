"""Static figures of the steerable kernels (``kernels/steerable_conv.py``) for a GPU target, without a GPU.

``python -m perf.steerable_static [--arch 90] [--group c8] [--k 3 5 7] [--dtype bf16 f32]`` compiles the forward,
input-gradient and coefficient-gradient kernels at the launchers' tile (``steerable_conv.config``; ``--tile
BLOCK_M BLOCK_N WARPS`` overrides it) for a regular -> regular layer (64 -> 64 fields, 32 x 32 maps, 'same'
padding) and, beside each, Triton's plain matmul at the main dot's tile (``BLOCK_N × BLOCK_M × P_PAD``, the
``perf.static`` reference).  Per kernel: registers, spill bytes, shared memory, the tensor-core instructions
(every distinct one: ``HGMMA`` = wgmma, ``HMMA`` = mma.sync), and the hot loop's warp-instructions per 1024 MACs
of the main dot (the steering dot's MACs not counted: they are overhead) against the matmul's, and their ratio.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch
import triton.language as tl

from gconv_triton import steerable as st
from gconv_triton.kernels import steerable_conv as sc

from . import static
from . import static_sass as sass

DTYPES = {"bf16": (torch.bfloat16, "ieee"), "f16": (torch.float16, "ieee"), "f32": (torch.float32, "tf32"),
          "f64": (torch.float64, "ieee")}
ROLES = ("forward", "input_grad", "weight_grad")


def _meta(*shape, dtype) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


def mma_opcodes(kernel) -> str:
    """Every distinct tensor-core opcode of a compiled kernel (the steering dot's and the main dot's)."""
    instrs, _ = sass.parse_sass(sass.disassemble(kernel.asm["cubin"], static._tools()["nvdisasm"]))
    return " + ".join(sorted({i.opcode for i in instrs if i.base in sass.MMA_OPCODES}))


def compile_role(role: str, group, k: int, dtype_name: str, tile: Optional[Sequence[int]], arch: int,
                 channels: int = 64, size: int = 32, batch: int = 32) -> dict:
    """Compile one kernel for ``sm_<arch>`` and read it (``perf.static.analyze``), with the matmul beside it."""
    dtype, precision = DTYPES[dtype_name]
    cfg = dict(sc.config(k, dtype)) if tile is None else dict(BLOCK_M=tile[0], BLOCK_N=tile[1], num_warps=tile[2],
                                                               num_stages=3)
    if sc.INTERPRET:  # the launchers' GPU tile, whatever this process' interpreter switch says
        raise RuntimeError("unset TRITON_INTERPRET: the static figures are of compiled kernels")
    s, basis, positions = group.order, st.basis_size(k), k * k
    x = _meta(batch, channels, s, size, size, dtype=dtype)
    c, tables = _meta(channels, channels, s, basis, dtype=dtype), _meta(s, basis, positions, dtype=dtype)
    index, bias = _meta(s, s, dtype=torch.int32), _meta(channels, dtype=dtype)
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    common = dict(S_IN=s, S_OUT=s, KSIZE=k, NBASIS=basis, P_PAD=sc._pad16(positions), B_PAD=sc._pad16(basis),
                  PRECISION=precision, UPCAST=False, ACC=acc, OFFSET=tl.int32, num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"], grid=(1,))
    sizes = (batch, channels, channels, size, size, size, size)
    geometry = (1, 1, k // 2, k // 2, 1, 1)
    block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    with static.target(arch):
        if role == "forward":
            kernel = sc._forward_kernel.warmup(x, c, bias, tables, index, x, *sizes, *x.stride(), *c.stride(),
                                               *geometry, HAS_BIAS=True, BLOCK_M=block_m, BLOCK_N=block_n, **common)
        elif role == "input_grad":
            kernel = sc._input_grad_kernel.warmup(x, c, tables, index, x, *sizes, *x.stride(), *c.stride(),
                                                  *geometry, BLOCK_M=block_m, BLOCK_N=block_n, **common)
        else:
            parts = (sc.cdiv(channels, block_n), sc.cdiv(batch * size * size, block_m))   # one part: all pixels
            kernel = sc._weight_grad_kernel.warmup(x, x, tables, index, c, *sizes, *x.stride(), *x.stride(),
                                                   *geometry, *parts, BLOCK_M=block_m, BLOCK_O=block_n, **common)
    got = static.analyze(kernel, arch)
    main_macs = block_m * block_n * common["P_PAD"]
    per_main = got["loop_instructions"] * cfg["num_warps"] * 1024 / main_macs if got["loop_instructions"] else None
    # the matmul at the main dot's tile: (channels × pixels × positions) forward and input gradient, (channels ×
    # positions × pixels) for the coefficient gradient's
    m, n, kdim = (block_n, common["P_PAD"], block_m) if role == "weight_grad" else (block_n, block_m, common["P_PAD"])
    ref = static.matmul_reference(arch, m, n, kdim, dtype_name, precision, cfg["num_warps"], cfg["num_stages"])
    return dict(role=role, group=group.name, k=k, dtype=dtype_name, tile=f"{block_m}x{block_n}x{cfg['num_warps']}w",
                registers=got["registers"], spills=got["spills"], shared=got["shared"], mma=mma_opcodes(kernel),
                per_1024=per_main, matmul_mma=ref["mma_opcode"], matmul_per_1024=ref["per_1024_macs"],
                ratio=per_main / ref["per_1024_macs"] if per_main and ref["per_1024_macs"] else None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.steerable_static", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--group", default="c8", help="c<N> or d<N>")
    parser.add_argument("--k", type=int, nargs="+", default=[3, 5, 7])
    parser.add_argument("--dtype", nargs="+", default=["bf16", "f32"], choices=sorted(DTYPES))
    parser.add_argument("--role", nargs="+", default=list(ROLES), choices=ROLES)
    parser.add_argument("--tile", type=int, nargs=3, metavar=("BLOCK_M", "BLOCK_N", "WARPS"))
    args = parser.parse_args(argv)
    name = args.group.lower()
    group = st.dihedral_group(int(name[1:])) if name.startswith("d") else st.cyclic_group(int(name[1:]))
    print("| role | group | k | dtype | tile | regs | spills | shared | mma | instr/1024 MACs | matmul mma | "
          "matmul instr/1024 MACs | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in args.k:
        for dtype_name in args.dtype:
            for role in args.role:
                r = compile_role(role, group, k, dtype_name, args.tile, args.arch)
                print(f"| {r['role']} | {r['group']} | {r['k']} | {r['dtype']} | {r['tile']} | {r['registers']} | "
                      f"{r['spills']} | {r['shared']} | {r['mma']} | {r['per_1024']:.2f} | {r['matmul_mma']} | "
                      f"{r['matmul_per_1024']:.2f} | {r['ratio']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
