"""The ledger's core: its file, connections, in-memory heads and write transaction.

One SQLite database in WAL mode (schema in agent/storage/schema.py; which commits are
durable, and why, in agent/storage/ledger.py and agent/storage/ingest.py). One *writer*
connection, used only under ``_write_lock``, and one read-only *reader* connection for
queries, replication reads and verification, so readers never wait for a write
transaction. :class:`LedgerCore` holds them and the
state every path shares; the ingest path (agent/storage/ingest.py) and the public
facade (agent/storage/ledger.py) build on it.

Invariants:
- The in-memory heads and row counters change only after a commit succeeded, and only
  under ``_write_lock``; a failed write leaves them, and the database, as they were.
- A write, once started, runs to its end even if the caller is cancelled (shielded
  task), so the database and the in-memory state cannot part ways.
- Subscribers hear of an observation only after the transaction holding it committed.
- No write transaction runs a WAL checkpoint: a connection of their own does
  (agent/storage/checkpoint.py); the WAL is truncated at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar, cast

import aiosqlite

from agent import __version__
from agent.errors import StorageError, StorageFullError
from agent.jsoncodec import loads
from agent.storage.batch import COUNTERS, Batch, OriginState
from agent.storage.buffer import AheadBuffer
from agent.storage.checkpoint import Checkpointer
from agent.storage.queries import QueryReader, encode_cursor, observation_dict
from agent.storage.schema import lock_ledger, prepare_file
from agent.storage.types import (
    BufferLimits,
    Head,
    LedgerCounts,
    ObservationEvent,
    Subscription,
)
from protocol.errors import EntraideError
from protocol.keys import Identity, PublicKey

__all__ = ["MAX_SUBSCRIBERS", "LedgerCore", "write_failed"]

MAX_SUBSCRIBERS = 256

T = TypeVar("T")

log = logging.getLogger(__name__)

FULL_MESSAGE = StorageFullError.MESSAGE


def write_failed(exc: BaseException, what: str = "ledger write failed") -> StorageError:
    """The error a failed write raises: :class:`StorageFullError` when the disk is full
    (``SQLITE_FULL``, or ``ENOSPC`` anywhere in the chain of causes: a ROLLBACK that
    fails after it hides the first error), else :class:`StorageError` with ``what``."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "sqlite_errorcode", None)
        if (isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL) or \
                (isinstance(seen, OSError) and seen.errno == errno.ENOSPC):
            return StorageFullError(FULL_MESSAGE)
        seen = seen.__cause__ or seen.__context__
    return StorageError(f"{what}: {exc}")


class LedgerCore:
    """The ledger's file, connections, in-memory heads and write transaction.

    The base of :class:`~agent.storage.ledger.Ledger` (use that); build with
    :meth:`open`, close with :meth:`close`.

    Args (of :meth:`open`):
        identity: this node. Its public key names its own origin (always trusted); its
            secret key only opens envelopes sealed to this node, so their payloads can
            be indexed. The ledger signs nothing: the node's author does.
        is_trusted_origin: the live trust list; consulted on every ingest.
        trusted_until: the last trusted seq of an origin's chain (None: no limit), for
            a key retired by a rotation or declared compromised (agent/node/keys.py);
            later entries are refused on ingest. Consulted on every ingest.
        clock: seconds since the epoch (``time.time``); fork and clear times carry it.
        buffer_limits: caps on entries held ahead of a gap.
    """

    def __init__(self, path: Path, identity: Identity,
                 is_trusted_origin: Callable[[PublicKey], bool], clock: Callable[[], float],
                 limits: BufferLimits, lock_fd: int,
                 trusted_until: Callable[[PublicKey], int | None] | None = None) -> None:
        self._path = path
        self._trusted_until = trusted_until
        self._identity = identity
        self._me = identity.public_key
        self._is_trusted = is_trusted_origin
        self._clock = clock
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
        self._commit_listeners: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._reader: QueryReader | None = None
        # WAL checkpoints off the write path (agent/storage/checkpoint.py)
        self._checkpointer = Checkpointer(path)

    # -- lifecycle

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        identity: Identity,
        is_trusted_origin: Callable[[PublicKey], bool],
        clock: Callable[[], float] = time.time,
        buffer_limits: BufferLimits | None = None,
        trusted_until: Callable[[PublicKey], int | None] | None = None,
    ) -> Self:
        """Open (or create) the ledger at ``path`` and bring its schema up to date.

        Raises:
            StorageError: the file is in use by another process, is not a ledger, was
                written by a newer Entraide, belongs to another node's identity, or
                cannot be read.
        """
        path = Path(path)
        lock_fd = lock_ledger(path)
        ledger = cls(path, identity, is_trusted_origin, clock,
                     buffer_limits or BufferLimits(), lock_fd, trusted_until)
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
            # secure_delete: a dropped body's bytes (erasure, retention) are zeroed in
            # the pages and freelist, not merely unlinked (docs/privacy.md, "Erasure").
            # wal_autocheckpoint = 0: the checkpointer's connection does it, so that no
            # COMMIT waits for one (agent/storage/checkpoint.py).
            for pragma in ("foreign_keys = ON", "synchronous = NORMAL", "busy_timeout = 5000",
                           "cache_size = -16384", "temp_store = MEMORY", "secure_delete = ON",
                           "wal_autocheckpoint = 0"):
                await self._db.execute(f"PRAGMA {pragma}")
            await self._checkpointer.open()
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
        await self._checkpointer.close()
        for conn in (self._rdb, self._db):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    if conn is self._db:
                        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    await conn.close()
        os.close(self._lock_fd)

    async def __aenter__(self) -> Self:
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
        """Write ``batch`` in one transaction; FULL makes its commit durable at return.

        The whole transaction (BEGIN, every insert, COMMIT or ROLLBACK) is one call on
        the writer connection's thread (:func:`_commit`): the event loop hands it over
        once and is free meanwhile, instead of one round trip per statement.
        """
        db = self._db
        assert db is not None
        batch.settle()
        try:
            # aiosqlite runs its calls in order on the connection's one thread; its
            # ``_execute`` is how its own methods get there (no public equivalent).
            on_thread = cast(Callable[..., Awaitable[None]], db._execute)
            await on_thread(_commit, db._conn, batch, full)
        except (sqlite3.Error, OSError) as exc:
            raise write_failed(exc) from exc  # a full disk is StorageFullError (507)
        self._install(batch)
        self._checkpointer.wrote(len(batch.entries))

    def _install(self, batch: Batch) -> None:
        """After a commit: make the in-memory state match the database, publish events."""
        for key, state in batch.origins.items():
            self._origins[key] = state
            self._origin_keys[state.origin_id] = state.key
        for origin_id, seq, _proof, _ms in batch.forks:
            self._fork_seqs.add((self._origin_keys[origin_id].raw, seq))
        self._next_no.update(batch.next_no)
        if self._subscribers:
            committed = time.monotonic()
            for obs_no, entry, record in batch.events:
                fields = record.fields if record.fields is not None else loads(record.doc)
                event = ObservationEvent(
                    encode_cursor("observation", obs_no),
                    observation_dict(entry.id, entry.origin.text, entry.seq, entry.ts,
                                     entry.tlp.value, False, fields), committed)
                for sub in list(self._subscribers):
                    sub.offer(event)
        for listener in list(self._commit_listeners):
            try:
                listener()
            except Exception:
                # The commit is durable; a listener's bug must not fail it.
                log.exception("a ledger commit listener failed")

    def _batch(self) -> Batch:
        return Batch(self._next_no, self._origins)


    def is_forked(self, origin: PublicKey) -> bool:
        state = self._origins.get(origin.raw)
        return state is not None and state.forked


    # -- heads

    def version_vector(self) -> dict[PublicKey, Head]:
        """origin → (seq, hash) of its last stored entry, for every origin with entries."""
        return {s.key: (s.head_seq, s.head_hash) for s in self._origins.values()
                if s.head_hash is not None}


    def head(self, origin: PublicKey) -> Head | None:
        state = self._origins.get(origin.raw)
        return None if state is None else state.head


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

    def on_commit(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (synchronously, in the event loop) after each commit of
        entries, own or received, once they are readable; returns what removes it.
        The watchers of derived tables (aid threads, erasures) wake on it instead of
        polling."""
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

    def counts(self) -> LedgerCounts:
        """Entry and origin counts from the heads (seqs are gap-free), without a scan."""
        with_entries = [s for s in self._origins.values() if s.head_seq > 0]
        return LedgerCounts(
            entries=sum(s.head_seq for s in with_entries),
            origins=len(with_entries),
            forked_origins=sum(1 for s in self._origins.values() if s.forked),
            held_ahead_of_gaps=self._ahead.total,
        )


# --- helpers ----------------------------------------------------------------------


def _commit(conn: sqlite3.Connection, batch: Batch, full: bool) -> None:
    """One write transaction, on the writer connection's thread: all of ``batch`` or,
    on any error, nothing (rolled back). ``full``: this commit is durable at return
    (``synchronous=FULL``); the connection goes back to NORMAL after it."""
    if full:
        conn.execute("PRAGMA synchronous = FULL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            batch.write(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        if full:
            conn.execute("PRAGMA synchronous = NORMAL")


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: the caller may have been cancelled

    return done

