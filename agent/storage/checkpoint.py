"""The ledger's WAL checkpoints, run on a connection of their own, off the write path.

SQLite's automatic checkpoint runs inside the ``COMMIT`` that crosses its threshold
(1,000 pages by default): that transaction copies the whole WAL back into the ledger
file (and syncs it) before it returns. An entry's id is a content hash, so nearly
every insert into its index dirties another page, and at the mixed load's rate the
store stage's transactions spent more than half of their time in ``COMMIT``, most of
it in those inline checkpoints, waiting on the disk (``python -m bench.storecost``;
docs/benchmarks.md, "Checkpoints off the write path").

Here the writer connection's automatic checkpoint is off and :class:`Checkpointer`
runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection (its own thread) once
``every`` units of writing have been committed since the last one started: the writer
never waits for it (a passive checkpoint takes no lock a writer needs), and a larger
interval copies a page rewritten by several transactions once, not once each.

Invariants:
- One checkpoint at a time; none while :meth:`exclusive` is held (the ledger's
  ``scrub``, a ``TRUNCATE`` checkpoint) and none after :meth:`close` (the ledger
  closes this first, then truncates the WAL on its writer).
- A failed checkpoint is logged and retried at the next threshold: the WAL keeps
  every committed page until then, so nothing is lost, it only grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

__all__ = ["CHECKPOINT_EVERY", "Checkpointer"]

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 4000
"""Units of writing between checkpoints: an entry written counts one, a transaction
eight more (its own pages: heads, table ends). Roughly pages of WAL, so ~16 MB of it
between two checkpoints. A longer interval copies a page rewritten by several
transactions once: with SQLite's inline checkpoint at 1,000 / 4,000 / 10,000 pages,
``bench.storecost`` gave ``COMMIT`` 20.9 / 12.3 / 8.4 us per entry; past ~4,000 a
crash leaves more WAL to replay at the next start."""
TRANSACTION_WEIGHT = 8


class Checkpointer:
    """Passive WAL checkpoints of the ledger at ``path``, in the background.

    Args:
        path: the ledger file.
        every: units of writing between two checkpoints (see :data:`CHECKPOINT_EVERY`).
    """

    def __init__(self, path: Path, every: int = CHECKPOINT_EVERY) -> None:
        self._path = path
        self._every = max(1, every)
        self._db: aiosqlite.Connection | None = None
        self._written = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.checkpoints = 0  # completed, for diagnostics and tests

    async def open(self) -> None:
        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        await self._db.execute("PRAGMA busy_timeout = 5000")

    def wrote(self, entries: int) -> None:
        """A transaction holding ``entries`` entries committed: start a checkpoint
        once enough was written since the last one (never two at once)."""
        self._written += entries + TRANSACTION_WEIGHT
        if self._written < self._every or self._db is None:
            return
        if self._task is not None and not self._task.done():
            return
        self._written = 0
        self._task = asyncio.create_task(self._checkpoint(), name="entraide-ledger-checkpoint")

    async def _checkpoint(self) -> None:
        async with self._lock:
            if self._db is None:
                return
            try:
                await self._db.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, ValueError) as exc:
                log.warning("ledger checkpoint failed (retried later): %s", exc)
                return
            self.checkpoints += 1

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """No background checkpoint runs inside this block (one running is awaited)."""
        async with self._lock:
            yield

    async def close(self) -> None:
        """Let a started checkpoint end, then close the connection. Idempotent."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.close()
