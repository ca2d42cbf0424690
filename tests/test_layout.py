"""The package's layout (docs/contributing.md): no import cycles between its modules, private names imported only
from the support modules, and every name docs/api.md documents importable from where the doc says.

The import graph is read from the source with ``ast``, every import statement included (those inside functions
too, which hide a cycle from Python but not from a reader): a module that needs a name of another imports it at
its top, or the two are one layer apart.  One exception, by design: the Triton kernels (``gconv_triton.kernels``,
which need triton) sit above the package and are imported inside the functions that launch them, never at a
module's top, so ``import gconv_triton`` needs no triton; those imports are checked to be in functions and are no
edges of the graph.  ``GCONV_TRITON_LAYOUT_ROOT`` points the checks at another checkout.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("GCONV_TRITON_LAYOUT_ROOT", Path(__file__).resolve().parent.parent))
PACKAGE = "gconv_triton"
# where each package's files live (setuptools' package-dir maps gconv_triton.kernels to kernels/)
PACKAGE_DIRS = {PACKAGE: ROOT / "gconv_triton", f"{PACKAGE}.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    """``dotted module name -> file`` for every module of the package (``pkg`` for ``pkg/__init__.py``)."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package] + parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _is_support(name: str) -> bool:
    """A support module (``_args``, ``_support``, ``_spec``, ``_backend``, ``kernels._common``): a private module
    whose names serve the package, private ones included."""
    last = name.rsplit(".", 1)[-1]
    return last.startswith("_") and name not in PACKAGE_DIRS


KERNELS = f"{PACKAGE}.kernels"


def _in_kernels(name: str) -> bool:
    return name == KERNELS or name.startswith(KERNELS + ".")


def _imports(name: str, modules: dict[str, Path]):
    """``(imported module, names taken from it, line, whether at the module's top)`` for every import statement of
    module ``name`` that reaches another module of the package, at any depth of its body."""
    tree = ast.parse(modules[name].read_text(), filename=str(modules[name]))
    package = name if _is_package(name, modules) else name.rsplit(".", 1)[0]
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        at_top = id(node) in top
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, [], node.lineno, at_top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base not in modules:
                continue
            names = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:           # ``from . import functional``: the submodule itself
                    yield sub, [], node.lineno, at_top
                else:
                    names.append(alias.name)
            if names:
                yield base, names, node.lineno, at_top


def _graph():
    """``(edges, private imports, kernels imported at a module's top)`` of the package's import graph."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private, eager_kernels = [], []
    for name in modules:
        for target, names, line, at_top in _imports(name, modules):
            where = f"{modules[name].relative_to(ROOT)}:{line}"
            if _in_kernels(target) and not _in_kernels(name):
                if at_top:
                    eager_kernels.append(f"{where}: {target}")
            elif target != name:
                edges[name].add(target)
            if not _is_support(target):
                private += [f"{where}: {n} from {target}" for n in names
                            if n.startswith("_") and not n.startswith("__")]
    return edges, private, eager_kernels


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a closed path."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # a shortest closed path through each module of the component, each path once
        seen_cycles = set()
        for start in sorted(component):
            cycle = _shortest_cycle(edges, component, start)
            key = frozenset(zip(cycle, cycle[1:]))
            if key not in seen_cycles:
                seen_cycles.add(key)
                cycles.append(cycle)
    return cycles


def _shortest_cycle(edges: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        nxt = sorted(w for w in edges[path[-1]] if w in component)
        if start in nxt:
            return path + [start]
        for w in nxt:
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def test_no_import_cycles():
    edges, _, _ = _graph()
    cycles = _cycles(edges)
    assert not cycles, "import cycles between the package's modules (in-function imports included):\n" + \
        "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_kernels_imported_where_they_launch():
    _, _, eager = _graph()
    assert not eager, "gconv_triton.kernels imported at a module's top (import it where it launches):\n" + \
        "\n".join(eager)


@pytest.mark.parametrize("package", [PACKAGE, KERNELS])
def test_private_names_only_from_support_modules(package):
    _, private, _ = _graph()
    folder = str(PACKAGE_DIRS[package].relative_to(ROOT)) + "/"
    private = [line for line in private if line.startswith(folder)]
    assert not private, "private names imported from a module that is not a support module:\n" + "\n".join(private)


def test_the_cycle_check_sees_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c", "a"]]


# --------------------------------------------------------------------------------------- docs/api.md's names
API_DOC = ROOT / "docs" / "api.md"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def _documented() -> list[tuple[str, str]]:
    """``(module path under gconv_triton, name)`` for every name docs/api.md documents: the first cell of each
    table row (``functional.gconv2d`` is ``gconv_triton.functional``'s ``gconv2d``), every ``gt.module`` it names,
    and in each ``gt.module`` bullet the names it gives that module (a backticked name, or one called with
    arguments); a method named there may belong to a class of that module, a layer to the package."""
    out = []
    bullet_module = None
    for line in API_DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| name"):
            first = line.split("|")[1]
            for token in re.findall(r"`([^`]+)`", first):
                for name in token.split(","):
                    module, _, attr = name.strip().rpartition(".")
                    out.append((module, attr))
        for token in re.findall(r"`gt\.(" + _IDENT + r"(?:\." + _IDENT + r")*)`", line):
            module, _, attr = token.rpartition(".")
            out.append((module, attr))
        bullet = re.match(r"- `gt\.(" + _IDENT + r")`:", line)
        if bullet:
            bullet_module = bullet[1]
        elif not line.startswith("  "):
            bullet_module = None
        if bullet_module is not None:
            body = line[bullet.end():] if bullet else line
            for name in re.findall(r"`(" + _IDENT + r")[(`]", body):
                if re.search("[a-z]", name):  # not a shape letter (``B``, ``C_N``)
                    out.append((bullet_module + "#", name))
    return out


def test_api_doc_is_parsed():
    documented = _documented()
    names = {name for _, name in documented}
    assert {"GroupConv2d", "gconv2d", "filter_bank", "SmallGCNN", "steerable_conv2d"} <= names, names
    assert len(documented) > 60


@pytest.mark.parametrize("module, name", _documented(), ids=lambda v: v)
def test_documented_name_imports(module, name):
    """``gconv_triton.<module>.<name>`` exists (``module#``: a name of that module or a method of one of its
    classes, as the submodule bullets list them)."""
    loose = module.endswith("#")
    module = module.rstrip("#")
    path = f"{PACKAGE}.{module}" if module else PACKAGE
    try:
        owner = importlib.import_module(path)
    except ModuleNotFoundError:  # ``functional.gconv2d``: a module; ``Group.from_tables``: an attribute path
        parent, _, attr = path.rpartition(".")
        owner = getattr(importlib.import_module(parent), attr)
    if hasattr(owner, name):
        return
    if loose:
        classes = [v for v in vars(owner).values() if isinstance(v, type) and v.__module__ == owner.__name__]
        if any(hasattr(cls, name) for cls in classes) or hasattr(importlib.import_module(PACKAGE), name):
            return
    pytest.fail(f"docs/api.md documents {name!r} in {path}, which has no such name")
