"""The verify worker process (agent/workers/verify.py): real processes, real keys.

A worker that dies, answers garbage, never answers or cannot start must never cost a
batch its check nor hang the node: the batch is verified in a thread instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.jsoncodec import loads
from agent.storage.queries import build_record
from agent.workers.policy import RESTART
from agent.workers.verify import VerifyPool, VerifyWorker, check_raws
from protocol.entries import TLP, VerifiedEntry, sign_entry, verify_entry
from protocol.envelope import seal_envelope
from protocol.keys import Identity
from protocol.payloads import decode_payload
from tests.agent._ledger_helpers import open_ledger
from tests.agent.nodes import FAST_TRANSPORT, Federation, make_entries, wait_for

ROOT = Path(__file__).resolve().parents[3]
MAX_FAILURES = RESTART.max_failures


@pytest.fixture
def executor() -> concurrent.futures.ThreadPoolExecutor:
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
async def worker(executor: concurrent.futures.Executor) -> AsyncIterator[VerifyWorker]:
    w = VerifyWorker(executor, min_batch=4)
    yield w
    await w.close()


def _entries(n: int = 40, tag: bytes = b"w") -> list[VerifiedEntry]:
    return make_entries(Identity((tag * 32)[:32]), n)


def _tampered(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])  # last byte of the signature


def _faulty(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_verify_worker_checks_a_batch_in_the_process(worker: VerifyWorker) -> None:
    entries = _entries()
    assert await worker.ready()
    assert worker.pid is not None and worker.pid != os.getpid()
    checked = await worker.check([e.raw for e in entries])
    assert worker.batches_in_worker == 1
    assert checked.entries == entries
    assert [e.hash for e in checked.entries if e is not None] == [e.hash for e in entries]
    for entry in entries:
        expected = build_record(decode_payload(entry.body), entry.ts)
        record = checked.records[entry.hash]
        assert record is not None and record.fields is None  # not shipped: see below
        assert dataclasses.replace(record, fields=expected.fields) == expected
        assert loads(record.doc) == expected.fields


async def test_verify_worker_records_feed_stream_subscribers(worker: VerifyWorker,
                                                             tmp_path: Path) -> None:
    # The worker's records carry no ``fields``: the ledger rebuilds them from ``doc``
    # for its subscribers, who must see what an in-process ingest gives them.
    entries = _entries()
    assert await worker.ready()
    checked = await worker.check([e.raw for e in entries])
    assert worker.batches_in_worker == 1
    events = []
    for name, records in (("worker", checked.records), ("here", None)):
        ledger = await open_ledger(tmp_path / f"{name}.db", Identity(b"n" * 32))
        try:
            sub = ledger.subscribe()
            await ledger.ingest(entries, records=records)
            events.append([(await sub.__anext__()).observation for _ in entries])
        finally:
            await ledger.close()
    assert events[0] == events[1]
    assert events[0][3]["value"] == decode_payload(entries[3].body).value


async def test_verify_worker_refuses_a_bad_signature(worker: VerifyWorker) -> None:
    entries = _entries()
    raws = [e.raw for e in entries]
    raws[7] = _tampered(raws[7])
    raws[20] = b"\x93\x01\x02\x03"  # not an entry at all
    assert await worker.ready()
    checked = await worker.check(raws)
    assert worker.batches_in_worker == 1
    assert checked.entries[7] is None and checked.entries[20] is None
    assert entries[7].hash not in checked.records
    assert [e for i, e in enumerate(checked.entries) if i not in (7, 20)] == [
        e for i, e in enumerate(entries) if i not in (7, 20)]
    assert check_raws([raws[7]]) == [None]


async def test_verify_worker_leaves_encrypted_payloads_to_the_node(worker: VerifyWorker) -> None:
    author = Identity(b"a" * 32)
    reader = Identity(b"r" * 32)
    clear = _entries(8)
    audience, body = seal_envelope(clear[0].body, [reader.public_key, author.public_key],
                                   os.urandom)
    amber = sign_entry(author, seq=1, prev=None, now_ms=1, tlp=TLP.AMBER,
                       audience=audience, body=body)
    junk = sign_entry(author, seq=2, prev=amber.hash, now_ms=2, tlp=TLP.GREEN,
                      audience=None, body=b"\x81\xa1k\xa1?")  # signed, not a payload
    assert await worker.ready()
    checked = await worker.check([amber.raw, junk.raw, *[e.raw for e in clear]])
    assert checked.entries[:2] == [amber, junk]
    assert amber.hash not in checked.records  # the node opens it: it holds the key
    assert junk.hash in checked.records and checked.records[junk.hash] is None


async def test_verify_worker_small_batches_stay_in_a_thread(worker: VerifyWorker) -> None:
    entries = _entries(3)
    checked = await worker.check([e.raw for e in entries])
    assert checked.entries == entries and checked.records == {}
    assert worker.batches_in_worker == 0


async def test_verify_worker_survives_a_killed_worker(worker: VerifyWorker) -> None:
    entries = _entries()
    raws = [e.raw for e in entries]
    assert await worker.ready()
    first = worker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    checked = await worker.check(raws)  # in a thread, or in a new worker
    assert checked.entries == entries
    assert await worker.ready()  # a new worker starts
    assert worker.pid not in (None, first)
    again = await worker.check(raws)
    assert again.entries == entries and worker.batches_in_worker >= 1
    assert not worker.disabled


async def test_verify_worker_killed_with_batches_in_flight(worker: VerifyWorker) -> None:
    entries = _entries(200)
    chunks = [[e.raw for e in entries[i:i + 50]] for i in range(0, 200, 50)]
    assert await worker.ready()
    pid = worker.pid
    assert pid is not None
    pending = [asyncio.ensure_future(worker.check(c)) for c in chunks]
    os.kill(pid, signal.SIGKILL)
    results = await asyncio.gather(*pending)
    assert [e for r in results for e in r.entries] == entries
    assert worker.failures <= 1  # one death, counted once


@pytest.mark.parametrize("code", [
    "pass",  # ends at once
    "import sys; sys.stdout.buffer.write(b'garbage!'); sys.stdout.flush(); sys.stdin.read()",
    "import sys, struct, msgpack; b = msgpack.packb([0, []]);"
    " sys.stdout.buffer.write(struct.pack('>I', len(b)) + b); sys.stdout.flush();"
    " sys.stdin.buffer.read()",  # ready, then never answers
    "import sys, struct, msgpack; w = sys.stdout.buffer; b = msgpack.packb([0, []]);"
    " w.write(struct.pack('>I', len(b)) + b); w.flush();"
    " h = sys.stdin.buffer.read(4); r = msgpack.unpackb(sys.stdin.buffer.read("
    "struct.unpack('>I', h)[0])); b = msgpack.packb([r[0], [2] * len(r[1])]);"
    " w.write(struct.pack('>I', len(b)) + b); w.flush(); sys.stdin.buffer.read()",  # lies
], ids=["exits", "garbage", "silent", "bad-verdicts"])
async def test_verify_worker_faulty_worker_falls_back_to_threads(
        executor: concurrent.futures.Executor, code: str) -> None:
    entries = _entries()
    raws = [e.raw for e in entries]
    raws[3] = _tampered(raws[3])
    worker = VerifyWorker(executor, min_batch=4, deadline=2.0, command=_faulty(code))
    try:
        for _ in range(MAX_FAILURES + 2):
            await worker.ready()
            checked = await worker.check(raws)
            assert checked.entries[3] is None
            assert [e for i, e in enumerate(checked.entries) if i != 3] == [
                e for i, e in enumerate(entries) if i != 3]
            if worker.disabled:
                break
        assert worker.disabled and worker.failures >= MAX_FAILURES
        assert not await worker.ready() and worker.pid is None
    finally:
        await worker.close()


async def test_verify_worker_close_ends_the_process(executor: concurrent.futures.Executor) -> None:
    worker = VerifyWorker(executor, min_batch=4)
    assert await worker.ready()
    pid = worker.pid
    assert pid is not None
    await worker.close()
    assert worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    entries = _entries(8)
    assert (await worker.check([e.raw for e in entries])).entries == entries  # in a thread


async def test_verify_worker_replicates_through_the_worker(tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 2, transport=FAST_TRANSPORT) as fed:
        a, b = fed.nodes
        await fed.wait_connected()
        pool = b.repl.verifier
        assert isinstance(pool, VerifyPool) and pool.processes >= 1
        assert await pool.ready() and pool.processes_up == pool.processes
        written = await a.write(600)
        await wait_for(lambda: b.head_seq(a.key) == 600, what="600 entries on b")
        assert (await b.db.get_entry(written[-1].id)) == written[-1]
        assert pool.batches_in_worker >= 1
        page = await b.db.list_observations(origin=a.key, limit=5)
        assert page.items  # indexed from the worker's records


def test_rebuild_verified_has_one_caller() -> None:
    """``_rebuild_verified`` skips the signature check: only the worker path may use it."""
    users = set()
    for folder in ("agent", "protocol", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            if "_rebuild_verified" in path.read_text(encoding="utf-8"):
                users.add(path.relative_to(ROOT).as_posix())
    assert users == {"protocol/entries.py", "agent/workers/verify.py"}


def test_check_raws_matches_verify_entry() -> None:
    entries = _entries(5)
    verdicts = check_raws([e.raw for e in entries])
    for entry, verdict in zip(entries, verdicts, strict=True):
        assert verify_entry(entry.raw) == entry
        assert isinstance(verdict, list) and verdict[0] == "observation"


_PARENT = """
import asyncio, concurrent.futures, sys
from agent.workers.verify import VerifyWorker

async def main():
    worker = VerifyWorker(concurrent.futures.ThreadPoolExecutor(1))
    assert await worker.ready()
    print(worker.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


async def test_verify_worker_ends_when_the_node_is_killed() -> None:
    node = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PARENT, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    try:
        assert node.stdout is not None
        pid = int(await asyncio.wait_for(node.stdout.readline(), 60))
        assert _alive(pid)
        node.kill()  # kill -9: the node cannot close anything
        await node.wait()
        await wait_for(lambda: not _alive(pid), what="the orphaned worker to end")
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()


async def test_verify_pool_threads_only_without_processes() -> None:
    pool = VerifyPool(threads=1, processes=0, min_batch=4, eager=True)
    try:
        pool.start()  # eager, but nothing to start
        assert pool.processes == 0 and not await pool.ready() and pool.pids == []
        entries = _entries(8)
        assert (await pool.check([e.raw for e in entries])).entries == entries
        assert pool.batches_in_worker == 0 and pool.failures == 0
    finally:
        await pool.close()
        await pool.close()  # idempotent


async def test_verify_pool_spreads_batches_over_its_workers() -> None:
    pool = VerifyPool(threads=2, processes=2, min_batch=4, eager=True)
    try:
        if pool.processes < 2:
            pytest.skip("needs two usable cores")
        pool.start()
        assert await pool.ready() and pool.processes_up == 2 and len(set(pool.pids)) == 2
        entries = _entries(100)
        chunks = [[e.raw for e in entries[i:i + 50]] for i in (0, 50)]
        results = await asyncio.gather(*(pool.check(c) for c in chunks))
        assert [e for r in results for e in r.entries] == entries
        assert [w.batches_in_worker for w in pool.workers] == [1, 1]  # least busy first
        assert pool.batches_in_worker == 2 and pool.in_flight == 0
        pids = pool.pids
    finally:
        await pool.close()
    assert pool.processes_up == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
