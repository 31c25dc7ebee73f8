"""What the end-to-end tests share: a running local federation of real processes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.cli.localfed import LocalFederation


def running(root: Path, nodes: Iterable[tuple[str, str]],
            links: Iterable[tuple[str, str]]) -> Iterator[LocalFederation]:
    """Set up and start a federation under ``root``; yield it; stop every node after
    (also when the start fails half-way). For fixtures: ``yield from running(...)``."""
    with LocalFederation(root, nodes, links) as federation:
        federation.set_up()
        federation.start()
        yield federation


def submit_green(fed: LocalFederation, name: str, value: str) -> dict[str, object]:
    """A GREEN ipv4-addr observation submitted to node ``name``; the API's answer."""
    body = {"type": "ipv4-addr", "value": value, "tlp": "GREEN"}
    answer: dict[str, object] = fed[name].call("POST", "/api/v1/observations", body)
    return answer
