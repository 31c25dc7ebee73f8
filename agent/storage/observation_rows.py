"""The observations table's rows: what a row keeps, where an answer's payload is read
from, and schema 8, which stopped copying the entry into each row.

A row indexes one readable observation for the local API: its indicator (type and
match key), times, TLP, origin and retracted flag. It keeps no copy of what its
``entries`` row already holds: the entry's id and seq are read from there, and so is
the payload when the body is plaintext (CLEAR, GREEN): the answer is the body decoded
by :func:`body_fields`, the same JSON dump the ledger indexed it from
(``build_record``), read back without validating the model again
(``protocol.payloads.stored_observation_fields``). Only an observation whose body is
sealed (AMBER, AMBER+STRICT, RED: an envelope this node opened when it stored the
entry) keeps its JSON in ``doc``: reading it back from the body would mean opening the
envelope again. The first- and last-seen times are NULL where the entry's ts gives them
(:data:`FIRST_SEEN`, :data:`LAST_SEEN`), and the TLP index holds the sealed rows only: a
filter on a plaintext TLP, the common case, reads rows in ``obs_no`` order.

Why: at 5,020,000 observations those copies (the JSON, ~190 bytes, and the entry id,
32) were most of the observations table's 315 bytes per row, and the ledger took 843
bytes on disk per observation, 2.88x the entry's wire size, against a target of 2x
(docs/benchmarks.md, bigledger). Reading a body back costs ~3 us per row (~2 for
the JSON; through the model, ~11 us).

Invariants:
- ``doc`` is NULL exactly when the row's TLP is not encrypted (a CHECK says so); the
  entry's body is then present, since dropping a body deletes the rows derived from it
  (``Ledger.drop_bodies``).
- Schema 8 keeps every row and its ``obs_no``: cursors issued before stay valid.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from agent.errors import StorageError
from protocol.entries import TLP
from protocol.errors import EntraideError
from protocol.payloads import decode_payload_with_fields, stored_observation_fields

__all__ = ["FIRST_SEEN", "LAST_SEEN", "OBS_FROM", "OBS_SELECT", "PLAINTEXT_TLPS", "SEALED_ONLY",
           "body_fields", "migrate_v8", "stored_times"]

PLAINTEXT_TLPS = tuple(t.value for t in TLP if not t.encrypted)

FIRST_SEEN = "coalesce(o.first_seen, o.ts)"
"""An observation's first-seen time (ms): stored only where it is not the entry's ts."""
LAST_SEEN = "coalesce(o.last_seen, o.first_seen, o.ts)"
"""Its last-seen time (ms): stored only where it is not the first-seen time."""

OBS_SELECT = "o.obs_no, e.hash, g.key, e.seq, o.ts, o.tlp, o.retracted, o.doc, e.body"
"""The columns an observation answer is built from (``queries._observation_row``)."""
OBS_FROM = ("FROM observations o JOIN origins g ON g.origin_id = o.origin_id "
            "JOIN entries e ON e.entry_no = o.entry_no")

_PLAINTEXT_SQL = ", ".join(f"'{t}'" for t in PLAINTEXT_TLPS)

_V8_TABLE = f"""
CREATE TABLE observations_v8 (
    obs_no     INTEGER PRIMARY KEY,
    entry_no   INTEGER NOT NULL UNIQUE REFERENCES entries (entry_no),
    origin_id  INTEGER NOT NULL REFERENCES origins (origin_id),
    ts         INTEGER NOT NULL,
    tlp        TEXT NOT NULL,
    type       TEXT NOT NULL,
    value      TEXT NOT NULL,
    first_seen INTEGER,
    last_seen  INTEGER,
    retracted  INTEGER NOT NULL DEFAULT 0,
    doc        TEXT CHECK ((doc IS NULL) = (tlp IN ({_PLAINTEXT_SQL})))
)"""

_V8_COLUMNS = "obs_no, entry_no, origin_id, ts, tlp, type, value, retracted"
_ENCRYPTED_SQL = ", ".join(f"'{t}'" for t in TLP if t.encrypted)
SEALED_ONLY = f"tlp IN ({_ENCRYPTED_SQL})"
"""The WHERE of ``observations_by_tlp``; a query filtering on a sealed TLP repeats it
so that SQLite's planner sees the partial index applies."""
_TLP_INDEX = f"CREATE INDEX observations_by_tlp ON observations (tlp) WHERE {SEALED_ONLY}"


def stored_times(ts: int, first: int, last: int) -> tuple[int | None, int | None]:
    """``(first_seen, last_seen)`` as a row stores them: None where :data:`FIRST_SEEN`
    and :data:`LAST_SEEN` give them back (nearly every row)."""
    return (None if first == ts else first), (None if last == first else last)


def body_fields(body: bytes) -> dict[str, Any]:
    """The JSON fields of a stored plaintext observation body, as ``build_record`` made
    them when the entry was stored (without ``kind``).

    Raises:
        StorageError: the stored body no longer decodes (the file was damaged:
            ``entraide ledger verify`` finds which entry).
    """
    fields = stored_observation_fields(body)
    if fields is not None:
        return fields
    try:
        _payload, fields = decode_payload_with_fields(body)
    except EntraideError as exc:
        raise StorageError(f"a stored observation body does not decode: {exc}") from exc
    del fields["kind"]
    return fields


def migrate_v8(conn: sqlite3.Connection) -> None:
    """Schema 8: observation rows without the entry's id and seq, without the JSON of
    a plaintext body, and with NULL for the times their entry's ts gives; the TLP index
    keeps the sealed rows only. SQLite cannot relax a column's NOT NULL in place, so
    the table is rebuilt (rows and ``obs_no`` kept) and its other indexes made again
    from their own SQL (every index an earlier migration added, partial ones too)."""
    indexes = [r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'observations' "
        "AND sql IS NOT NULL ORDER BY name")]
    conn.execute(_V8_TABLE)
    conn.execute(
        f"INSERT INTO observations_v8 ({_V8_COLUMNS}, first_seen, last_seen, doc) "
        f"SELECT {_V8_COLUMNS}, nullif(first_seen, ts), nullif(last_seen, first_seen), "
        f"CASE WHEN tlp IN ({_PLAINTEXT_SQL}) THEN NULL ELSE doc END "
        "FROM observations ORDER BY obs_no")
    conn.execute("DROP TABLE observations")
    conn.execute("ALTER TABLE observations_v8 RENAME TO observations")
    for sql in indexes:
        if "observations_by_tlp" not in sql:
            conn.execute(sql)
    conn.execute(_TLP_INDEX)
