"""The batch worker (agent/api/batch.py, agent/workers/batch.py): what it prepares is
what the in-process path would store, what it refuses the in-process path refuses
with the API's own error, and a node whose worker is gone goes on validating in-process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from agent.api.batch import (
    prepare_body,
    prepare_observation,
    validate_batch,
)
from agent.metrics import Registry, parse_text
from agent.storage.queries import build_record
from agent.workers.batch import COMMAND, BatchWorker
from agent.workers.pipe import PipeWorker
from agent.workers.supervisor import Supervisor
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import Api, ip, obs, running_api

OBSERVATIONS = [
    Observation(type="ipv4-addr", value="203.0.113.7"),
    Observation(type="domain-name", value="Example.COM", confidence=80, severity="high",
                tags=("c2", "c2", " apt "), description={"fr": "Serveur de commande"}),
    Observation(type="url", value="https://a.example/x?y", first_seen="2026-01-01T00:00:00Z",
                references=("https://ref.example/",)),
    Observation(type="ipv4-addr", value="198.51.100.0/24", first_seen="2026-01-01T00:00:00Z",
                last_seen="2026-02-01T00:00:00.5+01:00", valid_until="2027-01-01T00:00:00Z"),
    Observation(type="cve", value="cve-2024-12345", last_seen="1970-01-01T00:00:00.001Z"),
]


@pytest.mark.parametrize("observation", OBSERVATIONS, ids=lambda o: o.type.value)
@pytest.mark.parametrize("ts", [0, 1_767_225_600_000, 1_900_000_000_000])
def test_prepared_observation_is_what_the_ledger_would_build(observation: Observation,
                                                             ts: int) -> None:
    prepared = prepare_observation(observation)
    assert prepared.data == encode_payload(observation)
    assert prepared.record(ts) == build_record(observation, ts)
    assert prepared.record(ts).doc == build_record(observation, ts).doc


def _batch_body(count: int, **batch: Any) -> dict[str, Any]:
    return {**batch, "observations": [
        obs(ip(i), confidence=i % 101, tags=["t", f"n{i % 7}"],
            description={"en": "padding " * 4}) for i in range(count)]}


def test_prepare_body_gives_the_in_process_validation() -> None:
    body = _batch_body(40, tlp="amber", audience=["ON"])
    body["observations"][3].update(tlp="GREEN")
    body["observations"][4].update(audience=["FED"])
    prepared = prepare_body(json.dumps(body).encode())
    assert prepared is not None
    expected = validate_batch(body)
    assert [(p.data, tlp, audience) for p, tlp, audience in prepared] == [
        (encode_payload(o), tlp.value, audience) for o, tlp, audience in expected]


@pytest.mark.parametrize("body", [
    b"", b"[]", b"{}", b"\xff\xfe", b'{"observations": [1e400]}', b'{"observations": NaN}',
    json.dumps(obs()).encode(), json.dumps({"observations": []}).encode(),
    json.dumps({"observations": [obs()] * 1001}).encode(),
    json.dumps({"observations": [obs(), obs("1.2.3.999")]}).encode(),
    json.dumps({"observations": [obs()], "extra": 1}).encode(),
    json.dumps({"tlp": "PURPLE", "observations": [obs()]}).encode(),
    b'{"observations": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
], ids=range(13))
def test_prepare_body_answers_none_for_anything_but_a_valid_batch(body: bytes) -> None:
    assert prepare_body(body) is None


async def test_preparer_disabled_or_small_body_answers_none() -> None:
    body = json.dumps(_batch_body(300)).encode()
    off = BatchWorker(PipeWorker("batch worker", COMMAND, enabled=False))
    assert await off.prepare(body) is None
    assert not await off.ready()
    small = BatchWorker(PipeWorker("batch worker", COMMAND), min_bytes=len(body) + 1)
    assert await small.prepare(body) is None  # never starts the worker for it
    assert small.worker.pid is None and not small.worker.running
    await off.worker.close()
    await small.worker.close()


@pytest.fixture
async def pair(tmp_path: Path) -> Any:
    """A node that validates large batches in its worker (started), and one that never
    does, each with its own API and its supervisor."""
    on, off = Registry(), Registry()
    workers = Supervisor(on, batch=True, judge=False)
    without = Supervisor(off, batch=False, judge=False)
    async with running_api(tmp_path / "w", registry=on, batch_worker=workers.batch) as worker, \
            running_api(tmp_path / "i", registry=off) as inproc:
        await workers.open()
        await without.open()
        try:
            assert await workers.batch.ready()
            WORKERS[worker.node] = workers
            yield worker, inproc
        finally:
            await workers.close()
            await without.close()


WORKERS: dict[Any, Supervisor] = {}


async def test_worker_stores_what_the_in_process_path_stores(pair: tuple[Api, Api]) -> None:
    worker, inproc = pair
    body = _batch_body(300, tlp="AMBER")
    body["observations"][7].update(tlp="CLEAR")
    body["observations"][8].update(first_seen="2026-01-01T00:00:00Z", type="domain-name",
                                   value="WWW.Example.org.")
    assert len(json.dumps(body)) > 16 * 1024  # large enough for the worker
    got = [await api.submit(body) for api in pair]
    for api, up, batches in ((worker, 1.0, 1.0), (inproc, 0.0, 0.0)):
        samples = parse_text(api.node.metrics.render())
        assert samples["entraide_batch_worker_up"][()] == up
        assert samples["entraide_batch_worker_batches_total"][()] == batches
    assert got[0]["count"] == got[1]["count"] == 300
    assert got[0]["seqs"] == got[1]["seqs"] == list(range(1, 301))
    for i in (0, 7, 8, 299):
        seen = []
        for api, created in zip(pair, got, strict=True):
            status, item = await api.call("GET", f"/api/v1/observations/{created['ids'][i]}",
                                          scope="read")
            assert status == 200
            entry = await api.node.ledger.get_entry(created["ids"][i])
            assert entry is not None
            for key in ("id", "origin", "origin_name", "ts", "first_seen", "last_seen"):
                item.pop(key, None)
            seen.append((item, entry.tlp, len(entry.audience or ())))
        assert seen[0] == seen[1]
    for api, created in zip(pair, got, strict=True):
        status, found = await api.call("GET", "/api/v1/indicators/domain-name/www.example.org",
                                       scope="read")
        assert status == 200
        assert [o["id"] for o in found["observations"]] == [created["ids"][8]]
        clear = await api.node.ledger.get_entry(created["ids"][7])
        assert clear is not None and clear.body == encode_payload(
            Observation.model_validate(obs(ip(7), confidence=7, tags=["t", "n0"],
                                           description={"en": "padding " * 4})))


@pytest.mark.parametrize("bad", [
    {"observations": [{"type": "ipv4-addr", "value": "1.2.3.999"}]},
    {"observations": [{"type": "ipv4-addr", "value": "1.2.3.4", "colour": "red"}]},
    {"observations": [{"type": "ipv4-addr", "value": "1.2.3.4", "tlp": "PURPLE"}]},
    {"observations": [5]},
    {"observations": [{"type": "ipv4-addr", "value": "1.2.3.4", "tlp": "RED"}]},
    {"observations": [{"type": "ipv4-addr", "value": "1.2.3.4", "audience": ["NOPE"],
                       "tlp": "RED"}]},
    {"observations": [{"type": "ipv4-addr", "value": "1.2.3.4", "audience": ["ON"]}]},
], ids=range(7))
async def test_worker_errors_are_the_in_process_errors(pair: tuple[Api, Api],
                                                       bad: dict[str, Any]) -> None:
    body = _batch_body(250)
    body["observations"][100:100] = bad["observations"]
    answers = [await api.call("POST", "/api/v1/observations", scope="write", json_body=body)
               for api in pair]
    assert answers[0] == answers[1]
    assert answers[0][0] in (413, 422)
    for api in pair:
        assert api.node.ledger.counts().entries == 0


async def test_node_validates_in_process_once_its_worker_is_gone(pair: tuple[Api, Api]) -> None:
    worker, _ = pair
    batch = WORKERS[worker.node].batch
    assert batch.worker.pid is not None
    os.kill(batch.worker.pid, signal.SIGKILL)
    first = await worker.submit(_batch_body(200))
    second = await worker.submit(_batch_body(200))
    assert first["count"] == second["count"] == 200
    assert second["seqs"][-1] == 400
    assert batch.prepared == 0
    assert parse_text(worker.node.metrics.render())["entraide_batch_worker_up"][()] == 0
