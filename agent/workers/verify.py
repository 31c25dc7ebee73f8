"""Entry verification on the second core: a worker process for large batches.

PyNaCl releases the GIL inside libsodium, but a verify thread next to the busy event
loop gets it back only at the loop's switch interval, so threads cannot put the
second core to work (docs/benchmarks.md). Large batches of received entries are
therefore checked in one worker process: ``verify_batch`` (protocol/chainrun.py: one
signature check per origin per contiguous run, so a catch-up batch of 256 entries of one
origin costs one Ed25519 check; a lone live-gossip entry is its own run), and for
the readable clear ones (CLEAR, GREEN) the payload decoded into its index record.
The node sends the raw bytes, gets back a compact verdict per entry, and rebuilds
each accepted entry from the bytes it holds (``protocol.entries._rebuild_verified``).

Invariants:
- No entry is accepted unless ``verify_batch`` accepted its exact bytes (its encoding,
  its hash link within its run, the signature of its run's newest entry), here or in
  the worker; a run that fails is refused whole; the worker never sees a secret
  (encrypted payloads are opened by the node, which holds the key).
- What is in flight is bounded by the caller (the ingest pipeline's verify-ahead
  queue); each frame from the worker is capped.
- Nothing hangs on the worker: a worker that dies, answers garbage or takes longer
  than ``deadline`` is killed, its batches are checked in a thread instead, and a new
  worker is started for later batches (after the delay of agent/workers/policy.py);
  after the policy's failures in a row the node checks everything in threads for
  good. Small batches (live gossip) are checked in a thread too: a round trip to the
  worker would only add latency.
- The worker ends when the node closes its stdin (:meth:`VerifyWorker.close`) or
  dies (stdin reaches end of file), so it never outlives the node.

:class:`VerifyPool` is what the node uses: the thread pool and the worker processes
together, one object to start and close (whoever builds it owns it). The process and
its pipes are agent/workers/pipe.py's. A request is ``[raw, ...]``;
the reply ``[verdict, ...]``, where a verdict is ``None`` (refused), ``0`` (verified;
the node decodes the payload), ``1`` (verified, payload unreadable: stored, not
indexed) or the index record as a list (kind, doc, type, value, first_seen,
last_seen, target: its ``fields`` are not sent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.storage.queries import IndexRecord, build_record
from agent.workers.gcsettings import settle_heap
from agent.workers.pipe import PipeWorker, WorkerFailed, serve, usable_cores
from agent.workers.policy import RESTART, RestartPolicy
from protocol.chainrun import verify_batch
from protocol.entries import VerifiedEntry, _rebuild_verified
from protocol.errors import EntraideError
from protocol.payloads import decode_payload_with_fields

__all__ = ["Checked", "VerifyPool", "VerifyWorker", "check_in_thread"]

_DECODE_HERE = 0  # verified; the node builds the record (encrypted: it holds the key)
_UNREADABLE = 1  # verified; the payload does not decode: stored, never indexed


@dataclass
class Checked:
    """One batch, checked: the entries in order (None where one was refused), and the
    index records already built, by entry hash (None: payload unreadable)."""

    entries: list[VerifiedEntry | None]
    records: dict[bytes, IndexRecord | None] = field(default_factory=dict)


# --- the worker process side -------------------------------------------------------


def check_raws(raws: Sequence[bytes]) -> list[Any]:
    """The verdict on each entry (see the module docstring); runs in the worker."""
    out: list[Any] = []
    for entry in verify_batch(raws):
        if entry is None:
            out.append(None)
            continue
        if entry.tlp.encrypted:
            out.append(_DECODE_HERE)
            continue
        if entry.body is None:  # header only (§3): nothing to index
            out.append(_UNREADABLE)
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


def main() -> None:
    """The worker's loop: answer each batch until stdin ends."""
    settle_heap()  # imports done: later collections skip them (agent/workers/gcsettings.py)
    serve(check_raws)


# --- the node side -------------------------------------------------------------------


def check_in_thread(raws: Sequence[bytes]) -> Checked:
    """Verify in the calling thread (run by run, as the worker does); records are left
    to the ledger."""
    return Checked(verify_batch(raws))


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
        policy: when to restart the worker, when to give up (the node's one policy).

    The process is started by the first large batch, which is checked in a thread
    meanwhile (agent/workers/pipe.py runs it). Close with :meth:`close`.
    """

    def __init__(self, executor: concurrent.futures.Executor, *, min_batch: int = 64,
                 enabled: bool = True, deadline: float = 30.0,
                 command: Sequence[str] | None = None,
                 policy: RestartPolicy = RESTART) -> None:
        self._executor = executor
        self.min_batch = min_batch
        self.worker = PipeWorker(
            "verify worker",
            command or [sys.executable, "-c", "from agent.workers.verify import main; main()"],
            enabled=enabled, deadline=deadline, policy=policy)
        self.batches_in_worker = 0  # for tests and diagnostics
        self.in_flight = 0  # batches taken by check() and not answered yet

    @property
    def pid(self) -> int | None:
        """The pid of the worker in use, if there is one."""
        return self.worker.pid

    @property
    def failures(self) -> int:
        return self.worker.failures

    @property
    def disabled(self) -> bool:
        """True once the worker was given up for good (threads from then on)."""
        return self.worker.disabled

    async def check(self, raws: Sequence[bytes]) -> Checked:
        """Check ``raws``; never raises for a worker failure (the thread takes over)."""
        self.in_flight += 1
        try:
            if len(raws) >= self.min_batch and self.worker.usable():
                try:
                    checked = await self.worker.call(
                        list(raws), lambda verdicts: self._rebuild(raws, verdicts))
                    self.batches_in_worker += 1
                    return checked
                except WorkerFailed:
                    pass  # logged by the worker; the thread checks this batch
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, check_in_thread, raws)
        finally:
            self.in_flight -= 1

    def start(self) -> None:
        """Start the worker now rather than with the first large batch (no wait)."""
        self.worker.start()

    async def ready(self) -> bool:
        """Start the worker if need be and wait until it answers (False: it cannot)."""
        return await self.worker.ready()

    @staticmethod
    def _rebuild(raws: Sequence[bytes], verdicts: Any) -> Checked:
        """The batch from the worker's verdicts; raises ValueError (or TypeError, or an
        EntraideError) for an answer that cannot be right."""
        if not isinstance(verdicts, list) or len(verdicts) != len(raws):
            raise ValueError("answered the wrong number of verdicts")
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

    async def close(self) -> None:
        """End the worker: close its stdin, wait briefly, then kill it."""
        await self.worker.close()


class VerifyPool:
    """The node's entry checkers: a thread pool and up to ``processes`` verify workers.

    Args:
        threads: threads checking small batches, and large ones no worker takes.
        processes: worker processes wanted for large batches; at most one per usable
            core, and none on a one-core host (a thread cannot use another core: the
            GIL). 0: threads only.
        min_batch: batches smaller than this stay in a thread (live gossip: a round
            trip to a worker would only add latency).
        eager: start the workers with :meth:`start` rather than with the first large
            batches (which are checked in a thread while the workers start, ~0.5 s).
        policy: when to restart a worker, when to give up on it.

    A batch goes to the least busy worker (fewest batches in flight); a worker failure
    never fails a check (see :class:`VerifyWorker`). Lifecycle: build, :meth:`start`
    once the event loop runs, :meth:`check` any number of times, :meth:`close` once.
    Whoever builds the pool closes it.
    """

    def __init__(self, threads: int, processes: int, min_batch: int, eager: bool, *,
                 policy: RestartPolicy = RESTART) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max(1, threads), thread_name_prefix="entraide-verify")
        cores = usable_cores()
        wanted = min(processes, cores) if cores >= 2 else 0
        self.processes = wanted
        """Worker processes this pool runs (0: threads only), after the core limit."""
        self.eager = eager
        # One VerifyWorker even with no process: it is the thread path then.
        self._workers = tuple(VerifyWorker(self._executor, min_batch=min_batch,
                                           enabled=wanted > 0, policy=policy)
                              for _ in range(max(1, wanted)))
        self._closed = False

    @property
    def workers(self) -> tuple[VerifyWorker, ...]:
        """The workers, for tests and diagnostics (do not close them one by one)."""
        return self._workers

    @property
    def pids(self) -> list[int]:
        """The pids of the workers that are up and ready."""
        return [pid for w in self._workers if (pid := w.pid) is not None]

    @property
    def processes_up(self) -> int:
        """Workers up and taking batches now."""
        return len(self.pids)

    @property
    def failures(self) -> int:
        """Worker failures in a row, summed over the workers."""
        return sum(w.failures for w in self._workers)

    @property
    def batches_in_worker(self) -> int:
        """Batches checked by a worker process so far (the rest went to threads)."""
        return sum(w.batches_in_worker for w in self._workers)

    @property
    def in_flight(self) -> int:
        """Batches taken by :meth:`check` and not answered yet."""
        return sum(w.in_flight for w in self._workers)

    async def check(self, raws: Sequence[bytes]) -> Checked:
        """Check ``raws`` with the least busy worker (or in a thread); never raises for a
        worker failure. Not after :meth:`close` (the threads are gone: RuntimeError)."""
        worker = min(self._workers, key=lambda w: w.in_flight)
        return await worker.check(raws)

    def start(self) -> None:
        """The owner's start hook (no wait): an eager pool starts its worker processes
        now; otherwise they start with the first large batch."""
        if self.eager and self.processes:
            for worker in self._workers:
                worker.start()

    async def ready(self) -> bool:
        """Start every worker if need be and wait until each answers. False when the pool
        has no process or one of them cannot start (its batches go to threads)."""
        if not self.processes:
            return False
        return all(await asyncio.gather(*(w.ready() for w in self._workers)))

    async def close(self) -> None:
        """End every worker process, then the threads (waiting for running checks;
        queued ones are cancelled). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            await worker.close()
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)


if __name__ == "__main__":
    main()
