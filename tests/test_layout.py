"""The package's shape, held by tests: the import contracts of ``make lint`` fail when
broken, no module grows past ~900 lines, and every package the code imports is declared.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "hyperslab"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 900


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "egg-info" not in str(p))


def test_no_module_does_too_many_jobs() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def _imports(path: Path) -> dict[str, bool]:
    """Top-level package names ``path`` imports → whether every such import is guarded
    (inside a ``try``: optional at run time)."""
    out: dict[str, bool] = {}

    def visit(node: ast.AST, guarded: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        for name in names:
            out[name] = out.get(name, True) and guarded
        for child in ast.iter_child_nodes(node):
            visit(child, guarded or isinstance(node, ast.Try))

    visit(ast.parse(path.read_text()), False)
    return out


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    optional = {
        _requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs
    }
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for path in _modules():
        for name, guarded in _imports(path).items():
            if name in sys.stdlib_module_names or name == "hyperslab":
                continue
            names = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
            if names & declared:
                continue
            if guarded and names & optional:  # optional at run time, and in an extra
                continue
            missing.setdefault(name, []).append(str(path.relative_to(SRC)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


# --------------------------------------------------------------------------- contracts


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's sources, pyproject.toml and lint contracts, to break on purpose."""
    if not LINT_IMPORTS.exists():
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(SRC, root / "src" / "hyperslab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "lint", root / "lint", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True
    )


def test_the_contracts_hold_on_the_code(tree_copy: Path) -> None:
    out = _lint(tree_copy)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 kept, 0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a format module reaching up into a reader face
        ("references/tree.py", "from hyperslab.access import store", "Layers"),
        # sync importing zarr (it reads chunks through the reading core, never arrays)
        ("sync/plan.py", "import zarr", "neither zarr nor xarray"),
        # storage importing anything above it
        ("storage/keys.py", "from hyperslab.references import format", "Layers"),
        # two modules of one package importing each other
        ("references/keys.py", "from hyperslab.references import repository", "No import cycles"),
        # another module's private helper, also when the import is parenthesised
        (
            "reading/routing.py",
            "from hyperslab.reading.chunk_cache import _name",
            "another module's _private name",
        ),
        (
            "sync/report.py",
            "from hyperslab.sync.plan import (\n    CopyItem,\n    _catalog_maker,\n)",
            "another module's _private name",
        ),
    ],
)
def test_a_broken_contract_fails_lint(
    tree_copy: Path, module: str, line: str, contract: str
) -> None:
    path = tree_copy / "src" / "hyperslab" / module
    original = path.read_text()
    head, sep, rest = original.partition("\nfrom __future__ import annotations\n")
    path.write_text(head + sep + line + "  # noqa\n" + rest)
    try:
        out = _lint(tree_copy)
    finally:
        path.write_text(original)
    assert out.returncode != 0, out.stdout
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, out.stdout
