"""Lazy re-exports for a package's ``__init__``: its public names, loaded on first use.

Why: helper processes import one module of a package (a reader imports
``agent.storage.lookup``, a verify worker ``agent.storage.queries``); an ``__init__``
that imported every module eagerly would load the ledger, aiosqlite and the TAXII index
into each of them (measured: +4 MiB and +230 ms per helper process).

How: the package writes its re-exports as ordinary imports under
``if TYPE_CHECKING:`` (so type checkers and readers see exactly what is exported, from
where) and sets ``__getattr__ = lazy_exports(__name__, __file__)``. The first access to
a name reads those import statements once and imports the one module that holds it.
The import statements are the one source of truth; nothing is listed twice.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path

__all__ = ["lazy_exports"]


def _table(path: Path) -> dict[str, str]:
    """name -> module of every ``from M import name`` under ``if TYPE_CHECKING:``."""
    table: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
                for alias in statement.names:
                    table[alias.asname or alias.name] = statement.module
    return table


def lazy_exports(package: str, init_file: str) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``, whose ``__init__`` is ``init_file``.

    Raises (from the returned function):
        AttributeError: the name is not one of the package's re-exports.
    """
    table: dict[str, str] | None = None

    def __getattr__(name: str) -> object:
        nonlocal table
        if table is None:
            table = _table(Path(init_file))
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)  # next time: plain lookup
        return value

    return __getattr__
