"""An import-linter contract type: no module imports another module's ``_private`` name.

Shared helpers are public and documented where they belong; a leading underscore
means "this module's own business". import-linter checks modules, not names, so
this contract reads each module of the root package that imports another one, and
fails on every ``from hyperslab.x import _name`` (one-line or parenthesised, at top
level or inside a function). Dunder names (``__version__``) are public.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

import grimp
from importlinter.application import output
from importlinter.domain.contract import Contract, ContractCheck


def private_imports(source: str) -> list[tuple[int, str, list[str]]]:
    """``(line, module, [_names])`` of every absolute ``from MODULE import _name`` in
    ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [a.name for a in node.names]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                out.append((node.lineno, node.module, private))
    return out


def _source(root: str, module: str) -> Path | None:
    """The source file of ``module`` of package ``root``, found without importing it
    (an import could fail on the very cycle another contract reports)."""
    if module != root and not module.startswith(root + "."):
        return None
    spec = importlib.util.find_spec(root)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)))
    parts = module.split(".")[1:]
    for candidate in (
        base.joinpath(*parts).with_suffix(".py"),
        base.joinpath(*parts, "__init__.py"),
    ):
        if parts and candidate.is_file():
            return candidate
    return base / "__init__.py" if not parts else None


class PrivateNamesContract(Contract):
    type_name = "private_names"

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        root = self.session_options["root_packages"][0]
        found: list[dict[str, Any]] = []
        for importer in sorted(graph.modules):
            path = _source(root, importer)
            if path is None:
                continue
            source = path.read_text(encoding="utf-8")
            for line, module, names in private_imports(source):
                if module.startswith(root) and module != importer:
                    found.append(
                        {"importer": importer, "imported": module, "line": line, "names": names}
                    )
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for f in check.metadata["found"]:
            output.print_error(
                f"{f['importer']} (l. {f['line']}) imports {', '.join(f['names'])} "
                f"from {f['imported']}: make it public and documented where it belongs, "
                "or move it",
                bold=False,
            )
            output.new_line()
