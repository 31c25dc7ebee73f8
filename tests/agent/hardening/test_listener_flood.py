"""A real node under 1,024 open files survives 1,100 idle connections on each of its
listeners (issue 17: they exhausted the descriptors, both listeners stopped accepting and
the log grew by tens of MB from accept errors)."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from agent.cli.localfed import free_ports

FLOOD = 1100
NOFILE = 1024
WAIT = 60.0  # a bound against hanging, not a timing claim


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "agent.cli", *args], check=True,
                   capture_output=True, text=True, timeout=60)


def _low_nofile() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def _flood(port: int, source: str) -> list[asyncio.StreamWriter]:
    """``FLOOD`` idle connections from ``source``; those closed at once are not kept."""
    writers = []
    for _ in range(FLOOD):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port,
                                                      local_addr=(source, 0))
        except OSError:
            continue
        writers.append(writer)
    return writers


async def _probe(api: int, peer: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http, \
            http.get(f"http://127.0.0.1:{api}/api/v1/health") as response:
        assert response.status == 200
    # A peer from another address still gets to the handshake (its 101 upgrade).
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as http, \
            http.ws_connect(f"http://127.0.0.1:{peer}/peer/v1") as ws:
        assert not ws.closed


@pytest.mark.slow
def test_idle_connection_flood_leaves_both_listeners_up_under_1024_files(
        tmp_path: Path) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < FLOOD + 200:
        pytest.skip("this process cannot open the flood's connections")
    api, peer = free_ports(2)
    data = str(tmp_path / "node")
    _cli("init", "--data-dir", data, "--name", "QC", "--api-port", str(api),
         "--peer-port", str(peer), "--peer-host", "127.0.0.1")
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--data-dir", data],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            preexec_fn=_low_nofile, env={k: v for k, v in os.environ.items()
                                         if k != "ENTRAIDE_PASSPHRASE"})
    try:
        deadline = time.monotonic() + WAIT
        while b"running" not in stderr.read_bytes():
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the node did not start in time"
            time.sleep(0.1)

        async def scenario() -> None:
            # The peer listener from one address, as in the finding; the local API
            # from another one (local tools, on 127.0.0.1, must still get in).
            writers = await _flood(peer, "127.0.0.1") + await _flood(api, "127.0.0.3")
            try:
                await _probe(api, peer)
            finally:
                for writer in writers:
                    writer.close()

        asyncio.run(scenario())
        assert process.poll() is None, "the node died"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=WAIT)
    log = stderr.read_text()
    assert "open-file limit" in log
    assert "peer listener: connection from 127.0.0.1 closed (per_address" in log
    assert "api listener: connection from 127.0.0.3 closed (per_address" in log
    assert "cannot accept" not in log
    assert len(log.splitlines()) < 40, log  # one line per reason, not one per connection
