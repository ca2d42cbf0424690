"""Every Python snippet of the README and of docs/*.md runs as written (each on its own, in a fresh namespace, on
the CPU), and docs/api.md documents every public name."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```` ```python ```` block, also one indented under a list item."""
    return [(text.count("\n", 0, m.start()) + 1, textwrap.dedent(m.group(2)))
            for m in re.finditer(r"^([ \t]*)```python\n(.*?)^\1```", text, flags=re.DOTALL | re.MULTILINE)]


BLOCKS = [(f"{path.relative_to(ROOT)}:{line}", code)
          for path in DOCUMENTS for line, code in _python_blocks(path.read_text(encoding="utf-8"))]


def test_docs_have_python_snippets():
    assert sum(where.startswith("README.md:") for where, _ in BLOCKS) >= 4
    assert sum(where.startswith("docs") for where, _ in BLOCKS) >= 4


@pytest.mark.parametrize("where,code", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_snippet_runs(where, code):
    exec(compile(code, where, "exec"), {"__name__": "doc_snippet"})  # noqa: S102


def test_submodules_are_attributes_without_eager_imports():
    """``gt.models``, ``gt.interop``, ``gt.autotune`` work after ``import gconv_triton as gt``, and importing the
    package imports none of them nor any optional dependency (a fresh process, so nothing is imported yet)."""
    script = ("import sys\n"
              "import gconv_triton as gt\n"
              "lazy = ['gconv_triton.models', 'gconv_triton.interop', 'gconv_triton.autotune', 'e2cnn', 'escnn',\n"
              "        'sklearn', 'matplotlib']\n"
              "print(sorted(m for m in lazy if m in sys.modules))\n"
              "print(gt.models.p4m_resnet44.__name__, gt.interop.from_e2cnn.__name__, gt.autotune.__name__)\n"
              "print('models' in dir(gt))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "p4m_resnet44 from_e2cnn gconv_triton.autotune", "True"]


def test_api_reference_names_every_public_name():
    """docs/api.md documents every public name of ``gconv_triton``: classes, functions, groups and the submodules
    reached as attributes (other submodules become attributes only once something imports them)."""
    import types

    import gconv_triton

    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    public = [name for name in dir(gconv_triton) if not name.startswith("_")
              and (not isinstance(getattr(gconv_triton, name), types.ModuleType)
                   or name in gconv_triton._LAZY_SUBMODULES)]
    missing = [name for name in public if f"`{name}`" not in api and f"`gt.{name}`" not in api
               and not re.search(rf"`{name}[`(.]", api)]
    assert not missing, f"docs/api.md does not document {missing}"
