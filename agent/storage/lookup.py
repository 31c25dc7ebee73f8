"""An indicator lookup answered whole from its own read-only SQLite connection: the code a
process that answers lookups off the event loop runs (the read lane's readers), and the
same SQL and JSON as the node's in-process answer."""

from __future__ import annotations

import sqlite3

from agent.jsoncodec import dumps_bytes
from agent.storage.queries import (
    FAST_ROWS,
    MAX_INDICATOR_OBSERVATIONS,
    indicator_aggregated,
    indicator_bounded,
    with_names,
)

__all__ = ["MMAP_BYTES", "answer_indicator", "connect_reader"]


MMAP_BYTES = 1 << 30
"""How much of the ledger a lookup process maps (the rest is read with pread)."""


def answer_indicator(conn: sqlite3.Connection, type: str, value: str,
                     names: dict[str, str]) -> bytes:
    """The JSON answer to a lookup of a canonical ``type`` and ``value`` (the API's
    defaults: retracted ones left out, at most ``MAX_INDICATOR_OBSERVATIONS``)."""
    limit = MAX_INDICATOR_OBSERVATIONS
    found = indicator_bounded(conn, type, value, False, limit, FAST_ROWS)
    if found is None:
        found = indicator_aggregated(conn, type, value, False, limit)
    return dumps_bytes(with_names(found, names.get))


def connect_reader(path: str) -> sqlite3.Connection:
    """A read-only connection to the ledger at ``path`` for a process that answers
    lookups (the lookup worker, the read lane's readers)."""
    conn = sqlite3.connect(path, isolation_level=None)
    # A lookup here may wait for a lock (briefly: WAL readers rarely do); nothing else
    # waits on this process.
    # The file mapped (read-only) instead of read page by page: a lookup reads a few
    # random pages, ~10 us of pread() each time at 1M observations. The mapped pages
    # are the page cache's, shared with every process reading the file.
    for pragma in ("query_only = ON", "busy_timeout = 2000", "cache_size = -8192",
                   "temp_store = MEMORY", f"mmap_size = {MMAP_BYTES}"):
        conn.execute(f"PRAGMA {pragma}")
    return conn
