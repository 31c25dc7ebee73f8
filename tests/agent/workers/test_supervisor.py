"""agent/workers/supervisor.py: one table of every helper process, one object that opens
and closes them with the API app, one set of metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.metrics import Registry, parse_text
from agent.workers.supervisor import PROCESSES, Supervisor


def test_the_table_lists_every_helper_with_its_wire_and_fall_back() -> None:
    assert [h.name for h in PROCESSES] == ["verify worker", "batch worker", "TAXII judge",
                                           "reader"]
    assert {h.wire for h in PROCESSES} == {"pipe", "fd passing"}
    assert all(h.why and h.count and h.without for h in PROCESSES)


async def test_supervisor_opens_and_closes_with_the_app_and_owns_the_metrics(
        tmp_path: Path) -> None:
    registry = Registry()
    workers = Supervisor(registry, batch=True, judge=False, readers=1, data_dir=tmp_path,
                         ledger_path=tmp_path / "ledger.sqlite3")
    app = web.Application()
    app.cleanup_ctx.append(workers.context)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        samples = parse_text(registry.render())
        for name in ("entraide_batch_worker_up", "entraide_batch_worker_batches_total",
                     "entraide_read_lane_readers", "entraide_read_lane_connections_total",
                     "entraide_read_lane_returned_total"):
            assert samples[name][()] == 0
        assert "entraide_lookup_worker_up" not in samples
        assert await workers.batch.ready()
        assert parse_text(registry.render())["entraide_batch_worker_up"][()] == 1
    finally:
        await server.close()
    assert workers.batch.worker.pid is None and workers.batch.worker.closed
    assert "entraide_batch_worker_up" not in parse_text(registry.render())


async def test_supervisor_pushes_names_and_puts_the_sniffer_in_front_only_with_readers(
        tmp_path: Path) -> None:
    def server() -> asyncio.Protocol:
        return asyncio.Protocol()

    without = Supervisor(Registry(), judge=False)
    assert without.api_protocol(server) is server
    without.trust_changed()  # nothing to tell
    pushed: list[Any] = []
    workers = Supervisor(Registry(), judge=False, readers=2, data_dir=tmp_path,
                         ledger_path=tmp_path / "ledger.sqlite3")
    assert workers.lane is not None
    workers.lane.names_changed = lambda: pushed.append(1)  # type: ignore[method-assign]
    workers.trust_changed()
    assert pushed == [1]
    assert workers.api_protocol(server) is not server and workers.lane.server is server
