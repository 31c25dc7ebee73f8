"""A read-lane reader process: owns the client connections the node passed it and answers
their indicator lookups whole (agent/workers/read_lane.py draws the lane; the node side
lives there).

Invariants:
- A reader only reads: its ledger connection is ``query_only``; it holds no key; it
  authenticates with the node's one check (agent/config/tokens.py ``authenticate``)
  against the node's tokens.toml (re-read when it changes, like the node).
- Its answers are the node's bytes, down to the Server header (:data:`agent.SERVER`).
- The first request it does not answer goes back to the node, unread, once every
  earlier answer is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import sys
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

from agent import SERVER
from agent.config.datadir import DataDir
from agent.config.hosts import HostPolicy
from agent.config.settings import load_node_config
from agent.config.tokens import Scope, TokenStore, authenticate
from agent.metrics import DEFAULT_LATENCY_BUCKETS, bucket_index
from agent.storage.lookup import answer_indicator, connect_reader
from agent.storage.queries import canonical_indicator
from agent.workers.control import IDLE_S, MAX_CONNECTIONS, pack, receive, unpack
from agent.workers.gcsettings import settle_heap
from agent.workers.lookup_http import HAND_BACK, Lookup, next_request, ok_response
from protocol.errors import EntraideError

__all__ = ["main"]

log = logging.getLogger(__name__)

_STATS_S = 1.0
NICE = 5
"""How much lower a reader's CPU priority is than the node's (``os.nice``). Lookups are
the one load a client can make as large as it likes (a closed loop of requests takes
every free cycle); at equal priority, 32 lookup clients on two cores took the CPU the
main process and the verify workers needed, and replicated entries reached the stream
later. The trade, measured, is in docs/benchmarks.md ("mixed"). A lower priority only
matters while the cores are busy: alone, lookups run as fast as before."""
_SERVER = SERVER.encode("ascii")  # the API app's Server header too

class _Connection(asyncio.Protocol):
    """A client connection in a reader: answers lookups until one it does not answer."""

    def __init__(self, reader: _ReaderProcess, data: bytes) -> None:
        self._reader = reader
        self._buf = bytearray(data)
        self._transport: asyncio.Transport | None = None
        self._writing_paused = False
        self._handing_back = False
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=256 * 1024)
        self._reader.connections.add(self)
        self._serve()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._serve()

    def eof_received(self) -> bool | None:
        # A request going back is answered by the node, which reads the end of
        # file again from the socket; otherwise nothing more can be asked.
        return True if self._handing_back else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._reader.connections.discard(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        assert self._transport is not None
        self._transport.pause_reading()  # a client that does not read is not read from

    def resume_writing(self) -> None:
        self._writing_paused = False
        transport = self._transport
        assert transport is not None
        if self._handing_back:
            self._hand_back()
            return
        transport.resume_reading()
        self._serve()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _serve(self) -> None:
        self.last_active = time.monotonic()
        transport = self._transport
        assert transport is not None
        self._reader.poll_control()
        while self._buf and not self._writing_paused and not self._handing_back:
            request = next_request(self._buf)
            if request is None:
                return
            answer = None if request is HAND_BACK else self._reader.answer(request)
            if answer is None:
                self._handing_back = True
                transport.pause_reading()
                if transport.get_write_buffer_size() == 0:
                    self._hand_back()
                else:  # the node writes next: first every answer given here
                    transport.set_write_buffer_limits(high=0)
                return
            assert isinstance(request, Lookup)
            del self._buf[:request.size]
            transport.write(answer)

    def _hand_back(self) -> None:
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        try:
            socket.send_fds(self._reader.ctl, [pack(["back", bytes(self._buf)])],
                            [sock.fileno()])
        except OSError as exc:
            log.error("reader: cannot give a connection back: %s", exc)
        transport.abort()


class _ReaderProcess:
    """The reader process's state: its connections, tokens, ledger and counts."""

    def __init__(self, ctl: socket.socket, data_dir: Path, ledger_path: Path) -> None:
        self.ctl = ctl
        self.connections: set[_Connection] = set()
        self._starting: set[asyncio.Task[Any]] = set()
        self._tokens = TokenStore(DataDir(data_dir))
        self._hosts = HostPolicy.of(load_node_config(DataDir(data_dir)).api.allowed_hosts)
        self._db: sqlite3.Connection = connect_reader(str(ledger_path))
        self._names: dict[str, str] = {}
        self._buckets = DEFAULT_LATENCY_BUCKETS
        self._counts = [0] * (len(self._buckets) + 1)
        self._seconds = 0.0
        self._date = (0, b"")
        self._done = asyncio.get_running_loop().create_future()

    def answer(self, request: Lookup) -> bytes | None:
        """The whole response to ``request``, or None when the node should answer
        (among others when the node's one authentication refuses the token: the node
        then gives the 401 or 403 the API gives)."""
        start = time.perf_counter()
        if not self._hosts.allows_host(request.host):
            return None  # the node's middleware gives the 421
        try:
            # lookup_http found exactly one "Bearer <token>" header: the same check
            # as the API's, on the same scheme.
            authenticate(self._tokens, "Bearer " + request.token, Scope.READ)
            type, value = canonical_indicator(request.type, request.value)
            body = answer_indicator(self._db, type, value, self._names)
        except (EntraideError, sqlite3.Error):
            return None
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode("ascii"))
        response = ok_response(body, self._date[1], _SERVER)
        elapsed = time.perf_counter() - start
        self._counts[bucket_index(self._buckets, elapsed)] += 1
        self._seconds += elapsed
        return response

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.ctl.fileno(), self.poll_control)
        self.ctl.send(pack(["ready"]))
        settle_heap()
        tick = loop.create_task(self._tick())
        try:
            await self._done
        finally:
            tick.cancel()
            self._send_counts()
            for conn in list(self.connections):
                conn.close()

    def poll_control(self) -> None:
        """Take every control message already sent: called before serving a request
        too, so that a trust list the node sent before the client asked is used."""
        while not self._done.done():
            try:
                got = receive(self.ctl)
                if got is None:
                    return
                data, fds = got
                message = unpack(data)
                if message[0] == "names" and not fds:
                    self._names = dict(message[1])
                elif message[0] == "conn" and len(fds) == 1:
                    self._accept(fds[0], message[1])
                else:
                    for fd in fds:
                        socket.close(fd)
                    raise ValueError("unexpected control message")
            except Exception as exc:  # the node is gone, or not the node speaking
                if not isinstance(exc, EOFError):
                    log.error("reader: ending: %s", exc)
                self._done.set_result(None)

    def _accept(self, fd: int, data: bytes) -> None:
        if len(self.connections) >= MAX_CONNECTIONS:
            try:
                socket.send_fds(self.ctl, [pack(["back", data])], [fd])
            finally:
                socket.close(fd)
            return
        sock = socket.socket(fileno=fd)
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            loop.connect_accepted_socket(lambda: _Connection(self, data), sock))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_STATS_S)
            self._send_counts()
            idle = time.monotonic() - IDLE_S
            for conn in [c for c in self.connections if c.last_active < idle]:
                conn.close()

    def _send_counts(self) -> None:
        count = sum(self._counts)
        if not count:
            return
        with contextlib.suppress(OSError):
            self.ctl.send(pack(["served", count, self._counts, self._seconds]))
        self._counts = [0] * (len(self._buckets) + 1)
        self._seconds = 0.0


def main() -> None:
    """The reader process: ``python -c '...main()' CONTROL_FD DATA_DIR LEDGER_PATH``."""
    fd, data_dir, ledger_path = sys.argv[1:4]
    os.nice(NICE)  # below the node, which replicates and streams first
    ctl = socket.socket(fileno=int(fd))
    ctl.setblocking(False)

    async def run() -> None:
        await _ReaderProcess(ctl, Path(data_dir), Path(ledger_path)).run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
