"""A fault-injecting TCP proxy in asyncio: one per peer link, between the dialling node
and the dialled node's peer listener: on 127.0.0.1, or (chaos/netns.py) on the root
side of the dialling node's veth, forwarding into the dialled node's namespace.

Kernel ``netem`` is not available on the machines the chaos runs on, so the proxy does
its job at the byte-stream level. A :class:`Link` holds the faults in force; they can be
changed while connections are open:

- ``latency_ms`` / ``jitter_ms``: each chunk read is forwarded that long after it was
  read (jitter drawn uniformly in ``[0, jitter]``, order kept: a chunk never overtakes
  the one before it, as in TCP).
- ``bandwidth``: bytes per second in each direction (a chunk waits until the link could
  have carried it).
- ``loss``: TCP hides a lost segment behind a retransmission, so a chunk "lost" with this
  probability is delivered one retransmission timeout later (``rto_ms``, 200 ms as in
  Linux's minimum RTO), stalling those behind it, as a real loss does.
- ``blackhole``: nothing is forwarded either way and new connections are accepted but
  never connected upstream; the bytes wait (bounded by the socket buffers: the proxy
  stops reading) until the fault ends, as in a routing black hole that heals before
  TCP gives up.
- ``reset()``: every open connection is closed with a TCP RST on both sides.
- ``half_open()``: every open connection loses its upstream side silently; the dialler's
  side stays open and hears nothing (a peer whose machine vanished).
- ``slow_read``: the proxy reads from each side at most this many bytes per second, in
  small reads, so the sender's socket buffer fills (a slow-reading peer).

Every queue is bounded: a direction holds at most ``MAX_BUFFERED`` bytes before the
proxy stops reading from its source.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

__all__ = ["Link", "LinkProxy"]

CHUNK = 16 * 1024
MAX_BUFFERED = 256 * 1024


@dataclass
class Link:
    """The faults in force on one proxied link (both directions)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth: float = 0.0          # bytes/s, 0 = unlimited
    loss: float = 0.0               # probability per chunk of one retransmission stall
    rto_ms: float = 200.0
    slow_read: float = 0.0          # bytes/s read from each side, 0 = normal reads
    blackhole: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def clear(self, *, keep_base: bool = True) -> None:
        """End the transient faults (blackhole, slow reads); keep the link's shape."""
        self.blackhole = False
        self.slow_read = 0.0
        if not keep_base:
            self.latency_ms = self.jitter_ms = self.bandwidth = self.loss = 0.0
        self.poke()

    def poke(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    def __init__(self, proxy: LinkProxy, down_r: asyncio.StreamReader,
                 down_w: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.down_r, self.down_w = down_r, down_w
        self.up_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.half_open = False

    async def run(self) -> None:
        link = self.proxy.link
        try:
            while link.blackhole:                       # accepted, never connected upstream
                await link.changed.wait()
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(self.proxy.target_host, self.proxy.target_port), 10)
            self.up_w = up_w
            self.tasks = [asyncio.create_task(self._pump(self.down_r, up_w)),
                          asyncio.create_task(self._pump(up_r, self.down_w))]
            await asyncio.gather(*self.tasks)
        except (TimeoutError, OSError, ConnectionError, RuntimeError):
            pass
        except asyncio.CancelledError:
            # Our own pumps cancelled (half_open(), reset, close) end this connection
            # quietly; only a cancellation of this task itself goes on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        finally:
            if self.half_open:                           # silence, until the fault ends
                with contextlib.suppress(asyncio.CancelledError):
                    await self.proxy.healed.wait()
            self.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = self.proxy.link
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        buffered = 0
        room = asyncio.Event()
        room.set()

        async def send() -> None:
            nonlocal buffered
            free_at = 0.0
            while True:
                item = await queue.get()
                if item is None:
                    with contextlib.suppress(OSError, RuntimeError):
                        writer.write_eof()
                    return
                due, data = item
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                while link.blackhole:
                    await link.changed.wait()
                if link.bandwidth > 0:
                    free_at = max(free_at, time.monotonic()) + len(data) / link.bandwidth
                    wait = free_at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                buffered -= len(data)
                if buffered < MAX_BUFFERED:
                    room.set()

        sender = asyncio.create_task(send())
        last_due = 0.0
        try:
            while True:
                await room.wait()
                while link.blackhole:
                    await link.changed.wait()
                size = CHUNK
                if link.slow_read > 0:
                    size = max(1, min(CHUNK, int(link.slow_read / 10)))
                data = await reader.read(size)
                if link.slow_read > 0:
                    await asyncio.sleep(len(data) / link.slow_read if data else 0)
                if not data:
                    queue.put_nowait(None)
                    break
                delay = link.latency_ms + random.uniform(0, link.jitter_ms)
                if link.loss > 0 and random.random() < link.loss:
                    delay += link.rto_ms
                last_due = max(last_due, time.monotonic() + delay / 1000)
                buffered += len(data)
                if buffered >= MAX_BUFFERED:
                    room.clear()
                queue.put_nowait((last_due, data))
            await sender
        finally:
            sender.cancel()

    def reset(self) -> None:
        for w in (self.down_w, self.up_w):
            if w is not None:
                _rst(w)

    def drop_upstream(self) -> None:
        self.half_open = True
        for t in self.tasks:
            t.cancel()
        if self.up_w is not None:
            _rst(self.up_w)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for w in (self.down_w, self.up_w):
            if w is not None:
                w.transport.abort()


class LinkProxy:
    """Listens on ``host``:``port`` (0: any) and forwards to ``target_host``:``target_port``
    (both 127.0.0.1 by default)."""

    def __init__(self, target_port: int, link: Link | None = None, *,
                 target_host: str = "127.0.0.1") -> None:
        self.target_port = target_port
        self.target_host = target_host
        self.link = link or Link()
        self.port = 0
        self.conns: set[_Conn] = set()
        self.healed = asyncio.Event()
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Conn(self, reader, writer)
        self.conns.add(conn)
        try:
            await conn.run()
        finally:
            self.conns.discard(conn)

    def reset(self) -> int:
        """RST every open connection; return how many."""
        conns = list(self.conns)
        for c in conns:
            c.reset()
        return len(conns)

    def half_open(self) -> int:
        """Drop the upstream side of every open connection silently; return how many."""
        self.healed = asyncio.Event()
        conns = list(self.conns)
        for c in conns:
            c.drop_upstream()
        return len(conns)

    def heal(self) -> None:
        """End the transient faults; half-open connections are then closed."""
        self.link.clear()
        self.healed.set()

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
