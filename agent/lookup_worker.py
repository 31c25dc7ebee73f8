"""Indicator lookups on the second core: a worker process that answers them whole.

A lookup is SQLite reading a few random pages of a large file, then building and
encoding the answer: ~100 us that the event loop would otherwise spend while 31 other
clients wait (docs/benchmarks.md, "Lookup"). The node checks the request, its token
and the indicator's syntax, then hands the canonical (type, value) to this worker,
which reads the ledger on its own read-only connection and replies with the answer's
JSON bytes, exactly what :meth:`agent.node.Node.indicator` would have encoded. A
lookup that misses the page cache now waits in the worker, not in the loop that also
runs replication and submits.

Invariants:
- The worker only reads: its connection is ``query_only``; it holds no key. It sees
  what the node committed (WAL): an acknowledged submit is visible to the next lookup.
- Origin names come from the node's trust list: the node sends the table before the
  first lookup and again whenever it changed, on the same ordered pipe.
- Anything unusual falls back to the in-process path, which gives the documented
  answer or error: the worker not started yet, gone, slow, or answering something
  other than bytes (agent/pipe_worker.py).

Requests: ``["names", {key text: name}]`` (reply None) and ``["indicator", type,
value]`` (reply: the answer's JSON bytes, or ``["error", text]`` when SQLite failed).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

from agent.gcsettings import settle_heap
from agent.jsoncodec import dumps_bytes
from agent.pipe_worker import PipeWorker, WorkerFailed, serve, usable_cores
from agent.queries import (
    FAST_ROWS,
    MAX_INDICATOR_OBSERVATIONS,
    indicator_aggregated,
    indicator_bounded,
    with_names,
)

__all__ = ["LookupWorker", "answer_indicator", "connect_reader", "main"]


MMAP_BYTES = 1 << 30
"""How much of the ledger a lookup process maps (the rest is read with pread)."""


def answer_indicator(conn: sqlite3.Connection, type: str, value: str,
                     names: dict[str, str]) -> bytes:
    """The JSON answer to a lookup of a canonical ``type`` and ``value`` (the API's
    defaults: retracted ones left out, at most ``MAX_INDICATOR_OBSERVATIONS``)."""
    limit = MAX_INDICATOR_OBSERVATIONS
    found = indicator_bounded(conn, type, value, False, limit, FAST_ROWS)
    if found is None:
        found = indicator_aggregated(conn, type, value, False, limit)
    return dumps_bytes(with_names(found, names.get))


def connect_reader(path: str) -> sqlite3.Connection:
    """A read-only connection to the ledger at ``path`` for a process that answers
    lookups (this worker, agent/read_lane.py's readers)."""
    conn = sqlite3.connect(path, isolation_level=None)
    # A lookup here may wait for a lock (briefly: WAL readers rarely do); nothing else
    # waits on this process.
    # The file mapped (read-only) instead of read page by page: a lookup reads a few
    # random pages, ~10 us of pread() each time at 1M observations. The mapped pages
    # are the page cache's, shared with every process reading the file.
    for pragma in ("query_only = ON", "busy_timeout = 2000", "cache_size = -8192",
                   "temp_store = MEMORY", f"mmap_size = {MMAP_BYTES}"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def main() -> None:
    """The worker process: ``python -c '...main()' LEDGER_PATH``."""
    conn = connect_reader(sys.argv[1])
    names: dict[str, str] = {}

    def handle(body: Any) -> Any:
        nonlocal names
        if body[0] == "names":
            names = dict(body[1])
            return None
        _, type, value = body
        try:
            return answer_indicator(conn, type, value, names)
        except sqlite3.Error as exc:
            return ["error", str(exc)]

    settle_heap()  # imports done: later collections skip them (agent/gcsettings.py)
    serve(handle, max_frame=1 << 20)


def _none(reply: Any) -> None:
    if reply is not None:
        raise ValueError(f"expected nothing, got {type(reply).__name__}")


def _answer(reply: Any) -> bytes | None:
    """The answer's bytes; None for ``["error", text]`` (SQLite failed there: the
    in-process path will say what is wrong)."""
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, list) and reply[:1] == ["error"]:
        return None
    raise ValueError(f"not an answer: {type(reply).__name__}")


class LookupWorker:
    """Answers lookups in one worker process over the ledger at ``ledger_path``.

    Args:
        enabled: False never starts it; default: when the host has two cores or more.
        deadline: seconds a lookup may take in the worker before it is killed (and
            the lookup answered in-process).

    The process starts with the first lookup, which is answered in-process meanwhile.
    """

    def __init__(self, ledger_path: Path, *, enabled: bool | None = None,
                 deadline: float = 5.0) -> None:
        self.worker = PipeWorker(
            "lookup worker",
            [sys.executable, "-c", "from agent.lookup_worker import main; main()",
             str(ledger_path)],
            enabled=usable_cores() >= 2 if enabled is None else enabled, deadline=deadline,
            max_frame=64 << 20)
        self._names_sent: dict[str, str] | None = None
        self._names_pid: int | None = None
        self._answered = 0

    async def indicator(self, type: str, value: str, names: dict[str, str]) -> bytes | None:
        """The answer's JSON for a canonical ``type`` and ``value``; None when the
        worker cannot give it (the caller answers in-process)."""
        worker = self.worker
        if not worker.usable():
            return None
        try:
            if names is not self._names_sent or worker.pid != self._names_pid:
                self._names_sent = None
                await worker.call(["names", names], _none)
                self._names_sent, self._names_pid = names, worker.pid
            answer = await worker.call(["indicator", type, value], _answer)
        except WorkerFailed:
            return None
        if answer is not None:
            self._answered += 1
        return answer

    async def ready(self) -> bool:
        """Start the worker and wait until it takes lookups (tests, warm-up)."""
        return await self.worker.ready()

    @property
    def running(self) -> bool:
        """True while the worker takes lookups."""
        return self.worker.pid is not None

    @property
    def answered(self) -> int:
        """Lookups the worker answered (names updates not counted)."""
        return self._answered

    async def close(self) -> None:
        await self.worker.close()
