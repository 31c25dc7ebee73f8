"""The TAXII index file's tables (``INDEX_SCHEMA``), the ledger query its sync reads,
and the rows a sync writes (taxii_index.py).

Bumping ``INDEX_SCHEMA`` rebuilds every node's index from its ledger at next open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.stix import object_json, parse_timestamp, version_of

__all__ = ["INDEX_SCHEMA", "LEDGER_CHUNK", "SCHEMA_SQL", "Pending"]

INDEX_SCHEMA = 2  # 2: rows know their origin and may be refused; ids have owners

SCHEMA_SQL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE objects (
    row          INTEGER PRIMARY KEY,
    entry_no     INTEGER NOT NULL,
    entry_hash   BLOB,
    origin       TEXT NOT NULL,
    added_us     INTEGER NOT NULL UNIQUE,
    stix_id      TEXT NOT NULL,
    stix_type    TEXT NOT NULL,
    version      TEXT NOT NULL,
    version_us   INTEGER NOT NULL,
    spec_version TEXT NOT NULL,
    in_all       INTEGER NOT NULL,
    in_own       INTEGER NOT NULL,
    refused      INTEGER NOT NULL DEFAULT 0,
    json         TEXT NOT NULL
);
CREATE INDEX objects_by_id ON objects (stix_id, version_us);
CREATE INDEX objects_by_type ON objects (stix_type, row);
CREATE INDEX objects_by_entry ON objects (entry_hash) WHERE entry_hash IS NOT NULL;
CREATE TABLE identities (origin TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE met (origin TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE owners (stix_id TEXT PRIMARY KEY, origin TEXT NOT NULL, rank INTEGER NOT NULL,
                     ts INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE statuses (id TEXT PRIMARY KEY, created_us INTEGER NOT NULL, json TEXT NOT NULL);
CREATE INDEX statuses_by_age ON statuses (created_us);
"""

# The next SYNC_CHUNK readable entries after a position, in insertion order; ``doc`` is
# the row's JSON text, or a plaintext observation's body. Each arm is
# limited on its own so a chunk is four short index range scans, not a sort of the rest.
LEDGER_CHUNK = " UNION ALL ".join(
    f"SELECT * FROM (SELECT t.entry_no, {kind}, e.hash, g.key, e.seq, {ts}, {tlp}, {doc}, "
    f"{target} FROM {table} t JOIN entries e ON e.entry_no = t.entry_no "
    f"JOIN origins g ON g.origin_id = t.origin_id WHERE t.entry_no > :after{extra} "
    f"ORDER BY t.entry_no LIMIT :limit)"
    for table, kind, ts, tlp, doc, target, extra in (
        # A plaintext observation's row keeps no JSON: its body (bytes) stands in
        # (agent/storage/observation_rows.py).
        ("observations", "'observation'", "t.ts", "t.tlp", "coalesce(t.doc, e.body)", "NULL",
         ""),
        ("sightings", "'sighting'", "t.ts", "t.tlp", "t.doc", "t.target", ""),
        ("retractions", "'retraction'", "NULL", "NULL", "e.header", "t.target",
         " AND t.applied = 1"),
        ("items", "t.kind", "t.ts", "t.tlp", "t.doc", "NULL", ""),
    )
) + " ORDER BY 1 LIMIT :limit"


@dataclass
class Pending:
    """A rendered object waiting to be written in the current sync chunk."""

    entry_no: int
    entry_hash: bytes | None
    ts_ms: int
    origin: str
    own: bool
    stix_id: str
    stix_type: str
    version: str | None
    spec_version: str
    json: str
    identity: str | None = None  # the origin, for an origin's identity object
    carried: bool = False  # a STIX object as its origin wrote it (may name others)

    @classmethod
    def of(cls, entry_no: int, entry_hash: bytes | None, ts_ms: int, obj: dict[str, Any],
           origin: str, own: bool, identity: str | None = None,
           carried: bool = False) -> Pending:
        return cls(entry_no, entry_hash, ts_ms, origin, own, obj["id"], obj["type"],
                   version_of(obj), obj.get("spec_version", "2.1"), object_json(obj),
                   identity, carried)

    @property
    def version_us(self) -> int:
        return parse_timestamp(self.version) if self.version else self.ts_ms * 1000
