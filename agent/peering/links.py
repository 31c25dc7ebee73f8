"""One peer connection: a WebSocket carrying one :class:`protocol.session.Session`.

This module knows WebSockets and sessions, not gossip: it runs the handshake under a
deadline, turns WebSocket messages into session frames (and WebSocket failures into
typed errors), runs one writer task per link that pulls messages from the gossip
engine's bounded per-peer queues, and keeps the registry that enforces one live
session per pair of nodes (docs/architecture.md, "One session per pair of nodes").

Invariants:
- Nothing but binary messages of at most ``MAX_FRAME_BYTES`` is accepted; a text
  message, an oversize message or a frame the session rejects ends the link with a
  reason.
- A link's writer is the only coroutine that sends session frames after the
  handshake, and it awaits each send: a slow peer's socket blocks only that writer,
  and what it has not pulled yet stays in the engine's bounded queues (which turn
  pushes into announcements when full).
- The registry holds at most one *active* link per peer key. When a second link with
  the same peer completes its handshake, :func:`protocol.session.simultaneous_dial_winner`
  picks the survivor (same answer on both nodes); when both links were dialled by the
  same side, the newer one wins (the older one belongs to a previous life of the peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp import WSCloseCode, WSMsgType

from agent.errors import TransportError
from protocol.errors import FrameTooLargeError, RemoteProtocolError
from protocol.keys import PublicKey
from protocol.session import (
    MAX_FRAME_BYTES,
    CloseReason,
    Event,
    HandshakeComplete,
    Session,
    SessionState,
    simultaneous_dial_winner,
)

__all__ = [
    "IdleTimeout",
    "LinkRegistry",
    "PeerLink",
    "TransportClosed",
    "WebSocketLike",
    "receive_frame",
    "run_handshake",
]

log = logging.getLogger(__name__)

_link_ids = itertools.count(1)


class WebSocketLike(Protocol):
    """What both ``web.WebSocketResponse`` and ``aiohttp.ClientWebSocketResponse`` offer."""

    @property
    def closed(self) -> bool: ...

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool: ...

    def exception(self) -> BaseException | None: ...


class TransportClosed(TransportError):
    """The WebSocket closed (cleanly or not); carries a short description."""


class IdleTimeout(TransportClosed):
    """Nothing at all (not even a WebSocket ping) came from the peer for too long."""


async def receive_frame(ws: WebSocketLike, timeout: float | None = None) -> bytes:
    """The next binary message from ``ws``.

    Raises:
        TransportClosed: the socket closed, failed, or nothing came within ``timeout``
            (then ``TimeoutError`` is the cause).
        FrameTooLargeError: the peer sent a message over the WebSocket size cap.
        RemoteProtocolError: the peer sent a text message.
    """
    try:
        msg = await ws.receive(timeout)
    except TimeoutError as exc:
        raise IdleTimeout(f"nothing received for {timeout:g}s") from exc
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        raise TransportClosed(f"receive failed: {exc!r}") from exc
    if msg.type is WSMsgType.BINARY:
        data: bytes = msg.data
        return data
    if msg.type is WSMsgType.TEXT:
        raise RemoteProtocolError("text WebSocket message (peers speak binary frames only)")
    if msg.type is WSMsgType.ERROR:
        error = msg.data if isinstance(msg.data, BaseException) else ws.exception()
        if isinstance(error, aiohttp.WebSocketError):
            if error.code == WSCloseCode.MESSAGE_TOO_BIG:
                raise FrameTooLargeError(
                    f"WebSocket message over {MAX_FRAME_BYTES} bytes") from error
            if error.code == WSCloseCode.PROTOCOL_ERROR:
                raise RemoteProtocolError(f"WebSocket protocol error: {error}") from error
        raise TransportClosed(f"WebSocket error: {error!r}") from error
    raise TransportClosed(f"WebSocket {msg.type.name.lower()}")


async def _send_raw(ws: WebSocketLike, frame: bytes) -> None:
    try:
        await ws.send_bytes(frame)
    except (aiohttp.ClientError, ConnectionError, OSError, RuntimeError) as exc:
        raise TransportClosed(f"send failed: {exc!r}") from exc


async def run_handshake(ws: WebSocketLike, session: Session, timeout: float) -> PublicKey:
    """Run ``session``'s handshake over ``ws`` within ``timeout`` seconds.

    Returns:
        The peer's verified static key.

    Raises:
        HandshakeError / RemoteProtocolError: the peer failed the handshake (bad or
            untrusted key, bad signature, wrong label, junk frames).
        TransportClosed: the socket closed or the deadline passed first.
    """
    try:
        async with asyncio.timeout(timeout):
            if session.initiator:
                for frame in session.start():
                    await _send_raw(ws, frame)
            while True:
                events: list[Event] = session.receive(await receive_frame(ws))
                for frame in session.frames_to_send():
                    await _send_raw(ws, frame)
                for event in events:
                    if isinstance(event, HandshakeComplete):
                        return event.peer
    except TimeoutError as exc:
        raise TransportClosed(f"handshake not done within {timeout:g}s") from exc


@dataclass
class LinkStats:
    """Per-link WebSocket counts (ciphertext frames and bytes, as on the wire)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


PullFn = Callable[[int], list[bytes]]
"""Return the next application messages for this link, about ``budget`` bytes at most
(at least one message when any is queued); [] when nothing is queued."""


@dataclass(eq=False)
class PeerLink:
    """One connection with one peer, from accepted/dialled to closed.

    After the handshake the replicator sets ``pull`` and starts the writer. The writer
    sleeps until :meth:`wake`, then pulls messages (``pull``) and sends them one by
    one, awaiting each send: a peer that reads slowly stalls this writer only, and the
    messages not pulled yet stay in the engine's bounded per-peer queues.
    """

    ws: WebSocketLike
    session: Session
    outbound: bool
    name: str = "?"
    peer: PublicKey | None = None
    pull_budget: int = 256 * 1024
    id: int = field(default_factory=lambda: next(_link_ids))
    started_at: float = 0.0
    established_at: float = 0.0
    last_seen: float = 0.0
    close_reason: CloseReason | None = None
    close_message: str = ""
    remote_reason: CloseReason | None = None
    remote_message: str = ""
    stats: LinkStats = field(default_factory=LinkStats)
    pull: PullFn | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _writer: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def direction(self) -> str:
        return "out" if self.outbound else "in"

    def __repr__(self) -> str:
        return f"PeerLink(#{self.id} {self.direction} {self.name})"

    # --- writer ----------------------------------------------------------------------

    def start_writer(self) -> None:
        """Start the writer task (after the handshake, once ``pull`` is set)."""
        self._writer = asyncio.create_task(self._write_loop(), name=f"peer-writer:{self.name}")
        self._wake.set()

    def wake(self) -> None:
        """Tell the writer that messages may be waiting."""
        self._wake.set()

    async def _write_loop(self) -> None:
        ws, session = self.ws, self.session
        try:
            while self.close_reason is None:
                await self._wake.wait()
                self._wake.clear()
                while self.close_reason is None and self.pull is not None:
                    messages = self.pull(self.pull_budget)
                    if not messages:
                        break
                    for message in messages:
                        if session.state is not SessionState.ESTABLISHED:
                            break  # the peer's final frame came in: only close() is left
                        frame = session.send(message)
                        await _send_raw(ws, frame)
                        self.stats.frames_out += 1
                        self.stats.bytes_out += len(frame)
            final = session.close(self.close_reason or CloseReason.NORMAL, self.close_message)
            if final is not None:
                await _send_raw(ws, final)
        except TransportClosed:
            pass
        finally:
            # The reader learns that the link is over from the socket closing.
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY if self.close_reason is
                               CloseReason.SHUTDOWN else WSCloseCode.OK)

    def request_close(self, reason: CloseReason, message: str = "") -> None:
        """Ask the writer to finish the message in flight, send the final frame with
        ``reason`` and close the socket. The first reason given wins. Without a running
        writer (handshake not done) the socket is closed directly."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.close_message = message
        if self._writer is not None and not self._writer.done():
            self._wake.set()
        else:
            _spawn_close(self.ws)

    def abort(self, reason: CloseReason = CloseReason.PROTOCOL_ERROR) -> None:
        """Drop the TCP connection at once, without a final frame (a misbehaving peer,
        or a test simulating a crash)."""
        if self.close_reason is None:
            self.close_reason = reason
        if self._writer is not None:
            self._writer.cancel()
        _abort_transport(self.ws)

    async def finish(self, grace: float) -> None:
        """End the link: let the writer flush its final frame for up to ``grace``
        seconds (when a close was requested), then cancel it and close the socket.
        Never raises but ``CancelledError``."""
        writer = self._writer
        if writer is not None:
            if self.close_reason is None:
                writer.cancel()  # the peer went away: nothing left to flush
            done, _ = await asyncio.wait({writer}, timeout=grace)
            if not done:
                writer.cancel()
                await asyncio.wait({writer})
            if not writer.cancelled() and writer.exception() is not None:
                log.error("%r: writer failed", self, exc_info=writer.exception())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), grace)
        self.closed.set()


_background: set[asyncio.Task[None]] = set()


def _spawn_close(ws: WebSocketLike) -> None:
    async def close() -> None:
        with contextlib.suppress(Exception):
            await ws.close()

    task = asyncio.create_task(close())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _abort_transport(ws: WebSocketLike) -> None:
    """Close the TCP connection under ``ws`` without a WebSocket close handshake."""
    transport = None
    if isinstance(ws, aiohttp.web.WebSocketResponse):
        req = getattr(ws, "_req", None)
        transport = req.transport if req is not None else None
    elif isinstance(ws, aiohttp.ClientWebSocketResponse):
        conn = getattr(ws._response, "connection", None)
        protocol = conn.protocol if conn is not None else None
        transport = protocol.transport if protocol is not None else None
    if transport is not None:
        transport.abort()
    else:
        _spawn_close(ws)


class LinkRegistry:
    """Links by peer key: at most one active link per peer, plus all links in flight.

    ``admit`` is synchronous, so the decision and the bookkeeping happen in one step
    of the event loop: two links completing their handshakes "at once" are still
    admitted one after the other.
    """

    def __init__(self) -> None:
        self._active: dict[PublicKey, PeerLink] = {}
        self._all: set[PeerLink] = set()
        self._idle: dict[PublicKey, asyncio.Event] = {}

    def add(self, link: PeerLink) -> None:
        """Track a link from its first byte (for shutdown)."""
        self._all.add(link)

    def discard(self, link: PeerLink) -> bool:
        """Forget a link; True if it was the active link of its peer."""
        self._all.discard(link)
        if link.peer is not None and self._active.get(link.peer) is link:
            del self._active[link.peer]
            self._idle_event(link.peer).set()
            return True
        return False

    def admit(self, link: PeerLink) -> PeerLink | None:
        """Make ``link`` (handshake done) the active link of its peer, unless an existing
        link wins.

        Returns:
            The link to close with ``DUPLICATE_SESSION`` (the existing one, or ``link``
            itself), or None when there was no other link.
        """
        assert link.peer is not None
        existing = self._active.get(link.peer)
        if existing is None:
            self._active[link.peer] = link
            self._idle_event(link.peer).clear()
            return None
        winner = simultaneous_dial_winner(existing.session, link.session)
        if winner is existing.session:
            return link
        # ``link`` won: either its initiator has the lower key, or both have the same
        # initiator and the newer link replaces a stale one.
        self._active[link.peer] = link
        return existing

    def active(self, key: PublicKey) -> PeerLink | None:
        return self._active.get(key)

    def is_connected(self, key: PublicKey) -> bool:
        return key in self._active

    async def wait_disconnected(self, key: PublicKey) -> None:
        """Return once ``key`` has no active link."""
        while key in self._active:
            await self._idle_event(key).wait()

    def active_links(self) -> list[PeerLink]:
        return list(self._active.values())

    def all_links(self) -> list[PeerLink]:
        return list(self._all)

    def _idle_event(self, key: PublicKey) -> asyncio.Event:
        event = self._idle.get(key)
        if event is None:
            event = self._idle[key] = asyncio.Event()
            event.set()
        return event
