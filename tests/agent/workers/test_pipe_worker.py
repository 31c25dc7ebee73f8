"""agent/workers/pipe.py: calls answered in order by a real worker process, and every
way a worker can fail ends in WorkerFailed, never in a hang."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import pytest

from agent.workers.pipe import PipeWorker, WorkerFailed
from agent.workers.policy import RESTART, RestartPolicy
from protocol.errors import EntraideError

WAIT = 20.0  # a guard against hanging, not a latency requirement


def _worker(handler: str, before: str = "") -> list[str]:
    """A worker serving ``lambda body: <handler>``; ``before`` runs first."""
    code = (f"import sys, time, os\n{before}\nfrom agent.workers.pipe import serve\n"
            f"serve(lambda body: {handler})")
    return [sys.executable, "-c", code]


def _same(reply: Any) -> Any:
    return reply


async def _ready(worker: PipeWorker) -> None:
    assert await asyncio.wait_for(worker.ready(), WAIT)


async def test_calls_are_answered_by_the_process() -> None:
    worker = PipeWorker("echo", _worker("[body, os.getpid()]"))
    try:
        await _ready(worker)
        replies = await asyncio.gather(*(worker.call({"n": i, "b": b"x" * i}, _same)
                                         for i in range(50)))
        assert [r[0] for r in replies] == [{"n": i, "b": b"x" * i} for i in range(50)]
        assert {r[1] for r in replies} == {worker.pid} and worker.pid != os.getpid()
        assert worker.answered == 50 and worker.failures == 0
    finally:
        await worker.close()
    assert worker.pid is None


async def test_a_worker_that_exits_fails_its_calls_and_is_replaced() -> None:
    worker = PipeWorker("exits", _worker("os._exit(3) if body == 'die' else body"))
    try:
        await _ready(worker)
        first = worker.pid
        with pytest.raises(WorkerFailed):
            await asyncio.wait_for(worker.call("die", _same), WAIT)
        assert worker.failures == 1 and worker.pid is None
        await _ready(worker)
        assert worker.pid not in (None, first)
        assert await worker.call("fine", _same) == "fine"
        assert worker.failures == 0  # an answer resets the count
    finally:
        await worker.close()


@pytest.mark.parametrize("handler", [
    "sys.__stdout__.buffer.write(b'\\x00\\x00\\x00\\x05garbage') or sys.__stdout__.buffer.flush()"
    " or time.sleep(30)",
    "sys.__stdout__.buffer.write(b'\\xff\\xff\\xff\\xff') or sys.__stdout__.buffer.flush()"
    " or time.sleep(30)",
    "time.sleep(30)",
], ids=["garbage", "oversized frame", "too slow"])
async def test_a_worker_that_misbehaves_is_killed(handler: str) -> None:
    worker = PipeWorker("bad", _worker(handler), deadline=1.0, max_frame=1 << 20)
    try:
        await _ready(worker)
        pid = worker.pid
        assert pid is not None
        with pytest.raises(WorkerFailed):
            await asyncio.wait_for(worker.call("x", _same), WAIT)
        assert worker.pid is None and worker.failures == 1
        for _ in range(200):  # killed, not left running
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the worker still runs")
    finally:
        await worker.close()


async def test_replies_the_caller_refuses_count_as_failures_until_given_up() -> None:
    def strict(reply: Any) -> str:
        if reply != "ok":
            raise ValueError(f"not ok: {reply!r}")
        return "ok"

    worker = PipeWorker("liar", _worker("'lie'"), max_failures=2)
    try:
        for attempt in (1, 2):
            await _ready(worker)
            with pytest.raises(WorkerFailed):
                await asyncio.wait_for(worker.call("x", strict), WAIT)
            assert worker.failures == attempt and worker.pid is None
        assert worker.disabled and not worker.usable()
    finally:
        await worker.close()


async def test_a_worker_that_cannot_start_is_given_up_after_three_failures() -> None:
    worker = PipeWorker("broken", _worker("body", before="raise SystemExit(1)"),
                        max_failures=3)
    try:
        for attempt in range(1, 4):
            assert not await asyncio.wait_for(worker.ready(), WAIT)
            assert worker.failures == attempt
        assert worker.disabled and not worker.usable()
        with pytest.raises(WorkerFailed):
            await worker.call("x", _same)
    finally:
        await worker.close()


async def test_calls_in_flight_are_bounded() -> None:
    worker = PipeWorker("slow", _worker("time.sleep(0.2) or body"), max_in_flight=2)
    try:
        await _ready(worker)
        waiting = [asyncio.ensure_future(worker.call(i, _same)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(WorkerFailed, match="already wait"):
            await worker.call(3, _same)
        assert await asyncio.wait_for(asyncio.gather(*waiting), WAIT) == [0, 1]
    finally:
        await worker.close()


async def test_disabled_worker_never_starts() -> None:
    worker = PipeWorker("off", _worker("body"), enabled=False)
    assert not worker.usable() and not await worker.ready()
    with pytest.raises(WorkerFailed):
        await worker.call("x", _same)
    await worker.close()


async def test_a_failed_worker_starts_again_only_after_the_policy_delay() -> None:
    policy = RestartPolicy(first_s=0.3, most_s=1.0, max_failures=3)
    worker = PipeWorker("exits", _worker("os._exit(3)"), policy=policy)
    try:
        await _ready(worker)
        with pytest.raises(WorkerFailed):
            await asyncio.wait_for(worker.call("die", _same), WAIT)
        assert not worker.usable()  # within the delay: nothing starts
        await asyncio.sleep(0.01)
        assert worker.pid is None and not worker.running
        started = asyncio.get_running_loop().time()
        await _ready(worker)  # waits out the delay, then starts
        assert asyncio.get_running_loop().time() - started >= 0.25
    finally:
        await worker.close()


@pytest.mark.slow
async def test_workers_started_and_stopped_are_reaped_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """The loop's child watcher is the one owner that reaps a worker: stopping workers
    (stdin closed, as on node shutdown) and killing one that misbehaves log no "Unknown
    child process pid N" (the watcher finding its child reaped by someone else), and
    leave no child unreaped. Several at once, three times: the race was one worker in
    four or so."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    pids: list[int] = []
    for _ in range(3):
        workers = [PipeWorker("echo", _worker("body")) for _ in range(6)]
        await asyncio.gather(*(_ready(w) for w in workers))
        pids += [w.pid for w in workers if w.pid is not None]
        await asyncio.gather(*(w.close() for w in workers))
    killed = PipeWorker("exits", _worker("os._exit(3) if body == 'die' else body"))
    try:
        await _ready(killed)
        with pytest.raises(WorkerFailed):
            await asyncio.wait_for(killed.call("die", _same), WAIT)
    finally:
        await killed.close()
    await asyncio.sleep(0)  # transports close on the watcher's callback
    unknown = [r.getMessage() for r in caplog.records if "Unknown child" in r.getMessage()]
    assert unknown == []
    assert len(pids) == 18
    for pid in pids:
        with pytest.raises(ChildProcessError):  # reaped: no zombie left
            os.waitpid(pid, os.WNOHANG)


def test_the_restart_policy_doubles_its_delay_and_gives_up() -> None:
    assert [RESTART.delay(n) for n in range(7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert not RESTART.gives_up(2) and RESTART.gives_up(3)


def test_worker_failed_is_an_entraide_error() -> None:
    assert issubclass(WorkerFailed, EntraideError)
