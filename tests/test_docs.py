"""Every Python snippet of the README and of docs/*.md runs as written (each on its own, in a fresh namespace, on
the CPU), and docs/api.md documents every public name."""

from __future__ import annotations

import json
import os
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


BLOCKS = {str(path.relative_to(ROOT)): _python_blocks(path.read_text(encoding="utf-8")) for path in DOCUMENTS}
BLOCKS = {document: blocks for document, blocks in BLOCKS.items() if blocks}

# Runs one document's snippets in order, each in a fresh namespace (its source readable, as from a file), and names
# the first that fails.
_RUNNER = """
import json, linecache, sys, traceback
for where, code in json.load(sys.stdin):
    linecache.cache[where] = (len(code), None, code.splitlines(True), where)  # inspect (@triton.jit) reads it
    try:
        exec(compile(code, where, "exec"), {"__name__": "doc_snippet"})
    except BaseException:
        sys.exit(f"{where} failed:\\n{traceback.format_exc()}")
"""


def test_docs_have_python_snippets():
    assert len(BLOCKS["README.md"]) >= 4
    assert sum(len(blocks) for document, blocks in BLOCKS.items() if document.startswith("docs")) >= 4


@pytest.mark.parametrize("document", sorted(BLOCKS))
def test_snippets_run(document):
    """Each document in a fresh process, as a reader pastes it: libraries that cache state globally (e2cnn's and
    escnn's sampled bases) start as a user finds them, not as earlier tests left them."""
    snippets = [(f"{document}:{line}", code) for line, code in BLOCKS[document]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "GCONV_TRITON_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(snippets), capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


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
