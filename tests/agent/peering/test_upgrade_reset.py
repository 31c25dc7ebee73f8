"""A peer that goes away before the listener has answered its WebSocket upgrade is an
ordinary end of connection, not a server error: found by a chaos run (docs/chaos.md),
where connections reset during the upgrade logged a 30-line ERROR traceback from
aiohttp ("Error handling request ... Cannot write to closing transport") each time, with
no rate limit and no credentials needed. Real parts: a node's replicator behind a real
listener on 127.0.0.1, a real client."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.agent.nodes import Federation


async def test_upgrade_reset_before_the_answer_logs_no_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Federation.start(tmp_path, 1) as fed:
        (node,) = fed.nodes

        async def gone_first(request: web.Request) -> web.StreamResponse:
            # The peer's RST arrived before the 101 could be written.
            assert request.transport is not None
            request.transport.close()
            return await node.repl.handle_peer(request)

        app = web.Application()
        app.router.add_get("/peer/v1", gone_first)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        caplog.set_level(logging.INFO)
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.ws_connect(f"http://127.0.0.1:{port}/peer/v1"):
                            pass
        finally:
            await runner.cleanup()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]
        assert node.running                          # and the node goes on
