"""The stream's fan-out (agent/node/fanout.py): one ledger subscription for every
subscriber, each event shared and encoded once, bounded feeds, commit order, ends.

Real ledger files; no timed assertions (waits are bounded only so that a broken
fan-out fails instead of hanging).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import StorageError
from agent.jsoncodec import loads
from agent.node.fanout import MAX_FEEDS, ObservationFanout, ObservationFeed, SharedEvent
from agent.storage.ledger import Ledger
from tests.agent._ledger_helpers import Trust, chain, draft, identity, ip, observation, open_ledger

ME = identity(1)
ALICE = identity(2)
WAIT = 20.0


class Names:
    """A decorate that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, shown: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        shown["origin_name"] = "X"
        return shown


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await open_ledger(tmp_path / "ledger.sqlite3", ME, Trust(ALICE.public_key))
    yield ledger
    await ledger.close()


async def take(feed: ObservationFeed, count: int) -> list[SharedEvent]:
    out: list[SharedEvent] = []
    while len(out) < count:
        got = feed.take(count - len(out))
        if not got:
            assert not feed.ended, f"the feed ended after {len(out)} of {count}"
            assert await feed.wait(WAIT), "no event in time"
        out += got
    return out


async def test_fanout_shares_one_event_and_one_encoding_among_feeds(ledger: Ledger) -> None:
    names = Names()
    fanout = ObservationFanout(lambda: ledger, names)
    feeds = [fanout.subscribe(100) for _ in range(3)]
    entries = await ledger.append_own([draft(observation(ip(i))) for i in range(4)])
    got = [await take(feed, 4) for feed in feeds]
    assert [[e.observation["id"] for e in g] for g in got] == [[e.id for e in entries]] * 3
    assert all(got[0][i] is got[1][i] is got[2][i] for i in range(4))  # shared objects
    encoded = [[e.json() for e in g] for g in got]
    assert names.calls == 4  # decorated and encoded once per event, not per feed
    assert all(encoded[0][i] is encoded[2][i] for i in range(4))
    shown = loads(encoded[0][0])
    assert shown["origin_name"] == "X" and "origin_name" not in got[0][0].observation
    assert shown["id"] == entries[0].id and got[0][0].number < got[0][1].number
    for feed in feeds:
        feed.close()
    await fanout.close()


async def test_fanout_keeps_commit_order_across_commits_and_origins(ledger: Ledger) -> None:
    fanout = ObservationFanout(lambda: ledger, Names())
    feed = fanout.subscribe(100)
    own = await ledger.append_own([draft(observation(ip(i))) for i in range(3)])
    alice = chain(ALICE, 3)
    await ledger.ingest(alice)
    more = await ledger.append_own([draft(observation(ip(9)))])
    got = await take(feed, 7)
    assert [e.observation["id"] for e in got] == [e.id for e in own + alice + more]
    assert [e.number for e in got] == sorted(e.number for e in got)
    await fanout.close()
    assert feed.ended and not feed.overflowed


async def test_fanout_feed_that_falls_behind_keeps_its_queue_then_ends(ledger: Ledger) -> None:
    fanout = ObservationFanout(lambda: ledger, Names())
    slow, fast = fanout.subscribe(2), fanout.subscribe(100)
    entries = await ledger.append_own([draft(observation(ip(i))) for i in range(5)])
    got = await take(fast, 5)
    assert [e.observation["id"] for e in got] == [e.id for e in entries]
    assert slow.closed and slow.overflowed and not slow.ended
    assert [e.observation["id"] for e in slow.take(10)] == [e.id for e in entries[:2]]
    assert slow.ended and await slow.wait(WAIT)  # an ended feed never blocks
    # The other feed is unaffected and keeps receiving.
    later = await ledger.append_own([draft(observation(ip(7)))])
    assert [e.observation["id"] for e in await take(fast, 1)] == [later[0].id]
    assert len(fanout) == 1
    await fanout.close()


async def test_fanout_follows_the_ledger_only_while_a_feed_is_open(ledger: Ledger) -> None:
    fanout = ObservationFanout(lambda: ledger, Names())
    assert not fanout.pumping
    first = fanout.subscribe()
    second = fanout.subscribe()
    assert fanout.pumping
    first.close()
    assert fanout.pumping and len(fanout) == 1
    second.close()
    assert not fanout.pumping and len(fanout) == 0
    await ledger.append_own([draft(observation(ip(1)))])  # nobody follows: no event kept
    again = fanout.subscribe()
    entries = await ledger.append_own([draft(observation(ip(2)))])
    assert [e.observation["id"] for e in await take(again, 1)] == [entries[0].id]
    await fanout.close()
    assert again.ended and not again.overflowed and not fanout.pumping
    with pytest.raises(StorageError):
        fanout.subscribe()


async def test_fanout_feeds_end_when_the_ledger_closes(ledger: Ledger) -> None:
    fanout = ObservationFanout(lambda: ledger, Names())
    feed = fanout.subscribe()
    waiter = asyncio.ensure_future(feed.wait(WAIT))
    await asyncio.sleep(0)
    await ledger.close()
    assert await asyncio.wait_for(waiter, WAIT)
    assert feed.ended and not feed.overflowed
    await fanout.close()


async def test_fanout_wait_times_out_without_events_and_is_bounded(ledger: Ledger) -> None:
    fanout = ObservationFanout(lambda: ledger, Names())
    feed = fanout.subscribe()
    assert await feed.wait(0.01) is False and feed.take(5) == []
    feeds = [fanout.subscribe() for _ in range(MAX_FEEDS - 1)]
    with pytest.raises(StorageError):
        fanout.subscribe()
    for f in feeds:
        f.close()
    await fanout.close()


async def test_fanout_that_falls_behind_the_ledger_ends_every_feed(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pump's own ledger subscription overflows (a commit larger than it): every feed
    # gets what the pump received, then ends as overflowed, to resume from its position.
    monkeypatch.setattr("agent.node.fanout.PUMP_QUEUE", 2)
    fanout = ObservationFanout(lambda: ledger, Names())
    feeds = [fanout.subscribe(100) for _ in range(2)]
    entries = await ledger.append_own([draft(observation(ip(i))) for i in range(5)])
    for feed in feeds:
        while not feed.closed:
            await feed.wait(WAIT)
        assert feed.overflowed
        assert [e.observation["id"] for e in feed.take(10)] == [e.id for e in entries[:2]]
        assert feed.ended
    assert not fanout.pumping
    fresh = fanout.subscribe()  # a later subscriber follows a new ledger subscription
    assert fanout.pumping and not fresh.closed
    await fanout.close()
