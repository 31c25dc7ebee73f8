"""The Server-Sent Events stream: live delivery, resumption with Last-Event-ID, filters,
heartbeats, bounded per-client memory, shutdown.

No timed assertions: waits are bounded only so that a broken stream fails the test
instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.api.models import ObservationOut
from agent.metrics import parse_text
from agent.storage.queries import encode_cursor
from agent.web.common import STATE, ApiSettings
from protocol.entries import TLP, sign_entry
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import Api, identity, ip, obs, running_api

WAIT = 20.0  # a guard against hanging, not a latency requirement


@dataclass
class Event:
    event: str | None = None
    id: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def observation(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


class Reader:
    """Parses an SSE response into events and comments."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []
        self.fields_seen: list[str] = []

    async def next_block(self) -> Event | None:
        """The next block (up to a blank line); None at the end of the stream."""
        block = Event()
        seen_any = False
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), WAIT)
            if not raw:
                return block if seen_any else None
            line = raw.decode("utf-8").rstrip("\n")
            if not line:
                if seen_any:
                    return block
                continue
            seen_any = True
            if line.startswith(":"):
                block.comments.append(line[1:].strip())
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            self.fields_seen.append(name)
            if name == "event":
                block.event = value
            elif name == "id":
                block.id = value
            elif name == "data":
                block.data += value

    async def next_event(self) -> Event | None:
        """The next ``observation`` event (skipping comments); None at the end."""
        while True:
            block = await self.next_block()
            if block is None or block.event == "observation":
                return block

    async def events(self, count: int) -> list[Event]:
        out = []
        for _ in range(count):
            event = await self.next_event()
            assert event is not None, f"stream ended after {len(out)} of {count} events"
            out.append(event)
        return out


@asynccontextmanager
async def open_stream(api: Api, query: str = "", last_event_id: str | None = None,
                      scope: str = "read") -> AsyncIterator[Reader]:
    headers = api.auth(scope)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with api.client.get(f"/api/v1/stream{'?' + query if query else ''}",
                              headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        reader = Reader(response)
        hello = await reader.next_block()  # the stream's opening comment (and retry)
        assert hello is not None and hello.comments
        yield reader


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path, settings=ApiSettings(stream_page=3)) as running:
        yield running


async def test_stream_delivers_a_newly_submitted_observation(api: Api) -> None:
    await api.submit(obs("192.0.2.1"))  # before the stream: not sent
    async with open_stream(api) as stream:
        created = await api.submit(obs("203.0.113.7", tlp="AMBER"))
        (event,) = await stream.events(1)
    assert event.event == "observation" and event.id
    shown = event.observation
    ObservationOut.model_validate(shown)
    assert shown["id"] == created["id"] and shown["value"] == "203.0.113.7"
    assert shown["origin_name"] == "QC" and shown["tlp"] == "AMBER"


async def test_stream_delivers_replicated_observations_too(api: Api) -> None:
    async with open_stream(api) as stream:
        who = identity("ON")
        entry = sign_entry(who, seq=1, prev=None, now_ms=1_700_000_000_000, tlp=TLP.GREEN,
                           audience=None, body=encode_payload(
                               Observation(type="ipv4-addr", value="192.0.2.44")))
        await api.node.ledger.ingest([entry])
        (event,) = await stream.events(1)
    assert event.observation["id"] == entry.id and event.observation["origin_name"] == "ON"


async def test_stream_resumes_with_last_event_id_without_loss_or_repeat(api: Api) -> None:
    async with open_stream(api) as stream:
        first = await api.submit(obs(ip(1)))
        (event,) = await stream.events(1)
        assert event.observation["id"] == first["id"]
    later = await api.submit({"observations": [obs(ip(i)) for i in range(2, 9)]})
    async with open_stream(api, last_event_id=event.id) as stream:
        caught_up = await stream.events(7)
        assert [e.observation["id"] for e in caught_up] == later["ids"]
        live = await api.submit(obs(ip(9)))
        (event,) = await stream.events(1)
        assert event.observation["id"] == live["id"]
    # Resume from the middle of a catch-up page (positions like "<cursor>.<n>").
    async with open_stream(api, last_event_id=caught_up[3].id) as stream:
        rest = await stream.events(4)
    assert [e.observation["id"] for e in rest] == [*later["ids"][4:], live["id"]]


async def test_stream_from_the_start_replays_everything_in_commit_order(api: Api) -> None:
    created = await api.submit({"observations": [obs(ip(i)) for i in range(10)]})
    retracted = created["ids"][4]
    status, _ = await api.call("POST", f"/api/v1/observations/{retracted}/retract",
                               scope="write")
    assert status == 201
    async with open_stream(api, last_event_id=encode_cursor("observation", 0)) as stream:
        events = await stream.events(9)
    assert [e.observation["id"] for e in events] == [i for i in created["ids"] if i != retracted]
    assert len({e.id for e in events}) == 9


async def test_stream_filters_like_the_list(api: Api) -> None:
    async with open_stream(api, "type=domain-name&tlp=AMBER") as stream:
        await api.submit(obs(ip(1), tlp="AMBER"))
        await api.submit(obs("one.example", type="domain-name"))
        wanted = await api.submit(obs("Two.Example", type="domain-name", tlp="AMBER"))
        (event,) = await stream.events(1)
    assert event.observation["id"] == wanted["id"]
    async with open_stream(api, "type=domain-name&value=TWO.example.",
                           last_event_id=encode_cursor("observation", 0)) as stream:
        (event,) = await stream.events(1)
    assert event.observation["id"] == wanted["id"]


async def test_stream_sends_heartbeat_comments_when_idle(tmp_path: Path) -> None:
    settings = ApiSettings(stream_heartbeat=0.02)
    async with running_api(tmp_path, settings=settings) as api, open_stream(api) as stream:
        block = await stream.next_block()
        assert block is not None and block.comments == ["ping"] and block.event is None


async def test_stream_client_too_slow_is_disconnected_then_resumes(tmp_path: Path) -> None:
    # Ten events committed at once into a queue of two: the stream overflows and ends
    # after what was queued; the client resumes with Last-Event-ID and loses nothing.
    settings = ApiSettings(stream_queue=2, stream_page=4)
    async with running_api(tmp_path, settings=settings) as api:
        async with open_stream(api) as stream:
            # The stream subscribes after its opening comment: a commit before that would
            # reach it by the ledger catch-up, which never overflows.
            await _until(lambda: len(api.node._fanout) == 1)
            created = await api.submit({"observations": [obs(ip(i)) for i in range(10)]})
            got = []
            while (event := await stream.next_event()) is not None:
                got.append(event)
        assert 0 < len(got) < 10
        assert [e.observation["id"] for e in got] == created["ids"][:len(got)]
        async with open_stream(api, last_event_id=got[-1].id) as stream:
            rest = await stream.events(10 - len(got))
        assert [e.observation["id"] for e in got + rest] == created["ids"]
        _status, text = await api.call("GET", "/metrics", scope="read")
        drops = parse_text(text)["entraide_stream_disconnects_total"]
        assert drops[(("reason", "slow_client"),)] == 1


@pytest.mark.parametrize("last_event_id", ["nope", "AAAAAAAAAAAA.1", encode_cursor("sighting", 1),
                                           encode_cursor("observation", 1) + ".0",
                                           encode_cursor("observation", 1) + ".x"])
async def test_stream_bad_last_event_id_is_400(api: Api, last_event_id: str) -> None:
    status, body = await api.call("GET", "/api/v1/stream", scope="read",
                                  headers={"Last-Event-ID": last_event_id})
    assert status == 400 and body["error"]["code"] == "bad_cursor"


@pytest.mark.parametrize("query", ["type=mac", "origin=ATLANTIS", "colour=red",
                                   "type=ipv4-addr&value=1.2.3.999"])
async def test_stream_bad_filter_is_422(api: Api, query: str) -> None:
    status, body = await api.call("GET", f"/api/v1/stream?{query}", scope="read")
    assert status == 422, body


async def test_stream_needs_a_read_token(api: Api) -> None:
    status, _body = await api.call("GET", "/api/v1/stream", scope=None)
    assert status == 401


async def test_streams_end_when_the_app_shuts_down(api: Api) -> None:
    async with open_stream(api) as stream:
        state = api.client.app[STATE]
        assert len(state.streams) == 1
        await api.client.app.shutdown()
        assert await stream.next_event() is None
    assert state.streams == set()


async def test_stream_does_not_repeat_what_catch_up_and_live_both_saw(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # An observation committed while the stream is subscribed but still catching up is
    # both in the catch-up page and in the live queue: it must be sent once.
    real = api.node.list_observations
    calls = 0
    raced: dict[str, Any] = {}

    async def list_with_a_commit_in_between(**filters: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the catch-up run right after subscribing
            raced.update(await api.submit(obs("192.0.2.99")))
        return await real(**filters)

    monkeypatch.setattr(api.node, "list_observations", list_with_a_commit_in_between)
    async with open_stream(api) as stream:
        (first,) = await stream.events(1)
        after = await api.submit(obs("192.0.2.100"))
        (second,) = await stream.events(1)
    assert calls >= 2
    assert first.observation["id"] == raced["id"]
    assert second.observation["id"] == after["id"]



async def test_stream_delay_is_measured_per_live_write_not_for_catch_up(api: Api) -> None:
    """entraide_stream_delay_seconds: one observation per live write, from the commit of
    its oldest event; the catch-up (read from the ledger) is not a delay."""
    delay = api.client.app[STATE].stream_delay
    await api.submit({"observations": [obs(ip(i)) for i in range(1, 4)]})
    async with open_stream(api, last_event_id=encode_cursor("observation", 1)) as stream:
        await stream.events(2)  # caught up from the ledger
        await _until(lambda: len(api.node._fanout) == 1)
        assert delay.count() == 0
        live = await api.submit(obs(ip(9)))
        (event,) = await stream.events(1)
        assert event.observation["id"] == live["id"]
        await _until(lambda: delay.count() == 1)
    _status, text = await api.call("GET", "/metrics", scope="read")
    samples = parse_text(text)
    assert samples["entraide_stream_delay_seconds_count"][()] == 1
    assert 0 < samples["entraide_stream_delay_seconds_sum"][()] < 60
