"""agent/ is layered: a package imports only its own layer's and lower layers' packages,
and no two modules (or packages) import each other, directly or in a ring.

The layers, low to high, are drawn in docs/architecture.md ("Packages and layers").
Imports inside functions count as well as top-level ones (a lazy import is still a
dependency); imports under ``if TYPE_CHECKING:`` count too: a type from a higher layer
is a dependency on it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"agent", "agent.errors", "agent.i18n", "agent.jsoncodec", "agent.metrics",
               "agent.reexport"}),
    frozenset({"agent.config"}),
    frozenset({"agent.tools"}),
    frozenset({"agent.storage"}),
    frozenset({"agent.workers"}),
    frozenset({"agent.peering"}),
    frozenset({"agent.node"}),
    frozenset({"agent.web"}),
    frozenset({"agent.api", "agent.taxii", "agent.misp", "agent.console"}),
    frozenset({"agent.composition", "agent.daemon"}),
    frozenset({"agent.cli"}),
)
"""Each unit of a layer: a package (agent.storage) or a top-level module (agent.errors)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(AGENT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit of a module: ``agent.storage.ledger`` -> ``agent.storage``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer_of(module: str) -> int:
    unit = unit_of(module)
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS and docs/architecture.md")


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of an ``agent`` module in ``path``."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "agent":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "agent":
                continue
            if module == "agent":  # from agent import __version__, or a submodule
                for alias in node.names:
                    sub = f"agent.{alias.name}"
                    yield node.lineno, sub if (AGENT / alias.name).exists() or (
                        AGENT / f"{alias.name}.py").exists() else "agent"
            else:
                yield node.lineno, module


MODULES = sorted(AGENT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(AGENT)))
def test_layers_no_module_imports_a_higher_layer(path: Path) -> None:
    here = module_name(path)
    mine = layer_of(here)
    upward = [f"line {line}: {module}" for line, module in imports_of(path)
              if layer_of(module) > mine]
    assert not upward, f"{here} (layer {mine}) imports a higher layer: {upward}"


def _graph(key: object) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        here = module_name(path)
        node = key(here)  # type: ignore[operator]
        for _, module in imports_of(path):
            target = key(module)  # type: ignore[operator]
            if target != node:
                graph.setdefault(node, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_layers_no_import_cycle_between_packages() -> None:
    cycle = find_cycle(_graph(unit_of))
    assert cycle is None, " -> ".join(cycle or ())


def test_layers_no_import_cycle_between_modules() -> None:
    # A package's __init__ re-exports its modules; it is not a cycle for a module to
    # import its own package's sibling through it, so __init__ files are left out.
    graph = {node: {t for t in targets if not (AGENT.parent / (t.replace(".", "/"))).is_dir()}
             for node, targets in _graph(str).items()
             if not (AGENT.parent / node.replace(".", "/")).is_dir()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or ())


def test_layers_cycle_finder_finds_a_ring() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
