"""protocol/ is sans-I/O: it imports only what is on an allow list.

No clock, randomness, OS, sockets, threads or event loop of its own: the standard
library modules below are the pure ones protocol/ needs, plus msgpack, nacl, pydantic
and idna. Anything else (``os``, ``time``, ``random``, ``asyncio``, ``urllib.request``,
the agent...) fails, naming the module and the import. Adding to the list is a design
decision: say why in the commit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ALLOWED_STDLIB = frozenset({
    "__future__", "base64", "binascii", "collections", "dataclasses", "datetime", "enum",
    "functools", "hashlib", "heapq", "hmac", "ipaddress", "itertools", "json", "re",
    "typing", "unicodedata", "urllib.parse",
})
ALLOWED_THIRD_PARTY = frozenset({"msgpack", "nacl", "pydantic", "idna"})
ALLOWED = ALLOWED_STDLIB | ALLOWED_THIRD_PARTY | {"protocol"}
# Per-module additions: the package's lazy re-exports (PEP 562) load protocol's own
# modules by name.
ALLOWED_IN = {"__init__.py": frozenset({"importlib"})}

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
MODULES = sorted(PROTOCOL.rglob("*.py"))


def imported_names(source: str) -> set[str]:
    """Every module a source imports, dotted: ``from a.b import c`` gives ``a.b.c``
    (``c`` may be a submodule), a relative import ``protocol.<name>``, and a call of
    ``__import__`` the name ``__import__`` (a dynamic import the walk cannot see)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 and node.module else "protocol"
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__"):
            names.add("__import__")
    return names


def _allowed(name: str, allowed: frozenset[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def not_allowed(source: str, allowed: frozenset[str] = ALLOWED) -> list[str]:
    """The imports of ``source`` that are not on the allow list, sorted."""
    return sorted(n for n in imported_names(source) if not _allowed(n, allowed))


def test_purity_walks_every_protocol_module() -> None:
    assert len(MODULES) >= 5


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_purity_protocol_module_imports_only_the_allow_list(path: Path) -> None:
    allowed = ALLOWED | ALLOWED_IN.get(path.name, frozenset())
    bad = not_allowed(path.read_text(), allowed)
    assert not bad, (
        f"protocol/{path.relative_to(PROTOCOL)} imports {', '.join(bad)}: protocol/ is "
        f"sans-I/O and may import only {', '.join(sorted(allowed))} "
        f"(the allow list in tests/protocol/test_purity.py)")


def test_purity_checker_refuses_an_import_not_on_the_list() -> None:
    source = ("import os.path\nfrom time import monotonic\nimport asyncio\n"
              "from urllib import request\nimport urllib.request\n__import__('x')\n")
    assert not_allowed(source) == ["__import__", "asyncio", "os.path", "time.monotonic",
                                   "urllib.request"]


def test_purity_checker_accepts_what_is_on_the_list() -> None:
    source = ("from __future__ import annotations\nfrom collections.abc import Mapping\n"
              "import nacl.bindings as sodium\nfrom urllib.parse import urlsplit\n"
              "from urllib import parse\nfrom . import errors\n"
              "from protocol.keys import Identity\n")
    assert not_allowed(source) == []


def test_purity_importlib_only_where_listed() -> None:
    assert not_allowed("import importlib\n") == ["importlib"]


def test_purity_allow_list_holds_only_what_protocol_uses() -> None:
    used = set().union(*(imported_names(path.read_text()) for path in MODULES))
    unused = [name for name in ALLOWED_STDLIB | ALLOWED_THIRD_PARTY
              if not any(_allowed(u, frozenset({name})) for u in used)]
    assert not unused, f"on the allow list but imported by no protocol module: {unused}"
