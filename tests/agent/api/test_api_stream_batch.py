"""The stream's live path in batches (agent/api/stream.py, agent/node/fanout.py): the
events queued for a client when it wakes go out in one write, in commit order, filtered
per client, each event encoded once for every client; what a node may not read never
reaches any client.

No timed assertions: waits are bounded only so that a broken stream fails the test
instead of hanging it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.api import stream as stream_module
from agent.jsoncodec import loads
from agent.node import fanout
from protocol.entries import TLP
from protocol.payloads import Observation
from tests.agent._api_helpers import Api, ip, obs, running_api
from tests.agent.api.test_api import ingest_from
from tests.agent.api.test_api_stream import open_stream


class Writes:
    """Every write of every stream, as (stream, bytes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, bytes]] = []
        real = stream_module._Stream.write

        async def spy(client: Any, data: str | bytes) -> None:
            raw = data.encode() if isinstance(data, str) else data
            self.seen.append((id(client), raw))
            await real(client, data)

        monkeypatch.setattr(stream_module._Stream, "write", spy)

    def carrying(self, event_id: str) -> list[tuple[int, bytes]]:
        return [(c, raw) for c, raw in self.seen if event_id.encode() in raw]


def ids_in(raw: bytes) -> list[str]:
    """The observation ids of the events in one write, in order."""
    return [loads(block.split(b"\ndata: ", 1)[1])["id"]
            for block in raw.split(b"\n\n") if block.startswith(b"event: observation\n")]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


async def test_stream_sends_a_commit_of_many_events_in_one_write_in_order(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Writes(monkeypatch)
    async with open_stream(api) as first, open_stream(api) as second:
        created = await api.submit({"observations": [obs(ip(i)) for i in range(20)]})
        got = [await first.events(20), await second.events(20)]
    assert [[e.observation["id"] for e in g] for g in got] == [created["ids"]] * 2
    assert [len({e.id for e in g}) for g in got] == [20, 20]
    # Each client got the 20 events in one write, the same bytes for both.
    batches = writes.carrying(created["ids"][0])
    assert len(batches) == 2 and batches[0][0] != batches[1][0]
    assert [ids_in(raw) for _, raw in batches] == [created["ids"]] * 2
    assert batches[0][1] == batches[1][1]


async def test_stream_batch_encodes_each_event_once_for_every_client(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    real = fanout.dumps_bytes

    def counting(value: Any) -> bytes:
        encoded.append(value["id"])
        return real(value)

    monkeypatch.setattr(fanout, "dumps_bytes", counting)
    async with open_stream(api) as a, open_stream(api) as b, open_stream(api) as c:
        created = await api.submit({"observations": [obs(ip(i)) for i in range(5)]})
        got = [await reader.events(5) for reader in (a, b, c)]
    assert [[e.observation["id"] for e in g] for g in got] == [created["ids"]] * 3
    assert encoded == created["ids"]  # once each, not once per client
    assert {e.observation["origin_name"] for g in got for e in g} == {"QC"}


async def test_stream_batches_keep_each_clients_filters(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Writes(monkeypatch)
    body = {"observations": [
        obs(ip(1)), obs("one.example", type="domain-name"), obs(ip(2), tlp="AMBER"),
        obs("two.example", type="domain-name", tlp="AMBER"), obs(ip(3))]}
    async with open_stream(api, "type=ipv4-addr") as ips, \
            open_stream(api, "tlp=AMBER") as amber, \
            open_stream(api, "type=domain-name&value=two.example") as one_value, \
            open_stream(api) as everything:
        created = (await api.submit(body))["ids"]
        got_ips = await ips.events(3)
        got_amber = await amber.events(2)
        got_value = await one_value.events(1)
        got_all = await everything.events(5)
        # Nothing else was queued for the filtered clients: the next event each one
        # gets is the next matching one.
        last = await api.submit({"observations": [
            obs(ip(4), tlp="AMBER"), obs("two.example", type="domain-name")]})
        assert [e.observation["id"] for e in await ips.events(1)] == last["ids"][:1]
        assert [e.observation["id"] for e in await amber.events(1)] == last["ids"][:1]
        assert [e.observation["id"] for e in await one_value.events(1)] == last["ids"][1:]
    assert [e.observation["id"] for e in got_ips] == [created[0], created[2], created[4]]
    assert [e.observation["id"] for e in got_amber] == [created[2], created[3]]
    assert [e.observation["id"] for e in got_value] == [created[3]]
    assert [e.observation["id"] for e in got_all] == created
    # One write per client for the first commit, each holding only its matches.
    first = sorted((ids_in(raw) for _, raw in writes.seen if created[4].encode() in raw
                    or created[3].encode() in raw), key=len)
    assert first == [[created[3]], [created[2], created[3]],
                     [created[0], created[2], created[4]], created]


async def test_stream_batches_never_carry_what_the_node_may_not_read(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Writes(monkeypatch)
    async with open_stream(api) as everything, open_stream(api, "tlp=AMBER") as amber:
        sealed = await ingest_from(api, "ON", [
            Observation(type="ipv4-addr", value=ip(i)) for i in range(3)],
            tlp=TLP.AMBER, to=("FED",))
        readable = await ingest_from(api, "ON", [
            Observation(type="ipv4-addr", value=ip(i)) for i in range(3, 5)],
            tlp=TLP.AMBER, to=("QC",))
        red = await ingest_from(api, "ON", [Observation(type="ipv4-addr", value=ip(9))],
                                tlp=TLP.RED, to=("ON",))
        after = await api.submit(obs(ip(10), tlp="AMBER"))
        got_all = await everything.events(3)
        got_amber = await amber.events(3)
    expected = [*readable, after["id"]]
    assert [e.observation["id"] for e in got_all] == expected
    assert [e.observation["id"] for e in got_amber] == expected
    hidden = [*sealed, *red]
    assert not any(h.encode() in raw for h in hidden for _, raw in writes.seen)
    assert api.node.ledger.counts().entries == 7  # stored and relayed, never streamed


async def test_stream_client_that_keeps_up_survives_a_commit_larger_than_1024(
        api: Api) -> None:
    # A replicated transaction holds up to 2,048 entries (agent/peering/ingest.py) and
    # an ingest up to 10,000: with the default queue one commit never cuts a client
    # that keeps up (with 1,024 every subscriber was dropped and caught up again).
    async with open_stream(api) as stream:
        ids = await ingest_from(api, "ON", [
            Observation(type="ipv4-addr", value=f"10.{i >> 8}.{i & 255}.1")
            for i in range(2_100)])
        got = await stream.events(2_100)
    assert [e.observation["id"] for e in got] == ids
    _status, text = await api.call("GET", "/metrics", scope="read")
    assert "slow_client" not in text
