"""TAXII Add Objects (agent/taxii/post.py): the envelope judged on two cores.

A large envelope is judged chunk by chunk, the first chunk in a thread and the rest in
a worker process, while earlier chunks are already being signed and committed. These
tests drive ``add_objects`` with a started worker process and check that nothing of
the single-thread semantics changed: a verdict per object in envelope order, entries
created in envelope order, duplicates and known versions creating nothing, and the
index equal to one rebuilt from the ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.storage.taxii_index import Collection, TaxiiIndex, VersionFilter
from agent.taxii.app import _origin_info
from agent.taxii.post import CHUNK, COMMAND, PARALLEL_MIN, Judge, add_objects
from agent.workers.pipe import PipeWorker
from protocol.entries import TLP
from protocol.stix import TLP2_MARKINGS
from tests.agent._api_helpers import ip, running_api

T0 = "2024-01-01T00:00:00.000Z"


def judge_process() -> PipeWorker:
    """The judge process as the supervisor builds it (agent/workers/supervisor.py)."""
    return PipeWorker("TAXII judge", COMMAND)


def indicator(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "indicator", "spec_version": "2.1",
            "id": f"indicator--{n:08x}-2222-4222-8222-222222222222", "created": T0,
            "modified": T0, "pattern": f"[ipv4-addr:value = '{ip(n)}']", "pattern_type": "stix",
            "valid_from": "2024-01-01T00:00:00Z", "labels": ["bench"], **extra}


def malware(n: int) -> dict[str, Any]:
    return {"type": "malware", "spec_version": "2.1", "name": f"M{n}", "is_family": True,
            "id": f"malware--{n:08x}-3333-4333-8333-333333333333", "created": T0,
            "modified": T0, "x_weight": n / 7}


async def test_add_objects_with_the_worker_process_keeps_every_verdict_and_the_order(
        tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        node = api.node
        ledger_path = node.config.ledger_path(node.data_dir)
        index = await TaxiiIndex.open(tmp_path / "index.sqlite3", ledger_path, node.public_key,
                                      _origin_info(node), node.clock)
        judge = Judge(judge_process(), spare_core=lambda: True)
        lock = asyncio.Lock()
        try:
            assert await judge.ready()
            earlier = await add_objects(node, index, [indicator(n) for n in range(40)], lock,
                                        node.clock, judge)
            assert len(earlier.successes) == 40
            envelope: list[Any] = [indicator(n) for n in range(30, 30 + 3 * CHUNK)]
            envelope[CHUNK + 7] = indicator(5000, pattern="[ipv4-addr:value = ")
            envelope[2 * CHUNK + 1] = indicator(5001, object_marking_refs=[
                TLP2_MARKINGS[TLP.RED]])
            envelope[2 * CHUNK + 3] = malware(1)
            envelope[2 * CHUNK + 9] = "not an object"
            envelope.append(indicator(30 + CHUNK + 20))  # again, a chunk later
            envelope.append(malware(1))  # again, in the same chunk
            assert len(envelope) >= PARALLEL_MIN
            parts = judge.judge(envelope, node.public_key.text)
            assert len(parts) > 2  # the worker process takes the chunks after the first
            await asyncio.gather(*parts)

            result = await add_objects(node, index, envelope, lock, node.clock, judge)
            doc = result.document()
            verdicts = sorted(
                [(d["id"], True, d.get("message", "")) for d in doc["successes"]]
                + [(d["id"], False, d.get("message", "")) for d in doc["failures"]])
            assert doc["total_count"] == len(envelope) and doc["pending_count"] == 0
            failed = {v[0] for v in verdicts if not v[1]}
            assert failed == {indicator(5000)["id"], indicator(5001)["id"], ""}
            already = [v[0] for v in verdicts if v[2] == "already in the collection"]
            assert already == sorted(indicator(n)["id"] for n in range(30, 40))
            twice = [v[0] for v in verdicts if v[2] == "duplicate within the envelope"]
            assert twice == sorted([indicator(30 + CHUNK + 20)["id"], malware(1)["id"]])
            # Created in envelope order: what the collection serves, after the earlier post.
            fresh = []
            for obj in envelope:
                if (isinstance(obj, dict) and obj["id"] not in failed | set(already)
                        and obj["id"] not in {o["id"] for o in fresh}):
                    fresh.append(obj)
            await index.sync()
            page = await index.page(Collection.OWN, limit=5000, versions=VersionFilter(all=True))
            served = [row.stix_id for row in page.rows]
            assert served[41:] == [o["id"] for o in fresh]

            rebuilt = await TaxiiIndex.open(tmp_path / "rebuilt.sqlite3", ledger_path,
                                            node.public_key, _origin_info(node), node.clock)
            try:
                await rebuilt.sync()
                again = await rebuilt.page(Collection.OWN, limit=5000,
                                           versions=VersionFilter(all=True))
            finally:
                await rebuilt.close()
            assert [row.json for row in again.rows] == [row.json for row in page.rows]
        finally:
            assert judge.worker is not None
            await judge.worker.close()
            await index.close()


async def test_judge_uses_the_process_only_when_a_core_is_spare() -> None:
    busy = True
    process = judge_process()
    judge = Judge(process, spare_core=lambda: not busy)
    objects = [indicator(n) for n in range(PARALLEL_MIN)]
    try:
        parts = judge.judge(objects, "ed25519:" + "A" * 43)
        assert len(parts) == 1 and process.pid is None  # busy host: the thread, no process
        await asyncio.gather(*parts)
        busy = False
        assert await judge.ready()
        parts = judge.judge(objects, "ed25519:" + "A" * 43)
        assert len(parts) > 1
        await asyncio.gather(*parts)
    finally:
        await process.close()


async def test_judge_falls_back_to_the_thread_when_the_process_is_gone(tmp_path: Path) -> None:
    process = judge_process()
    judge = Judge(process, spare_core=lambda: True)
    try:
        assert await judge.ready()
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        objects = [indicator(n) for n in range(PARALLEL_MIN)]
        verdicts = [await part for part in judge.judge(objects, "ed25519:" + "A" * 43)]
        assert sum(len(items) for _, items in verdicts) == PARALLEL_MIN
        assert [p for _, items in verdicts for p in (i.position for i in items)] == list(
            range(PARALLEL_MIN))
        assert process.failures == 1  # started again after the policy's delay
    finally:
        await process.close()


async def test_judge_without_a_process_judges_in_the_thread() -> None:
    judge = Judge(spare_core=lambda: True)
    objects = [indicator(n) for n in range(PARALLEL_MIN)]
    parts = judge.judge(objects, "ed25519:" + "A" * 43)
    assert len(parts) == 1 and not await judge.ready()
    assert sum(len(items) for _, items in await asyncio.gather(*parts)) == PARALLEL_MIN


_HOLDER = """
import asyncio, sys
from agent.taxii.post import COMMAND, Judge
from agent.workers.pipe import PipeWorker

async def main():
    judge = Judge(PipeWorker("TAXII judge", COMMAND), spare_core=lambda: True)
    assert await judge.ready()
    print(judge.worker.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_judge_process_ends_when_the_node_is_killed() -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout is not None
        (worker,) = map(int, holder.stdout.readline().split())
        assert _alive(worker)
    finally:
        holder.kill()  # as kill -9 would: no cleanup in the node
        holder.wait()
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
