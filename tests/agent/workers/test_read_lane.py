"""The read lane: lookups answered by reader processes that own the client connection,
byte for byte as the node answers them, and everything else handed back to the node.

A real daemon (agent/daemon.py ``serve``) on 127.0.0.1, real reader processes, raw
HTTP over real sockets: the test sees exactly the bytes a client would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import SERVER
from agent.cli.localfed import child_pids, free_ports
from agent.config.datadir import DataDir
from agent.config.settings import ApiConfig, PeerListenerConfig, load_node_config, write_node_config
from agent.config.tokens import Scope, TokenStore
from agent.daemon import serve
from agent.node.node import Node
from agent.workers.read_lane import SNIFF_S
from agent.workers.reader import NICE
from protocol.entries import TLP, sign_entry
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import identity, make_data_dir

WAIT = 20.0  # a guard against hanging, not a latency requirement


class Raw:
    """One keep-alive HTTP/1.1 connection, read response by response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, bytes, bytes]:
        """(status, head without its Date line, body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        length = int(re.search(rb"\r\nContent-Length: (\d+)", head, re.I)[1])  # type: ignore[index]
        body = await asyncio.wait_for(self.reader.readexactly(length), WAIT)
        return int(head[9:12]), re.sub(rb"\r\nDate: [^\r]*", b"", head), body

    async def ask(self, data: bytes) -> tuple[int, bytes, bytes]:
        self.send(data)
        return await self.response()

    def close(self) -> None:
        self.writer.close()


def get(path: str, token: str | None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}\r\n".encode()


def post(path: str, token: str, doc: object) -> bytes:
    body = json.dumps(doc).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


@dataclass
class Daemon:
    port: int
    tokens: dict[str, str]

    async def connect(self) -> Raw:
        return Raw(*await asyncio.open_connection("127.0.0.1", self.port))

    async def metric(self, name: str) -> float:
        conn = await self.connect()
        try:
            status, _, body = await conn.ask(get("/metrics", self.tokens["read"]))
        finally:
            conn.close()
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def until(self, name: str, at_least: float) -> float:
        for _ in range(int(WAIT / 0.05)):
            value = await self.metric(name)
            if value >= at_least:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"{name} stayed under {at_least}")

    async def lane_up(self, readers: int) -> None:
        """Open one lookup connection (it starts the readers and stays with the node),
        then wait until they take connections."""
        conn = await self.connect()
        await conn.ask(get("/api/v1/indicators/ipv4-addr/192.0.2.1", self.tokens["read"]))
        conn.close()
        await self.until("entraide_read_lane_readers", readers)

    async def on_reader(self) -> Raw:
        """A connection a reader owns (its first request, a lookup, went there)."""
        before = await self.metric("entraide_read_lane_connections_total")
        conn = await self.connect()
        status, _, _ = await conn.ask(get("/api/v1/indicators/ipv4-addr/192.0.2.2",
                                          self.tokens["read"]))
        assert status == 200
        assert await self.metric("entraide_read_lane_connections_total") == before + 1
        return conn

    async def on_node(self) -> Raw:
        """A connection the node keeps (its first request is not a lookup)."""
        conn = await self.connect()
        assert (await conn.ask(get("/api/v1/health", None)))[0] == 200
        return conn


@asynccontextmanager
async def daemon(tmp_path: Path, readers: int = 1) -> AsyncIterator[Daemon]:
    """``entraide run``'s daemon in this process, on free ports, with one token per
    scope (the data dir is made unless the test made it)."""
    api_port, peer_port = free_ports(2)
    dd = DataDir(tmp_path / "qc")
    if not dd.config_path.exists():
        make_data_dir(tmp_path, "QC")
    write_node_config(dd, load_node_config(dd).model_copy(update={
        "api": ApiConfig(port=api_port),
        "peer": PeerListenerConfig(host="127.0.0.1", port=peer_port)}))
    store = TokenStore(dd)
    tokens = {scope.value: store.create(scope) for scope in Scope}
    stop, up = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(dd, stop=stop, ready=up.set, readers=readers))
    try:
        await asyncio.wait_for(up.wait(), WAIT)
        yield Daemon(api_port, tokens)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


def indicator(value: str) -> str:
    return f"/api/v1/indicators/ipv4-addr/{value}"


async def test_readers_answer_as_the_node_does(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        node = await d.on_node()
        for value in ("203.0.113.7", "203.0.113.8"):
            status, _, _ = await node.ask(post("/api/v1/observations", d.tokens["write"],
                                               {"type": "ipv4-addr", "value": value,
                                                "confidence": 80}))
            assert status == 201
        await d.lane_up(1)
        reader = await d.on_reader()
        paths = [indicator("203.0.113.7"), indicator("203.0.113.8"),
                 indicator("203.0.113.9"),  # unknown: an empty answer, not an error
                 "/api/v1/indicators/ipv6-addr/2001:DB8:0::1"]  # not canonical
        for path in paths:
            here = await node.ask(get(path, d.tokens["read"]))
            there = await reader.ask(get(path, d.tokens["read"]))
            assert here[0] == 200
            assert there == here
            assert f"\r\nServer: {SERVER}\r\n".encode() in there[1]
        assert await d.metric("entraide_read_lane_returned_total") == 0
        # The readers' lookups count in the node's metrics, on the lookup route, within
        # a second: 5 by the node (lane_up's and the 4 above), 5 by the reader.
        route = 'method="GET",route="/api/v1/indicators/{type}/{value}"'
        await d.until(f'entraide_http_requests_total{{{route},status="200"}}', 10)
        assert await d.metric(f"entraide_http_request_duration_seconds_count{{{route}}}") == 10


async def test_other_requests_go_back_to_the_node(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        await d.lane_up(1)
        conn = await d.on_reader()
        # A submit on that connection: the node answers it, and keeps the connection.
        status, _, body = await conn.ask(post("/api/v1/observations", d.tokens["write"],
                                              {"type": "ipv4-addr", "value": "203.0.113.5"}))
        assert status == 201, body
        assert await d.metric("entraide_read_lane_returned_total") == 1
        status, _, body = await conn.ask(get(indicator("203.0.113.5"), d.tokens["read"]))
        assert status == 200 and json.loads(body)["count"] == 1
        conn.close()

        # Pipelined: two lookups, then a health check, then a lookup, in one write.
        conn = await d.on_reader()
        conn.send(get(indicator("203.0.113.5"), d.tokens["read"]) * 2
                  + get("/api/v1/health", None)
                  + get(indicator("203.0.113.5"), d.tokens["read"]))
        answers = [await conn.response() for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 200]
        assert json.loads(answers[2][2]) == {"status": "ok"}
        assert answers[0] == answers[1] == answers[3]
        conn.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (get(indicator("203.0.113.5"), "not-a-token"), 401),
    (get(indicator("203.0.113.5"), None), 401),
    (get(indicator("300.1.1.1"), "READ"), 422),
    (get("/api/v1/indicators/no-such-type/x", "READ"), 422),
    (get(indicator("203.0.113.5") + "?x=1", "READ"), 422),
    (get(indicator("203.0.113.5"), "READ", "Content-Length: 4\r\n") + b"abcd", 200),
    (get(indicator("203.0.113.5"), "READ", "Connection: close\r\n"), 200),
    (get(indicator("203.0.113.5"), "READ", f"X-Big: {'a' * 9000}\r\n"), 400),
])
async def test_errors_and_unusual_requests_are_the_nodes(tmp_path: Path, request_bytes: bytes,
                                                         status: int) -> None:
    async with daemon(tmp_path) as d:
        await d.lane_up(1)
        request_bytes = request_bytes.replace(b"Bearer READ", b"Bearer " +
                                              d.tokens["read"].encode())
        node = await d.on_node()
        expected = await node.ask(request_bytes)
        assert expected[0] == status
        conn = await d.on_reader()
        assert await conn.ask(request_bytes) == expected
        assert await d.metric("entraide_read_lane_returned_total") == 1


async def test_a_killed_reader_is_replaced_and_loses_nothing_acknowledged(
        tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        await d.lane_up(1)
        conn = await d.on_reader()
        readers = [pid for pid in child_pids(os.getpid())
                   if b"agent.workers.reader" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(readers) == 1
        os.kill(readers[0], signal.SIGKILL)
        # Its connection ends; the client reconnects and the node answers meanwhile.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await conn.ask(get(indicator("192.0.2.9"), d.tokens["read"]))
        fresh = await d.connect()
        assert (await fresh.ask(get(indicator("192.0.2.9"), d.tokens["read"])))[0] == 200
        await d.until("entraide_read_lane_readers", 1)
        await d.on_reader()


async def test_a_reader_runs_below_the_nodes_cpu_priority(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        await d.lane_up(1)
        readers = [pid for pid in child_pids(os.getpid())
                   if b"agent.workers.reader" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(readers) == 1
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, readers[0]) == min(19, mine + NICE)
        await d.on_reader()  # and it serves


async def test_names_follow_the_trust_list_on_a_reader(tmp_path: Path) -> None:
    """A peer removed through the API: the next lookup on a reader's connection no
    longer names it, as the node's own answer does not."""
    dd = make_data_dir(tmp_path, "QC", ("ON",))
    on, value = identity("ON"), "203.0.113.77"
    entry = sign_entry(on, seq=1, prev=None, now_ms=1_700_000_000_000, tlp=TLP.CLEAR,
                       audience=None,
                       body=encode_payload(Observation(type="ipv4-addr", value=value)))
    async with Node.open(dd) as node:
        assert (await node.ledger.ingest([entry])).stored == 1
    async with daemon(tmp_path) as d:
        await d.lane_up(1)
        conn = await d.on_reader()
        status, _, body = await conn.ask(get(indicator(value), d.tokens["read"]))
        assert status == 200 and json.loads(body)["origins"] == ["ON"]
        admin = await d.on_node()
        status, _, _ = await admin.ask(
            f"DELETE /api/v1/peers/ON HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{d.tokens['admin']}\r\n\r\n".encode())
        assert status == 200
        here = await admin.ask(get(indicator(value), d.tokens["read"]))
        there = await conn.ask(get(indicator(value), d.tokens["read"]))
        assert json.loads(there[2])["origins"] == [on.public_key.text]
        assert there == here
        assert await d.metric("entraide_read_lane_returned_total") == 0


async def test_a_connection_that_says_too_little_goes_to_the_node(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        await d.lane_up(1)
        offered = await d.metric("entraide_read_lane_connections_total")
        conn = await d.connect()
        whole = get(indicator("203.0.113.5"), d.tokens["read"])
        conn.send(whole[:15])  # "GET /api/v1/ind": a lookup, perhaps
        await asyncio.sleep(SNIFF_S + 0.5)
        status, _, _ = await conn.ask(whole[15:])
        assert status == 200
        assert await d.metric("entraide_read_lane_connections_total") == offered


async def test_a_rebinding_host_or_a_foreign_origin_is_refused_by_node_and_reader(
        tmp_path: Path) -> None:
    # DNS rebinding (agent/config/hosts.py): a page on evil.example whose name now points
    # at 127.0.0.1 sends "Host: evil.example:PORT". The node answers 421 and changes
    # nothing; a reader hands such a lookup back, so the answer is the node's 421.
    async with daemon(tmp_path) as d:
        await d.lane_up(1)
        path = indicator("203.0.113.7")
        for first in (get(path, d.tokens["read"]), get("/api/v1/health", None)):
            evil = first.replace(b"Host: 127.0.0.1", b"Host: evil.example:8470")
            conn = await d.connect()
            status, _, body = await conn.ask(evil)
            conn.close()
            assert status == 421
            assert json.loads(body)["error"]["code"] == "misdirected_request"
        write = post("/api/v1/observations", d.tokens["write"],
                     {"type": "ipv4-addr", "value": "203.0.113.66", "confidence": 80})
        conn = await d.connect()
        status, _, body = await conn.ask(write.replace(
            b"\r\nContent-Type", b"\r\nOrigin: http://evil.example\r\nContent-Type"))
        assert (status, json.loads(body)["error"]["code"]) == (403, "forbidden_origin")
        status, _, body = await conn.ask(get(indicator("203.0.113.66"), d.tokens["read"]))
        assert status == 200 and json.loads(body)["observations"] == []
        conn.close()
