"""An import-linter contract type: no module imports another module's ``_private`` name.

Shared helpers are public and documented where they belong; a leading underscore
means "this module's own business". import-linter checks modules, not names, so
this contract reads the source line of every import within the root package (as
grimp recorded it) and fails on ``from hyperslab.x import _name``. Dunder names
(``__version__``) are public.
"""

from __future__ import annotations

import ast
from typing import Any

import grimp
from importlinter.application import output
from importlinter.domain.contract import Contract, ContractCheck


def private_names(line: str, module: str) -> list[str]:
    """The ``_private`` names a ``from MODULE import ...`` statement takes."""
    try:
        tree = ast.parse(line.strip().rstrip("\\").rstrip("(") + (")" if "(" in line else ""))
    except SyntaxError:
        tree = None
    names: list[str] = []
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == module:
                names += [a.name for a in node.names]
    return [n for n in names if n.startswith("_") and not n.startswith("__")]


class PrivateNamesContract(Contract):
    type_name = "private_names"

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        root = self.session_options["root_packages"][0]
        found: list[dict[str, Any]] = []
        for importer in sorted(graph.modules):
            if not importer.startswith(root):
                continue
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if not imported.startswith(root) or imported == importer:
                    continue
                for detail in graph.get_import_details(importer=importer, imported=imported):
                    names = private_names(detail["line_contents"], imported)
                    if names:
                        found.append(
                            {
                                "importer": importer,
                                "imported": imported,
                                "line_number": detail["line_number"],
                                "names": names,
                            }
                        )
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for f in check.metadata["found"]:
            output.print_error(
                f"{f['importer']} (l. {f['line_number']}) imports {', '.join(f['names'])} "
                f"from {f['imported']}: make it public and documented where it belongs, "
                "or move it",
                bold=False,
            )
            output.new_line()
