"""ERROR lines for failures a client can repeat at will, rate-limited.

A node whose disk is full refuses every write with 507 ``storage_full``; a client that
retries in a loop would otherwise write one ERROR line per attempt, onto a log that
may live on the very disk that is full. :class:`FailureLog` writes the first line of a
kind, then at most one line per kind every ``interval`` seconds, which says how many
were left out since the one before. The limit is the peers' refusal log's
(:class:`agent.peering.registry.RateLimitedLog`), not a second implementation.

Invariant: memory is bounded (the kinds are the callers' fixed strings, never text
a client chose; the limiter's table is capped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from agent.peering.registry import RateLimitedLog

__all__ = ["FAILURE_LOG", "FailureLog"]


class FailureLog:
    """At most one ERROR line per kind every ``interval`` seconds.

    Args:
        logger: where lines go.
        interval: seconds between two lines of one kind.
        clock: monotonic seconds (``clock`` may be replaced later: tests move time).
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._logger = logger
        self._interval = interval
        self._limit = RateLimitedLog(interval, lambda: self.clock())
        self._left_out: dict[str, int] = {}

    def error(self, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` at ERROR unless a line of ``kind`` went out within
        the interval (then it is counted, and told with the next line). Returns
        whether a line was written."""
        if not self._limit.allow(kind):
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return False
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            self._logger.error(message + " (%d more like it not logged, at most one line "
                               "per %g s)", *args, left_out, self._interval)
        else:
            self._logger.error(message, *args)
        return True


FAILURE_LOG = web.AppKey("failure_log", FailureLog)
"""On the local API's root app (agent/api/app.py); the TAXII sub-app uses it too."""
