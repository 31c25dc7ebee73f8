"""Reads for erasure: erasure and receipt entries, and the state of their targets.

Erasure and receipt entries (protocol/erasure.py) this node can read are indexed like
every other non-observation payload: one ``items`` row each, ``kind`` the payload's
kind and ``doc`` its JSON (agent/storage/queries.py ``build_record``). Dropping a body
is :meth:`agent.storage.ledger.Ledger.drop_bodies`; this module only reads.

Invariants:
- Read-only. Which erasure applies (its author is the target's origin) is judged by
  the node (agent/node/erasure.py) with :func:`protocol.erasure.erasure_applies`.
- Every read is bounded (``limit``, ``MAX_RECEIPTS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.jsoncodec import loads
from protocol.erasure import ERASURE_KIND, RECEIPT_KIND

__all__ = ["MAX_RECEIPTS", "ErasureRow", "TargetState", "erasure_rows_after", "erasures_of",
           "receipt_rows", "target_states"]

MAX_RECEIPTS = 2000
"""Most receipts read for one erased entry (one per node of the federation)."""


class Ledger(Protocol):
    """The ledger's read (agent/storage/core.py ``LedgerCore._fetch``)."""

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...


@dataclass(frozen=True)
class ErasureRow:
    """One readable erasure or receipt entry: row number, id (hex), author (raw key),
    time (ms), TLP, the target's id (hex) and, for a receipt, the erasure's id."""

    item_no: int
    id: str
    origin: bytes
    ts: int
    tlp: str
    target: str
    erasure: str | None


@dataclass(frozen=True)
class TargetState:
    """A stored entry: its author (raw key), body state, TLP and audience header bytes."""

    hash: bytes
    origin: bytes
    body_state: str


_SELECT = ("SELECT i.item_no, e.hash, g.key, i.ts, i.tlp, i.doc "
           "FROM items i JOIN entries e ON e.entry_no = i.entry_no "
           "JOIN origins g ON g.origin_id = i.origin_id ")


def _row(r: Any) -> ErasureRow:
    doc = loads(r[5])
    return ErasureRow(int(r[0]), bytes(r[1]).hex(), bytes(r[2]), int(r[3]), str(r[4]),
                      str(doc.get("of", "")), doc.get("erasure"))


async def erasure_rows_after(ledger: Ledger, item_no: int, limit: int = 500
                             ) -> list[ErasureRow]:
    """Erasure entries stored after row ``item_no``, in arrival order."""
    rows = await ledger._fetch(f"{_SELECT} WHERE i.kind = ? AND i.item_no > ? "
                               "ORDER BY i.item_no LIMIT ?", (ERASURE_KIND, item_no, limit))
    return [_row(r) for r in rows]


async def receipt_rows(ledger: Ledger, target: str) -> list[ErasureRow]:
    """Readable receipts naming entry ``target`` (hex), oldest first."""
    rows = await ledger._fetch(
        f"{_SELECT} WHERE i.kind = ? AND json_extract(i.doc, '$.of') = ? "
        "ORDER BY i.item_no LIMIT ?", (RECEIPT_KIND, target, MAX_RECEIPTS))
    return [_row(r) for r in rows]


async def erasures_of(ledger: Ledger, target: str) -> list[ErasureRow]:
    """Readable erasures naming entry ``target`` (hex), oldest first (any author)."""
    rows = await ledger._fetch(
        f"{_SELECT} WHERE i.kind = ? AND json_extract(i.doc, '$.of') = ? "
        "ORDER BY i.item_no LIMIT 100", (ERASURE_KIND, target))
    return [_row(r) for r in rows]


async def target_states(ledger: Ledger, hashes: Sequence[bytes]) -> dict[bytes, TargetState]:
    """The stored entries among ``hashes`` (32-byte ids), by id."""
    out: dict[bytes, TargetState] = {}
    ids = list(hashes)
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        rows = await ledger._fetch(
            "SELECT e.hash, g.key, e.body_state FROM entries e "
            "JOIN origins g ON g.origin_id = e.origin_id "
            f"WHERE e.hash IN ({','.join('?' * len(part))})", part)
        for r in rows:
            out[bytes(r[0])] = TargetState(bytes(r[0]), bytes(r[1]), str(r[2]))
    return out
