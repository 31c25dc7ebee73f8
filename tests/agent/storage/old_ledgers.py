"""Ledgers as an earlier schema version left them, built at test time (issue 19 item 5).

A ledger at schema ``version`` is the schema of ``MIGRATIONS[:version]`` holding the
rows that version's code wrote. Those rows are the ones today's code writes, column
for column, except where a later schema changed them, so they are taken from a
ledger written by today's code (real keys, real signed entries, real forks):

- only the tables and columns that exist at ``version`` are copied; the indexes and
  tables of the later migrations (the aid thread index, the tools index, the expiry
  index, the CIDR block index) are left for those migrations to build and fill;
- observation rows before schema 8 hold copies of their entry's id and seq and the
  JSON of every payload, plaintext or not;
- ``url`` rows before schema 7 keep the value as submitted, as those versions could
  have written them (the query tables index ``indicator_key`` since 460e32f).

Schemas 1 and 2 hold protocol v1 entries, which cannot be built by today's code and
are refused on opening (tests/agent/storage/test_ledger_migrations.py); the first
protocol v2 schema is :data:`FIRST_V2_SCHEMA`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.jsoncodec import dumps
from agent.storage.observation_rows import FIRST_SEEN, LAST_SEEN, body_fields
from agent.storage.schema import MIGRATIONS, V1_ENTRIES_SCHEMA, migrate
from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.payloads import encode_payload
from tests.agent._ledger_helpers import (
    Trust,
    chain,
    draft,
    identity,
    ip,
    observation,
    open_ledger,
    sighting,
)

ME = identity(1)
ALICE = identity(2)
TRUST = Trust(ALICE.public_key)

FIRST_V2_SCHEMA = V1_ENTRIES_SCHEMA + 1
URL = "http://example.com/%7Euser/a/../b?q=%7e"
"""Submitted in a spelling other than its RFC 3986 normal form ``URL_KEY``."""
URL_KEY = "http://example.com/~user/b?q=~"
BLOCK = "203.0.113.0/24"
SEALED = "198.51.100.77"
"""An AMBER observation to this node: its row keeps its JSON at every schema."""


@dataclass(frozen=True)
class OldLedger:
    """What the built ledger holds: rows per table, the rows per table of the ledger
    today's code wrote (what the migrated ledger must hold), the ledger's counts
    (entries, origins, forked origins) and the entries written."""

    rows: dict[str, int]
    today_rows: dict[str, int]
    counts: tuple[int, int, int]
    own: list[VerifiedEntry]
    alice: list[VerifiedEntry]


def _tables(conn: sqlite3.Connection, schema: str) -> list[str]:
    return [r[0] for r in conn.execute(
        f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite_%' AND name != 'schema_version' ORDER BY name")]


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def row_counts(path: Path) -> dict[str, int]:
    """Rows per table of the ledger at ``path`` (schema_version left out)."""
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in _tables(conn, "main")}
    finally:
        conn.close()


async def _write_today(path: Path) -> tuple[tuple[int, int, int], list[VerifiedEntry],
                                            list[VerifiedEntry]]:
    """A ledger of today's schema: own observations (an address, a CIDR block, a URL, a
    domain), a sighting, an AMBER observation sealed to this node, a remote origin's
    chain and a fork of it."""
    ledger = await open_ledger(path, ME, TRUST)
    try:
        own = await ledger.append_own([
            draft(observation(ip(1))), draft(observation(BLOCK)),
            draft(observation(URL, type="url")),
            draft(observation("bad.example", type="domain-name"), tlp=TLP.CLEAR)])
        own += await ledger.append_own([draft(sighting(own[0]))])
        own += await ledger.append_own([draft(observation(SEALED), tlp=TLP.AMBER,
                                              recipients=[ME.public_key])])
        alice = chain(ALICE, 3)
        assert (await ledger.ingest(alice)).stored == 3
        twin = sign_entry(ALICE, seq=2, prev=alice[0].hash, now_ms=alice[1].ts + 999,
                          tlp=TLP.GREEN, audience=None,
                          body=encode_payload(observation("192.0.2.99")))
        assert (await ledger.ingest([twin])).forks == 1
        c = ledger.counts()
        return (c.entries, c.origins, c.forked_origins), own, alice
    finally:
        await ledger.close()


def _copy_observations_before_8(conn: sqlite3.Connection, cols: str) -> None:
    """Observation rows as schemas 2-7 kept them: with copies of the entry's id and seq,
    the JSON of every payload (schema 8 keeps it for sealed bodies only) and both times."""
    conn.create_function("payload_json", 1, lambda body: dumps(body_fields(body)),
                         deterministic=True)
    # Before 8 every row stored its times, even those its entry's ts gives.
    times = {"first_seen": f"{FIRST_SEEN} AS first_seen", "last_seen": f"{LAST_SEEN} AS last_seen"}
    kept = [c for c in cols.split(", ") if c != "doc"]
    conn.execute(
        f"INSERT INTO main.observations ({', '.join(kept)}, doc, hash, seq) "
        f"SELECT {', '.join(times.get(c, f'o.{c}') for c in kept)}, "
        "coalesce(o.doc, payload_json(e.body)), e.hash, e.seq FROM today.observations o "
        "JOIN today.entries e ON e.entry_no = o.entry_no")


async def build_ledger_at(path: Path, version: int) -> OldLedger:
    """Write at ``path`` a ledger at schema ``version`` (``FIRST_V2_SCHEMA`` up to the
    one before today's), with the rows that version's code wrote."""
    assert FIRST_V2_SCHEMA <= version < MIGRATIONS[-1].version
    source = path.with_name(path.name + ".today")
    counts, own, alice = await _write_today(source)
    today_rows = row_counts(source)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, now_ms=0, software="entraide old", migrations=MIGRATIONS[:version])
        conn.execute("ATTACH DATABASE ? AS today", (str(source),))
        conn.execute("BEGIN")
        for table in _tables(conn, "main"):
            today = set(_columns(conn, "today", table))
            cols = ", ".join(c for c in _columns(conn, "main", table) if c in today)
            if table == "observations" and version < 8:
                _copy_observations_before_8(conn, cols)
                continue
            conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM today.{table}")
        if version < 7:  # schema 7 re-keyed them (agent/storage/ipblocks.py)
            conn.execute("UPDATE main.observations SET value = json_extract(doc, '$.value') "
                         "WHERE type = 'url'")
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE today")
    finally:
        conn.close()
    source.unlink()
    return OldLedger(row_counts(path), today_rows, counts, own, alice)
