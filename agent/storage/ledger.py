"""The node's ledger: every entry of every trusted origin, durable and verifiable.

One SQLite database in WAL mode (schema in agent/storage/schema.py, durability argument in
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
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from agent import __version__
from agent.errors import StorageError
from agent.jsoncodec import loads
from agent.storage.batch import COUNTERS, Batch, OriginState
from agent.storage.buffer import AheadBuffer
from agent.storage.maint import export_snapshot, import_file, verify_snapshot
from agent.storage.queries import (
    IndexRecord,
    Page,
    QueryReader,
    build_record,
    encode_cursor,
    observation_dict,
)
from agent.storage.schema import lock_ledger, prepare_file
from agent.storage.types import (
    BufferLimits,
    ForkRecord,
    Gap,
    Head,
    ImportResult,
    IngestResult,
    LedgerCounts,
    ObservationEvent,
    OwnDraft,
    PreparedObservation,
    Refusal,
    Subscription,
    VerifyProblem,
    VerifyReport,
)
from protocol.entries import (
    TLP,
    ForkProof,
    VerifiedEntry,
    check_successor,
    detect_fork,
    sign_entry,
    verify_entry,
)
from protocol.envelope import open_envelope, seal_envelope
from protocol.errors import ChainError, EncodingError, EntraideError, OversizeError
from protocol.keys import Identity, PublicKey
from protocol.payloads import (
    Payload,
    decode_payload,
    decode_payload_with_fields,
    encode_payload_with_fields,
)

__all__ = [
    "MAX_APPEND_BATCH",
    "MAX_INGEST_BATCH",
    "BufferLimits",
    "ForkRecord",
    "Gap",
    "Head",
    "ImportResult",
    "IngestResult",
    "Ledger",
    "LedgerCounts",
    "ObservationEvent",
    "OwnDraft",
    "Page",
    "Refusal",
    "Subscription",
    "VerifyProblem",
    "VerifyReport",
]

MAX_APPEND_BATCH = 10_000
MAX_INGEST_BATCH = 10_000
RANGE_CHUNK_ENTRIES = 256
_SIGN_CHUNK = 128  # own entries signed between two turns of the event loop
RANGE_CHUNK_BYTES = 1 << 20
MAX_SUBSCRIBERS = 256
_MAX_REPORTED = 64  # refusals and gaps listed in one IngestResult
_SQL_PARAMS = 500  # per IN (...) list, well under SQLite's variable limit

T = TypeVar("T")


# --- internal state ---------------------------------------------------------------


_UNDECODED = object()  # an IndexRecord slot not computed yet (None means unreadable)


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

    def result(self, batch: Batch | None) -> IngestResult:
        new = tuple(batch.new_entries) if batch else ()
        return IngestResult(len(new), self.duplicates, self.buffered, self.dropped,
                            self.refused, len(self.proofs), self.unreadable, new,
                            tuple(self.proofs), tuple(self.gaps), tuple(self.refusals))


# --- the ledger -------------------------------------------------------------------


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
        self._lock_fd = lock_fd
        self._db: aiosqlite.Connection | None = None
        self._rdb: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._origins: dict[bytes, OriginState] = {}
        self._origin_keys: dict[int, PublicKey] = {}
        self._fork_seqs: set[tuple[bytes, int]] = set()
        self._next_no: dict[str, int] = {}
        self._ahead = AheadBuffer(limits)
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
        lock_fd = lock_ledger(path)
        ledger = cls(path, identity, is_trusted_origin, clock, randbytes,
                     buffer_limits or BufferLimits(), lock_fd)
        try:
            await asyncio.to_thread(prepare_file, path, owner=identity.public_key.raw,
                                    now_ms=int(clock() * 1000),
                                    software=f"entraide {__version__}")
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
                self._origins[key.raw] = OriginState(row[0], key, row[2], row[3],
                                                     bool(row[4]))
                self._origin_keys[row[0]] = key
            for row in await db.execute_fetchall(
                    "SELECT g.key, f.seq FROM forks f JOIN origins g USING (origin_id)"):
                self._fork_seqs.add((row[0], row[1]))
            for name, table, column in COUNTERS:
                rows = list(await db.execute_fetchall(f"SELECT max({column}) FROM {table}"))
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
        if self._reader is not None:
            self._reader.close()  # its own lookup connection (agent/storage/queries.py)
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

    async def _write(self, batch: Batch, *, full: bool) -> None:
        """Write ``batch`` in one transaction; FULL makes its commit durable at return."""
        db = self._db
        assert db is not None
        batch.settle()
        try:
            if full:
                await db.execute("PRAGMA synchronous = FULL")
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    await batch.write(db)
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

    def _install(self, batch: Batch) -> None:
        """After a commit: make the in-memory state match the database, publish events."""
        for key, state in batch.origins.items():
            self._origins[key] = state
            self._origin_keys[state.origin_id] = state.key
        for origin_id, seq, _proof, _ms in batch.forks:
            self._fork_seqs.add((self._origin_keys[origin_id].raw, seq))
        self._next_no.update(batch.next_no)
        if self._subscribers:
            for obs_no, entry, record in batch.events:
                fields = record.fields if record.fields is not None else loads(record.doc)
                event = ObservationEvent(
                    encode_cursor("observation", obs_no),
                    observation_dict(entry.id, entry.origin.text, entry.seq, entry.ts,
                                     entry.tlp.value, False, fields))
                for sub in list(self._subscribers):
                    sub.offer(event)

    def _batch(self) -> Batch:
        return Batch(self._next_no, self._origins)

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
            state = self._origins.get(self._me.raw)
            if state is not None and state.forked:
                raise StorageError("this node's own log is marked forked; an admin must "
                                   "clear it before it can append")
            built = await self.sign_own(drafts, None if state is None else state.head)
            return await self._store_own_locked(built)

    async def sign_own(self, drafts: Sequence[OwnDraft], head: Head | None
                       ) -> list[tuple[VerifiedEntry, IndexRecord]]:
        """Sign ``drafts`` as this node's entries following ``head``; store nothing.

        For a writer that signs its next entries while the previous ones commit
        (agent/node/node.py's group committer): :meth:`store_own` takes them only if
        ``head`` is then the stored head, so entries signed after entries that never
        got stored are refused, not stored with a gap. Entries signed and never stored
        are never seen by anyone: signing another entry at the same seq later is no
        fork.

        Raises:
            PayloadError, EncodingError, OversizeError: as :meth:`append_own`.
        """
        # Signed on the loop's thread, a chunk at a time: in a worker thread every
        # signature handed the GIL back and forth with the loop (each hand-over can
        # wait out the 5 ms switch interval while the loop validates the next
        # request), which cost more than the signing itself.
        drafts = list(drafts)
        if len(drafts) > MAX_APPEND_BATCH:
            raise OversizeError(f"at most {MAX_APPEND_BATCH} entries per append")
        built: list[tuple[VerifiedEntry, IndexRecord]] = []
        now_ms = self._now_ms()
        for at in range(0, len(drafts), _SIGN_CHUNK):
            if at:
                await asyncio.sleep(0)  # let the loop serve others between chunks
            part = self._build_own(drafts[at:at + _SIGN_CHUNK], head, now_ms)
            head = (part[-1][0].seq, part[-1][0].hash)
            built += part
        return built

    async def store_own(self, built: Sequence[tuple[VerifiedEntry, IndexRecord]]
                        ) -> list[VerifiedEntry]:
        """Store entries from :meth:`sign_own` in one durable transaction (as
        :meth:`append_own`: on return every entry is on disk; on error nothing is).

        Raises:
            ChainError: they do not follow this node's stored head (nothing stored).
            StorageError: the write failed, the ledger is closed, or this node's own
                log is marked forked.
        """
        self._check_open()
        if not built:
            return []
        return await self._shielded(self._store_locked(list(built)))

    async def _store_locked(self, built: list[tuple[VerifiedEntry, IndexRecord]]
                            ) -> list[VerifiedEntry]:
        async with self._write_lock:
            return await self._store_own_locked(built)

    async def _store_own_locked(self, built: list[tuple[VerifiedEntry, IndexRecord]]
                                ) -> list[VerifiedEntry]:
        self._check_open()
        batch = self._batch()
        state = batch.origin(self._me)
        if state.forked:
            raise StorageError("this node's own log is marked forked; an admin must "
                               "clear it before it can append")
        first = built[0][0]
        if first.origin != self._me or (first.seq, first.prev) != (state.head_seq + 1,
                                                                   state.head_hash):
            raise ChainError(f"own entries signed after seq {first.seq - 1}, but the "
                             f"stored head is {state.head_seq}")
        for entry, record in built:
            batch.add_entry(state, entry, record)
        await self._write(batch, full=True)
        return batch.new_entries

    def _build_own(self, drafts: list[OwnDraft], head: Head | None,
                   now_ms: int) -> list[tuple[VerifiedEntry, IndexRecord]]:
        """Sign the drafts as a chain after ``head``."""
        out = []
        seq, prev = (0, None) if head is None else head
        for draft in drafts:
            tlp = draft.tlp if type(draft.tlp) is TLP else TLP(draft.tlp)
            prepared: PreparedObservation | None = None
            model: Payload | None = None
            dumped = None
            if isinstance(draft.payload, PreparedObservation):
                prepared = draft.payload
                data = prepared.data
            elif isinstance(draft.payload, bytes | bytearray | memoryview):
                data = bytes(draft.payload)
                model = decode_payload(data)
            else:
                model = draft.payload
                data, dumped = encode_payload_with_fields(model)
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
            if prepared is not None:
                out.append((entry, prepared.record(entry.ts)))
            else:
                assert model is not None
                out.append((entry, build_record(model, entry.ts, dumped)))
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
            payload, dumped = decode_payload_with_fields(data)
            return build_record(payload, entry.ts, dumped)
        except EntraideError:
            return None

    def _records_for(self, entries: list[VerifiedEntry]) -> dict[bytes, IndexRecord | None]:
        return {e.hash: self._record_of(e) for e in entries}

    async def ingest(self, entries: Sequence[VerifiedEntry], *,
                     records: Mapping[bytes, IndexRecord | None] | None = None
                     ) -> IngestResult:
        """Store remote entries: in chain order per origin, idempotently, in one transaction.

        Per origin: entries already stored are duplicates; the next one is checked with
        ``check_successor`` and stored; entries ahead of a gap wait in the bounded buffer
        (the result's ``gaps`` say what to WANT) and are stored when the gap fills. An
        origin that is not trusted (now), or is quarantined after a fork, is refused. Two
        different entries at one (origin, seq) make a fork: the proof is stored, the
        origin is quarantined and its further entries refused until :meth:`clear_fork`.

        ``records``: index records already built from some of these entries' payloads,
        by entry hash (None: the payload does not decode), as the replicator's verify
        worker returns them (agent/workers/verify.py); the others are decoded here.

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
        known = records or {}
        likely_new = [e for e in entries if e.seq > self._cached_head_seq(e.origin)
                      and e.hash not in known]
        if len(likely_new) > 8:
            decoded = await asyncio.to_thread(self._records_for, likely_new)
        else:
            decoded = self._records_for(likely_new)
        if known:
            decoded.update(known)
        return await self._shielded(self._ingest_locked(entries, decoded))

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
            batch, tally = self._batch(), _Tally()
            for group in groups.values():
                ordered = sorted(group.values(), key=lambda e: e.seq)
                await self._ingest_origin(ordered, records, batch, tally)
            batch.settle()
            if not batch.empty():
                await self._write(batch, full=bool(batch.forks))
            for group in groups.values():
                key = next(iter(group.values())).origin
                tally.gaps.extend(self._ahead.gaps(key, self._cached_head_seq(key),
                                                   _MAX_REPORTED - len(tally.gaps)))
            return tally.result(batch)

    async def _ingest_origin(self, group: list[VerifiedEntry],
                             records: dict[bytes, IndexRecord | None],
                             batch: Batch, tally: _Tally) -> None:
        key = group[0].origin
        if key != self._me and not self._is_trusted(key):
            tally.refuse(group, "origin is not in the trust list")
            self._ahead.drop(key.raw)
            return
        current = self._origins.get(key.raw)
        if current is not None and current.forked:
            tally.refuse(group, "origin is quarantined after a fork")
            return
        state = batch.origin(key)
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
            waiting = self._ahead.get(key.raw, entry.seq)
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
                    # Held without its decoded payload (decoded again on release), so
                    # the buffer's memory is bounded by the entries' bytes alone.
                    kept, dropped = self._ahead.hold(entry, _UNDECODED)
                    tally.buffered += kept
                    tally.dropped += dropped
                continue
            if waiting is not None:
                self._ahead.pop(key.raw, entry.seq)
            record = records.get(entry.hash, _UNDECODED)
            if not self._extend(batch, state, entry, record, tally):
                continue
            fresh[entry.seq] = entry
            # Release what waited behind the gap that just closed.
            while (nxt := self._ahead.get(key.raw, state.head_seq + 1)) is not None:
                self._ahead.pop(key.raw, nxt.entry.seq)
                if self._extend(batch, state, nxt.entry, nxt.record, tally):
                    fresh[nxt.entry.seq] = nxt.entry

    def _extend(self, batch: Batch, state: OriginState, entry: VerifiedEntry, record: object,
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
        batch.add_entry(state, entry, record)
        return True

    def _fork(self, batch: Batch, state: OriginState, a: VerifiedEntry, b: VerifiedEntry,
              tally: _Tally) -> bool:
        """Record a fork; False when an admin already cleared a fork at that seq."""
        if (state.key.raw, a.seq) in self._fork_seqs:
            return False
        proof = detect_fork(a, b)
        assert proof is not None
        batch.add_fork(state, proof, self._now_ms())
        tally.proofs.append(proof)
        self._ahead.drop(state.key.raw)
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
            rows = list(await self._db.execute_fetchall(
                "SELECT raw FROM entries WHERE origin_id = ? AND seq = ?", (origin_id, seq)))
            return verify_entry(rows[0][0])
        except (sqlite3.Error, IndexError, EntraideError) as exc:
            raise StorageError(f"ledger damaged at origin #{origin_id} seq {seq} "
                               f"(run verify): {exc}") from exc

    # -- the ahead-of-gap buffer

    def drop_held(self, origin: PublicKey) -> int:
        """Forget the entries of ``origin`` waiting ahead of a gap (e.g. on its removal)."""
        return self._ahead.drop(origin.raw)

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
            batch = self._batch()
            batch.add_fork(batch.origin(proof.origin), proof, self._now_ms())
            self._ahead.drop(proof.origin.raw)
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
            batch = self._batch()
            state = batch.origin(origin)
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
        max_entries = max(1, min(max_entries, 4096))
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

    # -- queries (agent/storage/queries.py)

    async def list_observations(self, **filters: Any) -> Page:
        """See :meth:`agent.storage.queries.QueryReader.list_observations`."""
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
        """See :meth:`agent.storage.queries.QueryReader.indicator`."""
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

        ``maxsize`` is clamped to 1..65536 (a queue of 0 would be unbounded).

        Raises:
            StorageError: too many subscribers, or the ledger is closed.
        """
        self._check_open()
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise StorageError(f"at most {MAX_SUBSCRIBERS} stream subscribers")
        sub = Subscription(max(1, min(maxsize, 65536)), self._subscribers.discard)
        self._subscribers.add(sub)
        return sub

    def counts(self) -> LedgerCounts:
        """Entry and origin counts from the heads (seqs are gap-free), without a scan."""
        with_entries = [s for s in self._origins.values() if s.head_seq > 0]
        return LedgerCounts(
            entries=sum(s.head_seq for s in with_entries),
            origins=len(with_entries),
            forked_origins=sum(1 for s in self._origins.values() if s.forked),
            held_ahead_of_gaps=self._ahead.total,
        )

    # -- verification, export and import (agent/storage/maint.py)

    async def verify(self) -> VerifyReport:
        """Re-check every stored entry from its bytes: signature, ids, seqs, chain, heads.

        Runs on a snapshot, so it is consistent while writes go on. Reports, per origin,
        the first broken entry (origin, seq, what); fork proofs are re-verified too.
        """
        try:
            async with self._snapshot() as snap:
                return await verify_snapshot(snap)
        except StorageError as exc:
            return VerifyReport(0, 0, 0, (VerifyProblem(None, None, str(exc)),))

    async def export_entries(self, path: str | os.PathLike[str]) -> int:
        """Write every entry and fork proof to ``path`` (format in agent/storage/maint.py);
        return the number of entries.

        Raises:
            StorageError: the file cannot be written or the database read failed.
        """
        async with self._snapshot() as snap:
            return await export_snapshot(snap, path)

    async def import_entries(self, path: str | os.PathLike[str], *,
                             batch_size: int = 1000) -> ImportResult:
        """Verify every entry of an export and ingest it (trust, chain and fork rules apply).

        What does not verify is counted in ``invalid`` and never stored.

        Raises:
            StorageError: not an export, damaged framing, or the file cannot be read.
        """
        self._check_open()
        return await import_file(path, self.ingest, self.ingest_fork_proof,
                                 batch_size=min(batch_size, MAX_INGEST_BATCH))


# --- helpers ----------------------------------------------------------------------


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: the caller may have been cancelled

    return done
