"""Reads of mutual-aid threads and capability profiles from the query tables.

Aid entries (protocol/aid.py) this node can read are indexed like every other
non-observation payload: one ``items`` row each, ``kind`` the payload's kind and
``doc`` its JSON (agent/storage/queries.py ``build_record``). Schema version 4 adds
one expression index, on the ``request`` field of those rows, so a thread (a request
and every entry naming it) is two index lookups however large the ledger grows.

Invariants:
- Read-only: nothing here writes. Rows are what the ledger stored; their judgement
  (the thread's state, invalid entries) is the state machine's, in the node.
- A request this node cannot read has no row: it is "not found", exactly like an
  unknown id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.jsoncodec import loads
from protocol.aid import AID_KINDS, CAPABILITIES_KIND, FOLLOW_UP_KINDS
from protocol.keys import b64url_encode


class Ledger(Protocol):
    """The ledger's read (agent/storage/core.py ``LedgerCore._fetch``), as a protocol:
    the schema imports this module for its migration, and the ledger imports the schema."""

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...

__all__ = ["MAX_THREAD", "AidRow", "aid_rows_after", "capability_rows", "last_item_no",
           "migrate_v4", "request_rows", "thread_rows"]

MAX_THREAD = 2000
"""Most follow-ups read for one thread (a flood beyond this is not folded)."""

_THREAD_INDEX = "json_extract(doc, '$.request')"
_SELECT = ("SELECT i.item_no, e.hash, g.key, e.seq, i.ts, i.tlp, i.retracted, i.doc, i.kind "
           "FROM items i JOIN entries e ON e.entry_no = i.entry_no "
           "JOIN origins g ON g.origin_id = i.origin_id ")


def migrate_v4(conn: sqlite3.Connection) -> None:
    """Schema version 4: the thread index of mutual-aid entries."""
    conn.execute(f"CREATE INDEX items_by_aid_request ON items ({_THREAD_INDEX})")


@dataclass(frozen=True)
class AidRow:
    """One readable aid or capabilities entry: its row number, id, author (key text),
    seq, time (ms), TLP, retracted flag, kind and decoded fields (without ``kind``)."""

    item_no: int
    id: str
    origin: str
    seq: int
    ts: int
    tlp: str
    retracted: bool
    kind: str
    fields: dict[str, Any]

    @property
    def payload_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.fields}


def _row(r: Any) -> AidRow:
    return AidRow(int(r[0]), bytes(r[1]).hex(), "ed25519:" + b64url_encode(bytes(r[2])),
                  int(r[3]), int(r[4]), str(r[5]), bool(r[6]), str(r[8]), loads(r[7]))


def _in(kinds: tuple[str, ...]) -> str:
    return f"i.kind IN ({','.join('?' * len(kinds))})"


async def request_rows(ledger: Ledger, *, before: int | None = None,
                       limit: int = 100) -> list[AidRow]:
    """Readable aid requests, newest first, with ``item_no`` below ``before``."""
    where, args = "i.kind = 'aid-request'", [] if before is None else [before]
    if before is not None:
        where += " AND i.item_no < ?"
    rows = await ledger._fetch(f"{_SELECT} WHERE {where} ORDER BY i.item_no DESC LIMIT ?",
                               (*args, limit))
    return [_row(r) for r in rows]


async def thread_rows(ledger: Ledger, request_id: str) -> tuple[AidRow | None, list[AidRow]]:
    """The request with this id (None: unknown or unreadable) and its follow-ups, in
    arrival order (at most ``MAX_THREAD``)."""
    try:
        key = bytes.fromhex(request_id)
    except ValueError:
        return None, []
    if len(key) != 32:
        return None, []
    found = await ledger._fetch(
        f"{_SELECT} WHERE i.entry_no = (SELECT entry_no FROM entries WHERE hash = ?) "
        "AND i.kind = 'aid-request'", (key,))
    if not found:
        return None, []
    rows = await ledger._fetch(
        f"{_SELECT} WHERE {_THREAD_INDEX.replace('doc', 'i.doc')} = ? AND {_in(FOLLOW_UP_KINDS)} "
        "ORDER BY i.item_no LIMIT ?", (request_id, *FOLLOW_UP_KINDS, MAX_THREAD))
    return _row(found[0]), [_row(r) for r in rows]


async def capability_rows(ledger: Ledger) -> list[AidRow]:
    """Every readable, unretracted capability profile, oldest first (the caller keeps
    each origin's newest)."""
    rows = await ledger._fetch(
        f"{_SELECT} WHERE i.kind = ? AND i.retracted = 0 ORDER BY i.item_no LIMIT 100000",
        (CAPABILITIES_KIND,))
    return [_row(r) for r in rows]


async def aid_rows_after(ledger: Ledger, item_no: int, limit: int = 500) -> list[AidRow]:
    """Aid entries stored after row ``item_no``, in arrival order (the node's watcher)."""
    rows = await ledger._fetch(
        f"{_SELECT} WHERE i.item_no > ? AND {_in(AID_KINDS)} ORDER BY i.item_no LIMIT ?",
        (item_no, *AID_KINDS, limit))
    return [_row(r) for r in rows]


async def last_item_no(ledger: Ledger) -> int:
    rows = await ledger._fetch("SELECT max(item_no) FROM items")
    return int(rows[0][0] or 0)
