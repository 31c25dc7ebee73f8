"""Query tables: filters, paging, retractions, sightings, aggregation and the event stream."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import InvalidCursorError, StorageError
from agent.storage import queries
from agent.storage.ledger import Ledger, OwnDraft
from agent.storage.queries import FAST_ROWS, decode_cursor, encode_cursor, format_ms
from protocol.entries import TLP
from protocol.errors import EncodingError, PayloadError
from protocol.payloads import (
    Alert,
    LocalizedText,
    Rule,
    RuleType,
    Severity,
    StixObject,
)
from tests.agent._ledger_helpers import (
    Trust,
    chain,
    draft,
    head_of,
    identity,
    ip,
    observation,
    open_ledger,
    retraction,
    sighting,
)

ME = identity(1)
ALICE = identity(2)
BOB = identity(3)


@pytest.fixture
async def ledger(tmp_path: Path) -> Ledger:
    ledger = await open_ledger(tmp_path / "ledger.sqlite3", ME,
                               Trust(ALICE.public_key, BOB.public_key))
    yield ledger  # type: ignore[misc]
    await ledger.close()


async def all_pages(ledger: Ledger, limit: int, **filters: object) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await ledger.list_observations(limit=limit, cursor=cursor, **filters)
        ids += [o["id"] for o in page.items]
        assert len(page.items) <= limit
        if page.next is None:
            return ids
        cursor = page.next


async def test_observation_shape_matches_the_api_contract(ledger: Ledger) -> None:
    payload = observation("203.0.113.7", confidence=80, severity=Severity.HIGH, tags=("x",),
                          description=LocalizedText(en="scanner", fr="balayeur"))
    [entry] = await ledger.append_own([draft(payload)])
    [item] = (await ledger.list_observations()).items
    assert item == {
        "id": entry.id, "type": "ipv4-addr", "value": "203.0.113.7", "tlp": "GREEN",
        "confidence": 80, "severity": "high", "description": {"en": "scanner", "fr": "balayeur"},
        "tags": ["x"], "origin": ME.public_key.text, "seq": 1, "ts": entry.ts,
        "retracted": False, "first_seen": None, "last_seen": None, "valid_until": None,
        "references": [],
    }
    one = await ledger.get_observation(entry.id)
    assert one == {**item, "sightings": 0, "verified": True}
    assert await ledger.get_observation("ab" * 32) is None
    assert await ledger.get_observation("zz") is None


async def test_list_observations_filters_by_indicator(ledger: Ledger) -> None:
    await ledger.append_own([
        draft(observation("Example.ORG.", "domain-name")),
        draft(observation("example.net", "domain-name")),
        draft(observation("203.0.113.7")),
    ])
    await ledger.ingest(chain(ALICE, 1, payload=lambda _s: observation("example.org",
                                                                       "domain-name")))
    found = await ledger.list_observations(type="domain-name", value="EXAMPLE.org")
    assert [(o["value"], o["origin"]) for o in found.items] == [
        ("example.org", ALICE.public_key.text), ("example.org", ME.public_key.text)]
    by_value = await ledger.list_observations(value="203.0.113.7")
    assert [o["type"] for o in by_value.items] == ["ipv4-addr"]
    by_type = await ledger.list_observations(type="domain-name")
    assert len(by_type.items) == 3
    assert (await ledger.list_observations(type="domain-name", value="nothing.example")).items \
        == []
    with pytest.raises(PayloadError):
        await ledger.list_observations(type="ipv4-addr", value="not an address")
    with pytest.raises(PayloadError):
        await ledger.list_observations(type="bogus-type")


@pytest.mark.parametrize("common_rows", [2, 1000])
async def test_a_type_filter_pages_the_same_from_the_index_or_in_list_order(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch, common_rows: int) -> None:
    # A type with COMMON_TYPE_ROWS rows or more is read in the list's order, a rarer
    # one from the (type, value) index: the pages must not tell them apart.
    monkeypatch.setattr(queries, "COMMON_TYPE_ROWS", common_rows)
    entries = await ledger.append_own(
        [draft(observation(f"host{i}.example", "domain-name") if i % 3 else
               observation(ip(i)), tlp=TLP.GREEN if i % 2 else TLP.CLEAR) for i in range(12)])
    domains = [e.id for i, e in reversed(list(enumerate(entries))) if i % 3]

    async def pages(**filters: object) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await ledger.list_observations(type="domain-name", limit=3, cursor=cursor,
                                                  **filters)
            seen += [o["id"] for o in page.items]
            if page.next is None:
                return seen
            cursor = page.next

    assert await pages() == domains
    green = [e.id for i, e in reversed(list(enumerate(entries))) if i % 3 and i % 2]
    assert await pages(tlp=TLP.GREEN) == green
    assert await pages(since=0) == domains  # newest ts first: arrival order here


async def test_list_observations_filters_by_origin_tlp_and_time(ledger: Ledger) -> None:
    alice = chain(ALICE, 4, ts=1_000_000)
    bob = chain(BOB, 2, tlp=TLP.AMBER, recipients=[ME.public_key], ts=2_000_000)
    await ledger.ingest(alice + bob)
    await ledger.append_own([draft(tlp=TLP.CLEAR)])

    async def ids(**filters: object) -> set[str]:
        return {o["id"] for o in (await ledger.list_observations(**filters)).items}

    assert await ids(origin=ALICE.public_key) == {e.id for e in alice}
    assert await ids(origin=identity(9).public_key) == set()
    assert await ids(tlp="AMBER") == {e.id for e in bob}
    assert await ids(tlp=TLP.CLEAR, origin=ME.public_key) != set()
    assert await ids(since=1_000_001, until=1_000_003) == {alice[1].id, alice[2].id}
    assert await ids(since=2_000_000, origin=BOB.public_key, tlp="AMBER") == {e.id for e in bob}
    with pytest.raises(EncodingError):
        await ledger.list_observations(tlp="PURPLE")
    with pytest.raises(EncodingError):
        await ledger.list_observations(limit=0)


async def test_cursor_paging_walks_every_observation_once(ledger: Ledger) -> None:
    entries = await ledger.append_own([draft(observation(ip(i))) for i in range(23)])
    newest_first = await all_pages(ledger, 5)
    assert newest_first == [e.id for e in reversed(entries)]
    oldest_first = await all_pages(ledger, 7, newest_first=False)
    assert oldest_first == [e.id for e in entries]
    exact = await ledger.list_observations(limit=23)
    assert exact.next is None


async def test_cursor_paging_is_stable_under_concurrent_inserts(ledger: Ledger) -> None:
    before = await ledger.append_own([draft(observation(ip(i))) for i in range(20)])
    seen: list[str] = []
    page = await ledger.list_observations(limit=6)
    extra = 100
    while True:
        seen += [o["id"] for o in page.items]
        # Writers keep going between pages: both own appends and remote ingest.
        await ledger.append_own([draft(observation(ip(extra)))])
        await ledger.ingest(chain(ALICE, 1, start=ledger.head(ALICE.public_key),
                                  payload=lambda s: observation(ip(500 + s))))
        extra += 1
        if page.next is None:
            break
        page = await ledger.list_observations(limit=6, cursor=page.next)
    assert seen == [e.id for e in reversed(before)]

    # Oldest first, the rows inserted meanwhile come after, each exactly once.
    ids: list[str] = []
    page = await ledger.list_observations(limit=9, newest_first=False)
    added = 0
    while True:
        ids += [o["id"] for o in page.items]
        if added < 3:
            await ledger.append_own([draft(observation(ip(900 + added)))])
            added += 1
        if page.next is None:
            break
        page = await ledger.list_observations(limit=9, newest_first=False, cursor=page.next)
    assert ids[:20] == [e.id for e in before]
    assert len(ids) == len(set(ids))
    total = len((await ledger.list_observations(limit=1000)).items)
    assert len(ids) == total


async def test_bad_cursors_raise_a_typed_error(ledger: Ledger) -> None:
    await ledger.append_own([draft(observation(ip(i))) for i in range(3)])
    page = await ledger.list_observations(limit=1)
    assert page.next is not None
    for bad in ("", "abc", page.next + "A", page.next[:-1] + "!", "A" * 12,
                encode_cursor("sighting", 3), "=" * 12):
        with pytest.raises(InvalidCursorError):
            await ledger.list_observations(cursor=bad)
    with pytest.raises(InvalidCursorError):
        await ledger.list_sightings(cursor=page.next)
    assert decode_cursor("observation", encode_cursor("observation", 42)) == 42
    assert isinstance(InvalidCursorError("x"), ValueError)


async def test_retraction_flags_its_own_origins_observation(ledger: Ledger,
                                                            tmp_path: Path) -> None:
    [kept, gone] = await ledger.append_own([draft(observation(ip(1))), draft(observation(ip(2)))])
    await ledger.append_own([draft(retraction(gone))])
    visible = await ledger.list_observations()
    assert [o["id"] for o in visible.items] == [kept.id]
    everything = await ledger.list_observations(include_retracted=True)
    assert {o["id"]: o["retracted"] for o in everything.items} == {kept.id: False, gone.id: True}
    one = await ledger.get_observation(gone.id)
    assert one is not None and one["retracted"] is True
    assert (await ledger.indicator("ipv4-addr", ip(2)))["count"] == 0
    assert (await ledger.indicator("ipv4-addr", ip(2), include_retracted=True))["count"] == 1


async def test_retraction_of_another_origins_entry_is_void(ledger: Ledger,
                                                          tmp_path: Path) -> None:
    [mine] = await ledger.append_own([draft(observation(ip(1)))])
    alice = chain(ALICE, 2, payload=lambda s: observation(ip(7)) if s == 1 else retraction(mine))
    result = await ledger.ingest(alice)
    assert result.stored == 2
    found = await ledger.get_observation(mine.id)
    assert found is not None and found["retracted"] is False
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert conn.execute("SELECT applied FROM retractions").fetchall() == [(0,)]
    conn.close()


async def test_sightings_are_listed_and_counted(ledger: Ledger) -> None:
    [target] = await ledger.append_own([draft(observation(ip(3)))])
    alice = chain(ALICE, 2, payload=lambda s: sighting(target, count=s))
    await ledger.ingest(alice)
    [own_sighting] = await ledger.append_own([draft(sighting(target))])
    page = await ledger.list_sightings(of=target.id)
    assert [s["id"] for s in page.items] == [own_sighting.id, alice[1].id, alice[0].id]
    assert page.items[1]["count"] == 2 and page.items[1]["of"] == target.id
    paged = await ledger.list_sightings(of=target.id, limit=2)
    assert paged.next is not None
    rest = await ledger.list_sightings(of=target.id, limit=2, cursor=paged.next)
    assert [s["id"] for s in rest.items] == [alice[0].id]
    found = await ledger.get_observation(target.id)
    assert found is not None and found["sightings"] == 3
    await ledger.append_own([draft(retraction(own_sighting))])
    found = await ledger.get_observation(target.id)
    assert found is not None and found["sightings"] == 2
    assert (await ledger.list_sightings(of="00" * 32)).items == []


async def test_indicator_aggregates_across_origins(ledger: Ledger) -> None:
    value = "malware.example"

    def seen(first: str, last: str) -> object:
        return lambda _s: observation(value, "domain-name", first_seen=first, last_seen=last)

    alice = chain(ALICE, 1, payload=seen("2026-01-02T00:00:00Z", "2026-02-01T00:00:00Z"))
    bob = chain(BOB, 1, payload=seen("2025-12-24T10:00:00Z", "2026-01-05T00:00:00.5Z"))
    await ledger.ingest(alice)
    await ledger.ingest(bob)
    await ledger.ingest(chain(ALICE, 1, start=head_of(alice),
                              payload=seen("2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z")))
    await ledger.append_own([draft(observation("other.example", "domain-name"))])
    result = await ledger.indicator("domain-name", "MALWARE.example.")
    assert result["type"] == "domain-name" and result["value"] == value
    assert result["count"] == 3 and len(result["observations"]) == 3
    assert result["origins"] == [ALICE.public_key.text, BOB.public_key.text]
    assert result["first_seen"] == "2025-12-24T10:00:00Z"
    assert result["last_seen"] == "2026-02-01T00:00:00Z"
    capped = await ledger.indicator("domain-name", value, limit=2)
    assert len(capped["observations"]) == 2 and capped["count"] == 3
    unknown = await ledger.indicator("domain-name", "nowhere.example")
    assert unknown == {"type": "domain-name", "value": "nowhere.example", "observations": [],
                       "count": 0, "origins": [], "first_seen": None, "last_seen": None}
    with pytest.raises(PayloadError):
        await ledger.indicator("ipv4-addr", "999.1.1.1")


def test_format_ms_writes_rfc3339_utc() -> None:
    assert format_ms(0) == "1970-01-01T00:00:00Z"
    assert format_ms(1_767_225_600_500) == "2026-01-01T00:00:00.5Z"


# From year 1000: below it, strftime's %Y does not pad to four digits on glibc.
@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31),
                    timezones=st.just(UTC)))
def test_format_ms_matches_datetime_formatting(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    ms = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        expected += "." + f"{moment.microsecond:06d}".rstrip("0")
    assert format_ms(ms) == expected + "Z"


async def test_alerts_rules_and_stix_objects_are_listed_by_kind(ledger: Ledger) -> None:
    alert = Alert(title="Ransomware at a hospital", severity=Severity.CRITICAL,
                  description=LocalizedText(en="help"), contact="soc@example.org")
    rule = Rule(rule_type=RuleType.YARA, name="demo", text="rule demo { condition: true }")
    stix = StixObject.from_object({"type": "malware", "spec_version": "2.1",
                                   "id": "malware--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061",
                                   "name": "x", "is_family": True})
    entries = await ledger.append_own([OwnDraft(p, TLP.GREEN) for p in (alert, rule, stix)])
    everything = await ledger.list_items()
    assert [i["kind"] for i in everything.items] == ["stix", "rule", "alert"]
    alerts = await ledger.list_items(kind="alert")
    assert [(a["id"], a["title"]) for a in alerts.items] == [(entries[0].id, alert.title)]
    assert (await ledger.list_observations()).items == []
    await ledger.append_own([draft(retraction(entries[1]))])
    assert [i["kind"] for i in (await ledger.list_items()).items] == ["stix", "alert"]
    page = await ledger.list_items(limit=1)
    assert page.next is not None
    second = await ledger.list_items(limit=1, cursor=page.next)
    assert [i["kind"] for i in second.items] == ["alert"]


async def test_subscription_follows_new_readable_observations(ledger: Ledger) -> None:
    start = await ledger.stream_position()
    sub = ledger.subscribe(maxsize=100)
    own = await ledger.append_own([draft(observation(ip(i))) for i in range(3)])
    unreadable = chain(BOB, 1, tlp=TLP.RED, recipients=[ALICE.public_key])
    alice = chain(ALICE, 2)
    await ledger.ingest(unreadable + alice)
    await ledger.append_own([draft(sighting(own[0]))])  # not an observation: no event
    events = [await sub.__anext__() for _ in range(5)]
    assert [e.observation["id"] for e in events] == [e.id for e in own + alice]
    assert events[3].observation["origin"] == ALICE.public_key.text
    # Each cursor resumes the list right after its event (SSE Last-Event-ID).
    resumed = await ledger.list_observations(cursor=events[1].cursor, newest_first=False)
    assert [o["id"] for o in resumed.items] == [e.id for e in own[2:] + alice]
    from_start = await ledger.list_observations(cursor=start, newest_first=False)
    assert len(from_start.items) == 5
    assert [events[i].observation == from_start.items[i] for i in range(5)] == [True] * 5
    sub.close()
    assert [e async for e in sub] == []


async def test_subscription_ends_when_its_consumer_falls_behind(ledger: Ledger) -> None:
    sub = ledger.subscribe(maxsize=3)
    entries = await ledger.append_own([draft(observation(ip(i))) for i in range(5)])
    got = [e.observation["id"] async for e in sub]
    assert got == [e.id for e in entries[:3]]
    assert sub.overflowed and sub.closed
    # A waiting consumer is woken when the ledger closes.
    other = ledger.subscribe()
    waiter = asyncio.ensure_future(other.__anext__())
    await asyncio.sleep(0)
    await ledger.close()
    with pytest.raises(StopAsyncIteration):
        await waiter


async def test_time_window_lists_newest_ts_first_and_pages_by_time(ledger: Ledger) -> None:
    # Arrival order differs from ts order: Bob's older entries arrive last.
    alice = chain(ALICE, 6, ts=5_000)
    bob = chain(BOB, 6, ts=1_000)
    await ledger.ingest(alice)
    await ledger.ingest(bob)
    expected = [e.id for e in sorted(alice + bob, key=lambda e: e.ts, reverse=True)]
    assert await all_pages(ledger, 5, since=0) == expected
    assert await all_pages(ledger, 4, until=1_003) == [e.id for e in reversed(bob[:3])]
    # Inserts during paging: rows that existed are still seen exactly once.
    ids, page = [], await ledger.list_observations(since=0, limit=5)
    late = chain(BOB, 1, start=head_of(bob), ts=3_000)
    while True:
        ids += [o["id"] for o in page.items]
        if late:
            await ledger.ingest(late)
            late = []
        if page.next is None:
            break
        page = await ledger.list_observations(since=0, limit=5, cursor=page.next)
    assert [i for i in ids if i in expected] == expected
    assert len(ids) == len(set(ids))
    # A cursor works only with the ordering it came from.
    time_cursor = (await ledger.list_observations(since=0, limit=1)).next
    arrival_cursor = (await ledger.list_observations(limit=1)).next
    assert time_cursor is not None and arrival_cursor is not None
    with pytest.raises(InvalidCursorError):
        await ledger.list_observations(cursor=time_cursor)
    with pytest.raises(InvalidCursorError):
        await ledger.list_observations(since=0, cursor=arrival_cursor)
    oldest_first = await all_pages(ledger, 5, since=0, newest_first=False)
    assert len(oldest_first) == 13  # the stream's catch-up stays in arrival order


async def _indicator_both_ways(ledger: Ledger, value: str, **options: object
                               ) -> tuple[dict[str, object], dict[str, object]]:
    """The lookup as served (the loop's own connection) and by the threaded statements."""
    reader = ledger._read
    served = await ledger.indicator("ipv4-addr", value, **options)  # type: ignore[arg-type]
    threaded = await reader._indicator_threaded(
        "ipv4-addr", value, bool(options.get("include_retracted", False)),
        int(options.get("limit", 1000)))  # type: ignore[call-overload]
    return served, threaded


async def test_indicator_one_statement_answers_like_the_three(ledger: Ledger) -> None:
    value = ip(9)
    alice = chain(ALICE, 3, payload=lambda s: observation(
        value, first_seen=f"2026-01-0{s}T00:00:00Z", last_seen=f"2026-01-0{s + 4}T00:00:00Z"))
    await ledger.ingest(alice)
    [mine, gone] = await ledger.append_own([draft(observation(value)), draft(observation(value))])
    await ledger.append_own([draft(retraction(gone))])
    await ledger.ingest(chain(BOB, 1, payload=lambda _s: observation(value)))
    for options in ({}, {"include_retracted": True}, {"limit": 2}):
        served, threaded = await _indicator_both_ways(ledger, value, **options)
        assert served == threaded, options
    served, _ = await _indicator_both_ways(ledger, value)
    assert served["count"] == 5
    assert served["origins"] == [ALICE.public_key.text, ME.public_key.text,
                                 BOB.public_key.text]
    assert gone.id not in [o["id"] for o in served["observations"]]  # type: ignore[attr-defined]
    assert mine.id in [o["id"] for o in served["observations"]]  # type: ignore[attr-defined]


async def test_indicator_seen_more_than_fast_rows_times_is_counted_whole(
        ledger: Ledger) -> None:
    value = ip(10)
    await ledger.ingest(chain(ALICE, FAST_ROWS + 5, payload=lambda _s: observation(value)))
    served, threaded = await _indicator_both_ways(ledger, value, limit=3)
    assert served == threaded
    assert served["count"] == FAST_ROWS + 5 and len(served["observations"]) == 3  # type: ignore[arg-type]


async def test_indicator_goes_to_the_reader_thread_when_the_loop_would_wait(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    await ledger.append_own([draft(observation(ip(11)))])
    calls: list[str] = []

    def locked(*_args: object) -> None:
        calls.append("fast")
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ledger._read, "_indicator_fast", locked)
    result = await ledger.indicator("ipv4-addr", ip(11))
    assert calls == ["fast"] and result["count"] == 1

    def broken(*_args: object) -> None:
        raise sqlite3.OperationalError("no such table: observations")

    monkeypatch.setattr(ledger._read, "_indicator_fast", broken)
    with pytest.raises(StorageError):
        await ledger.indicator("ipv4-addr", ip(11))


async def test_indicator_connection_closes_with_its_reader(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "l.sqlite3", ME)
    await ledger.append_own([draft(observation(ip(12)))])
    assert (await ledger.indicator("ipv4-addr", ip(12)))["count"] == 1
    fast = ledger._read._fast
    assert fast is not None
    ledger._read.close()
    with pytest.raises(sqlite3.ProgrammingError):
        fast.execute("SELECT 1")
    ledger._read.close()  # idempotent
    await ledger.close()
    # A reader dropped without close() closes its connection when collected.
    ledger = await open_ledger(tmp_path / "l.sqlite3", ME)
    assert (await ledger.indicator("ipv4-addr", ip(12)))["count"] == 1
    fast = ledger._read._fast
    assert fast is not None
    await ledger.close()
    del ledger
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError):
        fast.execute("SELECT 1")


async def test_indicator_lookups_racing_to_open_share_one_connection(ledger: Ledger) -> None:
    await ledger.append_own([draft(observation(ip(13)))])
    results = await asyncio.gather(*(ledger.indicator("ipv4-addr", ip(13)) for _ in range(8)))
    assert [r["count"] for r in results] == [1] * 8
    fast = ledger._read._fast
    assert fast is not None
    assert sum(1 for o in gc.get_objects() if isinstance(o, sqlite3.Connection)
               and o is not fast and _is_open_on(o, ledger)) == 0


def _is_open_on(conn: sqlite3.Connection, ledger: Ledger) -> bool:
    """True for an open plain-sqlite3 connection to this ledger's file."""
    try:
        rows = conn.execute("PRAGMA database_list").fetchall()
    except sqlite3.ProgrammingError:
        return False  # closed (or another thread's, like aiosqlite's: not ours)
    return any(r[2] == str(ledger._path) for r in rows)
