"""Every package of agent/ says what it is for and re-exports its public names: each
name in ``__all__`` resolves (lazily, agent/reexport.py) to the object its own module
defines, and nothing else is offered."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from agent.reexport import _table

AGENT = Path(__file__).resolve().parents[2] / "agent"
PACKAGES = sorted(p.parent.name for p in AGENT.glob("*/__init__.py"))


def test_packages_are_found() -> None:
    assert {"api", "config", "node", "peering", "storage", "workers", "web"} <= set(PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_have_a_docstring_and_all(name: str) -> None:
    package = importlib.import_module(f"agent.{name}")
    assert (package.__doc__ or "").strip(), f"agent.{name} says nothing of what it is for"
    assert package.__all__ and len(set(package.__all__)) == len(package.__all__)


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_every_exported_name_resolves_to_its_module(name: str) -> None:
    package = importlib.import_module(f"agent.{name}")
    lazy = _table(Path(package.__file__ or ""))
    if lazy:  # the lazily re-exported packages: __all__ is exactly their import list
        assert set(package.__all__) == set(lazy), f"agent.{name}: __all__ and imports differ"
    for export in package.__all__:
        value = getattr(package, export)
        module = lazy.get(export)
        if module is not None:
            assert value is getattr(importlib.import_module(module), export)


def test_packages_an_unknown_name_is_an_attribute_error() -> None:
    import agent.storage

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        agent.storage.Nope  # noqa: B018


def test_packages_a_helper_process_does_not_load_the_ledger() -> None:
    # What lazy re-exports are for: a reader imports one storage module, not all.
    code = ("import sys, agent.workers.reader, agent.workers.verify; "
            "print('agent.storage.ledger' in sys.modules, 'aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
