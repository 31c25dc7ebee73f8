"""``event: aid`` on GET /api/v1/stream: a request raised while a client listens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.agent._api_helpers import running_api

REQUEST = {"title": "Hospitals hit", "severity": "high", "description": {"fr": "DME en panne"},
           "needs": [{"kind": "forensics"}], "contact": {"name": "BC duty officer"}}


async def test_stream_sends_aid_events(tmp_path: Path) -> None:
    async with running_api(tmp_path, "BC", ("QC",)) as bc:  # noqa: SIM117 (bc needed)
        async with bc.client.get("/api/v1/stream", headers=bc.auth("read")) as resp:
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")  # the preamble
            status, created = await bc.call("POST", "/api/v1/aid/requests", scope="write",
                                            json_body=REQUEST)
            assert status == 201
            block = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
            lines = block.decode().strip().split("\n")
            assert lines[0] == "event: aid"
            data = json.loads(lines[1].removeprefix("data: "))
            assert (data["kind"], data["id"], data["origin_name"], data["status"]) == (
                "request", created["id"], "BC", "open")


async def test_stream_filtered_by_indicator_has_no_aid_events(tmp_path: Path) -> None:
    async with running_api(tmp_path, "BC", ("QC",)) as bc:  # noqa: SIM117 (bc needed)
        async with bc.client.get("/api/v1/stream?type=ipv4-addr",
                                 headers=bc.auth("read")) as resp:
            await resp.content.readuntil(b"\n\n")
            await bc.call("POST", "/api/v1/aid/requests", scope="write", json_body=REQUEST)
            await bc.submit({"type": "ipv4-addr", "value": "203.0.113.9"})
            block = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
            assert block.decode().startswith("event: observation")
            with pytest.raises(TimeoutError):  # the watcher ran (0.2 s): no aid event came
                await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 1.0)
