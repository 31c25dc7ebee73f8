"""The read lane: client connections that open with an indicator lookup are served by
reader processes, not by the node's main process.

Why: at 1M observations a lookup through the node cost ~300 us of CPU (aiohttp in the
main process, then SQLite and JSON), and with 32 clients
on two cores the node's main process was the queue everyone waited in
(docs/benchmarks.md, "Lookup"). A reader does the whole lookup on the connection it
owns in ~150-200 us, and two of them use both cores.

How:
- The node's API listener accepts every connection. :class:`Sniffer` looks at the
  first bytes: a connection whose first request starts ``GET /api/v1/indicators/`` is
  offered to a reader (its socket passed over a Unix socket with ``SCM_RIGHTS``, with
  the bytes already read); any other connection, or one no reader takes, goes to the
  node's aiohttp server as before.
- A reader answers the lookups it can answer exactly as the node would
  (agent/workers/lookup_http.py: the same token check, the same canonical indicator, the same
  SQL and JSON as the node's in-process path, agent/storage/lookup.py, the same
  response bytes). The first request
  it does not answer (another route, an error to give, anything unusual) sends the
  connection back to the node with that request's bytes unread, once every earlier
  answer is written; the node keeps it from then on.
- Readers count what they served; the node adds it to its HTTP metrics every second.
- Readers run at a lower CPU priority than the node (``NICE`` in agent/workers/reader.py):
  when the cores are busy, replication, the stream and submits go first.

Invariants:
- A reader only reads: its ledger connection is ``query_only``; it holds no key; it
  authenticates with the node's tokens.toml (re-read when it changes, like the node).
  What it answers, the node would have answered with the same bytes (tested).
- Origin names come from the node's trust list, sent when it changes.
- Nothing is lost when a reader fails: a connection it holds is closed (a lookup is
  a read; the client retries), new connections go to the node while it restarts
  (after the node's restart delay, agent/workers/policy.py); after the policy's
  failures in a row the node keeps every connection.
- Bounded: each reader holds at most :data:`MAX_CONNECTIONS` connections and closes
  those idle for :data:`IDLE_S`; a head over 8 KiB goes back to the node; a client
  that does not read its answers is not read from.

Control messages (msgpack, one per SEQPACKET datagram; ``+fd``: one socket attached):
node -> reader ``["names", {key: name}]``, ``["conn", bytes] +fd``; reader -> node
``["ready"]``, ``["back", bytes] +fd``, ``["served", n, bucket counts, seconds]``.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from agent.metrics import DEFAULT_LATENCY_BUCKETS
from agent.workers.control import control_pair, pack, receive, unpack
from agent.workers.lookup_http import PREFIX
from agent.workers.policy import RESTART, RestartPolicy

__all__ = ["SNIFF_S", "ReadLane", "Sniffer"]

log = logging.getLogger(__name__)

SNIFF_S = 1.0
"""A new connection that sent too little to decide in this long goes to the node."""

# --- the node side -------------------------------------------------------------------


class Sniffer(asyncio.Protocol):
    """The protocol of a new API connection until its first bytes say where it goes:
    to a reader (:meth:`ReadLane.offer`) or to ``server`` (aiohttp's protocol
    factory), which then gets the transport and the bytes read so far."""

    def __init__(self, server: Callable[[], asyncio.Protocol], lane: ReadLane) -> None:
        self._server = server
        self._lane = lane
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(SNIFF_S, self._to_server)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) < len(PREFIX) and PREFIX.startswith(self._buf):
            return
        assert self._transport is not None
        if self._buf.startswith(PREFIX) and self._lane.offer(self._transport, self._buf):
            self._cancel()
            return
        self._to_server()

    def eof_received(self) -> bool | None:
        self._cancel()
        return None  # closes: nothing was asked

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _to_server(self) -> None:
        self._cancel()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        adopt(transport, self._server(), self._buf)


def adopt(transport: asyncio.Transport, protocol: asyncio.Protocol, data: bytes) -> None:
    """Make ``protocol`` the owner of ``transport``, as if it had read ``data``."""
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if data:
        protocol.data_received(data)


class _Handed(asyncio.Protocol):
    """A connection a reader gave back: the server's protocol takes it over with the
    bytes the reader left unread, before anything else is read from it."""

    def __init__(self, server: Callable[[], asyncio.Protocol], data: bytes) -> None:
        self._server = server
        self._data = data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        adopt(cast(asyncio.Transport, transport), self._server(), self._data)


class _Reader:
    """One reader process, as the node sees it."""

    def __init__(self, process: subprocess.Popen[bytes], ctl: socket.socket) -> None:
        self.process = process
        self.ctl = ctl
        self.ready = False
        self.names_sent: dict[str, str] | None = None


class ReadLane:
    """Reader processes that serve the connections :class:`Sniffer` offers them.

    Args:
        data_dir: the node's data dir (tokens.toml).
        ledger_path: the ledger the readers read.
        readers: how many reader processes; 0 never starts one.
        names: the node's key text -> name table (:meth:`agent.node.node.Node.names_by_text`:
            the same object until the trust list changes); call
            :meth:`names_changed` when it does.
        server: aiohttp's protocol factory, for connections that go back to the node
            (may be set as :attr:`server` later, before the first connection).
        on_served: called with (count, latency bucket counts, latency sum) of the lookups
            the readers answered, in :data:`DEFAULT_LATENCY_BUCKETS`.
        policy: when a failed reader is replaced, when the lane gives up.

    The readers start when the first lookup connection arrives (that one stays with
    the node), so a node that is never asked a lookup runs none.
    """

    def __init__(self, data_dir: Path, ledger_path: Path, *, readers: int,
                 names: Callable[[], dict[str, str]],
                 on_served: Callable[[int, list[int], float], None],
                 server: Callable[[], asyncio.Protocol] | None = None,
                 policy: RestartPolicy = RESTART) -> None:
        self._data_dir = data_dir
        self._ledger_path = ledger_path
        self._size = readers
        self._names = names
        self.server = server
        self._policy = policy
        self._on_served = on_served
        self._readers: list[_Reader] = []
        self._next = 0
        self._started = False
        self._closed = False
        self._failures = 0
        self._restart: asyncio.TimerHandle | None = None
        self._taking_back: set[asyncio.Task[Any]] = set()
        self.offered = 0
        self.returned = 0

    @property
    def running(self) -> int:
        """Readers taking connections."""
        return sum(r.ready for r in self._readers)

    def offer(self, transport: asyncio.Transport, data: bytes) -> bool:
        """Pass the connection of ``transport`` (which has read ``data``) to a reader;
        False leaves it with the caller."""
        if self._closed or self._size <= 0:
            return False
        if not self._started:
            self._started = True
            self._fill()
            return False
        ready = [r for r in self._readers if r.ready]
        if not ready:
            return False
        self._check_names()
        reader = ready[self._next % len(ready)]
        self._next += 1
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            socket.send_fds(reader.ctl, [pack(["conn", data])], [sock.fileno()])
        except OSError:
            return False  # that reader is behind or gone: the node serves this one
        # The reader holds its own descriptor now; closing ours does not end the
        # connection (no shutdown is sent).
        transport.pause_reading()
        transport.abort()
        self.offered += 1
        return True

    async def close(self) -> None:
        """Stop the readers: each ends when its control socket closes, after the
        request it is answering; one that does not within 5 s is killed."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
        readers, self._readers = self._readers, []
        for reader in readers:
            self._drop(reader, terminate=False)
        await asyncio.gather(*(asyncio.to_thread(_reap, r.process) for r in readers))

    # --- readers -------------------------------------------------------------------

    def _fill(self) -> None:
        self._restart = None
        while not self._closed and len(self._readers) < self._size:
            try:
                self._readers.append(self._spawn())
            except OSError as exc:
                log.error("read lane: cannot start a reader: %s", exc)
                self._failures += 1
                self._schedule_restart()
                return

    def _spawn(self) -> _Reader:
        ours, theirs = control_pair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", "from agent.workers.reader import main; main()",
                 str(theirs.fileno()), str(self._data_dir), str(self._ledger_path)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        reader = _Reader(process, ours)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_control, reader)
        return reader

    def _on_control(self, reader: _Reader) -> None:
        while True:
            try:
                got = receive(reader.ctl)
                if got is None:
                    return
                self._handle(reader, *got)
            except Exception as exc:
                if not isinstance(exc, EOFError):
                    log.error("read lane: reader %d sent something unexpected: %s",
                              reader.process.pid, exc)
                self._failed(reader)
                return

    def _handle(self, reader: _Reader, data: bytes, fds: list[int]) -> None:
        try:
            message = unpack(data)
            kind = message[0]
            if kind == "back" and len(fds) == 1 and isinstance(message[1], bytes):
                fd, fds = fds[0], []
                self._take_back(fd, message[1])
            elif kind == "ready" and not fds:
                reader.ready = True
                self._failures = 0
                self._check_names()
            elif kind == "served" and not fds:
                _, count, buckets, seconds = message
                if (not isinstance(count, int) or not isinstance(seconds, float)
                        or not isinstance(buckets, list)
                        or len(buckets) != len(DEFAULT_LATENCY_BUCKETS) + 1
                        or not all(isinstance(b, int) and b >= 0 for b in buckets)
                        or sum(buckets) != count):
                    raise ValueError("malformed served counts")
                self._on_served(count, buckets, seconds)
            else:
                raise ValueError(f"unexpected message {str(kind)[:40]!r}")
        finally:
            for fd in fds:
                socket.close(fd)

    def _take_back(self, fd: int, data: bytes) -> None:
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
            sock.close()
            raise ValueError("gave back something that is not a TCP connection")
        self.returned += 1
        loop = asyncio.get_running_loop()
        server = self.server
        assert server is not None  # set before the lane was offered a connection
        task = loop.create_task(
            loop.connect_accepted_socket(lambda: _Handed(server, data), sock))
        self._taking_back.add(task)
        task.add_done_callback(self._taken_back)

    def _taken_back(self, task: asyncio.Task[Any]) -> None:
        self._taking_back.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("read lane: a connection given back could not be served: %s",
                        task.exception())

    def names_changed(self) -> None:
        """The trust list changed: the readers get the new names before any request
        they read after this (they take control messages first)."""
        self._check_names()

    def _check_names(self) -> None:
        names = self._names()
        for reader in self._readers:
            if reader.ready and reader.names_sent is not names:
                try:
                    reader.ctl.send(pack(["names", names]))
                except OSError as exc:
                    log.error("read lane: reader %d does not take the trust list: %s",
                              reader.process.pid, exc)
                    self._failed(reader)
                    continue
                reader.names_sent = names

    def _failed(self, reader: _Reader) -> None:
        if reader not in self._readers:
            return
        self._drop(reader)
        self._readers.remove(reader)
        asyncio.get_running_loop().run_in_executor(None, _reap, reader.process)
        if not self._closed:
            log.warning("read lane: reader %d ended; its connections are closed",
                        reader.process.pid)
            self._failures += 1
            self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self._restart is not None or self._closed:
            return
        if self._policy.gives_up(self._failures):
            if self._failures == self._policy.max_failures:
                log.error("read lane: readers failed %d times in a row; the node serves "
                          "every connection from now on", self._failures)
            return
        delay = self._policy.delay(max(1, self._failures))
        self._restart = asyncio.get_running_loop().call_later(delay, self._fill)

    def _drop(self, reader: _Reader, *, terminate: bool = True) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(reader.ctl.fileno())
        reader.ready = False
        reader.ctl.close()
        if terminate:
            with contextlib.suppress(OSError):
                reader.process.terminate()


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
