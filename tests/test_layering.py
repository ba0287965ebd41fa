"""The data flow of design.md: phantoms/, metrics/ and reports/ import none of our packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"phantoms", "metrics", "reports", "validation"}
LEAVES = ["phantoms", "metrics", "reports"]


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_packages_import_none_of_ours(leaf: str) -> None:
    files = sorted((ROOT / leaf).rglob("*.py"))
    assert files, f"{leaf}/ has no Python files"
    offending = {
        str(f.relative_to(ROOT)): sorted((_imported_top_levels(f) & OURS) - {leaf})
        for f in files
    }
    offending = {k: v for k, v in offending.items() if v}
    assert offending == {}


def test_checker_sees_imports(tmp_path: Path) -> None:
    # the checker itself must be able to fail: every import form is seen
    f = tmp_path / "m.py"
    f.write_text("import validation.cli\nfrom metrics import acc\nif True:\n    import reports\n")
    assert _imported_top_levels(f) == {"validation", "metrics", "reports"}
