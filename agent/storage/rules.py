"""Shared tools in the query tables: detection rules and CACAO playbooks.

Rules and playbooks are ``items`` rows (kind ``rule`` or ``playbook``) written by the
ledger like every other readable entry; their ``doc`` carries the engine's verdict,
``valid`` and ``engine_message``, computed as the row was built
(:func:`agent.storage.queries.tool_check`, on submit and on receipt alike). This
module reads them for the API:

- **Supersede.** A rule is superseded by a later entry (higher seq) of the *same
  origin* that has the same ``rule_type`` and ``name``, or that names it in
  ``supersedes``; a playbook by a later one of the same origin with the same CACAO
  ``id``, or naming it. Another origin can never supersede one's rule (as with
  retraction). It is computed when read, so nothing is rewritten when a version
  arrives, and a gap in an origin's chain changes nothing once it is filled.
- **Export.** :func:`export_texts` gives the texts of every valid, unretracted,
  unsuperseded rule of one type, oldest first: an invalid rule (a remote one its
  engine refused) is listed with ``"valid": false`` and never exported.

Migration 5 (:func:`migrate_v5`) adds the index these reads use.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

from agent.jsoncodec import loads
from agent.storage.queries import (
    DEFAULT_PAGE,
    MAX_PAGE,
    Page,
    decode_cursor,
    encode_cursor,
    key_text,
)
from protocol.errors import EncodingError
from protocol.keys import PublicKey


class Ledger(Protocol):
    """What these reads need of :class:`agent.storage.ledger.Ledger` (its read
    connection and origin ids; named here so this module, which the schema imports,
    does not import the ledger)."""

    async def _fetch(self, sql: str, args: Sequence[Any] = ...) -> list[Any]: ...

    def _origin_id_of(self, key: PublicKey) -> int | None: ...

__all__ = ["TOOL_KINDS", "export_texts", "get_tool", "list_tools", "migrate_v5"]

TOOL_KINDS = ("rule", "playbook")
_RULE_TYPE = "json_extract({t}.doc, '$.rule_type')"
_NAME = ("CASE {t}.kind WHEN 'rule' THEN json_extract({t}.doc, '$.name') "
         "ELSE json_extract(json_extract({t}.doc, '$.playbook_json'), '$.id') END")
_SUPERSEDED_BY = (
    "(SELECT lower(hex(f.hash)) FROM items j JOIN entries f ON f.entry_no = j.entry_no "
    "WHERE j.kind = i.kind AND j.origin_id = i.origin_id AND f.seq > e.seq AND ("
    f"({_RULE_TYPE.format(t='j')} IS {_RULE_TYPE.format(t='i')} "
    f"AND {_NAME.format(t='j')} = {_NAME.format(t='i')}) "
    "OR json_extract(j.doc, '$.supersedes') = lower(hex(e.hash))) "
    "ORDER BY f.seq DESC LIMIT 1)")
_SELECT = ("SELECT i.item_no, e.hash, g.key, e.seq, i.ts, i.tlp, i.retracted, i.doc, i.kind, "
           f"{_SUPERSEDED_BY} AS superseded FROM items i JOIN entries e ON e.entry_no = i.entry_no "
           "JOIN origins g ON g.origin_id = i.origin_id")


def migrate_v5(conn: sqlite3.Connection) -> None:
    """Schema 5: rules by kind, type and origin (lists, exports and the supersede
    look-up read this index instead of every item)."""
    conn.execute("CREATE INDEX items_by_tool ON items (kind, json_extract(doc, '$.rule_type'), "
                 "origin_id) WHERE kind IN ('rule', 'playbook')")


def _tool(row: Sequence[Any]) -> dict[str, Any]:
    fields = loads(row[7])
    result: dict[str, Any] = {"id": row[1].hex(), "kind": row[8]}
    if row[8] == "playbook":
        fields["playbook"] = loads(fields.pop("playbook_json"))
    result.update(fields)
    result.update(origin=key_text(row[2]), seq=row[3], ts=row[4], tlp=row[5],
                  retracted=bool(row[6]), superseded_by=row[9])
    result.setdefault("valid", True)
    result.setdefault("engine_message", None)
    return result


def _check(kind: str, limit: int) -> None:
    if kind not in TOOL_KINDS:
        raise EncodingError(f"unknown tool kind {kind!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise EncodingError(f"limit must be between 1 and {MAX_PAGE}")


async def list_tools(ledger: Ledger, kind: str, *, rule_type: str | None = None,
                     origin: PublicKey | None = None, include_retracted: bool = False,
                     include_superseded: bool = True, limit: int = DEFAULT_PAGE,
                     cursor: str | None = None) -> Page:
    """One page of rules or playbooks this node can read, newest first.

    Raises:
        InvalidCursorError: a cursor this list did not issue.
        EncodingError: an unknown kind or a limit out of range.
    """
    _check(kind, limit)
    where: list[str] = ["i.kind = ?"]
    args: list[Any] = [kind]
    if rule_type is not None:
        where.append(f"{_RULE_TYPE.format(t='i')} = ?")
        args.append(rule_type)
    if origin is not None:
        origin_id = ledger._origin_id_of(origin)
        if origin_id is None:
            return Page([], None)
        where.append("i.origin_id = ?")
        args.append(origin_id)
    if not include_retracted:
        where.append("i.retracted = 0")
    if cursor is not None:
        where.append("i.item_no < ?")
        args.append(decode_cursor("item", cursor))
    having = "" if include_superseded else " AND superseded IS NULL"
    rows = await ledger._fetch(
        f"SELECT * FROM ({_SELECT} "
        f"WHERE {' AND '.join(where)}) WHERE 1{having} ORDER BY item_no DESC LIMIT ?",
        (*args, limit + 1))
    items = [_tool(r) for r in rows[:limit]]
    nxt = encode_cursor("item", rows[limit - 1][0]) if len(rows) > limit else None
    return Page(items, nxt)


async def get_tool(ledger: Ledger, kind: str, entry_id: str) -> dict[str, Any] | None:
    """One rule or playbook by entry id (64 hex), retracted or not; None if unknown,
    not readable here or of another kind."""
    _check(kind, 1)
    if not isinstance(entry_id, str) or len(entry_id) != 64:
        return None
    try:
        key = bytes.fromhex(entry_id)
    except ValueError:
        return None
    rows = await ledger._fetch(f"{_SELECT} WHERE e.hash = ? AND i.kind = ?", (key, kind))
    return _tool(rows[0]) if rows else None


async def export_texts(ledger: Ledger, rule_type: str) -> list[dict[str, Any]]:
    """Every valid, unretracted, unsuperseded rule of ``rule_type``, oldest first."""
    rows = await ledger._fetch(
        f"SELECT * FROM ({_SELECT} "
        f"WHERE i.kind = 'rule' AND {_RULE_TYPE.format(t='i')} = ? AND i.retracted = 0 "
        "AND json_extract(i.doc, '$.valid') IS NOT 0) WHERE superseded IS NULL "
        "ORDER BY item_no", (rule_type,))
    return [_tool(r) for r in rows]
