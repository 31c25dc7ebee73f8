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

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from agent.errors import StorageError
from agent.storage.core import MAX_SUBSCRIBERS, LedgerCore
from agent.storage.ingest import LedgerIngest
from agent.storage.maint import export_snapshot, import_file, verify_snapshot
from agent.storage.queries import IndexRecord, Page
from agent.storage.types import (
    MAX_APPEND_BATCH,
    MAX_INGEST_BATCH,
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
from protocol.entries import VerifiedEntry, verify_entry
from protocol.errors import ChainError, EntraideError, OversizeError
from protocol.keys import PublicKey

__all__ = [
    "MAX_APPEND_BATCH",
    "MAX_INGEST_BATCH",
    "MAX_SUBSCRIBERS",
    "RANGE_CHUNK_BYTES",
    "RANGE_CHUNK_ENTRIES",
    "BufferLimits",
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
