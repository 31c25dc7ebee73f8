"""Peer sessions in: the listener's WebSocket handler, one dial, handshake to close.

The replicator's link layer (docs/architecture.md, "Peer transport"). A connection,
accepted or dialled, runs its session's handshake under a deadline; once the peer's
key is known and still trusted, the link is admitted to the
:class:`~agent.peering.links.LinkRegistry` (one live session per pair of nodes) and
handed to the engine through the replicator's callbacks; then its frames are read,
opened and passed on until the link ends, and its end is booked in the
:class:`~agent.peering.registry.PeerRegistry`. This module knows links, sessions and
trust, not the gossip engine: :class:`PeerSessions` calls ``attach``, ``detach`` and
``receive`` and never sees the engine.

Invariants:
- A link feeds the engine only while it is its peer's active link; a detached link's
  messages are dropped unread.
- Peer misbehaviour (a frame the session rejects, a text or oversize message) and a
  silent peer end that link with a reason, a log line and a counter; a bug ends the
  link with ``INTERNAL_ERROR``; nothing but ``CancelledError`` leaves a connection task.
- Every connection task is in one set until it ends, so :meth:`PeerSessions.close`
  can wait for and then cancel every one of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

from agent.peering.dialer import PEER_PATH, DialTarget, peer_endpoint
from agent.peering.links import (
    IdleTimeout,
    LinkRegistry,
    PeerLink,
    TransportClosed,
    receive_frame,
    run_handshake,
)
from agent.peering.params import TransportParams
from agent.peering.registry import PeerRegistry
from protocol.errors import FrameTooLargeError, HandshakeError, RemoteProtocolError
from protocol.keys import Identity, PublicKey
from protocol.session import CloseReason, MessageReceived, Session, SessionClosed

__all__ = ["PeerSessions"]

log = logging.getLogger("agent.peering.transport")


class PeerSessions:
    """Accepts, dials and runs peer links for the replicator.

    Args:
        identity: this node's key pair.
        transport: the transport tunables.
        peers: the trust list and per-peer books.
        links: the link registry (shared with the replicator, which reads it).
        attach: ``attach(link, peer, now)``: the admitted ``link`` now carries
            ``peer``'s session; the replicator adds the peer to the engine and sets
            ``link.pull``.
        detach: ``detach(peer)``: the peer's active link is gone; the engine drops it.
        receive: ``receive(peer, data, now)``: one message from the peer's active link.
        room: the ingest pipeline's room event (None before the replicator starts);
            readers wait for it before each frame.
        clock: monotonic seconds.
        randbytes: randomness (ephemeral keys).

    :attr:`accepting` is set by the replicator: False refuses new connections and
    turns away handshakes that complete meanwhile.
    """

    def __init__(self, identity: Identity, transport: TransportParams, peers: PeerRegistry,
                 links: LinkRegistry, *,
                 attach: Callable[[PeerLink, PublicKey, float], None],
                 detach: Callable[[PublicKey], None],
                 receive: Callable[[PublicKey, bytes, float], None],
                 room: Callable[[], asyncio.Event | None],
                 clock: Callable[[], float], randbytes: Callable[[int], bytes]) -> None:
        self.identity = identity
        self.transport = transport
        self.peers = peers
        self.links = links
        self._attach, self._detach_peer, self._receive = attach, detach, receive
        self._room = room
        self._clock = clock
        self._randbytes = randbytes
        self.accepting = False
        self._http: aiohttp.ClientSession | None = None
        self._conn_tasks: set[asyncio.Task[object]] = set()
        self._handshaking = 0
        self._handshaking_from: dict[str, int] = {}

    def open(self) -> None:
        """Open the dialling side's HTTP session and start accepting."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=None, connect=self.transport.handshake_timeout))
        self.accepting = True

    async def end_links(self, *, clean: bool) -> None:
        """Stop accepting; close every link (``SHUTDOWN``: a final frame if ``clean``,
        else the TCP connection dropped at once) and wait up to twice ``close_grace``
        for the connection tasks to end."""
        self.accepting = False
        for link in self.links.all_links():
            if clean and link.peer is not None:
                self.cut(link, CloseReason.SHUTDOWN, "node shutting down")
            else:
                self.detach(link)
                link.abort(CloseReason.SHUTDOWN)
        conns = [t for t in self._conn_tasks if not t.done()]
        if conns:
            await asyncio.wait(conns, timeout=self.transport.close_grace * 2)

    async def cancel_connections(self) -> None:
        """Cancel the connection tasks still running and wait for them."""
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.wait(list(self._conn_tasks))

    async def close(self) -> None:
        """Close the HTTP session (after :meth:`cancel_connections`)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- the peer listener -----------------------------------------------------------

    def peer_app(self) -> web.Application:
        """The aiohttp application of the peer listener: ``GET /peer/v1`` only."""
        app = web.Application(client_max_size=4096)
        app.router.add_get(PEER_PATH, self.handle_peer)
        return app

    async def handle_peer(self, request: web.Request) -> web.StreamResponse:
        """The ``/peer/v1`` WebSocket handler (usable in another app's route table)."""
        if not self.accepting:
            raise web.HTTPServiceUnavailable(text="not running\n")
        source = request.remote or "?"
        if (self._handshaking >= self.transport.max_handshaking
                or self._handshaking_from.get(source, 0)
                >= self.transport.max_handshaking_per_address):
            self.peers.handshake_failed("busy")
            raise web.HTTPServiceUnavailable(text="too many handshakes\n")
        ws = web.WebSocketResponse(
            heartbeat=self.transport.heartbeat, max_msg_size=self.transport.max_msg_size,
            compress=False, autoping=True, timeout=self.transport.close_grace)
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # The peer went away before the 101 was written: an ordinary end of
            # connection (aiohttp would log a server-error traceback per connection).
            # The answer cannot be sent; aiohttp drops it quietly.
            log.debug("inbound %s gone during the upgrade", source)
            return web.Response(status=400, text="connection closed\n")
        session = Session(self.identity, initiator=False, is_trusted=self.peers.is_trusted,
                          ephemeral_seed=self._randbytes(32))
        link = PeerLink(ws, session, outbound=False, name=f"inbound {request.remote}",
                        pull_budget=self.transport.write_budget)
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            await self._run_link(link, remote=source, source=source)
        finally:
            self._conn_tasks.discard(task)
        return ws

    async def connect(self, target: DialTarget) -> bool:
        """Dial ``target`` once and run the session to its end (the dialer's ConnectFn)."""
        if not self.accepting or self._http is None:
            return False
        url = peer_endpoint(target.url)
        try:
            async with asyncio.timeout(self.transport.handshake_timeout):
                ws = await self._http.ws_connect(
                    url, heartbeat=self.transport.heartbeat,
                    max_msg_size=self.transport.max_msg_size, autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.transport.close_grace))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("dial %s (%s) failed: %r", target.name, url, exc)
            self.peers.error(target.key, "connect")
            return False
        expected = target.key
        session = Session(self.identity, initiator=True,
                          is_trusted=lambda k: k == expected and self.peers.is_trusted(k),
                          ephemeral_seed=self._randbytes(32))
        link = PeerLink(ws, session, outbound=True, name=target.name,
                        pull_budget=self.transport.write_budget)
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            return await self._run_link(link, remote=url)
        finally:
            self._conn_tasks.discard(task)

    # --- one link, from handshake to close ---------------------------------------------

    async def _run_link(self, link: PeerLink, *, remote: str | None,
                        source: str | None = None) -> bool:
        """Handshake, admit, read until the end. True when the handshake completed.

        ``source``: the address an inbound connection came from; its handshakes are
        counted against its own slots. Log lines about a failed handshake are limited
        per address and kind (never per claimed key: a client can claim any)."""
        link.started_at = self._clock()
        self.links.add(link)
        self._handshaking += 1
        if source is not None:
            self._handshaking_from[source] = self._handshaking_from.get(source, 0) + 1
        try:
            try:
                peer = await run_handshake(link.ws, link.session,
                                           self.transport.handshake_timeout)
            except HandshakeError as exc:
                self.peers.handshake_failed("refused")
                if self.peers.refusal_log.allow((remote, "refused")):
                    log.warning("peer connection %s refused at handshake: %s",
                                remote or link.name, exc)
                return False
            except RemoteProtocolError as exc:
                self.peers.handshake_failed("protocol")
                if self.peers.refusal_log.allow((remote, "protocol")):
                    log.warning("peer connection %s broke the handshake: %s",
                                remote or link.name, exc)
                return False
            except TransportClosed as exc:
                self.peers.handshake_failed("transport")
                log.debug("peer connection %s closed during the handshake: %s",
                          remote or link.name, exc)
                return False
            finally:
                self._end_handshake(source)
            self._established(link, peer)
            if link.close_reason is None:
                await self._read_loop(link)
            return True
        except asyncio.CancelledError:
            if link.close_reason is None:
                link.abort(CloseReason.SHUTDOWN)
            raise
        except Exception:  # a bug must end this link, never the node
            log.exception("%r: unexpected error", link)
            self.cut(link, CloseReason.INTERNAL_ERROR, "internal error")
            return link.peer is not None
        finally:
            self.detach(link)
            self.links.discard(link)
            await link.finish(self.transport.close_grace)
            if link.peer is not None:
                self.peers.closed(link)

    def handshakes_from(self, source: str) -> int:
        """Inbound handshakes in progress from the address ``source``."""
        return self._handshaking_from.get(source, 0)

    def _end_handshake(self, source: str | None) -> None:
        self._handshaking -= 1
        if source is not None:
            left = self._handshaking_from[source] - 1
            if left:
                self._handshaking_from[source] = left
            else:
                del self._handshaking_from[source]

    def _established(self, link: PeerLink, peer: PublicKey) -> None:
        """The handshake is done: re-check trust, resolve duplicates, attach."""
        link.peer = peer
        now = self._clock()
        link.established_at = link.last_seen = now
        trusted = self.peers.trusted.get(peer)
        link.name = trusted.name if trusted is not None else peer.fingerprint
        state = self.peers.state(peer)
        state.last_seen = now
        link.start_writer()  # with no pull yet: it only sends a final frame if asked
        if trusted is None or not self.accepting:
            link.request_close(CloseReason.REMOVED if trusted is None else CloseReason.SHUTDOWN,
                               "not trusted" if trusted is None else "node shutting down")
            return
        loser = self.links.admit(link)
        if loser is link:
            link.request_close(CloseReason.DUPLICATE_SESSION, "another session is kept")
            log.info("peer %s: duplicate session (%s) closed, keeping the other one",
                     link.name, link.direction)
            return
        if loser is not None:
            loser.pull = None  # no longer the registry's link for this peer
            self._detach_peer(peer)
            loser.request_close(CloseReason.DUPLICATE_SESSION, "another session is kept")
            log.info("peer %s: duplicate session (%s) closed, keeping the new one",
                     link.name, loser.direction)
        state.sessions += 1
        state.synced = False
        log.info("peer %s connected (%s)", link.name, "dialled" if link.outbound else "accepted")
        self._attach(link, peer, now)

    def detach(self, link: PeerLink) -> None:
        """Stop feeding the engine from ``link``; if it was its peer's active link, the
        peer leaves the engine (its WANTs go elsewhere)."""
        link.pull = None
        if link.peer is not None and self.links.active(link.peer) is link:
            self.links.discard(link)
            self._detach_peer(link.peer)

    def cut(self, link: PeerLink, reason: CloseReason, message: str) -> None:
        """End ``link`` now: detach it and close it with ``reason``."""
        self.detach(link)
        link.request_close(reason, message)

    async def _read_loop(self, link: PeerLink) -> None:
        """Feed ``link``'s messages to the engine until the link ends. Errors end the
        link with a reason; nothing but CancelledError propagates."""
        assert link.peer is not None
        peer, session, ws = link.peer, link.session, link.ws
        state = self.peers.state(peer)
        idle = self.transport.idle_timeout or None
        try:
            while True:
                room = self._room()
                if room is not None and not room.is_set():
                    await room.wait()  # the ledger is behind: push back on peers
                frame = await receive_frame(ws, idle)
                now = self._clock()
                link.last_seen = state.last_seen = now
                link.stats.frames_in += 1
                link.stats.bytes_in += len(frame)
                for event in session.receive(frame):
                    if isinstance(event, MessageReceived):
                        if self.links.active(peer) is not link:
                            continue  # detached (duplicate, removed): drop its traffic
                        self._receive(peer, event.data, now)
                    elif isinstance(event, SessionClosed):
                        link.remote_reason = event.reason
                        link.remote_message = event.message
                        self.detach(link)
                        link.request_close(CloseReason.NORMAL, "closing too")
                        return
        except FrameTooLargeError as exc:
            self.misbehaved(link, "oversize", str(exc))
        except RemoteProtocolError as exc:
            self.misbehaved(link, "protocol", str(exc))
        except IdleTimeout as exc:
            self.peers.error(peer, "idle")
            self.cut(link, CloseReason.IDLE_TIMEOUT, str(exc))
        except TransportClosed:
            session.transport_closed()

    def misbehaved(self, link: PeerLink, kind: str, reason: str) -> None:
        """``link``'s peer broke the protocol: count it, log it, end the link."""
        assert link.peer is not None
        self.peers.error(link.peer, kind)
        log.warning("peer %s misbehaved (%s): %s; disconnecting", link.name, kind, reason)
        self.cut(link, CloseReason.PROTOCOL_ERROR, reason[:200])

