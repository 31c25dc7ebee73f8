"""The ingest pipeline (agent/peering/ingest.py): batches checked, stored together when
they are ready together, and reported one by one, in order, each continuing the chains."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.metrics import Registry, parse_text
from agent.peering.ingest import (
    IngestLimits,
    IngestPipeline,
    IngestTimings,
    Report,
    split_stored,
)
from agent.storage.ledger import Ledger
from agent.workers.verify import VerifyWorker
from protocol.entries import VerifiedEntry
from protocol.gossip import EntriesReceived
from protocol.keys import Identity
from tests.agent.nodes import make_entries

A = Identity(b"a" * 32)
B = Identity(b"b" * 32)
ME = Identity(b"m" * 32)


def _raws(entries: list[VerifiedEntry]) -> list[bytes]:
    return [e.raw for e in entries]


def _check_chains(reports: list[list[VerifiedEntry]], stored: list[VerifiedEntry]) -> None:
    """Reports, concatenated, hold every stored entry once, each origin in chain order."""
    flat = [e for part in reports for e in part]
    assert sorted(e.hash for e in flat) == sorted(e.hash for e in stored)
    for origin in {e.origin for e in stored}:
        assert [e.seq for e in flat if e.origin == origin] == [
            e.seq for e in stored if e.origin == origin]


def test_split_stored_each_batch_gets_its_own() -> None:
    a, b = make_entries(A, 20), make_entries(B, 6)
    batches = [_raws(a[:10] + b[:3]), _raws(a[10:] + b[3:])]
    stored = a + b
    parts = split_stored(batches, stored)
    assert parts == [a[:10] + b[:3], a[10:] + b[3:]]


def test_split_stored_gap_filled_by_a_later_batch() -> None:
    a = make_entries(A, 20)
    batches = [_raws(a[10:]), _raws(a[:10])]  # the first batch waited for the second
    parts = split_stored(batches, a)
    assert parts == [a, []]  # the first report must hold the whole chain, in order
    _check_chains(parts, a)


def test_split_stored_entries_from_the_ahead_buffer() -> None:
    a = make_entries(A, 30)
    # a[20:] were held by the ledger from an earlier call: in no batch of this one.
    batches = [_raws(a[:5]), _raws(a[5:10]), _raws(a[10:20])]
    parts = split_stored(batches, a)
    assert parts == [a[:5], a[5:10], a[10:]]
    held_between = split_stored([_raws(a[:5]), _raws(a[10:20])], a[:20])
    assert held_between == [a[:5], a[5:20]]


def test_split_stored_interleaved_origins_keep_chain_order() -> None:
    a, b = make_entries(A, 12), make_entries(B, 12)
    batches = [_raws(a[:4] + b[8:]), _raws(b[:8] + a[4:8]), _raws(a[8:])]
    stored = a + b
    parts = split_stored(batches, stored)
    _check_chains(parts, stored)
    assert parts[0][:4] == a[:4]
    assert [e for e in parts[0] if e.origin == B.public_key] == b  # b[8:] waited for b[:8]


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    trusted = {A.public_key, B.public_key}
    db = await Ledger.open(tmp_path / "ledger.sqlite3", identity=ME,
                           is_trusted_origin=trusted.__contains__)
    yield db
    await db.close()


async def _run(pipeline: IngestPipeline, events: list[EntriesReceived],
               reports: list[Report]) -> None:
    tasks = [asyncio.create_task(pipeline.check_stage()),
             asyncio.create_task(pipeline.store_stage())]
    try:
        for event in events:
            pipeline.add(event)
        while len(reports) < len(events):
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pipeline.cancel_checks()


async def test_ingest_pipeline_merges_ready_batches_and_reports_in_order(
        ledger: Ledger, executor: concurrent.futures.Executor) -> None:
    a, b = make_entries(A, 300), make_entries(B, 300)
    events = [EntriesReceived(A.public_key, tuple(_raws(a[i:i + 50] + b[i:i + 50])), n)
              for n, i in enumerate(range(0, 300, 50))]
    reports: list[Report] = []
    gate = asyncio.Event()
    real_ingest = ledger.ingest

    async def slow_first(entries: list[VerifiedEntry], **kw: object) -> object:
        await gate.wait()  # the first transaction waits until every batch is checked
        return await real_ingest(entries, **kw)  # type: ignore[arg-type]

    ledger.ingest = slow_first  # type: ignore[method-assign]
    checker = VerifyWorker(executor, enabled=False)
    pipeline = IngestPipeline(ledger, checker, reports.append,
                              IngestLimits(verify_ahead=8, store_max_entries=10_000))
    runner = asyncio.create_task(_run(pipeline, events, reports))
    while pipeline.pending_entries < 600 or any(not c.future.done() for c in pipeline._checked):
        await asyncio.sleep(0.01)
    gate.set()
    await runner
    assert [r.batch for r in reports] == list(range(6))
    assert pipeline.transactions < len(events)  # merged
    for r, event in zip(reports, events, strict=True):
        assert [e.raw for e in r.stored] == list(event.raws) and not r.invalid
    assert ledger.counts().entries == 600 and pipeline.pending_entries == 0
    assert pipeline.room.is_set()


async def test_ingest_pipeline_reports_bad_entries_per_batch(
        ledger: Ledger, executor: concurrent.futures.Executor) -> None:
    a = make_entries(A, 20)
    bad = a[5].raw[:-1] + bytes([a[5].raw[-1] ^ 1])
    events = [EntriesReceived(A.public_key, tuple(_raws(a[:5])), 1),
              EntriesReceived(A.public_key, (bad, *_raws(a[6:10])), 2)]
    reports: list[Report] = []
    pipeline = IngestPipeline(ledger, VerifyWorker(executor, enabled=False), reports.append,
                              IngestLimits())
    await _run(pipeline, events, reports)
    assert reports[0].stored == tuple(a[:5]) and reports[0].invalid == ()
    assert reports[1].invalid == (bad,)
    assert reports[1].stored == ()  # a[6:] wait ahead of the gap the bad entry left
    assert ledger.counts().entries == 5


async def test_ingest_pipeline_pauses_readers_over_its_cap(
        ledger: Ledger, executor: concurrent.futures.Executor) -> None:
    a = make_entries(A, 30)
    pipeline = IngestPipeline(ledger, VerifyWorker(executor, enabled=False),
                              lambda r: None, IngestLimits(max_entries=20))
    pipeline.add(EntriesReceived(A.public_key, tuple(_raws(a[:10])), 1))
    assert pipeline.room.is_set()
    pipeline.add(EntriesReceived(A.public_key, tuple(_raws(a[10:])), 2))
    assert not pipeline.room.is_set()


async def test_ingest_pipeline_full_disk_logs_once_and_backs_off(
        ledger: Ledger, executor: concurrent.futures.Executor,
        caplog: pytest.LogCaptureFixture) -> None:
    """A chaos run's finding (issue 17): while a node's disk was full, every resent batch
    failed at once and logged an ERROR line, ~100 lines a second. Now one line per
    interval, and the store stage pauses (growing) between failed transactions."""
    a = make_entries(A, 16)
    resent = [_raws(a[:2])] * 12 + [_raws(a[i:i + 2]) for i in range(0, 16, 2)]
    events = [EntriesReceived(A.public_key, tuple(raws), n) for n, raws in enumerate(resent)]
    reports: list[Report] = []
    real_ingest = ledger.ingest
    calls: list[int] = []

    async def full_disk(entries: list[VerifiedEntry], **kw: object) -> object:
        calls.append(len(entries))
        if len(calls) <= 12:
            raise StorageError("ledger write failed: database or disk is full")
        return await real_ingest(entries, **kw)  # type: ignore[arg-type]

    ledger.ingest = full_disk  # type: ignore[method-assign]
    pipeline = IngestPipeline(ledger, VerifyWorker(executor, enabled=False), reports.append,
                              IngestLimits(store_max_entries=2, retry_initial=0.001,
                                           retry_max=0.004))
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(0)

    pipeline._sleep = sleep  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="agent.peering.transport"):
        await _run(pipeline, events, reports)
    failed = [r for r in caplog.records if "ledger ingest failed" in r.getMessage()]
    assert pipeline.failures == 12 and len(failed) == 1
    assert "retrying" in failed[0].getMessage()
    # a pause after each failure, doubling to its cap; none after the successes
    assert waits[:4] == [0.001, 0.002, 0.004, 0.004] and len(waits) == 12
    assert [r.batch for r in reports] == list(range(20))
    assert [len(r.stored) for r in reports] == [0] * 12 + [2] * 8
    assert ledger.counts().entries == 16


async def test_ingest_pipeline_times_each_batch_by_stage(
        ledger: Ledger, executor: concurrent.futures.Executor) -> None:
    """Each batch is observed once per stage; its stages add up to its total (one
    clock, read at hand-over, check end, transaction start and end)."""
    a = make_entries(A, 40)
    events = [EntriesReceived(A.public_key, tuple(_raws(a[i:i + 10])), n)
              for n, i in enumerate(range(0, 40, 10))]
    registry = Registry()
    ticks = itertools.count()
    reports: list[Report] = []
    pipeline = IngestPipeline(ledger, VerifyWorker(executor, enabled=False), reports.append,
                              IngestLimits(), timings=IngestTimings(registry),
                              clock=lambda: float(next(ticks)))
    await _run(pipeline, events, reports)
    samples = parse_text(registry.render())
    counts = {dict(k)["stage"]: v for k, v in samples["entraide_ingest_seconds_count"].items()}
    sums = {dict(k)["stage"]: v for k, v in samples["entraide_ingest_seconds_sum"].items()}
    assert counts == dict.fromkeys(IngestTimings.STAGES, len(events))
    assert sums["check"] > 0 and sums["store"] > 0
    assert sums["check"] + sums["wait"] + sums["store"] == sums["total"]

