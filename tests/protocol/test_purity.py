"""protocol/ is sans-I/O: no clock, randomness, OS, sockets or event loop of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"asyncio", "aiohttp", "aiosqlite", "sqlite3", "time", "random", "secrets", "os",
             "socket", "subprocess", "threading", "select", "selectors", "ssl", "agent"}
PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
MODULES = sorted(PROTOCOL.rglob("*.py"))


def imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__"):
            roots.add("__import__")
    return roots


def test_purity_walks_every_protocol_module() -> None:
    assert len(MODULES) >= 5


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_purity_protocol_module_imports_nothing_forbidden(path: Path) -> None:
    bad = imported_roots(path.read_text()) & (FORBIDDEN | {"__import__"})
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_purity_checker_catches_forbidden_import() -> None:
    assert imported_roots("import os.path\nfrom time import monotonic\n") == {"os", "time"}
