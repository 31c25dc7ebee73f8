"""The node's ledger: every entry of every trusted origin, durable and verifiable.

:class:`Ledger` is the storage layer's public face. Storage stores, the node authors:
this node's own entries arrive already signed (by the node's author) and are stored by
:meth:`Ledger.store_own`; remote entries are stored by ``ingest``
(agent/storage/ingest.py); the file, connections and write transaction are in
agent/storage/core.py; queries are answered by agent/storage/queries.py; verification,
export and import run in agent/storage/maint.py.

Invariants:
- Only ``VerifiedEntry`` objects are stored, each origin's entries in chain order, so
  the stored seqs of an origin are exactly ``1..head_seq`` and each ``prev`` is the hash
  of the entry before.
- Own entries are acknowledged (``store_own`` returns) only after the transaction
  holding them committed with ``synchronous=FULL``: they survive kill -9 and power
  loss. Remote batches commit with ``synchronous=NORMAL`` (agent/storage/ingest.py).
- Reads never wait for a write: they use the read-only connection, or a snapshot
  connection inside one read transaction.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from agent.errors import StorageError
from agent.storage.core import MAX_SUBSCRIBERS, LedgerCore, write_failed
from agent.storage.ingest import LedgerIngest
from agent.storage.maint import export_snapshot, import_file, verify_snapshot
from agent.storage.queries import IndexRecord, Page
from agent.storage.types import (
    MAX_APPEND_BATCH,
    MAX_INGEST_BATCH,
    BodyState,
    BufferLimits,
    DroppedBodies,
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
from protocol.entries import VerifiedEntry, join_entry, verify_entry
from protocol.errors import ChainError, EntraideError, OversizeError
from protocol.keys import PublicKey

__all__ = [
    "MAX_APPEND_BATCH",
    "MAX_INGEST_BATCH",
    "MAX_SUBSCRIBERS",
    "RANGE_CHUNK_BYTES",
    "RANGE_CHUNK_ENTRIES",
    "BodyState",
    "BufferLimits",
    "DroppedBodies",
    "ForkRecord",
    "Gap",
    "Head",
    "ImportResult",
    "IngestResult",
    "Ledger",
    "LedgerCore",
    "LedgerCounts",
    "ObservationEvent",
    "OwnDraft",
    "Page",
    "PreparedObservation",
    "Refusal",
    "Subscription",
    "VerifyProblem",
    "VerifyReport",
]

RANGE_CHUNK_ENTRIES = 256
RANGE_CHUNK_BYTES = 1 << 20

T = TypeVar("T")


class Ledger(LedgerIngest):
    """The node's ledger. Build with :meth:`open`; close with :meth:`close`.

    Args (of :meth:`open`): see :class:`~agent.storage.core.LedgerCore`.
    """

    # -- own entries

    async def store_own(self, built: Sequence[tuple[VerifiedEntry, IndexRecord]]
                        ) -> list[VerifiedEntry]:
        """Store this node's own signed entries in one durable transaction.

        ``built``: entries in chain order with their index records, as the node's
        author signs them. One transaction and one fsync for the
        whole batch; on return every entry is on disk (``synchronous=FULL``); on error
        nothing is stored. Entries signed after a head that is no longer the stored one
        (after entries that never got stored) are refused, not stored with a gap.

        Raises:
            ChainError: they do not follow this node's stored head (nothing stored).
            OversizeError: more than ``MAX_APPEND_BATCH`` entries.
            StorageError: the write failed, the ledger is closed, or this node's own
                log is marked forked.
        """
        self._check_open()
        if len(built) > MAX_APPEND_BATCH:
            raise OversizeError(f"at most {MAX_APPEND_BATCH} entries per append")
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


    # -- replication reads

    async def read_range(self, origin: PublicKey, from_seq: int, to_seq: int, *,
                         max_entries: int = RANGE_CHUNK_ENTRIES,
                         max_bytes: int = RANGE_CHUNK_BYTES) -> AsyncIterator[list[bytes]]:
        """The entries ``from_seq..to_seq`` (inclusive) of ``origin`` in wire form, in
        chunks; an entry whose body was dropped (or never came) goes header-only
        (docs/protocol.md §3, §8).

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
                "SELECT seq, header, body FROM entries WHERE origin_id = ? "
                "AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                (origin_id, seq, to_seq, max_entries))
            if not rows:
                return
            chunk: list[bytes] = []
            size = 0
            for row_seq, header, body in rows:
                raw = join_entry(header, body)
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
        """The stored entry with this id (64 hex), re-verified from its bytes; its
        ``body`` is None when the body was dropped or never came.

        Raises:
            StorageError: the stored bytes no longer verify (the file was altered).
        """
        try:
            key = bytes.fromhex(entry_id)
        except (ValueError, TypeError):
            return None
        rows = await self._fetch("SELECT header, body FROM entries WHERE hash = ?", (key,))
        if not rows:
            return None
        try:
            entry = verify_entry(join_entry(rows[0][0], rows[0][1]))
        except EntraideError as exc:
            raise StorageError(f"stored entry {entry_id} no longer verifies: {exc}") from exc
        if entry.hash != key:
            raise StorageError(f"stored entry {entry_id} does not hash to its id")
        return entry


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


    # -- dropping bodies (retention, erasure)

    async def drop_bodies(self, entry_ids: Sequence[bytes], state: BodyState
                          ) -> DroppedBodies:
        """Drop the bodies of these entries (32-byte ids) and every row derived from them.

        The headers stay: each entry remains a verified member of its origin's chain
        (docs/protocol.md §3) and is served header-only. In one durable transaction
        (``synchronous=FULL``): ``body`` becomes NULL, ``body_state`` becomes ``state``
        and every query-table row of the entry (any table with an ``entry_no`` column
        but ``entries``) is deleted. Unknown ids and entries already dropped are
        skipped. The TAXII index is a separate file: the caller removes its rows with
        :meth:`agent.storage.taxii_index.TaxiiIndex.forget_entries`.

        Returns:
            The ids whose entry lost its body here (or, arrived header-only, took the
            new state) and the derived rows deleted, by table.

        Raises:
            ValueError: ``state`` is not EXPIRED or ERASED.
            StorageError: the write failed (nothing changed) or the ledger is closed.
        """
        state = BodyState(state)
        if state not in (BodyState.EXPIRED, BodyState.ERASED):
            raise ValueError("bodies are dropped as expired or erased")
        self._check_open()
        ids = list(dict.fromkeys(bytes(i) for i in entry_ids))
        if not ids:
            return DroppedBodies()
        return await self._shielded(self._drop_locked(ids, state))

    async def _drop_locked(self, ids: list[bytes], state: BodyState) -> DroppedBodies:
        async with self._write_lock:
            self._check_open()
            db = self._db
            assert db is not None
            dropped: list[tuple[int, bytes]] = []
            counts: dict[str, int] = {}
            try:
                await db.execute("PRAGMA synchronous = FULL")
                try:
                    await db.execute("BEGIN IMMEDIATE")
                    try:
                        for i in range(0, len(ids), 500):
                            part = ids[i:i + 500]
                            dropped += [(r[0], r[1]) for r in await db.execute_fetchall(
                                f"SELECT entry_no, hash FROM entries WHERE hash IN "
                                f"({','.join('?' * len(part))}) "
                                f"AND body_state IN ('present', 'absent')", part)]
                        numbers = [(no,) for no, _hash in dropped]
                        for table in await _derived_tables(db):
                            cursor = await db.executemany(
                                f"DELETE FROM {table} WHERE entry_no = ?", numbers)
                            if cursor.rowcount > 0:
                                counts[table] = cursor.rowcount
                        await db.executemany(
                            "UPDATE entries SET body = NULL, body_state = ?, readable = 0 "
                            "WHERE entry_no = ?", [(state.value, no) for (no,) in numbers])
                        await db.execute("COMMIT")
                    except BaseException:
                        if db.in_transaction:
                            await db.execute("ROLLBACK")
                        raise
                finally:
                    await db.execute("PRAGMA synchronous = NORMAL")
            except (sqlite3.Error, OSError) as exc:
                raise write_failed(exc) from exc
            self._checkpointer.wrote(len(dropped))
            return DroppedBodies(tuple(h for _no, h in dropped), counts)

    async def scrub(self, attempts: int = 50, pause: float = 0.02) -> bool:
        """Checkpoint the WAL into the ledger file and truncate it to zero bytes, so no
        older version of a page (a dropped body, a deleted row) is left in the WAL.

        Deleted content is zeroed in the file itself (``secure_delete``, set on the
        write connection). A reader in the middle of a transaction holds the checkpoint
        back: it is retried ``attempts`` times, ``pause`` seconds apart.

        Returns:
            True when the WAL was checkpointed whole and truncated.

        Raises:
            StorageError: the ledger is closed or the checkpoint failed.
        """
        for _ in range(max(1, attempts)):
            async with self._checkpointer.exclusive(), self._write_lock:
                self._check_open()
                db = self._db
                assert db is not None
                try:
                    rows = list(await db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
                except sqlite3.Error as exc:
                    raise StorageError(f"ledger checkpoint failed: {exc}") from exc
            if rows and rows[0][0] == 0:
                return True
            await asyncio.sleep(pause)
        return False

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


async def _derived_tables(db: Any) -> list[str]:
    """The query tables: every table but ``entries`` with an ``entry_no`` column (so a
    table added by a later migration is covered without a change here)."""
    names = [r[0] for r in await db.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'entries' "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    tables = []
    for name in names:
        columns = await db.execute_fetchall(f"PRAGMA table_info('{name}')")
        if any(c[1] == "entry_no" for c in columns):
            tables.append(name)
    return tables
