"""The tree keeps the shape the README describes.

- Boundaries: only ``vip_worker.sqs`` imports boto3 or botocore; the arbiter (the master)
  imports neither asyncio nor the plugin system; the core (the spine on top and the plugin
  system) imports neither the pipeline nor the job store, which plug in as resources.
- The README's layout section names every folder and top-level module of the package.
- Every import line the docs show runs.
- A module over 400 lines says why in its docstring.

Each check reads the source (``ast``), so a failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "daemon" / "vip_worker"
README = ROOT / "README.md"
MAX_LINES = 400
# The composition root (the command table, and `run` booting the daemon): it wires the
# parts together, so it may name any of them.
COMPOSITION_ROOT = {"cli.py", "boot.py", "__main__.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``, relative imports made absolute;
    ``from a import b`` also yields ``a.b``, which may name a submodule."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(path)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def sources(under: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def offending(paths: list[Path], banned: tuple[str, ...]) -> list[str]:
    def hits(name: str) -> bool:
        return any(name == b or name.startswith(b + ".") for b in banned)
    return [f"{p.relative_to(ROOT)}:{line} imports {name}"
            for p in paths for line, name in imports(p) if hits(name)]


def spine() -> list[Path]:
    return [p for p in PACKAGE.glob("*.py") if p.name not in COMPOSITION_ROOT]


def test_only_the_sqs_package_imports_boto3():
    outside = [p for p in sources() if PACKAGE / "sqs" not in p.parents]
    assert offending(outside, ("boto3", "botocore")) == []


def test_the_arbiter_imports_neither_asyncio_nor_the_plugin_system():
    assert offending([PACKAGE / "arbiter.py"],
                     ("asyncio", "uvloop", "pluggy", "vip_worker.plugins")) == []


def test_importing_the_arbiter_loads_neither_asyncio_nor_plugins_nor_boto3():
    # The master is a small process: what its module pulls in transitively counts too.
    watched = ("('asyncio', 'uvloop', 'pluggy', 'boto3', 'vip_worker.plugins', "
               "'vip_worker.pipeline')")
    code = (f"import sys, vip_worker.arbiter; "
            f"print(' '.join(m for m in {watched} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == []


def test_the_core_imports_neither_the_pipeline_nor_the_store():
    core = spine() + sources(PACKAGE / "plugins")
    assert offending(core, ("vip_worker.pipeline", "vip_worker.store", "vip_worker.web")) == []


def test_boundary_check_names_the_offending_import(tmp_path, monkeypatch):
    # The checks above must be able to fail: a planted import is reported with its place.
    fake = tmp_path / "vip_worker"
    fake.mkdir()
    planted = fake / "arbiter.py"
    planted.write_text("import os\nfrom vip_worker.plugins import load_plugins\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert offending([planted], ("vip_worker.plugins",)) == [
        "vip_worker/arbiter.py:2 imports vip_worker.plugins",
        "vip_worker/arbiter.py:2 imports vip_worker.plugins.load_plugins",
    ]


def readme_layout() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def package_parts() -> list[str]:
    folders = [f"{p.name}/" for p in sorted(PACKAGE.iterdir())
               if p.is_dir() and (p / "__init__.py").exists()]
    modules = [p.name for p in sorted(PACKAGE.glob("*.py"))
               if p.name not in ("__init__.py", "__main__.py")]
    return folders + modules


@pytest.mark.parametrize("part", package_parts())
def test_readme_layout_names_every_folder_and_top_level_module(part):
    assert re.search(rf"(?<![\w/]){re.escape(part)}", readme_layout()), (
        f"README.md's layout section does not name daemon/vip_worker/{part}")


def test_readme_layout_names_no_module_that_does_not_exist():
    named = set(re.findall(r"(?<![\w/.])([a-z_0-9]+\.py)\b", readme_layout()))
    existing = {p.name for p in sources()} | {p.name for p in ROOT.glob("*/*.py")}
    assert named - existing == set()


def doc_import_lines() -> list[tuple[str, str]]:
    """Every ``import vip_worker...`` / ``from vip_worker... import ...`` statement in the
    docs' code blocks, parenthesised continuation lines joined."""
    found = []
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for block in re.findall(r"^```(?:python|py)\n(.*?)^```", page.read_text(encoding="utf-8"),
                                re.MULTILINE | re.DOTALL):
            lines = block.splitlines()
            for i, line in enumerate(lines):
                stripped = line.strip()
                if not re.match(r"(from vip_worker[\w.]* import |import vip_worker)", stripped):
                    continue
                statement = stripped
                j = i
                while statement.count("(") > statement.count(")"):
                    j += 1
                    statement += " " + lines[j].strip()
                found.append((page.name, statement))
    return found


def test_the_docs_show_import_lines():
    assert len(doc_import_lines()) >= 10


@pytest.mark.parametrize(("page", "statement"), doc_import_lines())
def test_every_import_line_in_the_docs_runs(page, statement):
    exec(compile(statement, f"<{page}>", "exec"), {})  # noqa: S102 - the docs' own lines


def test_every_module_over_400_lines_says_why_in_its_docstring():
    unexplained = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and not re.search(r"over 400 lines", docstring, re.I):
            unexplained.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert unexplained == [], ("say why in one line of the docstring ('Over 400 lines because "
                               "...'), or split the module")
