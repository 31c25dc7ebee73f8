"""A lean HTTP/1.1 load generator: N keep-alive connections, one request in flight on
each, every response read whole and handed to a check.

Why not aiohttp's client: on this 2-core machine the load generator shares the cores
with the node it measures. aiohttp's client spends ~200-300 us of Python per request
(request building, its connector, header objects, the response and stream readers),
so at 32 clients the figures measured the client as much as the node. This one writes
prebuilt request bytes on a plain ``asyncio.Protocol``, parses only what a check
needs (the status line, ``Content-Length`` and the body), and runs from the
protocol's own callbacks: no future or task per request.

What a latency is: from just before the request's bytes are written to the moment the
client's callback has the whole body in hand (so the client's own scheduling delay
counts against the node, never for it). Every response is checked: a status
other than the expected one, a body the check refuses, a malformed or oversized
response or a closed connection stops the run with an error.

Only for 127.0.0.0/8 targets; bodies over ``MAX_RESPONSE`` bytes are refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["MAX_RESPONSE", "HttpLoadError", "LoadResult", "run_load"]

MAX_RESPONSE = 4 * 1024 * 1024
_MAX_HEAD = 16 * 1024

Check = Callable[[str, bytes], None]
"""Called with (path, body) of every response; raises to refuse the body."""


class HttpLoadError(RuntimeError):
    """A response was not what the run expects (status, framing, size, content)."""


@dataclass(frozen=True)
class LoadResult:
    """``seconds`` of wall time for the whole run; one latency (s) per request, in
    completion order, and when each completed (s since the timed part began): a slow
    phase of the machine shows as a run of slow completions."""

    seconds: float
    latencies: list[float]
    ends: list[float]


class _Run:
    """One phase of a load run: the paths left, what was measured, how it ended."""

    def __init__(self, paths: Iterator[str], record: bool, request: Callable[[str], bytes],
                 expect: int, check: Check | None, busy: int) -> None:
        self.paths = paths
        self.record = record
        self.request = request
        self.expect = expect
        self.check = check
        self.busy = busy
        self.latencies: list[float] = []
        self.ends: list[float] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def idle(self) -> None:
        self.busy -= 1
        if self.busy == 0 and not self.done.done():
            self.done.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight. Driven from its
    own callbacks: a response read whole is timed and checked, and the next request
    written, without a future or a task per request (each costs the client CPU that
    the node it measures shares)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._run: _Run | None = None
        self._path = ""
        self._sent = 0.0
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        run = self._run
        if run is None:
            if len(self._buf) > MAX_RESPONSE:
                self._fail(HttpLoadError("unsolicited bytes from the server"))
            return
        try:
            done = self._parse()
        except HttpLoadError as exc:
            self._fail(exc)
            return
        if done is None:
            return
        if run.record:
            end = time.perf_counter()
            run.latencies.append(end - self._sent)
            run.ends.append(end)
        status, body = done
        try:
            if status != run.expect:
                raise HttpLoadError(f"GET {self._path}: HTTP {status}: {body[:300]!r}")
            if run.check is not None:
                try:
                    run.check(self._path, body)
                except Exception as exc:
                    raise HttpLoadError(f"GET {self._path}: refused body {body[:300]!r}: "
                                        f"{exc}") from exc
        except HttpLoadError as exc:
            self._fail(exc)
            return
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionError("the server closed the connection")
        if self._run is not None:
            self._run.fail(HttpLoadError(f"connection lost: {self._lost}"))
            self._run = None

    def start(self, run: _Run) -> None:
        """Take requests from ``run`` until its paths run out."""
        if self._lost is not None or self._transport is None:
            run.fail(HttpLoadError(f"connection lost: {self._lost}"))
            return
        self._run = run
        self._next()

    def _next(self) -> None:
        run = self._run
        assert run is not None and self._transport is not None
        path = next(run.paths, None)
        if path is None:
            self._run = None
            run.idle()
            return
        self._path = path
        request = run.request(path)
        self._sent = time.perf_counter()
        self._transport.write(request)

    def _fail(self, exc: HttpLoadError) -> None:
        if self._run is not None:
            self._run.fail(exc)
            self._run = None
        if self._transport is not None:
            self._transport.abort()

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n", 0, _MAX_HEAD + 4)
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise HttpLoadError("response head over 16 KiB")
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        first = lines[0]
        if not first.startswith(b"HTTP/1.1 ") or len(first) < 12 or not first[9:12].isdigit():
            raise HttpLoadError(f"bad status line {first[:80]!r}")
        length = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" or (name == b"connection"
                                                  and value.strip().lower() == b"close"):
                raise HttpLoadError(f"unsupported response framing: {line[:80]!r}")
        if not 0 <= length <= MAX_RESPONSE:
            raise HttpLoadError("response without a Content-Length in 0..4 MiB")
        total = end + 4 + length
        if len(buf) < total:
            return None
        body = bytes(buf[end + 4:total])
        del buf[:total]
        if buf:
            raise HttpLoadError("bytes after the response (nothing else was asked)")
        return int(first[9:12]), body

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _request_builder(host: str, port: int, headers: Sequence[tuple[str, str]]
                     ) -> Callable[[str], bytes]:
    tail = (f"\r\nHost: {host}:{port}" + "".join(f"\r\n{k}: {v}" for k, v in headers)
            + "\r\n\r\n").encode("ascii")

    def request(path: str) -> bytes:
        return b"GET " + path.encode("ascii") + b" HTTP/1.1" + tail

    return request


async def run_load(host: str, port: int, paths: Iterable[str], *, connections: int,
                   headers: Sequence[tuple[str, str]] = (), expect: int = 200,
                   check: Check | None = None, warmup: Iterable[str] = ()) -> LoadResult:
    """GET every path of ``paths`` over ``connections`` keep-alive connections; each
    connection sends its next request when the last one has been answered.

    ``warmup`` paths go first, on the same connections, checked but neither timed nor
    counted: the figures are of connections in steady state, not of their set-up
    (the node accepting them, its first requests on each).

    Raises:
        HttpLoadError: a response with another status than ``expect``, one ``check``
            refused (its exception is the cause), or a broken connection.
        ValueError: a target outside 127.0.0.0/8.
    """
    if not (host.startswith("127.") or host == "localhost"):
        raise ValueError("the load generator only targets 127.0.0.0/8")
    loop = asyncio.get_running_loop()
    request = _request_builder(host, port, headers)
    conns: list[_Connection] = []
    try:
        for _ in range(connections):
            _, conn = await loop.create_connection(_Connection, host, port)
            conns.append(conn)

        async def phase(queue: Iterable[str], record: bool) -> _Run:
            run = _Run(iter(queue), record, request, expect, check, len(conns))
            for conn in conns:
                conn.start(run)
            await run.done
            return run

        await phase(warmup, False)
        t0 = time.perf_counter()
        timed = await phase(paths, True)
        return LoadResult(time.perf_counter() - t0, timed.latencies,
                          [end - t0 for end in timed.ends])
    finally:
        for conn in conns:
            conn.close()
