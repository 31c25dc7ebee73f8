"""The expiry index: which stored bodies expire when (docs/protocol.md §3, retention).

Every entry stored with its body and a non-zero ``expires_ms`` gets one ``expiries``
row (agent/storage/batch.py). The table has an ``entry_no`` column, so
:meth:`agent.storage.ledger.Ledger.drop_bodies` deletes a row with the body it indexes
(expired or erased), and what is left is exactly the bodies still to expire.

Invariants:
- Read-only here, apart from the migration: the node's sweeper
  (agent/node/retention.py) drops what :func:`due` lists.
- Every read is bounded (``limit`` at most ``MAX_DUE``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

import msgpack

__all__ = ["MAX_DUE", "due", "migrate_v6", "next_expiry"]

MAX_DUE = 1000
"""Most entry ids one :func:`due` call returns (one drop transaction)."""
_EXPIRES_FIELD = 9  # the header's expires_ms (docs/protocol.md §3)


class Ledger(Protocol):
    """The ledger's read (agent/storage/core.py ``LedgerCore._fetch``)."""

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...


def migrate_v6(conn: sqlite3.Connection) -> None:
    """Schema version 6: the expiry index, filled from the stored headers."""
    conn.execute("CREATE TABLE expiries (entry_no INTEGER PRIMARY KEY, "
                 "expires_ms INTEGER NOT NULL)")
    conn.execute("CREATE INDEX expiries_by_time ON expiries (expires_ms)")
    rows = []
    for entry_no, header in conn.execute(
            "SELECT entry_no, header FROM entries WHERE body IS NOT NULL"):
        expires = msgpack.unpackb(header)[_EXPIRES_FIELD]
        if expires:
            rows.append((entry_no, expires))
    conn.executemany("INSERT INTO expiries (entry_no, expires_ms) VALUES (?, ?)", rows)


async def due(ledger: Ledger, now_ms: int, limit: int = MAX_DUE) -> list[bytes]:
    """Ids (32 bytes) of stored bodies whose expiry is at or before ``now_ms``,
    earliest first, at most ``limit``."""
    rows = await ledger._fetch(
        "SELECT e.hash FROM expiries x JOIN entries e ON e.entry_no = x.entry_no "
        "WHERE x.expires_ms <= ? ORDER BY x.expires_ms LIMIT ?",
        (now_ms, max(1, min(limit, MAX_DUE))))
    return [bytes(r[0]) for r in rows]


async def next_expiry(ledger: Ledger) -> int | None:
    """The earliest expiry still ahead (ms since the epoch), None when none is."""
    rows = await ledger._fetch("SELECT MIN(expires_ms) FROM expiries")
    return None if not rows or rows[0][0] is None else int(rows[0][0])
