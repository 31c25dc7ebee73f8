"""Erased entries leave the TAXII index with no trace (docs/privacy.md, "Erasure"):
their rows deleted with ``secure_delete`` on, every version of the same STIX ids and
their owners, and the WAL truncated. Its own connection, so the node calls it whether or
not the TAXII app has opened the index."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from agent.errors import StorageError

__all__ = ["forget_entries", "index_path"]

_SQL_PARAMS = 400

# The TAXII index syncs in two steps: it reads the ledger's rows, then writes its own
# (agent/storage/taxii_index.py). An erasure or expiry that ends between the two would
# see nothing to delete and the sync would then write the erased object. So forgetting
# records the entry ids (not personal data: they are in every header) and a trigger
# drops any later insert of their rows, whichever order the two writers commit in.
_GUARD = (
    "CREATE TABLE IF NOT EXISTS forgotten (entry_hash BLOB PRIMARY KEY) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS objects_not_forgotten BEFORE INSERT ON objects "
    "WHEN NEW.entry_hash IN (SELECT entry_hash FROM forgotten) BEGIN SELECT RAISE(IGNORE); END",
)


def index_path(ledger_path: Path) -> Path:
    """The TAXII index file beside a ledger (``<ledger stem>.taxii.sqlite3``)."""
    return ledger_path.with_name(ledger_path.stem + ".taxii.sqlite3")


def forget_entries(path: Path, entry_hashes: Sequence[bytes], *, attempts: int = 50) -> int:
    """Delete every object row of these entries (32-byte ids) from the index file at
    ``path``, with every version of the same STIX ids (a retraction's revoked copy
    repeats the object), then checkpoint and truncate its WAL: no trace is left.

    Runs on its own connection (``secure_delete`` on, so deleted rows are zeroed), so
    the node calls it whether or not the TAXII app has opened the index; blocking: call
    it in a thread. A missing file is nothing to forget.

    Returns:
        The rows deleted.

    Raises:
        StorageError: the file cannot be written.
    """
    ids = [bytes(h) for h in entry_hashes]
    if not ids or not path.exists():
        return 0
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the TAXII index {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA secure_delete = ON")
        deleted = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A sync that read these entries' rows before their bodies went must not
            # write them after this: the index refuses them from now on.
            for statement in _GUARD:
                conn.execute(statement)
            conn.executemany("INSERT OR IGNORE INTO forgotten (entry_hash) VALUES (?)",
                             [(h,) for h in ids])
            owners = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                  "AND name = 'owners'").fetchone() is not None
            for i in range(0, len(ids), _SQL_PARAMS):
                part = ids[i:i + _SQL_PARAMS]
                marks = ",".join("?" * len(part))
                stix_ids = [r[0] for r in conn.execute(
                    f"SELECT DISTINCT stix_id FROM objects WHERE entry_hash IN ({marks})", part)]
                deleted += conn.execute(
                    f"DELETE FROM objects WHERE entry_hash IN ({marks})", part).rowcount
                for j in range(0, len(stix_ids), _SQL_PARAMS):
                    some = stix_ids[j:j + _SQL_PARAMS]
                    deleted += conn.execute(
                        f"DELETE FROM objects WHERE stix_id IN ({','.join('?' * len(some))})",
                        some).rowcount
                    if owners:  # who published the id goes too (taxii_owners.py)
                        conn.execute(
                            f"DELETE FROM owners WHERE stix_id IN ({','.join('?' * len(some))})",
                            some)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for _ in range(max(1, attempts)):
            if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                break
            time.sleep(0.02)
        return deleted
    except sqlite3.Error as exc:
        raise StorageError(f"TAXII index: cannot forget erased entries: {exc}") from exc
    finally:
        conn.close()
