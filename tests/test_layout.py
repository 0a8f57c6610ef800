"""The layout DESIGN.md and the README promise: imports point one way, jobs/ → tuning/ → pipeline/."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_packages(path: pathlib.Path) -> set[str]:
    """Top-level packages a module imports, wherever the import statement sits (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package, forbidden", [("pipeline", {"jobs", "tuning", "benchmarks", "tests"}),
                                                ("tuning", {"jobs", "benchmarks", "tests"})])
def test_imports_point_one_way(package, forbidden):
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jobs.common import log\n")
    assert "jobs" in imported_packages(module)
