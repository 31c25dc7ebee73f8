"""One worker process of this node, for CPU work that threads cannot spread over cores
(the GIL): the batch worker (agent/api/batch.py) and the TAXII judge (agent/taxii/post.py).

Invariants:
- The process is spawned (the daemon has threads) on first use, and takes work only
  once ``warm_up`` ran in it (its imports done); until then callers use their
  in-process path.
- Once it fails to start or fails a call it is not used again: callers fall back to
  their in-process path for good, so a broken worker costs one log line, not errors.
- It ends when the node closes it or, if the node is killed with -9 (nothing closes
  its pipe then), when it sees that its parent is gone (:func:`watch_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from agent.workers.gcsettings import settle_heap

__all__ = ["SpawnedWorker", "watch_parent"]

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5
"""How often a worker checks that its node is still its parent."""


def watch_parent(parent: int) -> None:
    """In a worker process: end it as soon as ``parent`` (the node's pid) is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start(warm_up: Callable[[], None]) -> None:
    """In the new process: warm up, then settle the heap (agent/workers/gcsettings.py)."""
    warm_up()
    settle_heap()


class SpawnedWorker:
    """One worker process, started on first use; close with :meth:`close`.

    Args:
        name: what it is, for the log ("observation batch worker").
        fallback: what callers do without it, for the log ("validating in-process").
        warm_up: a module-level function run first in the process (imports, caches).
        enabled: False: never started, never usable.
    """

    def __init__(self, name: str, fallback: str, warm_up: Callable[[], None], *,
                 enabled: bool = True) -> None:
        self._name = name
        self._fallback = fallback
        self._warm_up = warm_up
        self.pool: ProcessPoolExecutor | None = None
        """The one-process pool, once started (tests reach its processes)."""
        self._ready: Future[None] | None = None
        self.broken = not enabled
        """True once it is not to be used (disabled, failed, or closed)."""

    def usable(self) -> bool:
        """True when the process takes work now; the first call starts it (False)."""
        if self.broken:
            return False
        if self.pool is None:
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=watch_parent, initargs=(os.getpid(),))
            self._ready = self.pool.submit(_start, self._warm_up)
            return False
        if self._ready is None or not self._ready.done():
            return False
        if self._ready.exception() is not None:
            log.warning("%s did not start (%s); %s", self._name, self._ready.exception(),
                        self._fallback)
            self.broken = True
            return False
        return True

    @property
    def running(self) -> bool:
        """True once the process takes work (and until it failed or was closed)."""
        return (not self.broken and self._ready is not None and self._ready.done()
                and self._ready.exception() is None)

    async def ready(self) -> bool:
        """Start the process if need be and wait until it takes work (False: it cannot)."""
        self.usable()
        if self._ready is not None:
            # A failed start is logged, and the worker marked broken, by usable().
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._ready)
        return self.usable()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the process (only after :meth:`usable` said True).

        Raises:
            Exception: whatever the call raised, or the pool's error if the process is
                gone; the worker is then broken and not used again.
        """
        try:
            assert self.pool is not None
            return await asyncio.wrap_future(self.pool.submit(fn, *args))
        except Exception as exc:
            if not self.broken:
                log.warning("%s failed (%s); %s", self._name, exc, self._fallback)
                self.broken = True
            raise

    async def close(self) -> None:
        """Stop the process, if one was started. Idempotent."""
        pool, self.pool = self.pool, None
        self.broken = True
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
