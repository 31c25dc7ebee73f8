"""Per-peer state of the gossip engine: outbound queues, knowledge and counters.

Outbound traffic to a peer waits in three bounded queues, drained by priority:
control messages (HAVE, WANT, IHAVE, GRAFT, PRUNE, BEACON, FORK, PING/PONG), then
eager pushes, then replies to WANTs; so a bulk catch-up never delays live traffic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from protocol.gossip_types import PeerStats
from protocol.keys import PublicKey
from protocol.messages import MAX_BATCH, Entries, Kind, Message, encode_message, message_kind
from protocol.origins import OriginLog, OutstandingWant

__all__ = ["Counters", "Frame", "PeerState", "entries_frame"]


@dataclass(slots=True)
class Counters:
    """Mutable counters behind :class:`~protocol.gossip_types.PeerStats`."""

    frames_in: dict[str, int] = field(default_factory=dict)
    frames_out: dict[str, int] = field(default_factory=dict)
    bytes_in: dict[str, int] = field(default_factory=dict)
    bytes_out: dict[str, int] = field(default_factory=dict)
    entries_in: int = 0
    entries_out: int = 0
    payload_in: int = 0
    payload_out: int = 0
    duplicates: int = 0
    dropped: int = 0
    backpressured: int = 0
    want_timeouts: int = 0

    def snapshot(self, rtt: float | None) -> PeerStats:
        return PeerStats(dict(self.frames_in), dict(self.frames_out), dict(self.bytes_in),
                         dict(self.bytes_out), self.entries_in, self.entries_out,
                         self.payload_in, self.payload_out, self.duplicates, self.dropped,
                         self.backpressured, self.want_timeouts, rtt)


@dataclass(slots=True)
class Frame:
    """An encoded message waiting to be sent, with what the counters need to know."""

    data: bytes
    kind: str
    entries: int = 0
    payload: int = 0


def entries_frame(raws: list[bytes], *, push: bool, target: int) -> tuple[Frame, list[bytes]]:
    """One ENTRIES message of about ``target`` bytes from the front of ``raws``, and
    the rest (at least one entry per message, at most ``MAX_BATCH``)."""
    size = n = 0
    for raw in raws:
        if n and (size + len(raw) > target or n >= MAX_BATCH):
            break
        size += len(raw)
        n += 1
    frame = Frame(encode_message(Entries(tuple(raws[:n]), push)), Kind.ENTRIES.name, n, size)
    return frame, raws[n:]


@dataclass(slots=True, eq=False)
class PeerState:
    """Everything the engine keeps about one connected peer."""

    key: PublicKey
    counters: Counters = field(default_factory=Counters)
    told: dict[bytes, int] = field(default_factory=dict)
    """Heads the peer stated (HAVE, IHAVE, entries it sent, WANTs): it holds 1..seq."""
    sent: dict[bytes, int] = field(default_factory=dict)
    """Heads we pushed or announced to the peer."""
    control: deque[Frame] = field(default_factory=deque)
    push: list[bytes] = field(default_factory=list)
    push_bytes: int = 0
    ihave: dict[bytes, int] = field(default_factory=dict)
    ihave_due: float | None = None
    replies: deque[Frame] = field(default_factory=deque)
    reply_bytes: int = 0
    serving: deque[tuple[bytes, int, int]] = field(default_factory=deque)
    """WANT ranges to serve: (origin key id, first, last)."""
    requests: dict[int, tuple[bytes, int, int]] = field(default_factory=dict)
    """EntriesRequested ids the agent has not answered yet."""
    wants: list[tuple[OriginLog, OutstandingWant]] = field(default_factory=list)
    want_out: list[tuple[bytes, int, int]] = field(default_factory=list)
    last_full_sent: bytes | None = None
    synced_digest: bytes | None = None
    heard: bool = False
    """The peer's whole version vector reached us this session (a full HAVE, or a digest
    equal to ours): ``told`` then holds its head of every origin it has."""
    forks_sent: set[bytes] = field(default_factory=set)
    ping_token: bytes | None = None
    ping_sent: float = 0.0
    rtt: float | None = None

    def known(self, kid: bytes) -> int:
        """Highest seq of ``kid`` this peer has or has been given, as far as we know."""
        return max(self.told.get(kid, 0), self.sent.get(kid, 0))

    def tell(self, kid: bytes, seq: int) -> None:
        """The peer showed it holds ``kid`` up to ``seq``."""
        if seq > self.told.get(kid, 0):
            self.told[kid] = seq

    def queue_control(self, msg: Message | bytes, cap: int) -> bool:
        """Queue a control message; False (and nothing queued) when ``cap`` is reached."""
        if len(self.control) >= cap:
            return False
        data = msg if isinstance(msg, bytes) else encode_message(msg)
        kind = message_kind(data)
        self.control.append(Frame(data, kind.name if kind is not None else "?"))
        return True

    def queue_replies(self, raws: list[bytes], target: int) -> None:
        while raws:
            frame, raws = entries_frame(raws, push=False, target=target)
            self.replies.append(frame)
            self.reply_bytes += len(frame.data)

    def take(self, max_bytes: int | None, target: int) -> list[Frame]:
        """Dequeue frames by priority until ``max_bytes`` (one frame at least)."""
        out: list[Frame] = []
        size = 0
        while self.control or self.push or self.replies:
            if max_bytes is not None and out and size >= max_bytes:
                break
            if self.control:
                frame = self.control.popleft()
            elif self.push:
                frame, self.push = entries_frame(self.push, push=True, target=target)
                self.push_bytes = sum(len(raw) for raw in self.push)
            else:
                frame = self.replies.popleft()
                self.reply_bytes -= len(frame.data)
            out.append(frame)
            size += len(frame.data)
        return out

    def queued_bytes(self) -> int:
        """Bytes waiting in this peer's queues (for metrics and tests)."""
        return (sum(len(f.data) for f in self.control) + self.push_bytes + self.reply_bytes)
