from __future__ import annotations

import os

from agent.workers.spawned import SpawnedWorker


def _fail_warm_up() -> None:
    raise RuntimeError("cannot start")


def _ok_warm_up() -> None:
    pass


def _fail(message: str) -> None:
    raise ValueError(message)


async def test_worker_that_cannot_start_is_never_usable() -> None:
    worker = SpawnedWorker("test worker", "doing it here", _fail_warm_up)
    try:
        assert not await worker.ready()
        assert worker.broken and not worker.running and not worker.usable()
    finally:
        await worker.close()


async def test_worker_runs_calls_until_one_fails_then_is_not_used_again() -> None:
    worker = SpawnedWorker("test worker", "doing it here", _ok_warm_up)
    try:
        assert not worker.usable()  # the first call starts it
        assert await worker.ready() and worker.running
        assert await worker.call(os.getpid) != os.getpid()  # in another process
        try:
            await worker.call(_fail, "boom")
        except ValueError as exc:
            assert str(exc) == "boom"
        else:
            raise AssertionError("the call's error was not raised")
        assert worker.broken and not worker.usable() and not await worker.ready()
    finally:
        await worker.close()
    assert worker.pool is None


async def test_disabled_worker_never_starts() -> None:
    worker = SpawnedWorker("test worker", "doing it here", _ok_warm_up, enabled=False)
    assert not worker.usable() and not await worker.ready()
    assert worker.pool is None
    await worker.close()
