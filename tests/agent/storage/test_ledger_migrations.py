"""Every earlier ledger schema migrates forward (issue 19 item 5), from ledgers built
at each schema version (tests/agent/storage/old_ledgers.py); schema 7's CIDR block
index is what the IP lookups read, and its URL rows are found by their normal form."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.errors import StorageError
from agent.storage import ipblocks, schema
from tests.agent._ledger_helpers import draft, ip, observation, open_ledger
from tests.agent.storage.old_ledgers import (
    ALICE,
    BLOCK,
    FIRST_V2_SCHEMA,
    ME,
    SEALED,
    TRUST,
    URL,
    URL_KEY,
    build_ledger_at,
    row_counts,
)

OLD_V2_SCHEMAS = range(FIRST_V2_SCHEMA, schema.SCHEMA_VERSION)


def _ids(found: dict[str, object]) -> list[str]:
    return sorted(o["id"] for o in found["observations"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", OLD_V2_SCHEMAS)
async def test_a_ledger_of_each_earlier_schema_opens_at_the_newest(
        tmp_path: Path, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite3"
    old = await build_ledger_at(path, version)
    # As an SQLite built without SECURE_DELETE by default would open it (this one has it).
    connect = sqlite3.connect

    def insecure(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(schema.sqlite3, "connect", insecure)
    conn = sqlite3.connect(path)
    assert schema.schema_version(conn) == version
    assert conn.execute("SELECT value FROM observations WHERE type = 'url'").fetchall() == [
        (URL if version < 7 else URL_KEY,)]
    conn.close()

    async with await open_ledger(path, ME, TRUST) as ledger:
        assert (await ledger.verify()).ok
        c = ledger.counts()
        assert (c.entries, c.origins, c.forked_origins) == old.counts
        # Every row kept, and the tables of later schemas filled as today's code fills them.
        rows = row_counts(path)
        assert all(rows[table] == count for table, count in old.rows.items())
        assert rows == old.today_rows
        [fork] = await ledger.forks()
        assert (fork.origin, fork.seq) == (ALICE.public_key, 2)
        # Lookups answer: an address, the block holding it, a URL by another spelling.
        own = old.own
        assert _ids(await ledger.indicator("ipv4-addr", ip(1))) == sorted(
            [own[0].id, old.alice[0].id])
        assert _ids(await ledger.indicator("ipv4-addr", "203.0.113.7")) == [own[1].id]
        assert _ids(await ledger.indicator("url", URL_KEY)) == [own[2].id]
        assert _ids(await ledger.indicator("url", URL)) == [own[2].id]
        assert _ids(await ledger.indicator("domain-name", "bad.example")) == [own[3].id]
        assert _ids(await ledger.indicator("ipv4-addr", ip(2))) == [old.alice[1].id]
        sealed = (await ledger.indicator("ipv4-addr", SEALED))["observations"]
        assert [(o["id"], o["tlp"], o["value"]) for o in sealed] == [
            (own[5].id, "AMBER", SEALED)]
        # And the node goes on writing where its chain stood.
        [more] = await ledger.append_own([draft(observation("203.0.113.8"))])
        assert more.seq == own[-1].seq + 1
        assert _ids(await ledger.indicator("ipv4-addr", BLOCK)) == sorted(
            [own[1].id, more.id])

    conn = sqlite3.connect(path)
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    assert conn.execute("SELECT value FROM observations WHERE type = 'url'").fetchall() == [
        (URL_KEY,)]
    # Schema 8: only the sealed observation's row keeps its JSON.
    assert conn.execute("SELECT value FROM observations WHERE doc IS NOT NULL").fetchall() == [
        (SEALED,)]
    conn.close()
    # The JSON copies the migration dropped are zeroed, not left in free pages: a body
    # that expires or is erased later must leave nothing behind (docs/privacy.md).
    assert b'"value":"bad.example"' not in path.read_bytes()


@pytest.mark.parametrize("version", range(1, FIRST_V2_SCHEMA))
async def test_a_ledger_of_protocol_v1_entries_is_refused_at_each_schema(
        tmp_path: Path, version: int) -> None:
    # Schemas 1 and 2 hold protocol v1 entries (one signed blob in ``raw``): refused
    # with one line naming the file and what to do, and left as it was.
    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn, now_ms=0, software="old", migrations=schema.MIGRATIONS[:version])
    conn.execute("INSERT INTO origins (origin_id, key, head_seq) VALUES (1, ?, 1)",
                 (ALICE.public_key.raw,))
    conn.execute("INSERT INTO entries (entry_no, origin_id, seq, hash, readable, raw) "
                 "VALUES (1, 1, 1, ?, 0, ?)", (b"\1" * 32, b"\x99v1 entry bytes"))
    conn.close()
    with pytest.raises(StorageError) as info:
        await open_ledger(path, ME, TRUST)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "protocol v1" in message
    assert "move the ledger aside" in message
    conn = sqlite3.connect(path)
    assert schema.schema_version(conn) == version
    conn.close()


async def test_the_first_ip_lookup_reads_the_blocks_by_their_index(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    async with await open_ledger(path, ME) as ledger:
        own = await ledger.append_own([draft(observation(ip(i))) for i in range(1, 6)]
                                      + [draft(observation(BLOCK))])
    conn = sqlite3.connect(path)
    try:
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN " + ipblocks._NEW_BLOCKS_SQL, (0,)))
        assert "USING INDEX observations_ip_blocks (obs_no>?)" in plan
        # The index holds the blocks only, of both IP types, and no other type.
        conn.execute("INSERT INTO observations (entry_no, origin_id, ts, tlp, type, value, "
                     "first_seen, last_seen, doc) VALUES (99, 1, 0, 'CLEAR', 'url', "
                     "'http://a.example/x/y', 0, 0, NULL)")
        blocks = conn.execute(ipblocks._NEW_BLOCKS_SQL, (0,)).fetchall()
        assert [r[2] for r in blocks] == [BLOCK]
        assert ipblocks.matching_keys(conn, "ipv4-addr", "203.0.113.9")[1][:2] == (
            "203.0.113.9", BLOCK)
    finally:
        conn.close()
    assert own[-1].seq == 6


def test_url_rows_are_re_keyed_a_batch_at_a_time(tmp_path: Path) -> None:
    # Old spellings, duplicates across batch boundaries, rows already keyed, a row the
    # key refuses and other types: each url row ends at its key, nothing else changes.
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    schema.migrate(conn, now_ms=0, software="old", migrations=schema.MIGRATIONS[:6])
    values = [("url", URL)] * 3 + [("url", URL_KEY), ("url", "http://b.example/%7e/./x")] * 2 \
        + [("url", "http://c.example/%FF%FE"), ("domain-name", "a.example"),
           ("ipv4-addr", BLOCK)] + [("url", f"http://d{i}.example/%7e") for i in range(5)]
    conn.executemany(
        "INSERT INTO observations (entry_no, origin_id, ts, tlp, type, value, first_seen, "
        "last_seen, doc) VALUES (?, 1, 0, 'CLEAR', ?, ?, 0, 0, '{}')",
        [(n, t, v) for n, (t, v) in enumerate(values, 1)])
    conn.execute("BEGIN")
    changed = ipblocks.rekey_urls(conn, batch=2)
    conn.execute("COMMIT")
    got = [r[0] for r in conn.execute("SELECT value FROM observations ORDER BY obs_no")]
    conn.close()
    keys = {URL: URL_KEY, "http://b.example/%7e/./x": "http://b.example/~/x",
            **{f"http://d{i}.example/%7e": f"http://d{i}.example/~" for i in range(5)}}
    assert got == [keys.get(v, v) for _t, v in values]
    assert changed == 3 + 2 + 5
