"""Listener limits against real sockets (issue 17): connection caps per source address
and in total, the first head's deadline and the keep-alive timeout, handshake slots per
source address, and log lines about refused handshakes limited per address and kind.

Distinct source addresses are simulated on loopback (127.0.0.2, 127.0.0.3 ...)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent.metrics import MetricFamily
from agent.peering.dialer import DialTarget
from agent.peering.limits import (
    AcceptErrorLog,
    ConnectionGuard,
    GuardedSite,
    ListenerLimits,
    fit_to_nofile,
    merged_families,
)
from agent.peering.links import TransportClosed, run_handshake
from agent.peering.registry import RateLimitedLog
from protocol.keys import Identity
from protocol.session import Session
from tests.agent.nodes import FAST_TRANSPORT, Federation, wait_for

EOF_WAIT = 20.0  # a bound so a broken test fails instead of hanging, not a timing claim


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _start(guard: ConnectionGuard) -> tuple[web.AppRunner, int]:
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           keepalive_timeout=guard.limits.keepalive_timeout)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, guard)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def _dial(port: int, source: str = "127.0.0.1"
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent before it closed the connection."""
    return await asyncio.wait_for(reader.read(), EOF_WAIT)


async def test_guard_caps_connections_per_source_address_and_in_total() -> None:
    guard = ConnectionGuard("test", ListenerLimits(max_connections=6, max_per_address=3,
                                                   header_timeout=60.0,
                                                   keepalive_timeout=60.0))
    runner, port = await _start(guard)
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(3):
            held.append((await _dial(port))[1])
        await wait_for(lambda: guard.count_from("127.0.0.1") == 3, what="three admitted")
        # A fourth from the same address is closed at once, without an answer.
        reader, writer = await _dial(port)
        assert await _closed_by_server(reader) == b""
        writer.close()
        assert guard.refused == {"per_address": 1}
        # Another address still gets in, up to its own share ...
        for _ in range(3):
            held.append((await _dial(port, "127.0.0.2"))[1])
        await wait_for(lambda: guard.open == 6, what="six admitted")
        # ... and then the total is reached, for everyone.
        reader, writer = await _dial(port, "127.0.0.3")
        assert await _closed_by_server(reader) == b""
        writer.close()
        assert guard.refused == {"per_address": 1, "total": 1}
        for w in held:
            w.close()
        await wait_for(lambda: guard.open == 0, what="every connection released")
        # Served normally again once they are gone.
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200 and await response.text() == "ok"
        await wait_for(lambda: guard.open == 0, what="the client's connection released")
    finally:
        for w in held:
            w.close()
        await runner.cleanup()


async def test_guard_closes_connections_idle_before_a_head_and_between_requests() -> None:
    guard = ConnectionGuard("test", ListenerLimits(max_connections=16, max_per_address=16,
                                                   header_timeout=0.5,
                                                   keepalive_timeout=0.5))
    runner, port = await _start(guard)
    try:
        # Sends nothing: closed at the head's deadline.
        silent_r, silent_w = await _dial(port)
        # Sends half a head and stops (slowloris): closed too.
        slow_r, slow_w = await _dial(port)
        slow_w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert await _closed_by_server(silent_r) == b""
        assert await _closed_by_server(slow_r) == b""
        assert guard.refused.get("header_timeout") == 2
        # One whole request, kept alive, then idle: answered, then closed by keep-alive.
        idle_r, idle_w = await _dial(port)
        idle_w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = await _closed_by_server(idle_r)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
        assert guard.refused.get("header_timeout") == 2  # its head came in time
        # A later head fed a byte at a time (slowloris after a first request): closed
        # by keep-alive, however long the drip would go on.
        drip_r, drip_w = await _dial(port)
        drip_w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

        async def drip() -> None:
            for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 400:
                if drip_w.is_closing():
                    return
                drip_w.write(bytes([byte]))
                await asyncio.sleep(0.05)

        dripping = asyncio.create_task(drip())
        answer = await _closed_by_server(drip_r)
        assert answer.count(b"HTTP/1.1 200") == 1
        dripping.cancel()
        for w in (silent_w, slow_w, idle_w, drip_w):
            w.close()
        await wait_for(lambda: guard.open == 0, what="every connection released")
    finally:
        await runner.cleanup()


def test_fit_to_nofile_keeps_the_listeners_under_the_limit() -> None:
    peer, api = ListenerLimits(512, 32), ListenerLimits(512, 256)
    assert fit_to_nofile([peer, api], 65536) == [peer, api]
    small = fit_to_nofile([peer, api], 1024)
    assert sum(lim.max_connections for lim in small) <= 1024 - 256
    assert all(lim.max_per_address <= lim.max_connections for lim in small)
    assert small[0].max_per_address == 32
    tiny = fit_to_nofile([peer, api], 100)
    assert [lim.max_connections for lim in tiny] == [16, 16]


def test_raise_nofile_lifts_the_soft_limit_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard open-file limit too low to lower the soft one under it")
    code = ("import resource\n"
            "from agent.peering.limits import raise_nofile\n"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "before, after = raise_nofile()\n"
            "assert before == 256, before\n"
            "assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after > 256\n"
            "print(after)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()},
                         check=True)
    assert int(out.stdout) > 256


def test_accept_errors_are_counted_and_logged_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "entraide.listener")
    now = [0.0]
    handler = AcceptErrorLog(interval=60.0, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        handler.install(loop)
        for _ in range(10_000):
            loop.call_exception_handler({"message": AcceptErrorLog.MESSAGE,
                                         "exception": OSError(24, "Too many open files")})
        now[0] = 61.0
        loop.call_exception_handler({"message": AcceptErrorLog.MESSAGE,
                                     "exception": OSError(24, "Too many open files")})
    finally:
        loop.close()
    assert handler.errors == 10_001
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 2 and "10000 such errors" in lines[1].getMessage()


def test_merged_families_put_both_listeners_in_one_family() -> None:
    peer, api = ConnectionGuard("peer", ListenerLimits()), ConnectionGuard("api", ListenerLimits())
    families: list[MetricFamily] = merged_families(peer.metric_families, api.metric_families)
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    (connections,) = [f for f in families if f.name == "entraide_listener_connections"]
    assert set(connections.samples) == {("peer",), ("api",)}


def test_rate_limited_log_is_bounded_whatever_the_keys() -> None:
    now = [0.0]
    limited = RateLimitedLog(60.0, lambda: now[0], cap=8)
    allowed = sum(limited.allow((f"10.0.0.{i}", "refused")) for i in range(1000))
    assert allowed == 8 and limited.suppressed == 992
    now[0] = 61.0
    assert limited.allow(("10.0.0.999", "refused"))


# --- the peer listener's handshake slots and refusal logs ---------------------------


async def _hold_handshake(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """An anonymous WebSocket that upgrades and then says nothing: it holds a slot."""
    return await http.ws_connect(url + "/peer/v1")


async def test_handshake_slots_are_per_source_address(tmp_path: Path) -> None:
    transport = dataclasses.replace(FAST_TRANSPORT, max_handshaking_per_address=2,
                                    handshake_timeout=60.0)
    async with Federation.start(tmp_path, 2, topology=(), transport=transport) as fed:
        a, b = fed.nodes
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as looper:
            held = [await _hold_handshake(looper, a.url) for _ in range(2)]
            await wait_for(lambda: a.repl.sessions.handshakes_from("127.0.0.2") == 2,
                           what="the looper's two handshakes in progress")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await _hold_handshake(looper, a.url)
            assert refused.value.status == 503
            assert a.repl.handshake_failures.get("busy") == 1
            # A trusted peer from another address (B dials from 127.0.0.1) still gets in.
            dial = asyncio.create_task(
                b.repl.sessions.connect(DialTarget(a.name, a.key, a.url)))
            await wait_for(lambda: a.repl.connected() == [b.key], what="B connected to A")
            for ws in held:
                await ws.close()
        await wait_for(lambda: a.repl.sessions.handshakes_from("127.0.0.2") == 0,
                       what="the looper's slots freed")
    await asyncio.gather(dial, return_exceptions=True)  # ended with the nodes


async def test_refused_handshakes_log_per_address_not_per_claimed_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with Federation.start(tmp_path, 1) as fed:
        (a,) = fed.nodes
        claims = 25
        async with aiohttp.ClientSession() as http:
            for i in range(claims):  # every one claims another key A does not trust
                outsider = Identity(bytes([i + 1]) * 32)
                async with http.ws_connect(a.url + "/peer/v1") as ws:
                    session = Session(outsider, initiator=True, is_trusted=lambda k: True,
                                      ephemeral_seed=bytes([200 - i]) * 32)
                    with pytest.raises(TransportClosed):
                        await run_handshake(ws, session, 10.0)
        await wait_for(lambda: a.repl.handshake_failures.get("refused", 0) == claims,
                       what="every claim refused")
        lines = [r for r in caplog.records if "refused at handshake" in r.getMessage()]
        assert len(lines) == 1  # one address, one kind, one line a minute
