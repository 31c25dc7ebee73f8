"""A worker process the node talks to over its stdin and stdout, for calls too small
for a process pool.

A ``ProcessPoolExecutor`` call costs a pickling round, a management thread and two
GIL hand-offs; next to a busy event loop that is more than a lookup's whole SQL. Here
the node writes a frame to the worker's stdin and a subprocess protocol parses the
replies straight from the pipe, on the loop, with no thread.

Wire: frames of a 4-byte big-endian length and a msgpack body. Request ``[id, body]``,
reply ``[id, body]``, in request order. The worker's first frame is ``[0, None]``:
ready. The worker side is :func:`serve`.

Invariants:
- Nothing hangs on the worker: one that dies, breaks the framing, sends a frame over
  ``max_frame`` or misses a call's ``deadline`` is killed, and every call in flight
  raises :class:`WorkerFailed` (the caller falls back to its in-process path). A new
  worker starts with the first call after the node's restart delay; after the
  policy's failures in a row (no call answered in between) it is given up for good
  (agent/workers/policy.py: one policy for every helper process).
- What is in flight is bounded: past ``max_in_flight`` calls, :meth:`PipeWorker.call`
  raises :class:`WorkerFailed` at once (the caller's own path takes the call).
- The worker never outlives the node: it ends when its stdin reaches end of file,
  which happens when the node closes it or dies.
- One owner reaps each worker: the event loop's child watcher. The node kills a worker
  by its pid and closes its transport only once the watcher has seen it exit (see
  :func:`_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from agent.workers.policy import RESTART, RestartPolicy
from protocol.errors import EntraideError

__all__ = ["PipeWorker", "WorkerFailed", "serve", "usable_cores"]

log = logging.getLogger("agent.worker")

T = TypeVar("T")

_HEADER = struct.Struct(">I")
_READY = 0
_HOLD_S = 0.001
"""Longest a worker holds finished replies to write them together."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerFailed(EntraideError):
    """The worker is not there, died, broke the wire or missed the deadline.

    Never reaches a client: every caller catches it and does the work in-process.
    """


# --- the worker side ---------------------------------------------------------------


def serve(handle: Callable[[Any], Any], *, max_frame: int = 64 << 20) -> None:
    """The worker's loop: answer each request with ``handle(body)`` until stdin ends.

    Replies to requests that arrived together go out in one write, as long as they
    took under ``_HOLD_S`` in all: the node sends the small calls of one turn of its
    loop together (lookups), and a long one (a verify batch) is not held behind the
    next.
    """
    sys.stdout = sys.stderr  # a stray print must not corrupt the wire
    _write_all(1, _frame([_READY, None]))
    buf = bytearray()
    clock = time.monotonic
    try:
        while chunk := os.read(0, 1 << 16):
            buf += chunk
            replies: list[bytes] = []
            since = clock()
            while len(buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buf)
                if size > max_frame:
                    return  # not the node speaking: end, and it sees the pipe close
                if len(buf) < _HEADER.size + size:
                    break
                body = bytes(buf[_HEADER.size:_HEADER.size + size])
                del buf[:_HEADER.size + size]
                call_id, request = msgpack.unpackb(
                    body, max_bin_len=max_frame, max_str_len=max_frame,
                    max_array_len=1 << 20, max_map_len=1 << 20)
                replies.append(_frame([call_id, handle(request)]))
                if clock() - since >= _HOLD_S:
                    _write_all(1, b"".join(replies))
                    replies, since = [], clock()
            if replies:
                _write_all(1, b"".join(replies))
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the node is gone or stopping


def _frame(value: Any) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- the node side -------------------------------------------------------------------


class _Pipes(asyncio.SubprocessProtocol):
    """Parses the worker's stdout into replies, on the loop."""

    def __init__(self, worker: PipeWorker) -> None:
        self._worker = worker
        self._buf = bytearray()
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        buf = self._buf
        buf += data
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            if size > self._worker.max_frame:
                self._worker._broken(self, f"sent a {size}-byte frame")
                return
            if len(buf) < _HEADER.size + size:
                return
            body = bytes(buf[_HEADER.size:_HEADER.size + size])
            del buf[:_HEADER.size + size]
            try:
                call_id, reply = msgpack.unpackb(body, max_array_len=1 << 20,
                                                 max_map_len=1 << 20)
            except Exception as exc:  # garbage: the worker is not to be trusted
                self._worker._broken(self, f"broke the wire format: {exc!r}")
                return
            self._worker._answer(self, call_id, reply)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._worker._broken(self, "closed its stdout")

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        self._worker._broken(self, "exited")


def _end(transport: asyncio.SubprocessTransport, pipes: _Pipes) -> None:
    """Kill a worker and close its pipes without reaping it; its transport closes once
    the loop's child watcher has reaped it.

    ``transport.kill()`` and ``transport.close()`` ask ``Popen.poll()`` first, which
    reaps a worker that has just exited (its stdin closed, or it died): the watcher,
    blocked in ``waitpid`` on that pid, then finds no child and logs "Unknown child
    process pid N, will report returncode 255". While the transport has no return
    code the pid is still the worker's (a zombie at worst), but for the instant between
    the watcher's ``waitpid`` and its callback on the loop, as ``Popen.send_signal``
    has between its own ``poll`` and ``kill``.
    """
    if transport.get_returncode() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(transport.get_pid(), signal.SIGKILL)
    for fd in (0, 1):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()
    if pipes.exited.done():
        transport.close()
    else:
        pipes.exited.add_done_callback(lambda _: transport.close())


class PipeWorker:
    """One worker process started with ``command``, called with :meth:`call`.

    Args:
        name: for log lines (``"batch worker"``).
        command: the worker's command line; it must run :func:`serve`.
        enabled: False never starts a process (every call raises WorkerFailed).
        deadline: seconds a start or a call may take before the worker is killed.
        max_in_flight: calls waiting for the worker at once; more fail at once.
        max_frame: largest reply accepted, in bytes.
        policy: when to start again after a failure, when to give up
            (default: the node's one policy).
        max_failures: failures in a row before giving up for good (default: the
            policy's).

    The process starts with the first :meth:`usable` (or :meth:`start`) and is
    usable once it said it is ready. Close with :meth:`close`.
    """

    def __init__(self, name: str, command: Sequence[str], *, enabled: bool = True,
                 deadline: float = 30.0, max_in_flight: int = 256,
                 max_frame: int = 64 << 20, policy: RestartPolicy = RESTART,
                 max_failures: int | None = None) -> None:
        self.name = name
        self._command = list(command)
        self.deadline = deadline
        self.max_in_flight = max_in_flight
        self.max_frame = max_frame
        if max_failures is not None:
            policy = RestartPolicy(policy.first_s, policy.most_s, max_failures)
        self.policy = policy
        self.disabled = not enabled
        self.closed = False
        self.failures = 0
        self.answered = 0
        """Calls the worker answered (for metrics and tests)."""
        self._transport: asyncio.SubprocessTransport | None = None
        self._pipes: _Pipes | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._ready = False
        self._starting: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._sent_at: dict[int, float] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._outbox: list[bytes] = []
        self._next_id = 1
        self._restart_at = 0.0
        """time.monotonic() before which no new worker starts (the restart delay)."""

    @property
    def max_failures(self) -> int:
        """Failures in a row before the worker is given up (the policy's)."""
        return self.policy.max_failures

    @property
    def pid(self) -> int | None:
        """The pid of the worker in use, if it is ready."""
        return self._transport.get_pid() if self._ready and self._transport else None

    def usable(self) -> bool:
        """True when the worker takes calls; starts it (without waiting) if need be,
        unless a failed one's restart delay has not passed yet."""
        if self._ready or self.disabled or self.closed:
            return self._ready
        if self._starting is None and time.monotonic() >= self._restart_at:
            self._starting = asyncio.ensure_future(self._start())
        return False

    start = usable

    @property
    def running(self) -> bool:
        """True while a worker takes calls."""
        return self._ready

    async def ready(self) -> bool:
        """Start the worker if need be (after the restart delay, if one failed) and wait
        until it takes calls (False: it cannot)."""
        if not self.usable() and self._starting is None and not (self.disabled or self.closed):
            await asyncio.sleep(max(0.0, self._restart_at - time.monotonic()))
        self.usable()
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        return self._ready

    async def call(self, body: Any, accept: Callable[[Any], T]) -> T:
        """``accept(reply)``, where reply is the worker's answer to ``body``.

        ``accept`` checks the reply and turns it into the result; when it raises
        (``ValueError``, ``TypeError`` or an ``EntraideError``) the worker is not to be
        trusted: it is killed and the call fails. Only an accepted reply ends a run of
        failures.

        Raises:
            WorkerFailed: not ready, too many calls in flight, or the worker failed
                (it is killed; a later call starts another).
        """
        if not self._ready or self._stdin is None or self._pipes is None:
            raise WorkerFailed(f"the {self.name} is not running")
        if len(self._waiting) >= self.max_in_flight:
            raise WorkerFailed(f"{self.max_in_flight} calls already wait for the {self.name}")
        call_id, self._next_id = self._next_id, self._next_id + 1
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiting[call_id] = waiter
        self._sent_at[call_id] = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.deadline / 4, self._watch)
        pipes = self._pipes
        try:
            frame = msgpack.packb([call_id, body], use_bin_type=True)
            if not self._outbox:
                loop.call_soon(self._flush)
            self._outbox.append(_HEADER.pack(len(frame)) + frame)
            reply = await waiter
        finally:
            self._waiting.pop(call_id, None)
            self._sent_at.pop(call_id, None)
        try:
            result = accept(reply)
        except (ValueError, TypeError, EntraideError) as exc:
            self._broken(pipes, f"answered a bad reply: {exc!r}")
            raise WorkerFailed(f"the {self.name} answered a bad reply") from exc
        self.failures = 0
        self.answered += 1
        return result

    def _flush(self) -> None:
        """Write the frames of every call made since the last flush, in one write: under
        load, several requests arrive in one turn of the loop."""
        frames, self._outbox = self._outbox, []
        stdin = self._stdin
        if stdin is None:
            return  # broken meanwhile: its calls already failed
        try:
            stdin.write(b"".join(frames))
        except (OSError, RuntimeError) as exc:  # the pipe broke: the worker is gone
            self._broken(self._pipes, f"pipe: {exc!r}")

    def _watch(self) -> None:
        """Kill a worker whose oldest call is past the deadline. One timer per worker,
        not one per call: a per-call timeout costs more than a lookup's IPC."""
        self._watchdog = None
        if not self._sent_at:
            return
        loop = asyncio.get_running_loop()
        oldest = next(iter(self._sent_at.values()))  # dicts keep insertion order
        if loop.time() - oldest > self.deadline:
            self._broken(self._pipes, f"did not answer in {self.deadline:g} s")
        if self._sent_at:
            self._watchdog = loop.call_later(self.deadline / 4, self._watch)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # this checkout's packages
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        pipes = _Pipes(self)
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: pipes, *self._command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=None, env=env)
        except OSError as exc:
            self._starting = None
            self._failed(f"cannot start: {exc}")
            return
        self._transport, self._pipes = transport, pipes
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        self._stdin = stdin
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiting[_READY] = waiter
        try:
            async with asyncio.timeout(self.deadline):
                await waiter
            self._ready = True
        except (TimeoutError, WorkerFailed) as exc:
            self._broken(pipes, f"did not start: {exc or 'timed out'}")
        finally:
            self._waiting.pop(_READY, None)
            self._starting = None

    def _answer(self, pipes: _Pipes, call_id: Any, reply: Any) -> None:
        if pipes is not self._pipes:
            return
        waiter = self._waiting.pop(call_id, None) if isinstance(call_id, int) else None
        if waiter is None:
            self._broken(pipes, f"answered a call it was not given ({call_id!r})")
            return
        if not waiter.done():
            waiter.set_result(reply)

    def _broken(self, pipes: _Pipes | None, why: str) -> None:
        """Kill the worker, fail its calls in flight, count one failure."""
        if pipes is None or pipes is not self._pipes:
            return  # an older worker, already counted
        transport = self._transport
        self._transport = self._pipes = self._stdin = None
        self._outbox = []
        self._ready = False
        if transport is not None:
            _end(transport, pipes)
        failure = WorkerFailed(f"the {self.name} {why}")
        self._sent_at.clear()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(failure)
                waiter.exception()  # retrieved: its caller may have gone
        self._waiting.clear()
        if not self.closed:
            self._failed(why)

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.policy.gives_up(self.failures):
            self.disabled = True
            log.error("%s process failed (%s) %d times in a row: not used from now on",
                      self.name, why, self.failures)
        else:
            delay = self.policy.delay(self.failures)
            self._restart_at = time.monotonic() + delay
            log.warning("%s process failed (%s): a new one starts with the first call "
                        "after %g s", self.name, why, delay)

    async def close(self, timeout: float = 2.0) -> None:
        """End the worker: close its stdin, wait up to ``timeout``, then kill it."""
        self.closed = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        pipes, transport, stdin = self._pipes, self._transport, self._stdin
        if pipes is None or transport is None:
            return
        if stdin is not None:
            stdin.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(pipes.exited)
        except TimeoutError:
            pass
        self._broken(pipes, "closed")
