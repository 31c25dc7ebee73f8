"""The node's ledger: every entry of every trusted origin, durable and verifiable.

One SQLite database in WAL mode (schema in agent/schema.py, durability argument in
docs/parts/ledger.md). One *writer* connection, used only under ``_write_lock``, and
one read-only *reader* connection for queries, replication reads and verification,
so readers never wait for a write transaction.

Invariants:
- Only ``VerifiedEntry`` objects are stored, each origin's entries are stored in chain
  order (``check_successor`` against the head), so the stored seqs of an origin are
  exactly ``1..head_seq`` and each ``prev`` is the hash of the entry before.
- An own entry is acknowledged (``append_own`` returns) only after the transaction
  holding it committed with ``synchronous=FULL``: it survives kill -9 and power loss.
  Remote batches commit with ``synchronous=NORMAL``: they survive a crash of the
  process; a power cut may drop the last ones, which anti-entropy fetches again.
- The in-memory heads and row counters change only after a commit succeeded, and only
  under ``_write_lock``; a failed write leaves them, and the database, as they were
  (entries it had taken out of the ahead-of-gap buffer are dropped and re-fetched).
- A write, once started, runs to its end even if the caller is cancelled (shielded
  task), so the database and the in-memory state cannot part ways.
- Entries ahead of a gap wait in a buffer bounded per origin and in total (entries and
  bytes); what does not fit is dropped and reported, never stored out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import sqlite3
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiosqlite

from agent import __version__
from agent.errors import StorageError
from agent.queries import (
    IndexRecord,
    Page,
    QueryReader,
    build_record,
    encode_cursor,
    observation_dict,
)
from agent.schema import migrate
from protocol.encoding import encode
from protocol.entries import (
    MAX_ENTRY_BYTES,
    TLP,
    ForkProof,
    VerifiedEntry,
    check_successor,
    decode_fork_proof,
    detect_fork,
    sign_entry,
    verify_entry,
)
from protocol.envelope import open_envelope, seal_envelope
from protocol.errors import ChainError, EncodingError, EntraideError, OversizeError
from protocol.keys import Identity, PublicKey
from protocol.payloads import Payload, decode_payload, encode_payload

__all__ = [
    "MAX_APPEND_BATCH",
    "MAX_INGEST_BATCH",
    "BufferLimits",
    "ForkRecord",
    "Gap",
    "ImportResult",
    "IngestResult",
    "Ledger",
    "LedgerCounts",
    "ObservationEvent",
    "OwnDraft",
    "Refusal",
    "Subscription",
    "VerifyProblem",
    "VerifyReport",
    "vector_digest",
]

MAX_APPEND_BATCH = 10_000
MAX_INGEST_BATCH = 10_000
RANGE_CHUNK_ENTRIES = 256
RANGE_CHUNK_BYTES = 1 << 20
MAX_SUBSCRIBERS = 256
_MAX_REPORTED = 64  # refusals and gaps listed in one IngestResult
_SQL_PARAMS = 500  # per IN (...) list, well under SQLite's variable limit
_VERIFY_CHUNK = 512

Head = tuple[int, bytes]
T = TypeVar("T")


# --- public value types -----------------------------------------------------------


@dataclass(frozen=True)
class OwnDraft:
    """One entry for :meth:`Ledger.append_own`.

    ``payload`` is a payload model or its encoding (re-validated). For an encrypted
    TLP (AMBER, AMBER+STRICT, RED), ``recipients`` are the readers' keys; the ledger
    seals the payload to them and to this node (so it can read its own entry). For
    CLEAR and GREEN, ``recipients`` must be empty.
    """

    payload: Payload | bytes
    tlp: TLP
    recipients: tuple[PublicKey, ...] = ()


@dataclass(frozen=True)
class BufferLimits:
    """Caps on entries held ahead of a gap (per origin, and over all origins)."""

    per_origin_entries: int = 4096
    per_origin_bytes: int = 16 << 20
    total_entries: int = 16384
    total_bytes: int = 64 << 20


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


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`Ledger.verify`: ``ok`` when no problem was found."""

    entries: int
    origins: int
    fork_proofs: int
    problems: tuple[VerifyProblem, ...]

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
    """A newly stored, readable observation; ``cursor`` works as an SSE Last-Event-ID."""

    cursor: str
    observation: dict[str, Any]


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

    def _offer(self, event: ObservationEvent) -> None:
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


def vector_digest(vector: dict[PublicKey, Head]) -> bytes:
    """BLAKE2b-256 of ``encode([[origin, seq, head hash], ...])`` sorted by origin bytes."""
    rows = sorted([key.raw, seq, head] for key, (seq, head) in vector.items())
    return hashlib.blake2b(encode(rows), digest_size=32).digest()


# --- internal state ---------------------------------------------------------------


@dataclass
class _Origin:
    origin_id: int
    key: PublicKey
    head_seq: int = 0
    head_hash: bytes | None = None
    forked: bool = False

    @property
    def head(self) -> Head | None:
        return None if self.head_hash is None else (self.head_seq, self.head_hash)


@dataclass
class _Held:
    entry: VerifiedEntry
    record: object  # IndexRecord, None (unreadable) or _UNDECODED


_UNDECODED = object()


@dataclass
class _Batch:
    """Rows of one write transaction, and the state to install once it committed."""

    origins: dict[bytes, _Origin] = field(default_factory=dict)
    entries: list[tuple[int, int, int, bytes, int, bytes]] = field(default_factory=list)
    observations: list[tuple[Any, ...]] = field(default_factory=list)
    sightings: list[tuple[Any, ...]] = field(default_factory=list)
    items: list[tuple[Any, ...]] = field(default_factory=list)
    retractions: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    forks: list[tuple[int, int, bytes, int]] = field(default_factory=list)
    cleared: list[tuple[int, int]] = field(default_factory=list)
    events: list[tuple[int, VerifiedEntry, IndexRecord]] = field(default_factory=list)
    new_entries: list[VerifiedEntry] = field(default_factory=list)
    next_no: dict[str, int] = field(default_factory=dict)

    def settle(self, current: dict[bytes, _Origin]) -> None:
        """Keep only the origins whose state this batch changes."""
        self.origins = {k: o for k, o in self.origins.items()
                        if current.get(k) != o and (o.head_seq or o.forked or k in current)}

    def empty(self) -> bool:
        return not (self.origins or self.entries or self.forks or self.cleared)


class _Tally:
    def __init__(self) -> None:
        self.duplicates = self.buffered = self.dropped = self.refused = self.unreadable = 0
        self.proofs: list[ForkProof] = []
        self.refusals: list[Refusal] = []
        self.gaps: list[Gap] = []

    def refuse(self, entries: Iterable[VerifiedEntry], reason: str) -> None:
        for entry in entries:
            self.refused += 1
            if len(self.refusals) < _MAX_REPORTED:
                self.refusals.append(Refusal(entry.origin, entry.seq, reason))

    def result(self, batch: _Batch | None) -> IngestResult:
        new = tuple(batch.new_entries) if batch else ()
        return IngestResult(len(new), self.duplicates, self.buffered, self.dropped,
                            self.refused, len(self.proofs), self.unreadable, new,
                            tuple(self.proofs), tuple(self.gaps), tuple(self.refusals))


# --- the ledger -------------------------------------------------------------------

_EXPORT_MAGIC = b"ENTRAIDE-LEDGER\x01"
_RECORD = struct.Struct(">cI")
_TRAILER = struct.Struct(">QQ")
_MAX_PROOF_BYTES = 2 * MAX_ENTRY_BYTES + 64


class Ledger:
    """The node's ledger. Build with :meth:`open`; close with :meth:`close`.

    Args (of :meth:`open`):
        identity: this node; its own entries are always trusted and readable to it.
        is_trusted_origin: the live trust list; consulted on every ingest.
        clock: seconds since the epoch (``time.time``); own entries carry it in ms.
        randbytes: randomness for envelopes (``os.urandom``).
    """

    def __init__(self, path: Path, identity: Identity,
                 is_trusted_origin: Callable[[PublicKey], bool], clock: Callable[[], float],
                 randbytes: Callable[[int], bytes], limits: BufferLimits, lock_fd: int) -> None:
        self._path = path
        self._identity = identity
        self._me = identity.public_key
        self._is_trusted = is_trusted_origin
        self._clock = clock
        self._randbytes = randbytes
        self._limits = limits
        self._lock_fd = lock_fd
        self._db: aiosqlite.Connection | None = None
        self._rdb: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._origins: dict[bytes, _Origin] = {}
        self._origin_keys: dict[int, PublicKey] = {}
        self._fork_seqs: set[tuple[bytes, int]] = set()
        self._next_no: dict[str, int] = {}
        self._held: dict[bytes, dict[int, _Held]] = {}
        self._held_bytes: dict[bytes, int] = {}
        self._held_total = 0
        self._held_total_bytes = 0
        self._subscribers: set[Subscription] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._reader: QueryReader | None = None

    # -- lifecycle

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        identity: Identity,
        is_trusted_origin: Callable[[PublicKey], bool],
        clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
        buffer_limits: BufferLimits | None = None,
    ) -> Ledger:
        """Open (or create) the ledger at ``path`` and bring its schema up to date.

        Raises:
            StorageError: the file is in use by another process, is not a ledger, was
                written by a newer Entraide, belongs to another node's identity, or
                cannot be read.
        """
        path = Path(path)
        lock_fd = _lock_file(path)
        ledger = cls(path, identity, is_trusted_origin, clock, randbytes,
                     buffer_limits or BufferLimits(), lock_fd)
        try:
            await asyncio.to_thread(_prepare_file, path, identity.public_key,
                                    int(clock() * 1000))
            await ledger._connect()
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def _connect(self) -> None:
        try:
            self._db = await aiosqlite.connect(self._path, isolation_level=None)
            for pragma in ("foreign_keys = ON", "synchronous = NORMAL", "busy_timeout = 5000",
                           "cache_size = -16384", "temp_store = MEMORY"):
                await self._db.execute(f"PRAGMA {pragma}")
            self._rdb = await aiosqlite.connect(self._path, isolation_level=None)
            for pragma in ("query_only = ON", "busy_timeout = 5000", "cache_size = -32768",
                           "temp_store = MEMORY"):
                await self._rdb.execute(f"PRAGMA {pragma}")
            db = self._db
            for row in await db.execute_fetchall(
                    "SELECT origin_id, key, head_seq, head_hash, forked FROM origins"):
                key = PublicKey(row[1])
                self._origins[key.raw] = _Origin(row[0], key, row[2], row[3], bool(row[4]))
                self._origin_keys[row[0]] = key
            for row in await db.execute_fetchall(
                    "SELECT g.key, f.seq FROM forks f JOIN origins g USING (origin_id)"):
                self._fork_seqs.add((row[0], row[1]))
            for name, table, column in (("entry", "entries", "entry_no"),
                                        ("origin", "origins", "origin_id"),
                                        ("observation", "observations", "obs_no"),
                                        ("sighting", "sightings", "sighting_no"),
                                        ("item", "items", "item_no")):
                rows = await db.execute_fetchall(f"SELECT max({column}) FROM {table}")
                self._next_no[name] = int(rows[0][0] or 0) + 1
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the ledger {self._path}: {exc}") from exc
        except EntraideError as exc:
            raise StorageError(f"the ledger {self._path} holds a bad origin key") from exc
        self._reader = QueryReader(self._rdb, self._origin_id_of)

    async def close(self) -> None:
        """Finish pending writes, end subscriptions, checkpoint and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in list(self._subscribers):
            sub.close()
        for conn in (self._rdb, self._db):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    if conn is self._db:
                        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    await conn.close()
        os.close(self._lock_fd)

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the ledger is closed")

    @property
    def _read(self) -> QueryReader:
        self._check_open()
        assert self._reader is not None
        return self._reader

    def _origin_id_of(self, key: PublicKey) -> int | None:
        state = self._origins.get(key.raw)
        return None if state is None else state.origin_id

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _shielded(self, coro: Awaitable[T]) -> T:
        """Run a write to its end even if the caller is cancelled."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))
        return await asyncio.shield(task)

    # -- writing

    async def _write(self, batch: _Batch, *, full: bool) -> None:
        """Write ``batch`` in one transaction; FULL makes its commit durable at return."""
        db = self._db
        assert db is not None
        batch.settle(self._origins)
        try:
            if full:
                await db.execute("PRAGMA synchronous = FULL")
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    await self._apply(db, batch)
                    await db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                    raise
            finally:
                if full:
                    await db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StorageError(f"ledger write failed: {exc}") from exc
        self._install(batch)

    async def _apply(self, db: aiosqlite.Connection, batch: _Batch) -> None:
        if batch.origins:
            await db.executemany(
                "INSERT INTO origins (origin_id, key, head_seq, head_hash, forked) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin_id) DO UPDATE SET "
                "head_seq = excluded.head_seq, head_hash = excluded.head_hash, "
                "forked = excluded.forked",
                [(o.origin_id, o.key.raw, o.head_seq, o.head_hash, int(o.forked))
                 for o in batch.origins.values()])
        if batch.entries:
            await db.executemany(
                "INSERT INTO entries (entry_no, origin_id, seq, hash, readable, raw) "
                "VALUES (?, ?, ?, ?, ?, ?)", batch.entries)
        if batch.observations:
            await db.executemany(
                "INSERT INTO observations (obs_no, entry_no, origin_id, ts, tlp, type, value, "
                "first_seen, last_seen, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch.observations)
        if batch.sightings:
            await db.executemany(
                "INSERT INTO sightings (sighting_no, entry_no, origin_id, ts, tlp, target, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", batch.sightings)
        if batch.items:
            await db.executemany(
                "INSERT INTO items (item_no, entry_no, kind, origin_id, ts, tlp, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", batch.items)
        for entry_no, origin_id, target, doc in batch.retractions:
            # Void unless the target is an entry of the same origin (design: retraction).
            rows = await db.execute_fetchall(
                "SELECT entry_no FROM entries WHERE hash = ? AND origin_id = ?",
                (target, origin_id))
            if rows:
                for table in ("observations", "sightings", "items"):
                    await db.execute(f"UPDATE {table} SET retracted = 1 WHERE entry_no = ?",
                                     (rows[0][0],))
            await db.execute(
                "INSERT INTO retractions (entry_no, origin_id, target, applied, doc) "
                "VALUES (?, ?, ?, ?, ?)", (entry_no, origin_id, target, int(bool(rows)), doc))
        if batch.forks:
            await db.executemany(
                "INSERT INTO forks (origin_id, seq, proof, detected_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING", batch.forks)
        if batch.cleared:
            await db.executemany(
                "UPDATE forks SET cleared_ms = ? WHERE origin_id = ? AND cleared_ms IS NULL",
                batch.cleared)

    def _install(self, batch: _Batch) -> None:
        """After a commit: make the in-memory state match the database, publish events."""
        for key, state in batch.origins.items():
            self._origins[key] = state
            self._origin_keys[state.origin_id] = state.key
        for origin_id, seq, _proof, _ms in batch.forks:
            self._fork_seqs.add((self._origin_keys[origin_id].raw, seq))
        self._next_no.update(batch.next_no)
        if self._subscribers:
            for obs_no, entry, record in batch.events:
                event = ObservationEvent(
                    encode_cursor("observation", obs_no),
                    observation_dict(entry.id, entry.origin.text, entry.seq, entry.ts,
                                     entry.tlp.value, False, record.fields))
                for sub in list(self._subscribers):
                    sub._offer(event)

    def _work(self, batch: _Batch, key: PublicKey) -> _Origin:
        """The batch's working copy of an origin's state (created for a new origin)."""
        state = batch.origins.get(key.raw)
        if state is None:
            current = self._origins.get(key.raw)
            if current is None:
                state = _Origin(self._take(batch, "origin"), key)
            else:
                state = replace(current)
            batch.origins[key.raw] = state
        return state

    def _take(self, batch: _Batch, name: str) -> int:
        number = batch.next_no.get(name, self._next_no[name])
        batch.next_no[name] = number + 1
        return number

    def _add_entry(self, batch: _Batch, state: _Origin, entry: VerifiedEntry,
                   record: IndexRecord | None) -> None:
        entry_no = self._take(batch, "entry")
        batch.entries.append((entry_no, state.origin_id, entry.seq, entry.hash,
                              int(record is not None), entry.raw))
        batch.new_entries.append(entry)
        state.head_seq, state.head_hash = entry.seq, entry.hash
        if record is None:
            return
        common = (entry_no, state.origin_id, entry.ts, entry.tlp.value)
        if record.kind == "observation":
            obs_no = self._take(batch, "observation")
            batch.observations.append((obs_no, *common, record.type, record.value,
                                       record.first_seen, record.last_seen, record.doc))
            batch.events.append((obs_no, entry, record))
        elif record.kind == "sighting":
            batch.sightings.append((self._take(batch, "sighting"), *common, record.target,
                                    record.doc))
        elif record.kind == "retraction":
            assert record.target is not None
            batch.retractions.append((entry_no, state.origin_id, record.target, record.doc))
        else:
            batch.items.append((self._take(batch, "item"), entry_no, record.kind,
                                state.origin_id, entry.ts, entry.tlp.value, record.doc))

    # -- own entries

    async def append_own(self, drafts: Sequence[OwnDraft]) -> list[VerifiedEntry]:
        """Sign, store and durably commit this node's next entries, in order.

        One transaction and one fsync for the whole batch; on return every entry is on
        disk (``synchronous=FULL``). On error nothing is appended.

        Raises:
            PayloadError, EncodingError: a payload or draft that is not valid (bad
                payload bytes, recipients on a CLEAR/GREEN draft, none on an encrypted one).
            OversizeError: more than ``MAX_APPEND_BATCH`` drafts, or an entry over its cap.
            StorageError: the write failed, the ledger is closed, or this node's own log
                is marked forked.
        """
        self._check_open()
        drafts = list(drafts)
        if len(drafts) > MAX_APPEND_BATCH:
            raise OversizeError(f"at most {MAX_APPEND_BATCH} entries per append")
        if not drafts:
            return []
        return await self._shielded(self._append_locked(drafts))

    async def _append_locked(self, drafts: list[OwnDraft]) -> list[VerifiedEntry]:
        async with self._write_lock:
            self._check_open()
            batch = _Batch()
            state = self._work(batch, self._me)
            if state.forked:
                raise StorageError("this node's own log is marked forked; an admin must "
                                   "clear it before it can append")
            built = await asyncio.to_thread(self._build_own, drafts, state.head,
                                            self._now_ms())
            for entry, record in built:
                self._add_entry(batch, state, entry, record)
            await self._write(batch, full=True)
            return batch.new_entries

    def _build_own(self, drafts: list[OwnDraft], head: Head | None,
                   now_ms: int) -> list[tuple[VerifiedEntry, IndexRecord]]:
        """Sign the drafts as a chain after ``head`` (runs in a worker thread)."""
        out = []
        seq, prev = (0, None) if head is None else head
        for draft in drafts:
            tlp = TLP(draft.tlp)
            if isinstance(draft.payload, bytes | bytearray | memoryview):
                data = bytes(draft.payload)
                payload = decode_payload(data)
            else:
                payload = draft.payload
                data = encode_payload(payload)
            if tlp.encrypted:
                if not draft.recipients:
                    raise EncodingError(f"a {tlp.value} entry needs recipients")
                audience, body = seal_envelope(data, [*draft.recipients, self._me],
                                               self._randbytes)
            elif draft.recipients:
                raise EncodingError(f"a {tlp.value} entry has no recipients")
            else:
                audience, body = None, data
            entry = sign_entry(self._identity, seq=seq + 1, prev=prev, now_ms=now_ms,
                               tlp=tlp, audience=audience, body=body)
            out.append((entry, build_record(payload, entry.ts)))
            seq, prev = entry.seq, entry.hash
        return out

    # -- remote entries

    def _record_of(self, entry: VerifiedEntry) -> IndexRecord | None:
        """The index record of an entry this node can read; None otherwise."""
        if entry.tlp.encrypted:
            assert entry.audience is not None
            if self._me.key_id not in entry.audience:
                return None
            try:
                data = open_envelope(entry.body, entry.audience, self._identity)
            except EntraideError:
                return None  # stored as signed, but a damaged envelope is never indexed
        else:
            data = entry.body
        try:
            return build_record(decode_payload(data), entry.ts)
        except EntraideError:
            return None

    def _records_for(self, entries: list[VerifiedEntry]) -> dict[bytes, IndexRecord | None]:
        return {e.hash: self._record_of(e) for e in entries}

    async def ingest(self, entries: Sequence[VerifiedEntry]) -> IngestResult:
        """Store remote entries: in chain order per origin, idempotently, in one transaction.

        Per origin: entries already stored are duplicates; the next one is checked with
        ``check_successor`` and stored; entries ahead of a gap wait in the bounded buffer
        (the result's ``gaps`` say what to WANT) and are stored when the gap fills. An
        origin that is not trusted (now), or is quarantined after a fork, is refused. Two
        different entries at one (origin, seq) make a fork: the proof is stored, the
        origin is quarantined and its further entries refused until :meth:`clear_fork`.

        Raises:
            OversizeError: more than ``MAX_INGEST_BATCH`` entries.
            StorageError: the write failed (nothing of the batch is stored), or the
                ledger is closed.
        """
        self._check_open()
        entries = list(entries)
        if len(entries) > MAX_INGEST_BATCH:
            raise OversizeError(f"at most {MAX_INGEST_BATCH} entries per ingest")
        if any(not isinstance(e, VerifiedEntry) for e in entries):
            raise TypeError("ingest takes VerifiedEntry objects only")
        if not entries:
            return IngestResult()
        # Decode payloads outside the write lock, for the entries that look new.
        likely_new = [e for e in entries if e.seq > self._cached_head_seq(e.origin)]
        if len(likely_new) > 8:
            records = await asyncio.to_thread(self._records_for, likely_new)
        else:
            records = self._records_for(likely_new)
        return await self._shielded(self._ingest_locked(entries, records))

    def _cached_head_seq(self, key: PublicKey) -> int:
        state = self._origins.get(key.raw)
        return 0 if state is None else state.head_seq

    async def _ingest_locked(self, entries: list[VerifiedEntry],
                             records: dict[bytes, IndexRecord | None]) -> IngestResult:
        async with self._write_lock:
            self._check_open()
            groups: dict[bytes, dict[bytes, VerifiedEntry]] = {}
            for entry in entries:
                groups.setdefault(entry.origin.raw, {})[entry.hash] = entry
            batch, tally = _Batch(), _Tally()
            for group in groups.values():
                ordered = sorted(group.values(), key=lambda e: e.seq)
                await self._ingest_origin(ordered, records, batch, tally)
            batch.settle(self._origins)
            if not batch.empty():
                await self._write(batch, full=bool(batch.forks))
            for group in groups.values():
                key = next(iter(group.values())).origin
                tally.gaps.extend(self._gaps(key, _MAX_REPORTED - len(tally.gaps)))
            return tally.result(batch)

    async def _ingest_origin(self, group: list[VerifiedEntry],
                             records: dict[bytes, IndexRecord | None],
                             batch: _Batch, tally: _Tally) -> None:
        key = group[0].origin
        if key != self._me and not self._is_trusted(key):
            tally.refuse(group, "origin is not in the trust list")
            self._drop_held(key.raw)
            return
        current = self._origins.get(key.raw)
        if current is not None and current.forked:
            tally.refuse(group, "origin is quarantined after a fork")
            return
        state = self._work(batch, key)
        known: dict[int, bytes] = {}
        low = [e.seq for e in group if e.seq <= state.head_seq]
        if low and current is not None:
            known = await self._hashes_at(state.origin_id, low)
        fresh: dict[int, VerifiedEntry] = {}
        for i, entry in enumerate(group):
            if entry.seq <= state.head_seq:
                other = fresh.get(entry.seq)
                other_hash = other.hash if other else known.get(entry.seq)
                if other_hash is None:
                    raise StorageError(f"ledger damaged: {key.text} seq {entry.seq} is missing "
                                       "below the head (run verify)")
                if other_hash == entry.hash:
                    tally.duplicates += 1
                    continue
                if other is None:
                    other = await self._load(state.origin_id, entry.seq)
                if self._fork(batch, state, other, entry, tally):
                    tally.refuse(group[i + 1:], "origin is quarantined after a fork")
                    return
                tally.refuse([entry], "conflicts with a fork an admin already cleared")
                continue
            waiting = self._held_at(key.raw, entry.seq)
            if waiting is not None and waiting.entry.hash != entry.hash:
                if self._fork(batch, state, waiting.entry, entry, tally):
                    tally.refuse(group[i + 1:], "origin is quarantined after a fork")
                    return
                tally.refuse([entry], "conflicts with a fork an admin already cleared")
                continue
            if entry.seq > state.head_seq + 1:
                if waiting is not None:
                    tally.duplicates += 1
                else:
                    self._hold(entry, records.get(entry.hash, _UNDECODED), tally)
                continue
            if waiting is not None:
                self._unhold(key.raw, entry.seq)
            record = records.get(entry.hash, _UNDECODED)
            if not self._extend(batch, state, entry, record, tally):
                continue
            fresh[entry.seq] = entry
            # Release what waited behind the gap that just closed.
            while (nxt := self._held_at(key.raw, state.head_seq + 1)) is not None:
                self._unhold(key.raw, nxt.entry.seq)
                if self._extend(batch, state, nxt.entry, nxt.record, tally):
                    fresh[nxt.entry.seq] = nxt.entry

    def _extend(self, batch: _Batch, state: _Origin, entry: VerifiedEntry, record: object,
                tally: _Tally) -> bool:
        try:
            check_successor(state.head, entry)
        except ChainError as exc:
            tally.refuse([entry], f"chain: {exc}")
            return False
        if record is _UNDECODED:
            record = self._record_of(entry)
        assert record is None or isinstance(record, IndexRecord)
        if record is None:
            tally.unreadable += 1
        self._add_entry(batch, state, entry, record)
        return True

    def _fork(self, batch: _Batch, state: _Origin, a: VerifiedEntry, b: VerifiedEntry,
              tally: _Tally) -> bool:
        """Record a fork; False when an admin already cleared a fork at that seq."""
        if (state.key.raw, a.seq) in self._fork_seqs:
            return False
        proof = detect_fork(a, b)
        assert proof is not None
        state.forked = True
        batch.forks.append((state.origin_id, proof.seq, proof.encode(), self._now_ms()))
        tally.proofs.append(proof)
        self._drop_held(state.key.raw)
        return True

    async def _hashes_at(self, origin_id: int, seqs: list[int]) -> dict[int, bytes]:
        assert self._db is not None
        found: dict[int, bytes] = {}
        try:
            for i in range(0, len(seqs), _SQL_PARAMS):
                part = seqs[i:i + _SQL_PARAMS]
                rows = await self._db.execute_fetchall(
                    f"SELECT seq, hash FROM entries WHERE origin_id = ? "
                    f"AND seq IN ({','.join('?' * len(part))})", (origin_id, *part))
                found.update((r[0], r[1]) for r in rows)
        except sqlite3.Error as exc:
            raise StorageError(f"ledger read failed: {exc}") from exc
        return found

    async def _load(self, origin_id: int, seq: int) -> VerifiedEntry:
        assert self._db is not None
        try:
            rows = await self._db.execute_fetchall(
                "SELECT raw FROM entries WHERE origin_id = ? AND seq = ?", (origin_id, seq))
            return verify_entry(rows[0][0])
        except (sqlite3.Error, IndexError, EntraideError) as exc:
            raise StorageError(f"ledger damaged at origin #{origin_id} seq {seq} "
                               f"(run verify): {exc}") from exc

    # -- the ahead-of-gap buffer

    def _held_at(self, key: bytes, seq: int) -> _Held | None:
        held = self._held.get(key)
        return None if held is None else held.get(seq)

    def _hold(self, entry: VerifiedEntry, record: object, tally: _Tally) -> None:
        key, size, limits = entry.origin.raw, len(entry.raw), self._limits

        def origin_full() -> bool:
            return (len(self._held.get(key, ())) >= limits.per_origin_entries
                    or self._held_bytes.get(key, 0) + size > limits.per_origin_bytes)

        while origin_full() and self._held.get(key):
            # Keep the entries nearest the head: they are the ones a filled gap releases.
            top = max(self._held[key])
            if top < entry.seq:
                break
            self._unhold(key, top)
            tally.dropped += 1
        if (origin_full() or self._held_total >= limits.total_entries
                or self._held_total_bytes + size > limits.total_bytes):
            tally.dropped += 1
            return
        self._held.setdefault(key, {})[entry.seq] = _Held(entry, record)
        self._held_bytes[key] = self._held_bytes.get(key, 0) + size
        self._held_total += 1
        self._held_total_bytes += size
        tally.buffered += 1

    def _unhold(self, key: bytes, seq: int) -> None:
        held = self._held[key]
        size = len(held.pop(seq).entry.raw)
        self._held_bytes[key] -= size
        self._held_total -= 1
        self._held_total_bytes -= size
        if not held:
            del self._held[key]
            del self._held_bytes[key]

    def _drop_held(self, key: bytes) -> None:
        for seq in list(self._held.get(key, ())):
            self._unhold(key, seq)

    def drop_held(self, origin: PublicKey) -> int:
        """Forget the entries of ``origin`` waiting ahead of a gap (e.g. on removal)."""
        count = len(self._held.get(origin.raw, ()))
        self._drop_held(origin.raw)
        return count

    def _gaps(self, key: PublicKey, budget: int) -> list[Gap]:
        held = self._held.get(key.raw)
        if not held or budget <= 0:
            return []
        state = self._origins.get(key.raw)
        expected = 1 if state is None else state.head_seq + 1
        gaps = []
        for seq in sorted(held):
            if seq > expected:
                gaps.append(Gap(key, expected, seq - 1))
                if len(gaps) >= budget:
                    break
            expected = seq + 1
        return gaps

    # -- forks

    async def ingest_fork_proof(self, proof: ForkProof) -> bool:
        """Store a fork proof received from gossip and quarantine its origin.

        Returns True when the proof was new (store, quarantine, gossip it on); False
        when the origin is not trusted or that fork is already known.

        Raises:
            StorageError: the write failed or the ledger is closed.
        """
        self._check_open()
        if not isinstance(proof, ForkProof):
            raise TypeError("ingest_fork_proof takes a ForkProof")
        if proof.origin != self._me and not self._is_trusted(proof.origin):
            return False
        return await self._shielded(self._fork_proof_locked(proof))

    async def _fork_proof_locked(self, proof: ForkProof) -> bool:
        async with self._write_lock:
            self._check_open()
            if (proof.origin.raw, proof.seq) in self._fork_seqs:
                return False
            batch = _Batch()
            state = self._work(batch, proof.origin)
            state.forked = True
            batch.forks.append((state.origin_id, proof.seq, proof.encode(), self._now_ms()))
            self._drop_held(proof.origin.raw)
            await self._write(batch, full=True)
            return True

    async def clear_fork(self, origin: PublicKey) -> bool:
        """Lift an origin's quarantine (admin action); its proofs stay as evidence.

        Returns False when the origin was not quarantined.
        """
        self._check_open()
        return await self._shielded(self._clear_locked(origin))

    async def _clear_locked(self, origin: PublicKey) -> bool:
        async with self._write_lock:
            current = self._origins.get(origin.raw)
            if current is None or not current.forked:
                return False
            batch = _Batch()
            state = self._work(batch, origin)
            state.forked = False
            batch.cleared.append((self._now_ms(), state.origin_id))
            await self._write(batch, full=True)
            return True

    async def forks(self) -> list[ForkRecord]:
        """Every stored fork proof, oldest first."""
        rows = await self._fetch(
            "SELECT g.key, f.seq, f.detected_ms, f.cleared_ms, f.proof FROM forks f "
            "JOIN origins g USING (origin_id) ORDER BY f.detected_ms, g.key, f.seq")
        return [ForkRecord(PublicKey(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    def is_forked(self, origin: PublicKey) -> bool:
        state = self._origins.get(origin.raw)
        return state is not None and state.forked

    # -- replication reads

    def version_vector(self) -> dict[PublicKey, Head]:
        """origin → (seq, hash) of its last stored entry, for every origin with entries."""
        return {s.key: (s.head_seq, s.head_hash) for s in self._origins.values()
                if s.head_hash is not None}

    def vector_digest(self) -> bytes:
        """:func:`vector_digest` of :meth:`version_vector`."""
        return vector_digest(self.version_vector())

    def head(self, origin: PublicKey) -> Head | None:
        state = self._origins.get(origin.raw)
        return None if state is None else state.head

    async def read_range(self, origin: PublicKey, from_seq: int, to_seq: int, *,
                         max_entries: int = RANGE_CHUNK_ENTRIES,
                         max_bytes: int = RANGE_CHUNK_BYTES) -> AsyncIterator[list[bytes]]:
        """The raw entries ``from_seq..to_seq`` (inclusive) of ``origin``, in chunks.

        Each chunk holds at most ``max_entries`` entries and ``max_bytes`` bytes (but
        always at least one entry). Stops at the origin's head.
        """
        origin_id = self._origin_id_of(origin)
        if origin_id is None or to_seq < from_seq:
            return
        seq = max(from_seq, 1)
        while seq <= to_seq:
            rows = await self._fetch(
                "SELECT seq, raw FROM entries WHERE origin_id = ? AND seq BETWEEN ? AND ? "
                "ORDER BY seq LIMIT ?", (origin_id, seq, to_seq, max_entries))
            if not rows:
                return
            chunk: list[bytes] = []
            size = 0
            for row_seq, raw in rows:
                if chunk and size + len(raw) > max_bytes:
                    break
                chunk.append(raw)
                size += len(raw)
                seq = row_seq + 1
            yield chunk
            if len(rows) < max_entries and len(chunk) == len(rows):
                return

    async def has_entry(self, entry_id: bytes) -> bool:
        """True when an entry with this hash (32 bytes) is stored."""
        rows = await self._fetch("SELECT 1 FROM entries WHERE hash = ?", (entry_id,))
        return bool(rows)

    async def get_entry(self, entry_id: str) -> VerifiedEntry | None:
        """The stored entry with this id (64 hex), re-verified from its bytes.

        Raises:
            StorageError: the stored bytes no longer verify (the file was altered).
        """
        try:
            key = bytes.fromhex(entry_id)
        except (ValueError, TypeError):
            return None
        rows = await self._fetch("SELECT raw FROM entries WHERE hash = ?", (key,))
        if not rows:
            return None
        try:
            entry = verify_entry(rows[0][0])
        except EntraideError as exc:
            raise StorageError(f"stored entry {entry_id} no longer verifies: {exc}") from exc
        if entry.hash != key:
            raise StorageError(f"stored entry {entry_id} does not hash to its id")
        return entry

    async def _fetch(self, sql: str, args: Sequence[Any] = (),
                     conn: aiosqlite.Connection | None = None) -> list[Any]:
        self._check_open()
        conn = conn or self._rdb
        assert conn is not None
        try:
            return list(await conn.execute_fetchall(sql, args))
        except sqlite3.Error as exc:
            raise StorageError(f"ledger read failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A connection inside one read transaction: every read sees the same state."""
        self._check_open()
        try:
            conn = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the ledger {self._path}: {exc}") from exc
        # An edited file may hold TEXT where a BLOB belongs: read it as bytes, let the
        # checks report it, rather than fail on decoding.
        conn.text_factory = bytes
        try:
            await self._fetch("PRAGMA query_only = ON", (), conn)
            await self._fetch("BEGIN", (), conn)
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    await conn.execute("COMMIT")
            await conn.close()

    # -- queries (agent/queries.py)

    async def list_observations(self, **filters: Any) -> Page:
        """See :meth:`agent.queries.QueryReader.list_observations`."""
        return await self._query(self._read.list_observations(**filters))

    async def get_observation(self, entry_id: str) -> dict[str, Any] | None:
        """One observation, plus ``verified``: its bytes re-checked now (signature, id)."""
        result = await self._query(self._read.get_observation(entry_id))
        if result is not None:
            try:
                result["verified"] = await self.get_entry(entry_id) is not None
            except StorageError:
                result["verified"] = False
        return result

    async def indicator(self, type: str, value: str, **options: Any) -> dict[str, Any]:
        """See :meth:`agent.queries.QueryReader.indicator`."""
        return await self._query(self._read.indicator(type, value, **options))

    async def list_sightings(self, **filters: Any) -> Page:
        return await self._query(self._read.list_sightings(**filters))

    async def list_items(self, **filters: Any) -> Page:
        return await self._query(self._read.list_items(**filters))

    async def stream_position(self) -> str:
        """Cursor of the newest observation (start of a live stream)."""
        return await self._query(self._read.stream_position())

    async def _query(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except sqlite3.Error as exc:
            raise StorageError(f"ledger query failed: {exc}") from exc

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        """Follow new readable observations, in commit order (bounded; see Subscription).

        Raises:
            StorageError: too many subscribers, or the ledger is closed.
        """
        self._check_open()
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise StorageError(f"at most {MAX_SUBSCRIBERS} stream subscribers")
        sub = Subscription(maxsize, self._subscribers.discard)
        self._subscribers.add(sub)
        return sub

    def counts(self) -> LedgerCounts:
        """Entry and origin counts from the heads (seqs are gap-free), without a scan."""
        with_entries = [s for s in self._origins.values() if s.head_seq > 0]
        return LedgerCounts(
            entries=sum(s.head_seq for s in with_entries),
            origins=len(with_entries),
            forked_origins=sum(1 for s in self._origins.values() if s.forked),
            held_ahead_of_gaps=self._held_total,
        )

    # -- verification

    async def verify(self) -> VerifyReport:
        """Re-check every stored entry from its bytes: signature, ids, seqs, chain, heads.

        Reports, per origin, the first broken entry (origin, seq, what); fork proofs
        are re-verified too. Signature checks run in a worker thread.
        """
        problems: list[VerifyProblem] = []
        total = proofs = 0
        origins: list[Any] = []
        try:
            async with self._snapshot() as snap:
                origins = await self._fetch(
                    "SELECT origin_id, key, head_seq, head_hash FROM origins ORDER BY key", (),
                    snap)
                for origin_id, key_raw, head_seq, head_hash in origins:
                    key = PublicKey(key_raw)
                    head, problem, count = await self._verify_origin(snap, origin_id, key)
                    total += count
                    if problem is None:
                        problem = _check_head(key, head, head_seq, head_hash)
                    if problem is not None:
                        problems.append(problem)
                for key_raw, seq, proof in await self._fetch(
                        "SELECT g.key, f.seq, f.proof FROM forks f JOIN origins g "
                        "USING (origin_id)", (), snap):
                    proofs += 1
                    try:
                        if not isinstance(proof, bytes):
                            raise EncodingError("not stored as bytes")
                        decoded = decode_fork_proof(proof)
                        if decoded.origin.raw != key_raw or decoded.seq != seq:
                            raise ChainError("proof does not match its row")
                    except EntraideError as exc:
                        problems.append(VerifyProblem(PublicKey(key_raw), seq,
                                                      f"fork proof does not verify: {exc}"))
                stored = (await self._fetch("SELECT count(*) FROM entries", (), snap))[0][0]
                if stored != total and not problems:
                    problems.append(VerifyProblem(None, None, f"{stored} entries stored, only "
                                                  f"{total} on the origins' chains"))
        except StorageError as exc:
            problems.append(VerifyProblem(None, None, str(exc)))
        except EntraideError as exc:
            problems.append(VerifyProblem(None, None, f"damaged origins table: {exc}"))
        return VerifyReport(total, len(origins), proofs, tuple(problems))

    async def _verify_origin(self, snap: aiosqlite.Connection, origin_id: int,
                             key: PublicKey) -> tuple[Head | None, VerifyProblem | None, int]:
        """Walk one origin's chain; the next chunk is read while this one is checked."""
        head: Head | None = None
        total = 0
        sql = ("SELECT seq, hash, raw FROM entries WHERE origin_id = ? AND seq > ? "
               "ORDER BY seq LIMIT ?")
        rows = await self._fetch(sql, (origin_id, 0, _VERIFY_CHUNK), snap)
        while rows:
            check = asyncio.ensure_future(asyncio.to_thread(_check_chain, key, rows, head))
            try:
                upcoming = await self._fetch(sql, (origin_id, rows[-1][0], _VERIFY_CHUNK), snap)
            finally:
                head, problem, count = await check
            total += count
            if problem is not None:
                return head, problem, total
            rows = upcoming
        return head, None, total

    # -- export and import

    async def export_entries(self, path: str | os.PathLike[str]) -> int:
        """Write every entry (and fork proof) to ``path``; return the number of entries.

        Format: ``ENTRAIDE-LEDGER\\x01``, then records ``kind (1 byte: E entry, F fork
        proof) || u32 length || bytes``, then ``Z || u32 16 || u64 entries || u64 proofs``.
        Entries come in storage order, so each origin's chain is in order. The file is
        written to a temporary name, fsynced and renamed.
        """
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        out = await asyncio.to_thread(open, tmp, "wb")
        count = proofs = 0
        try:
            await asyncio.to_thread(out.write, _EXPORT_MAGIC)
            async with self._snapshot() as snap:
                after = 0
                while True:
                    rows = await self._fetch(
                        "SELECT entry_no, raw FROM entries WHERE entry_no > ? "
                        "ORDER BY entry_no LIMIT ?", (after, RANGE_CHUNK_ENTRIES), snap)
                    if not rows:
                        break
                    data = b"".join(_RECORD.pack(b"E", len(r[1])) + r[1] for r in rows)
                    await asyncio.to_thread(out.write, data)
                    count += len(rows)
                    after = rows[-1][0]
                for (proof,) in await self._fetch("SELECT proof FROM forks", (), snap):
                    await asyncio.to_thread(out.write, _RECORD.pack(b"F", len(proof)) + proof)
                    proofs += 1
            trailer = _RECORD.pack(b"Z", _TRAILER.size) + _TRAILER.pack(count, proofs)
            await asyncio.to_thread(_finish, out, trailer)
            await asyncio.to_thread(os.replace, tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write the export {target}: {exc}") from exc
        finally:
            out.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
        return count

    async def import_entries(self, path: str | os.PathLike[str], *,
                             batch_size: int = 1000) -> ImportResult:
        """Verify and ingest every entry of an export (see :meth:`export_entries`).

        Each entry is verified from its bytes; what does not verify is counted in
        ``invalid`` and never stored. Valid entries go through :meth:`ingest` (trust,
        chain and fork rules apply). Fork proofs go through :meth:`ingest_fork_proof`.

        Raises:
            StorageError: not an export file, a record length out of bounds (the framing
                is lost), or the file cannot be read.
        """
        source = Path(path)
        try:
            stream = await asyncio.to_thread(open, source, "rb")
        except OSError as exc:
            raise StorageError(f"cannot read the export {source}: {exc}") from exc
        records = invalid = stored = duplicates = refused = forks = 0
        first_invalid: str | None = None
        complete = False
        pending: list[bytes] = []

        async def flush() -> None:
            nonlocal invalid, first_invalid, stored, duplicates, refused, forks
            checked = await asyncio.to_thread(_verify_all, pending)
            pending.clear()
            valid = [e for e in checked if isinstance(e, VerifiedEntry)]
            for err in checked:
                if isinstance(err, str):
                    invalid += 1
                    first_invalid = first_invalid or err
            if valid:
                result = await self.ingest(valid)
                stored += result.stored
                duplicates += result.duplicates
                refused += result.refused + result.dropped
                forks += result.forks

        try:
            if await asyncio.to_thread(stream.read, len(_EXPORT_MAGIC)) != _EXPORT_MAGIC:
                raise StorageError(f"{source} is not an Entraide ledger export")
            entries_seen = proofs_seen = 0
            while True:
                kind, data = await asyncio.to_thread(_read_record, stream)
                if kind is None:
                    break
                records += 1
                if kind == b"E":
                    entries_seen += 1
                    pending.append(data)
                    if len(pending) >= batch_size:
                        await flush()
                elif kind == b"F":
                    proofs_seen += 1
                    if pending:
                        await flush()  # entries stored before the proof, as in the source
                    try:
                        proof = decode_fork_proof(data)
                    except EntraideError as exc:
                        invalid += 1
                        first_invalid = first_invalid or f"fork proof: {exc}"
                        continue
                    forks += int(await self.ingest_fork_proof(proof))
                else:
                    records -= 1
                    counts = _TRAILER.unpack(data)
                    complete = counts == (entries_seen, proofs_seen)
                    break
            if pending:
                await flush()
        except OSError as exc:
            raise StorageError(f"cannot read the export {source}: {exc}") from exc
        finally:
            stream.close()
        return ImportResult(records, invalid, first_invalid, stored, duplicates, refused,
                            forks, complete)


# --- helpers ----------------------------------------------------------------------


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: the caller may have been cancelled

    return done


def _lock_file(path: Path) -> int:
    """Take the ledger's exclusive lock (one process per ledger) and return its fd."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create the ledger lock {path}.lock: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"the ledger {path} is in use by another process") from exc
    return fd


def _prepare_file(path: Path, me: PublicKey, now_ms: int) -> None:
    """WAL mode, schema migrations and the owner check, on a short-lived connection."""
    created = not path.exists()
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the ledger {path}: {exc}") from exc
    try:
        if created:
            os.chmod(path, 0o600)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"the ledger {path} cannot use WAL mode (got {mode})")
        migrate(conn, now_ms=now_ms, software=f"entraide {__version__}")
        row = conn.execute("SELECT value FROM meta WHERE key = 'node_key'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('node_key', ?)", (me.raw,))
        elif row[0] != me.raw:
            raise StorageError(f"the ledger {path} belongs to another node identity")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the ledger {path}: {exc}") from exc
    finally:
        conn.close()


def _check_chain(key: PublicKey, rows: list[Any],
                 head: Head | None) -> tuple[Head | None, VerifyProblem | None, int]:
    """Verify consecutive stored entries of one origin (runs in a worker thread)."""
    count = 0
    for seq, stored_hash, raw in rows:
        if not isinstance(raw, bytes):
            return head, VerifyProblem(key, seq, "entry is not stored as bytes"), count
        try:
            entry = verify_entry(raw)
        except EntraideError as exc:
            return head, VerifyProblem(key, seq, f"entry bytes do not verify: {exc}"), count
        if entry.origin != key:
            return head, VerifyProblem(key, seq, "entry is signed by another origin"), count
        if entry.seq != seq:
            return head, VerifyProblem(key, seq, f"entry says seq {entry.seq}"), count
        if entry.hash != stored_hash:
            return head, VerifyProblem(key, seq, "stored id differs from the entry's hash"), count
        try:
            check_successor(head, entry)
        except ChainError as exc:
            return head, VerifyProblem(key, seq, f"chain broken: {exc}"), count
        head = (entry.seq, entry.hash)
        count += 1
    return head, None, count


def _check_head(key: PublicKey, head: Head | None, head_seq: int,
                head_hash: bytes | None) -> VerifyProblem | None:
    seq, last = (0, None) if head is None else head
    if seq != head_seq:
        return VerifyProblem(key, seq, f"the chain ends at seq {seq} but the recorded head "
                             f"is seq {head_seq}")
    if last != head_hash:
        return VerifyProblem(key, seq, "the last entry is not the recorded head")
    return None


def _verify_all(raws: list[bytes]) -> list[VerifiedEntry | str]:
    out: list[VerifiedEntry | str] = []
    for raw in raws:
        try:
            out.append(verify_entry(raw))
        except EntraideError as exc:
            out.append(f"{type(exc).__name__}: {exc}")
    return out


def _read_record(stream: BinaryIO) -> tuple[bytes | None, bytes]:
    header = stream.read(_RECORD.size)
    if not header:
        return None, b""
    if len(header) != _RECORD.size:
        return None, b""  # truncated: the caller sees no trailer
    kind, length = _RECORD.unpack(header)
    bound = {b"E": MAX_ENTRY_BYTES, b"F": _MAX_PROOF_BYTES, b"Z": _TRAILER.size}.get(kind)
    if bound is None or length > bound or (kind == b"Z" and length != _TRAILER.size):
        raise StorageError(f"damaged export: bad record header {header.hex()}")
    data = stream.read(length)
    if len(data) != length:
        return None, b""
    return kind, data


def _finish(out: BinaryIO, trailer: bytes) -> None:
    out.write(trailer)
    out.flush()
    os.fsync(out.fileno())
