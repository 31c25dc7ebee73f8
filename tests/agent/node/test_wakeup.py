"""The watchers' wait for a wake-up never loses a cancellation (agent/node/wakeup.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.node.node import Node
from agent.node.wakeup import wait_event
from protocol.entries import TLP, sign_entry
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import identity, make_data_dir


async def _wait_for(event: asyncio.Event, timeout: float) -> bool:
    """What the watchers did before: asyncio.wait_for on the event."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
        return True
    return False


async def _cancelled_as_set(wait: Callable[[asyncio.Event, float], Awaitable[bool]]) -> bool:
    """Set the event and cancel the waiter in the same loop iteration: True when the
    waiter raised CancelledError."""
    event = asyncio.Event()
    task = asyncio.create_task(wait(event, 60))
    for _ in range(3):
        await asyncio.sleep(0)  # the waiter is inside event.wait()
    event.set()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


async def test_a_cancel_that_comes_with_the_event_is_not_lost() -> None:
    assert await _cancelled_as_set(wait_event)
    if sys.version_info < (3, 12):  # the reason for the helper: wait_for lost it
        assert not await _cancelled_as_set(_wait_for)


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert not await wait_event(event, 0.01)
    event.set()
    assert await wait_event(event, 60)


async def test_a_node_stops_right_after_a_commit(tmp_path: Path) -> None:
    """A commit wakes every watcher; a stop in the same instant used to be swallowed
    by one of them, and the node never stopped (found as three 300 s test timeouts)."""
    data_dir = make_data_dir(tmp_path, "QC", ("ON",))
    entry = sign_entry(identity("ON"), seq=1, prev=None, now_ms=1_700_000_000_000,
                       tlp=TLP.CLEAR, audience=None,
                       body=encode_payload(Observation(type="ipv4-addr", value="192.0.2.9")))

    async def commit_then_stop() -> None:
        async with Node.open(data_dir) as node:
            assert (await node.ledger.ingest([entry])).stored == 1

    await asyncio.wait_for(commit_then_stop(), 30)  # a hang fails here, not at 300 s
