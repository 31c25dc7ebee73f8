"""Modules of one concept: none in agent/ or protocol/ is over the house size of 600
lines (docs/architecture.md, "Packages and layers"). A module that grows past it is split
along its seams, not allowed a little more."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOUSE_SIZE = 600
MODULES = sorted([*ROOT.joinpath("agent").rglob("*.py"), *ROOT.joinpath("protocol").rglob("*.py")])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_house_size_module_is_at_most_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= HOUSE_SIZE, f"{path.relative_to(ROOT)} has {lines} lines: split it"
