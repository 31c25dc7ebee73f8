"""bench/httpload.py: the lean load generator reads every response whole and refuses
anything the run does not expect (real aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.httpload import HttpLoadError, run_load


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path, "auth": request.headers.get("X-Token")})


async def _split(request: web.Request) -> web.StreamResponse:
    """A body sent in pieces, with pauses: the client must wait for all of it."""
    body = json.dumps({"blob": "x" * 70_000}).encode()
    resp = web.StreamResponse()
    resp.content_length = len(body)
    resp.content_type = "application/json"
    await resp.prepare(request)
    for at in range(0, len(body), 10_000):
        await resp.write(body[at:at + 10_000])
        await asyncio.sleep(0.001)
    await resp.write_eof()
    return resp


async def _peer(request: web.Request) -> web.Response:
    """Which client connection asked (its source port)."""
    assert request.transport is not None
    return web.json_response({"peer": request.transport.get_extra_info("peername")[1]})


async def _missing(request: web.Request) -> web.Response:
    return web.json_response({"error": "nope"}, status=404)


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"{}")
    await resp.write_eof()
    return resp


async def _closing(request: web.Request) -> web.Response:
    return web.Response(text="{}", headers={"Connection": "close"})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/ok/{n}", _ok)
    app.router.add_get("/split", _split)
    app.router.add_get("/peer/{n}", _peer)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/closing", _closing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_httpload_warms_up_on_the_same_connections_untimed(port: int) -> None:
    seen: list[tuple[str, int]] = []

    def check(path: str, body: bytes) -> None:
        seen.append((path, json.loads(body)["peer"]))

    warm = [f"/peer/w{i}" for i in range(12)]
    measured = [f"/peer/{i}" for i in range(20)]
    done = await run_load("127.0.0.1", port, measured, connections=3, check=check,
                          warmup=warm)
    assert len(done.latencies) == len(measured)  # the warm-up is not timed
    assert sorted(p for p, _ in seen[:12]) == sorted(warm)  # first, and checked
    assert sorted(p for p, _ in seen[12:]) == sorted(measured)
    assert len({peer for _, peer in seen}) == 3  # the same three connections throughout


async def test_httpload_reads_every_response_and_checks_it(port: int) -> None:
    seen: list[tuple[str, dict[str, str]]] = []
    paths = [f"/ok/{i}" for i in range(50)] + ["/split"] * 5

    def check(path: str, body: bytes) -> None:
        seen.append((path, json.loads(body)))

    done = await run_load("127.0.0.1", port, paths, connections=4,
                          headers=[("X-Token", "t1")], check=check)
    assert len(done.latencies) == len(paths) == len(seen)
    assert all(lat > 0 for lat in done.latencies) and done.seconds > 0
    assert sorted(p for p, _ in seen) == sorted(paths)
    for path, doc in seen:
        if path == "/split":
            assert doc == {"blob": "x" * 70_000}
        else:
            assert doc == {"path": path, "auth": "t1"}


async def test_httpload_refuses_another_status(port: int) -> None:
    with pytest.raises(HttpLoadError, match="HTTP 404"):
        await run_load("127.0.0.1", port, ["/ok/1", "/missing"], connections=1)
    done = await run_load("127.0.0.1", port, ["/missing"], connections=1, expect=404)
    assert len(done.latencies) == 1


async def test_httpload_refuses_a_body_its_check_refuses(port: int) -> None:
    def check(path: str, body: bytes) -> None:
        if json.loads(body)["path"] == "/ok/3":
            raise ValueError("not this one")

    with pytest.raises(HttpLoadError, match="not this one"):
        await run_load("127.0.0.1", port, [f"/ok/{i}" for i in range(6)], connections=2,
                       check=check)


@pytest.mark.parametrize("path", ["/chunked", "/closing"])
async def test_httpload_refuses_framing_it_does_not_measure(port: int, path: str) -> None:
    with pytest.raises(HttpLoadError, match="framing"):
        await run_load("127.0.0.1", port, [path], connections=1)


async def test_httpload_targets_only_loopback() -> None:
    with pytest.raises(ValueError):
        await run_load("10.0.0.1", 80, ["/"], connections=1)
