"""What schema 7 changes for the first IP lookup of a connection (issues 16 and 19).

``python -m bench.ipblocks [IP_ROWS] [URL_ROWS]`` (defaults 1,000,000 and 100,000):
a ledger at schema 6 with IP_ROWS IPv4 observation rows (one in 100,000 a /24 block)
and URL_ROWS URL rows in a spelling other than their RFC 3986 normal form. Prints the
time of the first read of the stored block lengths on a new connection before (schema
6's query: every IP row), what migration 7 takes (the partial index, the URL rows
re-keyed), and the same first read after (``agent.storage.ipblocks``, by the index).
Medians of 5 connections; the file is built in a temporary directory.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.storage import ipblocks
from agent.storage.schema import MIGRATIONS, migrate

_SCHEMA_6_SQL = ("SELECT obs_no, type, value FROM observations WHERE obs_no > ? "
                 "AND type IN (?, ?) AND instr(value, '/') > 0")


def _rows(ip_rows: int, url_rows: int) -> Iterator[tuple[int, str, str]]:
    for i in range(ip_rows):
        value = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        if i % 100_000 == 0:
            value = value.rpartition(".")[0] + ".0/24"
        yield i + 1, "ipv4-addr", value
    for i in range(url_rows):
        yield ip_rows + i + 1, "url", f"http://h{i}.example/%7Euser/a/../b"


def _median_ms(path: Path, read: Callable[[sqlite3.Connection], object]) -> float:
    times = []
    for _ in range(5):
        conn = sqlite3.connect(path)
        start = time.perf_counter()
        read(conn)
        times.append(time.perf_counter() - start)
        conn.close()
    return statistics.median(times) * 1000


def main(ip_rows: int = 1_000_000, url_rows: int = 100_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite3"
        conn = sqlite3.connect(path, isolation_level=None)
        migrate(conn, now_ms=0, software="bench", migrations=MIGRATIONS[:6])
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO observations (obs_no, entry_no, origin_id, ts, tlp, type, value, "
            "first_seen, last_seen, doc) VALUES (?1, ?1, 1, 0, 'CLEAR', ?2, ?3, 0, 0, '{}')",
            _rows(ip_rows, url_rows))
        conn.execute("COMMIT")
        conn.close()
        before = _median_ms(path, lambda c: c.execute(
            _SCHEMA_6_SQL, (0, "ipv4-addr", "ipv6-addr")).fetchall())
        conn = sqlite3.connect(path, isolation_level=None)
        start = time.perf_counter()
        migrate(conn, now_ms=0, software="bench")
        migration = (time.perf_counter() - start) * 1000
        conn.close()
        after = _median_ms(path, lambda c: ipblocks.matching_keys(c, "ipv4-addr", "10.0.0.1"))
    print(f"{ip_rows:,} IPv4 rows, {url_rows:,} URL rows: first read of the block lengths "
          f"{before:.2f} ms at schema 6, {after:.2f} ms at schema 7; "
          f"migration 7 {migration:.0f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
