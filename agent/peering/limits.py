"""Listener limits: what a client that has proved nothing can hold on a listener.

Both listeners (the peer listener and the local API) accept TCP from whoever can reach
them; before any credential is checked a connection costs a file descriptor, buffers
and a handler task. docs/security.md lists the threat; this module holds the bounds:

- :class:`ConnectionGuard` sits in front of a listener's protocol factory. At accept it
  refuses (closes at once, counted by reason) a connection over the listener's total
  or over its source address's share; an admitted connection whose first request head
  has not arrived within ``header_timeout`` is closed. Between requests aiohttp's own
  ``keepalive_timeout`` closes an idle connection (it also bounds a later request's
  head: aiohttp closes a connection still waiting for a complete head at the deadline).
- :func:`raise_nofile` lifts the soft ``RLIMIT_NOFILE`` to the hard one at start, and
  :func:`fit_to_nofile` shrinks the listeners' totals so that they, plus
  :data:`FD_RESERVE` descriptors for the ledger, helper processes and dialled peers,
  stay under it: the caps refuse a connection long before ``accept`` could fail.
- :class:`AcceptErrorLog`: should ``accept`` fail anyway (EMFILE from another cause),
  asyncio already stops accepting for a second; this handler counts the errors and
  logs one line per interval instead of one per error.

Invariants:
- A guard's counts are exact: every admitted connection is released once, whichever
  protocol ends up owning its transport (the API's sniffer hands transports over, see
  agent/workers/read_lane.py; :meth:`ConnectionGuard.served` wraps the server's side).
- Memory is bounded by the caps: the per-address table holds only addresses with an
  open connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from agent.metrics import MetricFamily

__all__ = [
    "FD_RESERVE",
    "AcceptErrorLog",
    "ConnectionGuard",
    "GuardedSite",
    "ListenerLimits",
    "fit_to_nofile",
    "merged_families",
    "open_fds",
    "raise_nofile",
]

log = logging.getLogger("entraide.listener")

FD_RESERVE = 256
"""Descriptors kept out of the listeners' reach: SQLite (ledger, WAL, shared memory,
readers), helper processes' pipes, the read lane's control sockets, dialled peers,
logs. Measured use outside the listeners is under 100 on a node with 32 peers."""

_MIN_SHARE = 16  # a listener never gets fewer connections than this, however low the limit


@dataclass(frozen=True)
class ListenerLimits:
    """The bounds of one listener (docs/security.md lists them with their settings)."""

    max_connections: int = 512
    """Open connections at once; more are closed at accept."""
    max_per_address: int = 32
    """Open connections from one source address at once; more are closed at accept."""
    header_timeout: float = 10.0
    """Seconds from accept to the end of the first request head."""
    keepalive_timeout: float = 15.0
    """Seconds an idle connection stays open between requests (aiohttp's)."""


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the
    (before, after) soft limits. An OS that refuses leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def fit_to_nofile(limits: list[ListenerLimits], nofile: int,
                  reserve: int = FD_RESERVE) -> list[ListenerLimits]:
    """The listeners' limits with their totals shrunk, in proportion, so that their sum
    plus ``reserve`` stays under ``nofile``; unchanged when they already fit. Each
    per-address cap is at most its listener's total."""
    wanted = sum(lim.max_connections for lim in limits)
    room = max(nofile - reserve, _MIN_SHARE * len(limits))
    out = []
    for lim in limits:
        total = lim.max_connections
        if wanted > room:
            total = max(_MIN_SHARE, room * total // wanted)
        out.append(replace(lim, max_connections=total,
                           max_per_address=min(lim.max_per_address, total)))
    return out


def merged_families(*sources: Callable[[], list[MetricFamily]]) -> list[MetricFamily]:
    """The families of several listeners' books as one list, the samples of families
    of the same name merged (both guards report ``entraide_listener_connections``)."""
    out: dict[str, MetricFamily] = {}
    for source in sources:
        for family in source():
            known = out.get(family.name)
            if known is None:
                out[family.name] = replace(family, samples=dict(family.samples))
            else:
                known.samples.update(family.samples)
    return list(out.values())


class ConnectionGuard:
    """Connection caps and the first head's deadline for one listener.

    Wrap the listener's protocol factory with :meth:`accept`; where something in front
    of the HTTP server may hand the transport over to it (the API's sniffer), wrap the
    server's factory with :meth:`served` too, and add :attr:`middleware` to the app so
    the head's deadline ends when aiohttp has read a head.

    Args:
        name: the listener's name in metrics and logs (``peer``, ``api``).
        limits: its bounds.
    """

    def __init__(self, name: str, limits: ListenerLimits) -> None:
        self.name = name
        self.limits = limits
        self.open = 0
        self.refused: dict[str, int] = {}
        """Connections closed by the guard, by reason: ``total``, ``per_address``,
        ``header_timeout``."""
        self._per_address: dict[str, int] = {}
        self._live: dict[asyncio.BaseTransport, tuple[str, asyncio.TimerHandle | None]] = {}
        self._said: dict[str, float] = {}

    # --- wiring ----------------------------------------------------------------------

    def accept(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The listener's protocol factory: ``factory``'s protocols behind the caps."""
        return lambda: _Admission(self, factory)

    def served(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """``factory`` (the HTTP server's) with its connections' ends reported here, for
        transports handed to it after :meth:`accept`'s protocol stopped seeing them."""
        return lambda: _Served(self, factory())

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        """A request head arrived: the connection's header deadline is met."""
        if request.transport is not None:
            self.head_seen(request.transport)
        return await handler(request)

    # --- the books -------------------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count ``transport`` in, or say why not (False: the caller closes it)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if self.open >= self.limits.max_connections:
            self._refuse("total", address)
            return False
        if self._per_address.get(address, 0) >= self.limits.max_per_address:
            self._refuse("per_address", address)
            return False
        self.open += 1
        self._per_address[address] = self._per_address.get(address, 0) + 1
        timer = asyncio.get_running_loop().call_later(
            self.limits.header_timeout, self._expire, transport)
        self._live[transport] = (address, timer)
        return True

    def head_seen(self, transport: asyncio.BaseTransport) -> None:
        """``transport``'s first request head arrived: no deadline on it any more."""
        item = self._live.get(transport)
        if item is not None and item[1] is not None:
            item[1].cancel()
            self._live[transport] = (item[0], None)

    def release(self, transport: asyncio.BaseTransport) -> None:
        """``transport`` is closed (a second call, or one for a stranger, does nothing)."""
        item = self._live.pop(transport, None)
        if item is None:
            return
        address, timer = item
        if timer is not None:
            timer.cancel()
        self.open -= 1
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]

    def count_from(self, address: str) -> int:
        """Open connections from ``address``."""
        return self._per_address.get(address, 0)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        item = self._live.get(transport)
        if item is None or item[1] is None:
            return
        self._live[transport] = (item[0], None)
        self._refuse("header_timeout", item[0])
        _abort(transport)  # connection_lost follows and releases it

    def _refuse(self, reason: str, address: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        # One line per reason per minute, whatever the number of addresses: a flood
        # must not turn into a log flood (the counter keeps the exact figure).
        now = time.monotonic()
        if now - self._said.get(reason, -3600.0) >= 60.0:
            self._said[reason] = now
            log.warning("%s listener: connection from %s closed (%s; %d closed so far for "
                        "this reason, %d open)", self.name, address, reason,
                        self.refused[reason], self.open)

    def metric_families(self) -> list[MetricFamily]:
        """``entraide_listener_connections`` and ``entraide_listener_refused_total``."""
        return [
            MetricFamily("entraide_listener_connections",
                         "Connections open on a listener.", "gauge", ("listener",),
                         {(self.name,): float(self.open)}),
            MetricFamily("entraide_listener_refused_total",
                         "Connections a listener closed: over its total or a source "
                         "address's share at accept, or no request head in time.",
                         "counter", ("listener", "reason"),
                         {(self.name, r): float(v) for r, v in self.refused.items()}),
        ]


def _abort(transport: asyncio.BaseTransport) -> None:
    """Drop the connection now (no lingering, no FIN wait): the descriptor is freed."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


class _Admission(asyncio.Protocol):
    """The protocol the loop gives an accepted transport: the guard's check, then the
    wrapped factory's protocol behind it."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if not self._guard.admit(transport):
            _abort(transport)
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.release(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)


class _Served(asyncio.Protocol):
    """The HTTP server's protocol, reporting its connection's end to the guard."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.release(self._transport)
        self._inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """A TCP site of ``runner`` whose connections pass ``guard`` first (closed with the
    runner, like aiohttp's ``TCPSite``).

    ``wrap``: what stands between the guard and the runner's server (the API's
    sniffer); given the server's factory (already wrapped by ``guard.served``), it
    returns the factory the guard admits connections to.
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 *, wrap: Callable[[Callable[[], asyncio.Protocol]],
                                   Callable[[], asyncio.Protocol]] | None = None,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard, self._wrap = host, port, guard, wrap

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = server
        if self._wrap is not None:
            factory = self._wrap(self._guard.served(server))
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.accept(factory), self._host, self._port,
            backlog=self._backlog, reuse_address=True)


class AcceptErrorLog:
    """An event-loop exception handler that turns asyncio's "accept() out of system
    resource" reports (one per failed accept, after which asyncio pauses that listener
    for a second) into a counter and one WARNING per ``interval``; every other report
    goes to the handler that was there before.

    Install with :meth:`install`; :attr:`errors` counts them.
    """

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.errors = 0
        self._clock = clock
        self._last: float | None = None
        self._unsaid = 0
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
        self._previous = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.errors += 1
        self._unsaid += 1
        now = self._clock()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            exc = context.get("exception")
            log.warning("a listener cannot accept connections (%s); %d such errors since "
                        "the last line; retrying every second",
                        getattr(exc, "strerror", None) or exc, self._unsaid)
            self._unsaid = 0

    def metric_families(self) -> list[MetricFamily]:
        """The accept errors, and the process's open descriptors against its limit
        (``RLIMIT_NOFILE``), so an alert fires before the caps or ``accept`` bite."""
        return [MetricFamily("entraide_listener_accept_errors_total",
                             "accept() failures on a listener (EMFILE, ENFILE, ENOBUFS, "
                             "ENOMEM): the process ran out of descriptors or memory.",
                             "counter", (), {(): float(self.errors)}),
                MetricFamily("entraide_process_open_fds",
                             "File descriptors the node's main process has open.",
                             "gauge", (), {(): float(open_fds())}),
                MetricFamily("entraide_process_max_fds",
                             "The main process's open-file limit (soft RLIMIT_NOFILE).",
                             "gauge", (), {(): float(resource.getrlimit(
                                 resource.RLIMIT_NOFILE)[0])})]


def open_fds() -> int:
    """Descriptors this process has open (counted in /proc/self/fd; -1 where there is
    no /proc)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        return -1
