"""The ledger's SQLite schema and its forward migrations.

The database holds two kinds of tables:

- the *ledger proper* (``origins``, ``entries``, ``forks``): every entry of every
  trusted origin, as its signed header and its body kept apart (``body`` is NULL once
  dropped by retention or erasure, or when it arrived header-only; ``body_state`` says
  which), plus each origin's head and the fork proofs. These tables are the truth;
  everything in them can be re-checked from the bytes alone (``Ledger.verify``).
- the *query tables* (``observations``, ``sightings``, ``retractions``, ``items``):
  decoded payloads this node may read, for the local API. They are derived data,
  written in the same transaction as the entry they come from.

Invariants:
- ``schema_version`` holds one row per migration applied, in order; the schema's
  version is its largest ``version``. A database whose version is larger than
  :data:`SCHEMA_VERSION` was written by a newer Entraide and is never opened, so an
  old build cannot misread or damage it.
- Migrations only move forward; each runs in one transaction together with the row
  that records it, so a crash leaves the schema at one version or the next.
- ``entries`` has at most one row per ``(origin_id, seq)`` and its seqs per origin are
  exactly ``1..origins.head_seq`` (the ledger inserts only in chain order).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StorageError
from agent.storage.aid import migrate_v4
from agent.storage.ipblocks import migrate_v7
from agent.storage.observation_rows import migrate_v8
from agent.storage.retention import migrate_v6
from agent.storage.rules import migrate_v5

log = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "lock_ledger",
    "migrate",
    "prepare_file",
    "schema_version",
    "v1_ledger_message",
]


@dataclass(frozen=True)
class Migration:
    """One forward step: ``apply`` runs inside a transaction on a plain sqlite3 connection."""

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- One row per author. origin_id is a small local surrogate so that the big tables and
-- their indexes carry 1-2 bytes instead of a 32-byte key.
CREATE TABLE origins (
    origin_id INTEGER PRIMARY KEY,
    key       BLOB NOT NULL UNIQUE CHECK (length(key) = 32),
    head_seq  INTEGER NOT NULL DEFAULT 0 CHECK (head_seq >= 0),
    head_hash BLOB CHECK (head_hash IS NULL OR length(head_hash) = 32),
    forked    INTEGER NOT NULL DEFAULT 0 CHECK (forked IN (0, 1))
);

-- The ledger proper: the exact signed bytes. entry_no is the local insertion order
-- (export order, and the key the query tables point at). A rowid table on purpose:
-- rows carry ~300 B to 260 KiB of raw bytes, too big for a WITHOUT ROWID b-tree.
CREATE TABLE entries (
    entry_no  INTEGER PRIMARY KEY,
    origin_id INTEGER NOT NULL REFERENCES origins (origin_id),
    seq       INTEGER NOT NULL CHECK (seq >= 1),
    hash      BLOB NOT NULL CHECK (length(hash) = 32),
    readable  INTEGER NOT NULL CHECK (readable IN (0, 1)),
    raw       BLOB NOT NULL,
    UNIQUE (origin_id, seq)
);
CREATE UNIQUE INDEX entries_by_hash ON entries (hash);

-- Equivocation evidence: ForkProof.encode() bytes, kept after an admin clears the fork.
CREATE TABLE forks (
    origin_id   INTEGER NOT NULL REFERENCES origins (origin_id),
    seq         INTEGER NOT NULL,
    proof       BLOB NOT NULL,
    detected_ms INTEGER NOT NULL,
    cleared_ms  INTEGER,
    PRIMARY KEY (origin_id, seq)
);

-- Query tables. Secondary indexes of a rowid table end with the rowid, so every
-- "filter = ? ORDER BY obs_no" below is one index range scan (keyset paging).
CREATE TABLE observations (
    obs_no     INTEGER PRIMARY KEY,
    entry_no   INTEGER NOT NULL UNIQUE REFERENCES entries (entry_no),
    origin_id  INTEGER NOT NULL REFERENCES origins (origin_id),
    ts         INTEGER NOT NULL,
    tlp        TEXT NOT NULL,
    type       TEXT NOT NULL,
    value      TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    retracted  INTEGER NOT NULL DEFAULT 0,
    doc        TEXT NOT NULL
);
CREATE INDEX observations_by_indicator ON observations (type, value);
CREATE INDEX observations_by_origin ON observations (origin_id);
CREATE INDEX observations_by_ts ON observations (ts);
CREATE INDEX observations_by_tlp ON observations (tlp);

CREATE TABLE sightings (
    sighting_no INTEGER PRIMARY KEY,
    entry_no    INTEGER NOT NULL UNIQUE REFERENCES entries (entry_no),
    origin_id   INTEGER NOT NULL REFERENCES origins (origin_id),
    ts          INTEGER NOT NULL,
    tlp         TEXT NOT NULL,
    target      BLOB NOT NULL,
    retracted   INTEGER NOT NULL DEFAULT 0,
    doc         TEXT NOT NULL
);
CREATE INDEX sightings_by_target ON sightings (target);

-- A retraction is recorded whatever it names. applied = 1 when it flagged an item of
-- its own origin (a retraction of another origin's entry is void).
CREATE TABLE retractions (
    entry_no  INTEGER PRIMARY KEY REFERENCES entries (entry_no),
    origin_id INTEGER NOT NULL REFERENCES origins (origin_id),
    target    BLOB NOT NULL,
    applied   INTEGER NOT NULL,
    doc       TEXT NOT NULL
);
CREATE INDEX retractions_by_target ON retractions (target);

-- Everything else a node may read: alerts, rules, STIX objects, by kind.
CREATE TABLE items (
    item_no   INTEGER PRIMARY KEY,
    entry_no  INTEGER NOT NULL UNIQUE REFERENCES entries (entry_no),
    kind      TEXT NOT NULL,
    origin_id INTEGER NOT NULL REFERENCES origins (origin_id),
    ts        INTEGER NOT NULL,
    tlp       TEXT NOT NULL,
    retracted INTEGER NOT NULL DEFAULT 0,
    doc       TEXT NOT NULL
);
CREATE INDEX items_by_kind ON items (kind);
"""


def _v1(conn: sqlite3.Connection) -> None:
    for statement in _V1.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    # An observation row carries its entry's id and seq: a lookup or a list page then
    # reads no ``entries`` row (one random page each, 20-28 us of a lookup at 1M
    # observations). Both are fixed once the entry is stored, so they cannot drift.
    conn.execute("ALTER TABLE observations ADD COLUMN hash BLOB")
    conn.execute("ALTER TABLE observations ADD COLUMN seq INTEGER")
    conn.execute("UPDATE observations SET (hash, seq) = (SELECT e.hash, e.seq FROM entries e "
                 "WHERE e.entry_no = observations.entry_no)")


V1_ENTRIES_SCHEMA = 2
"""The last schema whose ``entries`` hold protocol v1 entries (one signed blob each)."""


def _v3(conn: sqlite3.Connection) -> None:
    # Protocol v2 (docs/protocol.md §3): an entry is a signed header and a body kept
    # apart, so retention and erasure drop a body without touching the chain. v1
    # entries cannot be converted (they would need their authors to re-sign them):
    # prepare_file refuses such a ledger before migrating; this is the last guard.
    if conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None:
        raise StorageError("the ledger holds protocol v1 entries, which this version "
                           "cannot read")
    conn.execute("ALTER TABLE entries RENAME COLUMN raw TO header")
    conn.execute("ALTER TABLE entries ADD COLUMN body BLOB")
    conn.execute("ALTER TABLE entries ADD COLUMN body_state TEXT NOT NULL DEFAULT 'present' "
                 "CHECK (body_state IN ('present', 'expired', 'erased', 'absent'))")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ledger, forks and query tables", _v1),
    Migration(2, "entry id and seq on observation rows", _v2),
    Migration(3, "protocol v2: entry header and body apart, body state", _v3),
    Migration(4, "thread index of mutual-aid entries (agent/storage/aid.py)", migrate_v4),
    Migration(5, "index of shared tools: rules and playbooks (agent/storage/rules.py)",
              migrate_v5),
    Migration(6, "expiry index of stored bodies (agent/storage/retention.py)", migrate_v6),
    Migration(7, "index of stored CIDR blocks, URL rows re-keyed by indicator_key "
              "(agent/storage/ipblocks.py)", migrate_v7),
    Migration(8, "observation rows without copies of their entry: its id, seq and "
              "plaintext payload (agent/storage/observation_rows.py)", migrate_v8),
)
"""Every migration, in order; the last one's version is :data:`SCHEMA_VERSION`."""

SCHEMA_VERSION = MIGRATIONS[-1].version

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_ms INTEGER NOT NULL,
    software   TEXT NOT NULL
)"""


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's schema version; 0 for an empty database.

    Raises:
        StorageError: the file holds tables but no version table (not a ledger).
    """
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_table is None:
        if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
            raise StorageError("not an Entraide ledger: the database has no schema_version table")
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(
    conn: sqlite3.Connection,
    *,
    now_ms: int,
    software: str,
    migrations: tuple[Migration, ...] | None = None,
) -> int:
    """Bring the database up to the newest schema; return the version it is at now.

    ``conn`` must be in autocommit mode (``isolation_level=None``); each migration runs
    in its own ``BEGIN IMMEDIATE`` transaction together with its version row.

    Raises:
        StorageError: the database was written by a newer Entraide (its version is above
            the last migration's), is not a ledger, or a migration failed (the failed
            step is rolled back; earlier steps stay applied).
    """
    steps = MIGRATIONS if migrations is None else migrations
    newest = steps[-1].version
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)
            if current == 0:
                conn.execute(_VERSION_TABLE)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if current > newest:
            raise StorageError(
                f"the ledger has schema version {current}, written by a newer Entraide; "
                f"this build reads versions up to {newest}: upgrade Entraide to open it"
            )
        upgrading = current > 0  # a new ledger's steps are not news
        for step in steps:
            if step.version <= current:
                continue
            # A step may rewrite a big table (schema 8: about a minute at ten million rows):
            # an admin watching a node start sees why it has not answered yet.
            if upgrading:
                log.info("ledger schema %d -> %d: %s", current, step.version,
                         step.description)
            started = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            try:
                step.apply(conn)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_ms, software) VALUES (?, ?, ?)",
                    (step.version, now_ms, software),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if upgrading:
                log.info("ledger schema %d applied in %.1f s", step.version,
                         time.monotonic() - started)
            current = step.version
    except sqlite3.Error as exc:
        raise StorageError(f"cannot migrate the ledger schema: {exc}") from exc
    return current


def lock_ledger(path: Path) -> int:
    """Take the ledger's exclusive lock and return its fd (close it to release).

    One process per ledger: row numbers and heads are kept in memory by the writer.
    The lock is ``flock`` on ``<path>.lock``, released by the kernel if the process dies.

    Raises:
        StorageError: the lock file cannot be created, or another process holds it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create the ledger lock {path}.lock: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"the ledger {path} is in use by another process") from exc
    return fd


def v1_ledger_message(path: Path) -> str:
    """The one line that refuses a ledger of protocol v1 entries (docs/operations.md)."""
    return (f"the ledger at {path} holds protocol v1 entries, which this version cannot "
            f"read; stop the node, move the ledger aside (keep it as a record) and start "
            f"again: the node catches up with every origin's chain from its peers, and "
            f"'entraide init --force' is not needed (the node key and config are kept)")


def _refuse_v1_entries(conn: sqlite3.Connection, path: Path) -> None:
    """Raise StorageError (one line naming ``path``) for a ledger of v1 entries."""
    version = schema_version(conn)
    if 0 < version <= V1_ENTRIES_SCHEMA and conn.execute(
            "SELECT 1 FROM entries LIMIT 1").fetchone() is not None:
        raise StorageError(v1_ledger_message(path))


def prepare_file(path: Path, *, owner: bytes, now_ms: int, software: str) -> None:
    """Put the database at ``path`` in WAL mode, migrate it and check its owner.

    Runs on a short-lived connection (in a worker thread). A new file is created with
    mode 0600. ``owner`` is the node's raw public key, recorded at creation: a ledger
    holds one node's own chain, and another identity appending to it would fork it.

    Raises:
        StorageError: see :func:`migrate`; also WAL refused, or another owner.
    """
    created = not path.exists()
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the ledger {path}: {exc}") from exc
    try:
        if created:
            os.chmod(path, 0o600)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"the ledger {path} cannot use WAL mode (got {mode})")
        _refuse_v1_entries(conn, path)
        # A migration that drops a table (schema 8: the old observation rows and the
        # JSON they copied) zeroes its pages as the node's own connection does: what a
        # later erasure or expiry removes must not survive in a free page.
        conn.execute("PRAGMA secure_delete = ON")
        migrate(conn, now_ms=now_ms, software=software)
        row = conn.execute("SELECT value FROM meta WHERE key = 'node_key'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('node_key', ?)", (owner,))
        elif row[0] != owner:
            raise StorageError(f"the ledger {path} belongs to another node identity")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the ledger {path}: {exc}") from exc
    finally:
        conn.close()
