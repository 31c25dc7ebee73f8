"""One peer connection: a WebSocket carrying one :class:`protocol.session.Session`.

This module knows WebSockets and sessions, not gossip: it runs the handshake under a
deadline, turns WebSocket messages into session frames (and WebSocket failures into
typed errors), keeps a bounded outbox drained by one writer task per link, and keeps
the registry that enforces one live session per pair of nodes
(docs/parts/transport.md, "Session uniqueness").

Invariants:
- Nothing but binary messages of at most ``MAX_FRAME_BYTES`` is accepted; a text
  message, an oversize message or a frame the session rejects ends the link with a
  reason.
- A link's writer is the only coroutine that calls ``ws.send_bytes`` after the
  handshake, so a slow peer's socket blocks only that writer; the outbox is bounded
  and a link whose outbox stays full is closed (``TOO_SLOW``) rather than allowed to
  hold memory.
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

from protocol.errors import FrameTooLargeError, RemoteProtocolError
from protocol.keys import PublicKey
from protocol.session import (
    MAX_FRAME_BYTES,
    CloseReason,
    Event,
    HandshakeComplete,
    Session,
    simultaneous_dial_winner,
)

__all__ = [
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


class TransportClosed(Exception):
    """The WebSocket closed (cleanly or not); carries a short description."""


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
        raise TransportClosed("idle timeout") from exc
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        raise TransportClosed(f"receive failed: {exc!r}") from exc
    if msg.type is WSMsgType.BINARY:
        data: bytes = msg.data
        return data
    if msg.type is WSMsgType.TEXT:
        raise RemoteProtocolError("text WebSocket message (peers speak binary frames only)")
    if msg.type is WSMsgType.ERROR:
        exc = msg.data if isinstance(msg.data, BaseException) else ws.exception()
        if isinstance(exc, aiohttp.WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG:
            raise FrameTooLargeError(f"WebSocket message over {MAX_FRAME_BYTES} bytes") from exc
        if isinstance(exc, aiohttp.WebSocketError) and exc.code == WSCloseCode.PROTOCOL_ERROR:
            raise RemoteProtocolError(f"WebSocket protocol error: {exc}") from exc
        raise TransportClosed(f"WebSocket error: {exc!r}") from exc
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
    """Per-link byte and frame counts (the replicator aggregates them per peer)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


_CLOSE = object()


@dataclass(eq=False)
class PeerLink:
    """One connection with one peer, from accepted/dialled to closed.

    ``outbox`` holds application messages (plaintext) for the writer; the writer
    encrypts them with ``session.send`` in order, so frame order equals queue order.
    """

    ws: WebSocketLike
    session: Session
    outbound: bool
    name: str = "?"
    peer: PublicKey | None = None
    max_outbox: int = 1024
    id: int = field(default_factory=lambda: next(_link_ids))
    last_seen: float = 0.0
    established_at: float = 0.0
    close_reason: CloseReason | None = None
    close_message: str = ""
    remote_reason: CloseReason | None = None
    stats: LinkStats = field(default_factory=LinkStats)
    on_sent: Callable[[int], None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _outbox: asyncio.Queue[object] = field(init=False)
    _writer: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # +1 so the close marker always fits behind a full queue of messages.
        self._outbox = asyncio.Queue(self.max_outbox + 1)

    @property
    def direction(self) -> str:
        return "out" if self.outbound else "in"

    @property
    def outbox_free(self) -> int:
        """How many more messages the outbox takes now."""
        return max(0, self.max_outbox - self._outbox.qsize())

    def __repr__(self) -> str:
        return f"PeerLink(#{self.id} {self.direction} {self.name})"

    # --- writer ----------------------------------------------------------------------

    def start_writer(self) -> None:
        """Start the writer task (after the handshake)."""
        self._writer = asyncio.create_task(self._write_loop(), name=f"peer-writer:{self.name}")

    def enqueue(self, message: bytes) -> bool:
        """Queue one application message; False when the outbox is full or closing."""
        if self.close_reason is not None or self._outbox.qsize() >= self.max_outbox:
            return False
        self._outbox.put_nowait(message)
        return True

    async def _write_loop(self) -> None:
        ws, session = self.ws, self.session
        try:
            while True:
                item = await self._outbox.get()
                if item is _CLOSE:
                    break
                assert isinstance(item, bytes)
                frame = session.send(item)
                await _send_raw(ws, frame)
                self.stats.frames_out += 1
                self.stats.bytes_out += len(frame)
                if self.on_sent is not None:
                    self.on_sent(len(frame))
            reason = self.close_reason or CloseReason.NORMAL
            final = session.close(reason, self.close_message)
            if final is not None:
                await _send_raw(ws, final)
        except TransportClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must end the link, not leave it half-alive
            log.exception("%r: writer failed", self)
        finally:
            # The reader learns that the link is over from the socket closing.
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY if self.close_reason is
                               CloseReason.SHUTDOWN else WSCloseCode.OK)

    def request_close(self, reason: CloseReason, message: str = "") -> None:
        """Ask the writer to send what is queued, then the final frame, then close.

        The first reason given wins. If the writer is not running, the socket is closed
        directly (in a task).
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.close_message = message
        if self._writer is not None and not self._writer.done():
            self._outbox.put_nowait(_CLOSE)
        else:
            _spawn_close(self.ws)

    def abort(self) -> None:
        """Drop the connection at once, without a final frame (misbehaving peer,
        forced shutdown, or a test that simulates a crash)."""
        if self.close_reason is None:
            self.close_reason = CloseReason.PROTOCOL_ERROR
        if self._writer is not None:
            self._writer.cancel()
        _abort_transport(self.ws)

    async def finish(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the writer to end, then cancel it; close the
        socket. Never raises (except ``CancelledError``)."""
        writer = self._writer
        if writer is not None:
            if not writer.done() and self.close_reason is None:
                # The reader ended (the peer went away): nothing more to flush.
                writer.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(writer), grace)
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()
                with contextlib.suppress(BaseException):
                    await writer
            except Exception:
                pass
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
