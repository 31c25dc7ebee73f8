"""Waiting for a wake-up event with a backstop, in a way a cancellation always ends.

On Python 3.11, ``asyncio.wait_for(event.wait(), timeout)`` swallows a cancellation
that arrives in the same loop iteration as the event (CPython gh-86296: it returns the
inner result instead of raising). The node's watchers are woken by every ledger commit
and cancelled by :meth:`agent.node.node.Node.stop`, so a commit just before a stop
made a watcher miss its cancellation and loop on, and ``stop`` waited forever.
``asyncio.timeout`` raises a cancellation that comes from outside whatever else
happened.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass: True if it was set.

    Raises:
        asyncio.CancelledError: the waiting task was cancelled, even as the event was set.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
