"""Entry verification on the second core: a worker process for large batches.

PyNaCl releases the GIL inside libsodium, but a verify thread next to the busy event
loop gets it back only at the loop's switch interval, so threads cannot put the
second core to work (docs/benchmarks.md). Large batches of received entries are
therefore checked in one worker process: ``verify_entry`` on every entry, and for
the readable clear ones (CLEAR, GREEN) the payload decoded into its index record.
The node sends the raw bytes, gets back a compact verdict per entry, and rebuilds
each accepted entry from the bytes it holds (``protocol.entries._rebuild_verified``).

Invariants:
- No entry is accepted unless ``verify_entry`` accepted its exact bytes, here or in
  the worker; the worker never sees a secret (encrypted payloads are opened by the
  node, which holds the key).
- What is in flight is bounded by the caller (the replicator's verify-ahead queue);
  each frame from the worker is capped.
- Nothing hangs on the worker: a worker that dies, answers garbage or takes longer
  than ``deadline`` is killed, its batches are checked in a thread instead, and a new
  worker is started for later batches; after ``MAX_FAILURES`` failures in a row the
  node checks everything in threads for good. Small batches (live gossip) are checked
  in a thread too: a round trip to the worker would only add latency.
- The worker ends when the node closes its stdin (:meth:`VerifyWorker.close`) or
  dies (stdin reaches end of file), so it never outlives the node.

Wire (stdin/stdout of the worker): frames of a 4-byte big-endian length and a msgpack
body. Request ``[id, [raw, ...]]``; reply ``[id, [verdict, ...]]`` where a verdict is
``None`` (refused), ``0`` (verified; the node decodes the payload), ``1`` (verified,
payload unreadable: stored, not indexed) or the index record as a list (kind, doc,
type, value, first_seen, last_seen, target: its ``fields`` are not sent). The
first frame from the worker is ``[0, []]``: ready.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from agent.gcsettings import settle_heap
from agent.queries import IndexRecord, build_record
from protocol.entries import VerifiedEntry, _rebuild_verified, verify_entry
from protocol.errors import EntraideError
from protocol.payloads import decode_payload_with_fields

__all__ = ["MAX_FAILURES", "Checked", "VerifyWorker", "check_in_thread"]

log = logging.getLogger("agent.transport")

MAX_FAILURES = 3
"""Worker failures in a row (no batch answered in between) before giving up on it."""
_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 << 20
_DECODE_HERE = 0  # verified; the node builds the record (encrypted: it holds the key)
_UNREADABLE = 1  # verified; the payload does not decode: stored, never indexed


@dataclass
class Checked:
    """One batch, checked: the entries in order (None where one was refused), and the
    index records already built, by entry hash (None: payload unreadable)."""

    entries: list[VerifiedEntry | None]
    records: dict[bytes, IndexRecord | None] = field(default_factory=dict)


class _WorkerFailed(Exception):
    """The worker process died, broke the wire format or missed its deadline.

    Never leaves this module: the batch is checked in a thread instead.
    """


# --- the worker process side -------------------------------------------------------


def check_raws(raws: Sequence[bytes]) -> list[Any]:
    """The verdict on each entry (see the module docstring); runs in the worker."""
    out: list[Any] = []
    for raw in raws:
        try:
            entry = verify_entry(raw)
        except EntraideError:
            out.append(None)
            continue
        if entry.tlp.encrypted:
            out.append(_DECODE_HERE)
            continue
        try:
            payload, dumped = decode_payload_with_fields(entry.body)
            record = build_record(payload, entry.ts, dumped)
        except EntraideError:
            out.append(_UNREADABLE)
            continue
        # Without ``fields``: the node rebuilds them from ``doc`` only for stream
        # subscribers; shipping the map cost more (packed here, unpacked there).
        out.append([record.kind, record.doc, record.type, record.value,
                    record.first_seen, record.last_seen, record.target])
    return out


def _read_frame(stream: BinaryIO) -> Any | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return msgpack.unpackb(body, max_bin_len=_MAX_FRAME, max_array_len=1 << 20)


def _write_frame(stream: BinaryIO, value: Any) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def main() -> None:
    """The worker's loop: answer each request frame until stdin ends."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the wire
    settle_heap()  # imports done: later collections skip them (agent/gcsettings.py)
    try:
        _write_frame(replies, [0, []])
        while (request := _read_frame(requests)) is not None:
            batch_id, raws = request
            _write_frame(replies, [batch_id, check_raws(raws)])
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the node is gone or stopping


# --- the node side -------------------------------------------------------------------


def check_in_thread(raws: Sequence[bytes]) -> Checked:
    """Verify in the calling thread; records are left to the ledger (as before)."""
    out: list[VerifiedEntry | None] = []
    for raw in raws:
        try:
            out.append(verify_entry(raw))
        except EntraideError:
            out.append(None)
    return Checked(out)


def _record(fields: list[Any]) -> IndexRecord:
    kind, doc, type_, value, first, last, target = fields
    return IndexRecord(kind, None, doc, type_, value, first, last, target)


class VerifyWorker:
    """Checks batches of received entries in one worker process, or in threads.

    Args:
        executor: the thread pool for small batches and fallbacks.
        min_batch: batches smaller than this are checked in a thread.
        enabled: False checks everything in threads (no process is ever started).
        deadline: seconds a batch may take in the worker before it is killed
            (generous: a batch of 1,000 entries takes about 0.1 s).
        command: the worker's command line (tests start a faulty one).

    The process is started by the first large batch, which is checked in a thread
    meanwhile. Close with :meth:`close`.
    """

    def __init__(self, executor: concurrent.futures.Executor, *, min_batch: int = 64,
                 enabled: bool = True, deadline: float = 30.0,
                 command: Sequence[str] | None = None) -> None:
        self._executor = executor
        self.min_batch = min_batch
        self.deadline = deadline
        self._command = list(command) if command is not None else [
            sys.executable, "-c", "from agent.verify_worker import main; main()"]
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[list[Any]]] = {}
        self._next_id = 1
        self.failures = 0
        self._last_failed: asyncio.subprocess.Process | None = None
        self.disabled = not enabled
        self.closed = False
        self.batches_in_worker = 0  # for tests and diagnostics
        self.in_flight = 0  # batches taken by check() and not answered yet

    @property
    def pid(self) -> int | None:
        """The pid of the worker in use, if there is one."""
        proc = self._proc
        if (proc is None or proc.returncode is not None or self.disabled or self.closed
                or self._reader is None or self._reader.done()):
            return None
        return proc.pid

    async def check(self, raws: Sequence[bytes]) -> Checked:
        """Check ``raws``; never raises for a worker failure (the thread takes over)."""
        self.in_flight += 1
        try:
            return await self._check(raws)
        finally:
            self.in_flight -= 1

    async def _check(self, raws: Sequence[bytes]) -> Checked:
        proc = self._proc
        if len(raws) >= self.min_batch and self._usable() and proc is not None:
            try:
                return await self._in_worker(proc, raws)
            except _WorkerFailed as exc:
                self._failed(proc, str(exc))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, check_in_thread, raws)

    def start(self) -> None:
        """Start the worker now rather than with the first large batch (no wait)."""
        self._usable()

    async def ready(self) -> bool:
        """Start the worker if need be and wait until it answers (False: it cannot)."""
        self._usable()
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        return self._usable()

    def _usable(self) -> bool:
        if self.disabled or self.closed:
            return False
        if (self._proc is None or self._proc.returncode is not None
                or self._reader is None or self._reader.done()):
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
            return False
        return self._ready is not None and self._ready.done() and not self._ready.cancelled()

    async def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # this checkout's packages
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env=env)
        except OSError as exc:
            self._starting = None
            self._failed(None, f"cannot start: {exc}")
            return
        self._proc = proc
        loop = asyncio.get_running_loop()
        self._ready = ready = loop.create_future()
        self._reader = asyncio.ensure_future(self._read(proc, ready))
        try:
            async with asyncio.timeout(self.deadline):
                await asyncio.shield(ready)
        except (TimeoutError, _WorkerFailed) as exc:
            self._kill(proc)
            self._failed(proc, f"did not start: {exc or 'timed out'}")
        finally:
            self._starting = None

    async def _read(self, proc: asyncio.subprocess.Process,
                    ready: asyncio.Future[None]) -> None:
        """Resolve each batch's future from the worker's replies; on any failure, fail
        every batch in flight (they go to a thread) and kill the worker."""
        assert proc.stdout is not None
        error = "ended"
        try:
            while True:
                header = await proc.stdout.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                if size > _MAX_FRAME:
                    error = f"sent a {size}-byte frame"
                    break
                body = await proc.stdout.readexactly(size)
                batch_id, verdicts = msgpack.unpackb(body, max_array_len=1 << 20)
                if batch_id == 0 and not ready.done():
                    ready.set_result(None)
                    continue
                waiter = self._waiting.pop(batch_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(verdicts)
        except asyncio.IncompleteReadError:
            pass
        except asyncio.CancelledError:
            error = "closed"
            raise
        except Exception as exc:  # garbage on the wire: the worker is not to be trusted
            error = f"broke the wire format: {exc!r}"
        finally:
            self._kill(proc)
            failure = _WorkerFailed(error)
            if not ready.done():
                ready.set_exception(failure)
                ready.exception()  # retrieved: the starter may be gone
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(failure)
            self._waiting.clear()

    async def _in_worker(self, proc: asyncio.subprocess.Process,
                         raws: Sequence[bytes]) -> Checked:
        assert proc.stdin is not None
        batch_id, self._next_id = self._next_id, self._next_id + 1
        waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting[batch_id] = waiter
        body = msgpack.packb([batch_id, list(raws)], use_bin_type=True)
        try:
            proc.stdin.write(_HEADER.pack(len(body)) + body)
            async with asyncio.timeout(self.deadline):
                await proc.stdin.drain()
                verdicts = await waiter
        except TimeoutError as exc:  # before OSError: it is one
            self._kill(proc)
            raise _WorkerFailed(f"no answer in {self.deadline:g} s") from exc
        except (OSError, RuntimeError) as exc:  # the pipe broke: the worker is gone
            self._kill(proc)
            raise _WorkerFailed(f"pipe: {exc!r}") from exc
        finally:
            self._waiting.pop(batch_id, None)
        if not isinstance(verdicts, list) or len(verdicts) != len(raws):
            self._kill(proc)
            raise _WorkerFailed("answered the wrong number of verdicts")
        try:
            checked = self._rebuild(raws, verdicts)
        except (EntraideError, ValueError, TypeError) as exc:
            self._kill(proc)
            raise _WorkerFailed(f"answered a bad verdict: {exc!r}") from exc
        self.failures = 0
        self.batches_in_worker += 1
        return checked

    @staticmethod
    def _rebuild(raws: Sequence[bytes], verdicts: list[Any]) -> Checked:
        checked = Checked([])
        entries, records = checked.entries, checked.records
        for raw, verdict in zip(raws, verdicts, strict=True):
            if verdict is None:
                entries.append(None)
                continue
            entry = _rebuild_verified(raw)
            entries.append(entry)
            if verdict == _UNREADABLE:
                records[entry.hash] = None
            elif verdict != _DECODE_HERE:
                records[entry.hash] = _record(verdict)
        return checked

    def _failed(self, proc: asyncio.subprocess.Process | None, why: str) -> None:
        """Count a failure once per worker process (its batches in flight fail together)."""
        if proc is not None:
            if proc is self._last_failed:
                return
            self._last_failed = proc
        self.failures += 1
        if self.failures >= MAX_FAILURES and not self.disabled:
            self.disabled = True
            if self._proc is not None:
                self._kill(self._proc)
            log.error("verify worker process failed (%s) %d times in a row: verifying in "
                      "threads from now on", why, self.failures)
        else:
            log.warning("verify worker process failed (%s): its batches are verified in a "
                        "thread, a new worker starts with the next large batch", why)

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def close(self, timeout: float = 2.0) -> None:
        """End the worker: close its stdin, wait up to ``timeout``, then kill it."""
        self.closed = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        proc = self._proc
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    proc.stdin.close()
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                self._kill(proc)
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


if __name__ == "__main__":
    main()
