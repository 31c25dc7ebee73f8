"""Value types of the ledger's public API (re-exported by agent/storage/ledger.py).

Results are frozen dataclasses; :class:`Subscription` is the one stateful object, a
bounded queue the ledger fills after each commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from agent.storage.queries import IndexRecord
from protocol.entries import TLP, ForkProof, VerifiedEntry
from protocol.keys import PublicKey
from protocol.matching import indicator_key
from protocol.payloads import Payload

__all__ = [
    "MAX_APPEND_BATCH",
    "MAX_INGEST_BATCH",
    "BodyState",
    "BufferLimits",
    "DroppedBodies",
    "ForkRecord",
    "Gap",
    "Head",
    "ImportResult",
    "IngestResult",
    "LedgerCounts",
    "ObservationEvent",
    "OwnDraft",
    "PreparedObservation",
    "Refusal",
    "Subscription",
    "VerifyProblem",
    "VerifyReport",
    "bodies_json",
]

MAX_APPEND_BATCH = 10_000
"""Most own entries signed and stored in one transaction."""

MAX_INGEST_BATCH = 10_000
"""Most remote entries taken by one ``ingest`` call."""

Head = tuple[int, bytes]
"""(seq, hash) of an origin's last entry: the shape ``check_successor`` takes."""


class PreparedObservation(NamedTuple):
    """An observation's payload bytes and index record, before its entry exists.

    Built by the API's ``prepare_observation`` only (its batch worker): ``data`` is
    ``encode_payload`` of a validated ``Observation``. ``first_ms``/``last_ms`` are the
    observation's own times, None where the entry's timestamp stands in (known once it
    is signed). A named tuple, not a dataclass: 500 of them cross the process boundary
    per request, and a tuple is what pickle rebuilds fastest.
    """

    data: bytes
    fields: dict[str, Any]
    doc: str
    type: str
    value: str
    first_ms: int | None
    last_ms: int | None

    def record(self, ts: int) -> IndexRecord:
        """The index record of the entry stamped ``ts`` (ms) that carries it; the same
        as ``build_record`` of the observation."""
        first = ts if self.first_ms is None else self.first_ms
        last = max(first, ts) if self.last_ms is None else self.last_ms
        return IndexRecord("observation", self.fields, self.doc, self.type,
                           indicator_key(self.type, self.value), first, last)


@dataclass(frozen=True)
class OwnDraft:
    """One of this node's next entries, before it is signed (the node's author signs it,
    :meth:`Ledger.store_own` stores the result).

    ``payload`` is a payload model, its encoding (re-validated), or an observation
    prepared in the API's batch worker (encoded, record built). For an encrypted
    TLP (AMBER, AMBER+STRICT, RED), ``recipients`` are the readers' keys; the author
    seals the payload to them and to this node (so it can read its own entry). For
    CLEAR and GREEN, ``recipients`` must be empty.
    """

    payload: Payload | bytes | PreparedObservation
    tlp: TLP
    recipients: tuple[PublicKey, ...] = ()


@dataclass(frozen=True)
class BufferLimits:
    """Caps on entries held ahead of a gap (per origin, and over all origins).

    Bytes are the entries' encodings; in memory a held entry takes about twice that
    (its raw bytes and its decoded body), so the defaults bound the buffer near 64 MiB.
    """

    per_origin_entries: int = 4096
    per_origin_bytes: int = 8 << 20
    total_entries: int = 16384
    total_bytes: int = 32 << 20


@dataclass(frozen=True)
class Gap:
    """Missing seqs ``from_seq..to_seq`` (inclusive) of ``origin``: what to WANT."""

    origin: PublicKey
    from_seq: int
    to_seq: int


@dataclass(frozen=True)
class Refusal:
    """An entry not stored, and why (untrusted origin, forked origin, broken chain...)."""

    origin: PublicKey
    seq: int
    reason: str


@dataclass(frozen=True)
class IngestResult:
    """What :meth:`Ledger.ingest` did with a batch.

    Attributes:
        stored: entries written in this call, including ones released from the buffer.
        duplicates: entries already stored (or already waiting in the buffer).
        buffered: entries of this batch now waiting ahead of a gap.
        dropped: ahead-of-gap entries the full buffer could not hold (fetch them later).
        refused: entries of untrusted or forked origins, or that break their chain.
        forks: new fork proofs found (their origins are now quarantined).
        unreadable: stored entries this node cannot read (not indexed).
        new_entries: the stored entries, in the order written (to gossip on).
        fork_proofs: the new proofs (to gossip on).
        gaps: per origin with a non-empty buffer, the missing ranges before it.
        refusals: the first refusals, with reasons.
    """

    stored: int = 0
    duplicates: int = 0
    buffered: int = 0
    dropped: int = 0
    refused: int = 0
    forks: int = 0
    unreadable: int = 0
    new_entries: tuple[VerifiedEntry, ...] = ()
    fork_proofs: tuple[ForkProof, ...] = ()
    gaps: tuple[Gap, ...] = ()
    refusals: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class VerifyProblem:
    """The first broken thing found in one origin's chain (origin None: the file itself)."""

    origin: PublicKey | None
    seq: int | None
    what: str


class BodyState(StrEnum):
    """Whether a stored entry still has its body (``entries.body_state``).

    A header without its body is a valid chain member (docs/protocol.md §3).
    """

    PRESENT = "present"
    EXPIRED = "expired"    # dropped here by retention
    ERASED = "erased"      # dropped here on its origin's erasure
    ABSENT = "absent"      # arrived header-only (dropped by the peer that sent it)


@dataclass(frozen=True)
class DroppedBodies:
    """What :meth:`Ledger.drop_bodies` dropped: entry ids (32 bytes) whose body was
    present and is now gone, and the derived rows deleted with them, by table."""

    entries: tuple[bytes, ...] = ()
    rows: dict[str, int] = field(default_factory=dict)


def bodies_json(counts: dict[str, int]) -> dict[str, int]:
    """Every :class:`BodyState` with its count (0 when none), for answers and output."""
    return {state.value: counts.get(state.value, 0) for state in BodyState}


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`Ledger.verify`: ``ok`` when no problem was found.

    ``bodies`` counts the entries on the chains by :class:`BodyState` value.
    """

    entries: int
    origins: int
    fork_proofs: int
    problems: tuple[VerifyProblem, ...]
    bodies: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> VerifyProblem | None:
        return self.problems[0] if self.problems else None


@dataclass(frozen=True)
class ForkRecord:
    """A stored fork proof; ``cleared_ms`` is set once an admin lifted the quarantine."""

    origin: PublicKey
    seq: int
    detected_ms: int
    cleared_ms: int | None
    proof: bytes = field(repr=False)


@dataclass(frozen=True)
class LedgerCounts:
    """Numbers for the status endpoint and metrics."""

    entries: int
    origins: int
    forked_origins: int
    held_ahead_of_gaps: int


@dataclass(frozen=True)
class ImportResult:
    """What :meth:`Ledger.import_entries` read and did.

    ``complete`` is False when the file ended before its trailer (truncated) or the
    trailer's counts do not match what was read.
    """

    records: int
    invalid: int
    first_invalid: str | None
    stored: int
    duplicates: int
    refused: int
    forks: int
    complete: bool


@dataclass(frozen=True)
class ObservationEvent:
    """A newly stored, readable observation; ``cursor`` works as an SSE Last-Event-ID;
    ``committed``: ``time.monotonic()`` when its commit was installed (what the
    stream's delay is measured from)."""

    cursor: str
    observation: dict[str, Any]
    committed: float


class Subscription:
    """A bounded queue of :class:`ObservationEvent` in commit order.

    Iterate with ``async for``. When the consumer falls ``maxsize`` events behind, the
    subscription ends after the events already queued and ``overflowed`` is True: the
    consumer then catches up with ``list_observations(cursor=last, newest_first=False)``.
    """

    def __init__(self, maxsize: int, on_close: Callable[[Subscription], None]) -> None:
        self._queue: asyncio.Queue[ObservationEvent | None] = asyncio.Queue(maxsize)
        self._on_close = on_close
        self.closed = False
        self.overflowed = False

    def offer(self, event: ObservationEvent) -> None:
        """Queue ``event`` (the ledger calls this after a commit); overflow ends the stream."""
        if self.closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        """Stop receiving; a consumer waiting in ``async for`` ends its loop."""
        if self.closed:
            return
        self.closed = True
        self._on_close(self)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # when full, the consumer is not waiting

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ObservationEvent:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

