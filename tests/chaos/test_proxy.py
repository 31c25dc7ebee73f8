"""The chaos proxy itself, against a real echo server on 127.0.0.1: bytes pass unchanged
and in order, a reset is an RST, a half-open link hears nothing, a black hole holds the
bytes until it heals (no timed assertion: only order and outcome)."""

from __future__ import annotations

import asyncio
import contextlib

from chaos.proxy import LinkProxy


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_bytes_pass_in_order_through_latency_jitter_loss_and_bandwidth() -> None:
    server, port = await _echo_server()
    proxy = LinkProxy(port)
    proxy.link.latency_ms, proxy.link.jitter_ms = 5, 20
    proxy.link.loss, proxy.link.rto_ms, proxy.link.bandwidth = 0.2, 5, 2_000_000
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    sent = bytes(range(256)) * 2000
    for i in range(0, len(sent), 3000):
        writer.write(sent[i:i + 3000])
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(sent)), 60)
    assert got == sent
    writer.close()
    await proxy.close()
    server.close()


async def test_reset_and_half_open_and_blackhole() -> None:
    server, port = await _echo_server()
    proxy = LinkProxy(port)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 30) == b"ping"
    assert proxy.reset() == 1
    try:
        got = await asyncio.wait_for(reader.read(10), 30)
        assert got == b""
    except ConnectionResetError:
        pass
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"one")
    assert await asyncio.wait_for(reader.readexactly(3), 30) == b"one"
    assert proxy.half_open() == 1
    writer.write(b"two")
    await writer.drain()
    done, _ = await asyncio.wait([asyncio.ensure_future(reader.read(10))], timeout=0.3)
    assert not done                      # silence: no answer, no FIN, no RST
    proxy.heal()                         # then the half-open connection is closed
    writer.close()

    proxy.link.blackhole = True
    proxy.link.poke()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"held")
    await writer.drain()
    read = asyncio.ensure_future(reader.readexactly(4))
    done, _ = await asyncio.wait([read], timeout=0.3)
    assert not done
    proxy.heal()
    assert await asyncio.wait_for(read, 30) == b"held"
    writer.close()
    await proxy.close()
    server.close()
