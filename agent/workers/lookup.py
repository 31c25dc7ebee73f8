"""Indicator lookups on the second core: a worker process that answers them whole.

A lookup is SQLite reading a few random pages of a large file, then building and
encoding the answer: ~100 us that the event loop would otherwise spend while 31 other
clients wait (docs/benchmarks.md, "Lookup"). The node checks the request, its token
and the indicator's syntax, then hands the canonical (type, value) to this worker,
which reads the ledger on its own read-only connection and replies with the answer's
JSON bytes, exactly what :meth:`agent.node.node.Node.indicator` would have encoded. A
lookup that misses the page cache now waits in the worker, not in the loop that also
runs replication and submits.

Invariants:
- The worker only reads: its connection is ``query_only``; it holds no key. It sees
  what the node committed (WAL): an acknowledged submit is visible to the next lookup.
- Origin names come from the node's trust list: the node sends the table before the
  first lookup and again whenever it changed, on the same ordered pipe.
- Anything unusual falls back to the in-process path, which gives the documented
  answer or error: the worker not started yet, gone, slow, or answering something
  other than bytes (agent/workers/pipe.py).

Requests: ``["names", {key text: name}]`` (reply None) and ``["indicator", type,
value]`` (reply: the answer's JSON bytes, or ``["error", text]`` when SQLite failed).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

from agent.workers.gcsettings import settle_heap
from agent.workers.pipe import PipeWorker, WorkerFailed, serve, usable_cores

__all__ = ["LookupWorker", "main"]

from agent.storage.lookup import answer_indicator, connect_reader


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

    settle_heap()  # imports done: later collections skip them (agent/workers/gcsettings.py)
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
            [sys.executable, "-c", "from agent.workers.lookup import main; main()",
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
