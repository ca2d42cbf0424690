"""Reading a compiled Triton kernel without running it: its SASS hot loop and how its ``tl.dot`` operands arrive.

Pure text functions over what ``triton.compile`` leaves in ``kernel.asm`` (``ttir``, ``ttgir``, ``cubin``) and
what ``nvdisasm`` prints, so that ``perf.static`` can say, for any kernel and any GPU target:

- the *hot loop*: the innermost SASS loop (a backward branch) that holds a tensor-core instruction (``HGMMA`` is
  Hopper's ``wgmma``, ``HMMA`` is ``mma.sync``, ``DMMA`` its fp64 form); a loop of plain FMAs when there is none;
- its length and mix (global loads ``LDG``, ``cp.async`` = ``LDGSTS``, TMA = ``UTMALDG``, 64-bit integer
  multiply-adds ``IMAD.WIDE`` ...), and the MACs one iteration does, from the instruction shapes;
- for each ``tl.dot`` operand, the way it reaches the tensor cores (``cp.async``, ``TMA`` or plain loads) from the
  TTGIR: which op writes the shared-memory buffer the dot reads.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from typing import Optional

# Tensor-core instructions.  HGMMA/IGMMA/QGMMA are issued by a warp group (4 warps) for the group's 64-row slice;
# HMMA/IMMA/DMMA by each warp for its own tile.
MMA_OPCODES = ("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA", "DMMA")
WARPGROUP_MMA = ("HGMMA", "IGMMA", "QGMMA")
FMA_OPCODES = ("FFMA", "DFMA", "HFMA2")
# The m·n·k of the mma.sync shapes that SASS writes as digit strings (HMMA.16816: m16 n8 k16).
_DIGIT_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4), "16832": (16, 8, 32),
                 "8816": (8, 8, 16), "16864": (16, 8, 64)}

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET = re.compile(r"`\(?(\.L_x_\d+)\)?")


@dataclasses.dataclass(frozen=True)
class Instr:
    addr: int
    opcode: str          # with its modifiers, e.g. "HGMMA.64x128x16.F32.BF16"
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]


def parse_sass(text: str) -> tuple[list[Instr], dict[str, int]]:
    """``nvdisasm -c`` output -> (instructions in address order, label -> index of the instruction it marks)."""
    instrs: list[Instr] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if m:
            for name in pending:
                labels[name] = len(instrs)
            pending = []
            instrs.append(Instr(int(m.group(1), 16), m.group(3), m.group(4)))
    for name in pending:
        labels[name] = len(instrs)
    return instrs, labels


def loops(instrs: list[Instr], labels: dict[str, int]) -> list[tuple[int, int]]:
    """Every loop as ``(first, last)`` instruction indices: a branch back to a label at or before it."""
    found = []
    for i, ins in enumerate(instrs):
        if ins.base not in ("BRA", "JMP"):
            continue
        m = _TARGET.search(ins.operands)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            found.append((labels[m.group(1)], i))
    return found


def mma_shape(opcode: str) -> Optional[tuple[int, int, int]]:
    """``(m, n, k)`` of one tensor-core instruction: ``HGMMA.64x128x16...`` or ``HMMA.16816...``."""
    parts = opcode.split(".")
    for p in parts[1:]:
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", p)
        if m:
            return tuple(int(v) for v in m.groups())
        if p in _DIGIT_SHAPES:
            return _DIGIT_SHAPES[p]
    return None


@dataclasses.dataclass
class HotLoop:
    instructions: int                  # static length of the loop body
    mma: str                           # "HGMMA", "HMMA", "DMMA", ..., or "none"
    mma_opcode: str                    # one full opcode (shape and types), "" without MMA
    mma_count: int
    macs_per_warp: int                 # MACs one iteration's MMA instructions do, per issuing warp or warp group
    counts: dict[str, int]             # instructions by class (see CLASSES)

    def macs(self, num_warps: int) -> int:
        """MACs one iteration does for the whole program (warp-group MMAs are shared by 4 warps)."""
        per = 4 if self.mma in WARPGROUP_MMA else 1
        return self.macs_per_warp * max(num_warps // per, 1)

    def per_1024_macs(self, num_warps: int, macs: Optional[int] = None) -> Optional[float]:
        """Warp-instructions the program issues per 1024 MACs: loop length x warps x 1024 / MACs per iteration."""
        macs = macs or self.macs(num_warps)
        return self.instructions * num_warps * 1024 / macs if macs else None


# Instruction classes reported for a hot loop (by opcode prefix, with modifiers where they matter).
CLASSES = {
    "LDG": lambda op: op.startswith("LDG.") or op == "LDG",
    "LDGSTS": lambda op: op.startswith("LDGSTS"),
    "UTMALDG": lambda op: op.startswith("UTMALDG"),
    "STS": lambda op: op.startswith("STS"),
    "LDS": lambda op: op.startswith("LDS") or op.startswith("LDSM"),
    "IMAD.WIDE": lambda op: op.startswith("IMAD.WIDE"),
    "carry": lambda op: op.startswith("IADD3.X") or op.startswith("IMAD.X") or op.startswith("LEA.HI.X")
                        or op.startswith("IADD.64") or op.startswith("UIADD3.X"),
    "BAR": lambda op: op.startswith("BAR") or op.startswith("SYNCS") or op.startswith("DEPBAR")
                      or op.startswith("WARPGROUP"),
    "STL/LDL": lambda op: op.startswith("STL") or op.startswith("LDL"),
}


def is_fma(ins: Instr) -> bool:
    """A multiply-add doing arithmetic: not ptxas's way of setting a register to a constant, ``HFMA2.MMA R3, -RZ,
    RZ, 0, 0`` (a product of zero registers plus an immediate)."""
    return ins.base in FMA_OPCODES and not re.search(r"-?RZ,\s*-?RZ\b", ins.operands)


def hot_loop(instrs: list[Instr], labels: dict[str, int]) -> Optional[HotLoop]:
    """The innermost loop holding a tensor-core instruction (the whole kernel when the compiler unrolled that loop
    away); without one, the innermost loop with the most FMAs (an fp32 ``tl.dot`` without tf32, or an elementwise
    kernel).  None for straight-line code without MMAs."""
    def is_mma(ins):
        return ins.base in MMA_OPCODES

    def count(span, test):
        return sum(test(instrs[i]) for i in range(span[0], span[1] + 1))

    spans = loops(instrs, labels)
    has_mma = any(is_mma(ins) for ins in instrs)
    if not spans and not has_mma:
        return None
    with_mma = [s for s in spans if count(s, is_mma)]
    if with_mma:
        span = min(with_mma, key=lambda s: s[1] - s[0])
    elif has_mma:
        # the compiler unrolled the MMA loop entirely (a short constant trip count): read the whole kernel, prologue
        # and epilogue included, so its figure per MAC is an upper bound on the loop's
        span = (0, len(instrs) - 1)
    else:
        with_fma = [s for s in spans if count(s, is_fma)]
        if not with_fma:
            return None
        best = max(count(s, is_fma) for s in with_fma)
        span = min((s for s in with_fma if count(s, is_fma) == best), key=lambda s: s[1] - s[0])
    body = instrs[span[0]:span[1] + 1]
    mmas = [ins for ins in body if is_mma(ins)]
    macs = 0
    for ins in mmas:
        shape = mma_shape(ins.opcode)
        macs += shape[0] * shape[1] * shape[2] if shape else 0
    counts = {name: sum(test(ins.opcode) for ins in body) for name, test in CLASSES.items()}
    counts["FMA"] = sum(is_fma(ins) for ins in body)
    return HotLoop(len(body), mmas[0].base if mmas else "none", mmas[0].opcode if mmas else "", len(mmas), macs,
                   counts)


def disassemble(cubin: bytes, nvdisasm: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout


# ------------------------------------------------------------------------------------------------- TTIR/TTGIR
_DOT_TTIR = re.compile(r"tt\.dot\s+[^:]*?(?:inputPrecision\s*=\s*(\w+)\s*)?:\s*tensor<(\d+)x(\d+)x(\w+)>\s*\*\s*"
                       r"tensor<(\d+)x(\d+)x(\w+)>\s*->\s*tensor<(\d+)x(\d+)x(\w+)>")


@dataclasses.dataclass(frozen=True)
class Dot:
    m: int
    n: int
    k: int
    a_type: str          # "bf16", "f16", "f32", "f64"
    acc_type: str
    precision: str       # "ieee", "tf32", ... ("" when the IR does not say: the default)

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k


def dots(ttir: str) -> list[Dot]:
    """The ``tl.dot`` ops of a kernel, from its TTIR (before layouts), in program order."""
    out = []
    for m in _DOT_TTIR.finditer(ttir):
        prec, am, ak, at, bk, bn, _, cm, cn, ct = m.groups()
        out.append(Dot(int(am), int(bn), int(ak), at, ct, prec or ""))
    return out


_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?\s*=\s*([\w.]+)(.*)$")
_NAME = re.compile(r"%[\w.$-]+")
_ITER_ARGS = re.compile(r"iter_args\(([^)]*)\)")
_VIEW_OPS = ("ttg.memdesc_index", "ttg.memdesc_subview", "ttg.memdesc_subslice", "ttg.memdesc_trans",
             "ttg.memdesc_reinterpret", "ttg.memdesc_reshape", "ttg.local_load", "ttg.convert_layout", "tt.trans",
             "tt.reshape", "tt.fp_to_fp", "arith.extf", "arith.truncf", "tt.bitcast")
_DOT_OPS = ("ttng.warp_group_dot", "tt.dot", "ttng.tc_gen5_mma")


def _operands(rest: str) -> list[str]:
    """SSA names an op reads (everything before its ``:`` type signature)."""
    head = rest.split(" : ", 1)[0]
    return _NAME.findall(head)


def operand_sources(ttgir: str) -> list[str]:
    """How each operand of the first dot reaches it: ``"TMA"``, ``"cp.async"`` (into a multi-buffered shared
    ring), ``"LDG"`` (plain loads into registers, then stored to shared memory or fed from registers) or ``"?"``."""
    # MLIR reuses an SSA name in sibling regions (the pipelined loop, then its peeled tail in an ``scf.if``): the
    # dot's operands are traced through the definitions printed before it, the shared buffers' views through all
    defs: dict[str, tuple[str, list[str]]] = {}
    view_defs: list[tuple[str, list[str]]] = []
    writers: list[tuple[str, list[str]]] = []
    dot: Optional[list[str]] = None
    dot_defs: dict[str, tuple[str, list[str]]] = {}
    for line in ttgir.splitlines():
        line = line.split(" loc(", 1)[0]
        for group in _ITER_ARGS.findall(line):
            for pair in group.split(","):
                if "=" in pair:
                    name, init = (p.strip() for p in pair.split("=", 1))
                    defs[name] = ("iter_arg", _NAME.findall(init))
        m = _DEF.match(line)
        if m:
            name, op, rest = m.groups()
            defs[name] = (op, _operands(rest))
            if op in _VIEW_OPS:
                view_defs.append((name, _operands(rest)))
            if dot is None and op in _DOT_OPS:
                dot = _operands(rest)[:2]
                dot_defs = dict(defs)
        else:
            stripped = line.strip()
            op = stripped.split(" ", 1)[0]
            if op.startswith(("ttg.", "ttng.")):
                writers.append((op, _operands(stripped[len(op):])))
        if m and ("async_copy" in m.group(2) or "tma" in m.group(2) or m.group(2) == "ttg.local_store"):
            writers.append((m.group(2), _operands(m.group(3))))
    if dot is None:
        return []

    def root(v: str, depth: int = 0) -> tuple[str, str]:
        """(kind, name): kind "buffer" for a shared allocation without a source, else "registers"/"?"."""
        if depth > 40 or v not in dot_defs:
            return "?", v
        op, args = dot_defs[v]
        if op == "ttg.local_alloc":
            return ("registers", v) if args else ("buffer", v)
        if op == "tt.load":
            return "registers", v
        if op in _VIEW_OPS or op == "iter_arg":
            return root(args[0], depth + 1) if args else ("?", v)
        return "?", v

    def aliases(buf: str) -> set[str]:
        names = {buf}
        grew = True
        while grew:
            grew = False
            for name, args in view_defs:
                if name not in names and args and args[0] in names:
                    names.add(name)
                    grew = True
        return names

    out = []
    for v in dot:
        kind, name = root(v)
        if kind == "registers":
            out.append("LDG")
        elif kind == "buffer":
            views = aliases(name)
            ops = [op for op, args in writers if set(args) & views]
            if any("tma" in op for op in ops):
                out.append("TMA")
            elif any("async_copy" in op for op in ops):
                out.append("cp.async")
            elif any(op.endswith("local_store") for op in ops):
                out.append("LDG")
            else:
                out.append("?")
        else:
            out.append("?")
    return out


def wgmma_pendings(ttgir: str) -> Optional[int]:
    """How many ``wgmma`` groups the loop leaves in flight at its wait (0: each waits for the last to finish)."""
    m = re.search(r"warp_group_dot_wait[^{]*\{pendings = (\d+)", ttgir)
    return int(m.group(1)) if m else None
