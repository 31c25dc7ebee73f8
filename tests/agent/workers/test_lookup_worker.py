"""The lookup worker answers indicator lookups exactly as the node does in-process:
real node, real ledger file, a real worker process reading it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import orjson
import pytest

from agent.config.datadir import DataDir
from agent.config.settings import PeerEntry
from agent.node.node import Node
from agent.storage.queries import FAST_ROWS
from agent.workers.lookup import LookupWorker
from protocol.entries import TLP, sign_entry
from protocol.errors import PayloadError
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import identity, ip, make_data_dir

WAIT = 20.0  # a guard against hanging, not a latency requirement


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return make_data_dir(tmp_path, "QC", ("ON", "FED", "NB"))


async def _fill(node: Node) -> dict[str, str]:
    """Observations from this node, from ON (a peer) and from NB (a peer removed since:
    its entries stay, with no name); one retracted; one indicator seen more than
    FAST_ROWS times. Returns what -> indicator value."""
    _, gone = await node.submit_observations(
        [Observation(type="ipv4-addr", value=ip(1), confidence=80),
         Observation(type="ipv4-addr", value=ip(2))], TLP.GREEN)
    await node.retract(gone.id, "false positive")
    entries = []
    for name, values in (("ON", [ip(1)] + [ip(3)] * (FAST_ROWS + 4)), ("NB", [ip(1)])):
        who, prev = identity(name), None
        for seq, value in enumerate(values, 1):
            entry = sign_entry(who, seq=seq, prev=prev, now_ms=1_700_000_000_000 + seq,
                               tlp=TLP.CLEAR, audience=None,
                               body=encode_payload(Observation(type="ipv4-addr", value=value)))
            entries.append(entry)
            prev = entry.hash
    assert (await node.ledger.ingest(entries)).stored == len(entries)
    await node.remove_peer("NB")
    return {"shared": ip(1), "retracted": ip(2), "busy": ip(3), "unknown": ip(4)}


async def _both(node: Node, value: str) -> tuple[object, object]:
    """(worker's answer, in-process answer), both as decoded JSON."""
    assert node._lookups is not None
    before = node._lookups.answered
    worker = orjson.loads(await node.indicator_json("ipv4-addr", f" {value} "))
    assert node._lookups.answered == before + 1, "the worker did not answer"
    here = orjson.loads(orjson.dumps(await node.indicator("ipv4-addr", value)))
    return worker, here


async def test_worker_answers_exactly_what_the_node_answers(data_dir: DataDir) -> None:
    async with Node.open(data_dir, lookup_worker=True) as node:
        values = await _fill(node)
        assert node._lookups is not None and await node._lookups.ready()
        for what, value in values.items():
            worker, here = await _both(node, value)
            assert worker == here, what
        shared, _ = await _both(node, values["shared"])
        assert isinstance(shared, dict)
        assert sorted(shared["origins"])[:2] == ["ON", "QC"]  # names; NB stays a key
        assert shared["count"] == 3
        busy, _ = await _both(node, values["busy"])
        assert isinstance(busy, dict) and busy["count"] == FAST_ROWS + 4


async def test_names_follow_the_trust_list(data_dir: DataDir) -> None:
    async with Node.open(data_dir, lookup_worker=True) as node:
        values = await _fill(node)
        assert node._lookups is not None and await node._lookups.ready()
        first, _ = await _both(node, values["shared"])
        assert isinstance(first, dict) and "NB" not in first["origins"]
        await node.add_peer(PeerEntry.build(name="NB", key=identity("NB").public_key.text))
        worker, here = await _both(node, values["shared"])
        assert worker == here
        assert isinstance(worker, dict) and "NB" in worker["origins"]


async def test_bad_values_are_refused_before_the_worker(data_dir: DataDir) -> None:
    async with Node.open(data_dir, lookup_worker=True) as node:
        assert node._lookups is not None and await node._lookups.ready()
        with pytest.raises(PayloadError):
            await node.indicator_json("ipv4-addr", "999.1.1.1")
        with pytest.raises(PayloadError):
            await node.indicator_json("no-such-type", "x")
        assert node._lookups.answered == 0


async def test_a_killed_worker_is_replaced_and_no_lookup_is_lost(data_dir: DataDir) -> None:
    async with Node.open(data_dir, lookup_worker=True) as node:
        values = await _fill(node)
        lookups = node._lookups
        assert lookups is not None and await lookups.ready()
        pid = lookups.worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # Answered all the same (in-process while there is no worker).
        expected = orjson.dumps(await node.indicator("ipv4-addr", values["shared"]))
        for _ in range(5):
            got = await node.indicator_json("ipv4-addr", values["shared"])
            assert orjson.loads(got) == orjson.loads(expected)
        await asyncio.wait_for(lookups.ready(), WAIT)
        assert lookups.worker.pid not in (None, pid)
        worker, here = await _both(node, values["shared"])
        assert worker == here and lookups.worker.failures == 0


async def test_disabled_worker_never_starts(data_dir: DataDir) -> None:
    async with Node.open(data_dir, lookup_worker=False) as node:
        values = await _fill(node)
        answer = orjson.loads(await node.indicator_json("ipv4-addr", values["shared"]))
        assert answer["count"] == 3
        assert node._lookups is not None and not await node._lookups.ready()
        assert node._lookups.worker.pid is None


async def test_worker_over_a_missing_ledger_fails_and_lookups_go_on(tmp_path: Path) -> None:
    lookups = LookupWorker(tmp_path / "nowhere" / "ledger.sqlite3", enabled=True)
    try:
        assert not await lookups.ready()
        assert await lookups.indicator("ipv4-addr", ip(1), {}) is None
    finally:
        await lookups.close()
