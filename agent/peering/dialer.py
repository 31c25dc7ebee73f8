"""Outbound peer connections: exponential backoff with jitter, one dial loop per peer.

The :class:`Dialer` keeps one task per trusted peer that has a URL. Each task loops:
wait while a session with that peer is live (whoever dialled it), then dial
``<url>/peer/v1``, hand the connected WebSocket to the replicator (which runs the
handshake and the session), and, when the session ends or the dial fails, sleep for
the next backoff delay (docs/architecture.md, "Dialling").

Invariants:
- Only URLs from the current trust list are dialled; a peer removed from the list
  has its task cancelled (and awaited) at once.
- Backoff delays are drawn from ``[d/2, d]`` where ``d = min(cap, initial * 2**n)``
  (equal jitter: never zero, never in lock-step with the peer's own dialer); ``n``
  resets only after a session that stayed up for ``stable_after`` seconds, so a peer
  that accepts and then drops us at once cannot make us spin.
- Every task is owned by the dialer and awaited by :meth:`Dialer.stop`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protocol.keys import PublicKey

__all__ = ["PEER_PATH", "Backoff", "Dialer", "peer_endpoint"]

log = logging.getLogger(__name__)

PEER_PATH = "/peer/v1"


def peer_endpoint(url: str) -> str:
    """The WebSocket URL of a peer's base URL: ``<url>/peer/v1`` (http→ws, https→wss).

    A base URL that already ends with the path is left as it is.
    """
    base = url.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    return base if base.endswith(PEER_PATH) else base + PEER_PATH


class Backoff:
    """Exponential backoff with equal jitter.

    Args:
        initial: first delay cap, seconds (> 0).
        cap: largest delay, seconds (>= initial).
        randbytes: randomness source (``os.urandom`` in production, seeded in tests).
    """

    def __init__(self, initial: float = 0.5, cap: float = 30.0,
                 randbytes: Callable[[int], bytes] = os.urandom) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self._randbytes = randbytes
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        # 2**n overflows floats long after it passes the cap; clamp n first.
        ceiling: float = min(self.cap, self.initial * float(2 ** min(self.attempts, 62)))
        self.attempts += 1
        fraction = int.from_bytes(self._randbytes(4), "big") / 2**32
        return ceiling / 2 + fraction * ceiling / 2

    def reset(self) -> None:
        """Forget past failures (after a session that stayed up)."""
        self.attempts = 0


@dataclass(frozen=True)
class DialTarget:
    """One peer to dial: its trust-list name, pinned key and base URL."""

    name: str
    key: PublicKey
    url: str


ConnectFn = Callable[[DialTarget], Awaitable[bool]]
"""Dial ``target`` once and run the session to its end.

Returns True when a session was established (handshake done), False when the dial or
handshake failed. Must not raise except ``CancelledError``.
"""


class Dialer:
    """One backoff dial loop per trusted peer with a URL.

    Args:
        connect: dials once and runs the session until it ends (see :data:`ConnectFn`).
        is_connected: whether a session with that key is live right now.
        wait_disconnected: returns once no session with that key is live.
        initial, cap: backoff bounds (seconds).
        stable_after: a session that lasted this long resets the backoff.
        clock, randbytes: injected time and randomness.
    """

    def __init__(
        self,
        connect: ConnectFn,
        is_connected: Callable[[PublicKey], bool],
        wait_disconnected: Callable[[PublicKey], Awaitable[None]],
        *,
        initial: float = 0.5,
        cap: float = 30.0,
        stable_after: float = 10.0,
        clock: Callable[[], float],
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._connect = connect
        self._is_connected = is_connected
        self._wait_disconnected = wait_disconnected
        self._initial = initial
        self._cap = cap
        self._stable_after = stable_after
        self._clock = clock
        self._randbytes = randbytes
        self._tasks: dict[PublicKey, tuple[DialTarget, asyncio.Task[None]]] = {}
        # Loops cancelled by update() until they have finished; stop() awaits them too.
        self._graveyard: set[asyncio.Task[None]] = set()
        self._stopped = False

    def targets(self) -> list[DialTarget]:
        """The peers currently being dialled."""
        return [target for target, _ in self._tasks.values()]

    def update(self, targets: list[DialTarget]) -> None:
        """Dial exactly ``targets`` from now on: start loops for new peers, cancel loops
        for peers gone or whose URL changed. Cancelled loops are awaited by
        :meth:`stop` (they end at their next await)."""
        if self._stopped:
            return
        wanted = {t.key: t for t in targets}
        for key, (target, task) in list(self._tasks.items()):
            if wanted.get(key) != target:
                task.cancel()
                del self._tasks[key]
                self._graveyard.add(task)
                task.add_done_callback(self._graveyard.discard)
        for key, target in wanted.items():
            if key not in self._tasks:
                task = asyncio.create_task(self._loop(target), name=f"dial:{target.name}")
                self._tasks[key] = (target, task)

    async def stop(self) -> None:
        """Cancel every dial loop and wait for all of them to finish."""
        self._stopped = True
        tasks = [task for _, task in self._tasks.values()] + list(self._graveyard)
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, target: DialTarget) -> None:
        backoff = Backoff(self._initial, self._cap, self._randbytes)
        # A small first delay spreads a restarting federation's dials out a little.
        delay = backoff.initial * int.from_bytes(self._randbytes(2), "big") / 2**16 / 4
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            if self._is_connected(target.key):
                # Someone (maybe the peer) already holds the session: wait for its end.
                await self._wait_disconnected(target.key)
                delay = backoff.next_delay() if backoff.attempts else backoff.initial / 2
                continue
            started = self._clock()
            try:
                established = await self._connect(target)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in connect must not kill the loop silently
                log.exception("dial %s: unexpected error", target.name)
                established = False
            if established and self._clock() - started >= self._stable_after:
                backoff.reset()
            delay = backoff.next_delay()
            if not established:
                log.debug("dial %s failed; next attempt in %.1fs", target.name, delay)

