"""``entraide doctor``: each check's ok and fail, from what it looks at; the command on a
stopped node (node fails, the node's checks are skipped, exit 1) and on a running node
(its real API: health, status, peers, forks), in text and JSON."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.cli import doctor
from agent.cli.doctor import (
    FD_NEEDED,
    check_clock_skew,
    check_data_dir,
    check_disk,
    check_fd_limit,
    check_forks,
    check_key_file,
    check_peers,
    check_schema,
)
from agent.cli.main import main
from agent.storage.schema import SCHEMA_VERSION
from tests.agent._api_helpers import make_data_dir, running_api

GIB = 1 << 30


def test_doctor_file_checks_ok_and_fail() -> None:
    assert check_data_dir(0o40700).status == "ok"
    assert check_data_dir(0o40750).status == "fail"
    assert check_key_file(0o100600).status == "ok"
    assert check_key_file(0o100400).status == "ok"
    assert check_key_file(0o100644).status == "fail"
    assert check_key_file(None).status == "fail"


def test_doctor_schema_disk_and_fd_checks_ok_and_fail() -> None:
    assert check_schema(SCHEMA_VERSION).status == "ok"
    assert check_schema(SCHEMA_VERSION + 1).status == "fail"
    assert check_schema(None).status == "warn"
    assert check_schema(1, current=2).status == "warn"
    assert check_disk(100 * GIB, 200 * GIB).status == "ok"
    assert check_disk(GIB // 2, 200 * GIB).status == "fail"  # too few bytes
    assert check_disk(4 * GIB, 200 * GIB).status == "fail"  # too small a share
    assert check_disk(3 * GIB, 20 * GIB).status == "warn"
    assert check_fd_limit(65536, "x").status == "ok"
    assert check_fd_limit(1024, "x").status == "fail"
    assert check_fd_limit(FD_NEEDED, "x").status == "warn"


def test_doctor_peer_skew_and_fork_checks_ok_and_fail() -> None:
    now = int(time.time() * 1000)
    up = {"name": "ON", "url": "http://on", "connected": True, "last_seen": None}
    down = {"name": "BC", "url": "http://bc", "connected": False,
            "last_seen": "2020-01-01T00:00:00.000Z"}
    assert check_peers([up], now).status == "ok"
    assert check_peers([up, down], now).status == "warn"
    failed = check_peers([down], now)
    assert failed.status == "fail" and "BC (last seen" in failed.detail
    assert check_peers([], now).status == "warn"
    assert check_clock_skew({"ON": 0.4, "BC": -1.0}).status == "ok"
    assert check_clock_skew({"ON": 0.4, "BC": -90.0}).status == "fail"
    assert check_clock_skew({"ON": 10.0}).status == "warn"
    assert check_clock_skew({"ON": None}).status == "skip"
    assert check_forks([]).status == "ok"
    assert check_forks([{"origin_name": "BC", "cleared": "2024-01-01T00:00:00Z"}]).status == "ok"
    pending = check_forks([{"origin_name": "BC", "cleared": None}])
    assert pending.status == "warn" and "BC" in pending.detail


def test_doctor_on_a_stopped_node_fails_the_node_and_skips_its_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dd = make_data_dir(tmp_path, "QC", ("ON",))
    status = main(["doctor", "--data-dir", str(dd.root), "--json", "--api", "http://127.0.0.1:1"])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert status == 1 and not report["ok"]
    assert checks["node"]["status"] == "fail"
    assert checks["peers"]["status"] == "skip" and checks["forks"]["status"] == "skip"
    assert checks["key_file"]["status"] == "ok"
    assert checks["clock_skew"]["status"] == "skip"  # ON's URL answers nothing
    os.chmod(dd.key_path, 0o644)
    assert main(["doctor", "--data-dir", str(dd.root), "--api", "http://127.0.0.1:1"]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("fail  key_file") for line in out.splitlines())


async def _peer_clock(offset_s: float) -> web.AppRunner:
    """A stand-in peer listener whose clock runs ``offset_s`` ahead (its Date header)."""
    async def any_path(request: web.Request) -> web.Response:
        stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + offset_s))
        return web.Response(status=404, headers={"Date": stamp})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", any_path)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def test_doctor_on_a_running_node_reads_its_status_and_measures_skew(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def go() -> tuple[int, str]:
        peer = await _peer_clock(120.0)
        try:
            port = peer.addresses[0][1]
            dd = make_data_dir(tmp_path, "QC", ("ON",))
            peers = (dd.root / "peers.toml").read_text()
            (dd.root / "peers.toml").write_text(
                peers.replace("http://127.0.0.1:1/on", f"http://127.0.0.1:{port}/"))
            async with running_api(tmp_path, "QC", ("ON",)) as api:
                url = str(api.client.make_url("/"))
                status = await asyncio.to_thread(main, [
                    "doctor", "--data-dir", str(dd.root), "--json", "--api", url,
                    "--token", api.tokens["admin"]])
                return status, capsys.readouterr().out
        finally:
            await peer.cleanup()

    status, out = asyncio.run(go())
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["node"]["status"] == "ok"
    assert checks["forks"]["status"] == "ok"
    assert checks["peers"]["status"] == "fail"  # ON is never connected in this test
    assert checks["clock_skew"]["status"] == "fail"
    assert "+119." in checks["clock_skew"]["detail"] or "+120." in checks["clock_skew"]["detail"]
    assert checks["fd_limit"]["detail"].startswith("the running node's")  \
        or "this shell's" in checks["fd_limit"]["detail"]
    assert status == 1


def test_doctor_skew_probe_reads_a_real_date_header() -> None:
    async def go() -> float | None:
        peer = await _peer_clock(-30.0)
        try:
            port = peer.addresses[0][1]
            return await asyncio.to_thread(doctor._probe_skew, f"http://127.0.0.1:{port}/")
        finally:
            await peer.cleanup()

    skew = asyncio.run(go())
    assert skew is not None and -32.0 < skew < -28.0
    assert doctor._probe_skew("http://127.0.0.1:1/") is None
