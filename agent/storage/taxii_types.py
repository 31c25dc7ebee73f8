"""The TAXII index's value types: its two collections, version filters, served rows and
pages, and what the post path tells the index of an entry it has just stored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from protocol.payloads import Payload

__all__ = ["Collection", "IndexPage", "IndexRow", "KnownObject", "OriginInfo", "VersionFilter"]


class Collection(StrEnum):
    """The two collections: everything this node can read, and its own entries."""

    ALL = "in_all"
    OWN = "in_own"


@dataclass(frozen=True)
class VersionFilter:
    """``match[version]``: any of last / first / all / exact versions (µs)."""

    last: bool = True
    first: bool = False
    all: bool = False
    exact: tuple[int, ...] = ()


@dataclass(frozen=True)
class IndexRow:
    """One served object version."""

    row: int
    added_us: int
    stix_id: str
    version: str
    json: str


@dataclass(frozen=True)
class IndexPage:
    rows: list[IndexRow]
    more: bool


OriginInfo = Callable[[str], tuple[str | None, str | None]]
"""origin key text → (display name, jurisdiction), from the trust list."""


@dataclass(frozen=True)
class KnownObject:
    """What the post path knows of an entry it has just stored: its payload and, when
    it rendered the entry's object already, the object's text (``object_json``) with
    its id, version and spec_version (``json`` None: the index renders it)."""

    payload: Payload
    json: str | None = None
    stix_id: str = ""
    version: str | None = None
    spec_version: str = "2.1"
