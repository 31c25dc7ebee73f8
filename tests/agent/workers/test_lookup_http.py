"""What a reader answers itself (agent/workers/lookup_http.py): exactly the plain lookup, and
nothing it is unsure of."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from hypothesis import given
from hypothesis import strategies as st

from agent.workers.lookup_http import HAND_BACK, MAX_HEAD, Lookup, next_request, ok_response

TOKEN = "t" * 43
PATH = "/api/v1/indicators/ipv4-addr/203.0.113.7"


def request(path: str = PATH, *headers: str, line: str | None = None) -> bytes:
    first = line if line is not None else f"GET {path} HTTP/1.1"
    return ("\r\n".join([first, f"Host: {HOST}", *headers]) + "\r\n\r\n").encode()


AUTH = f"Authorization: Bearer {TOKEN}"
HOST = "127.0.0.1:8470"


def test_a_plain_lookup_is_recognised() -> None:
    data = request(PATH, "Accept: */*", AUTH, "User-Agent: curl/8", "Connection: keep-alive")
    assert next_request(data + b"GET /next") == Lookup("ipv4-addr", "203.0.113.7", TOKEN,
                                                        len(data), HOST)
    ipv6 = request("/api/v1/indicators/ipv6-addr/2001:DB8::1", f"authorization:  bearer "
                   f"{TOKEN}  ")
    assert next_request(ipv6) == Lookup("ipv6-addr", "2001:DB8::1", TOKEN, len(ipv6), HOST)


def test_blanks_around_a_field_value_are_not_part_of_it() -> None:
    data = request(PATH, f"Authorization:\t Bearer {TOKEN} \t", "X-Empty:", "X-Pad:  a b  ")
    assert next_request(data) == Lookup("ipv4-addr", "203.0.113.7", TOKEN, len(data), HOST)


def test_more_bytes_are_awaited_only_while_a_lookup_is_possible() -> None:
    data = request(PATH, AUTH)
    for cut in (0, 1, 10, len(data) - 1):
        assert next_request(data[:cut]) is None
    assert next_request(b"POST /api/v1/") is HAND_BACK
    assert next_request(b"GET /api/v1/health") is HAND_BACK
    assert next_request(b"GET /api/v1/indicators/ipv4-addr/" + b"1" * (MAX_HEAD + 10)) \
        is HAND_BACK


@pytest.mark.parametrize("data", [
    request(PATH),  # no token
    request(PATH, AUTH, AUTH),  # two
    request(PATH, "Authorization: Basic dXNlcjpwYXNz"),
    request(PATH, "Authorization: Bearer"),
    request(PATH + "?include_retracted=true", AUTH),
    request(PATH + "#x", AUTH),
    request("/api/v1/indicators/ipv4-addr/203.0.113.%37", AUTH),
    request("/api/v1/indicators/url/http://example.com/x", AUTH),
    request("/api/v1/indicators/ipv4-addr/..", AUTH),
    request("/api/v1/indicators/ipv4-addr/.", AUTH),
    request("/api/v1/indicators/ipv4-addr/", AUTH),
    request("/api/v1/indicators/IPV4-ADDR/203.0.113.7", AUTH),
    request(PATH, AUTH, line=f"GET {PATH} HTTP/1.0"),
    request(PATH, AUTH, line=f"HEAD {PATH} HTTP/1.1"),
    request(PATH, AUTH, line=f"GET  {PATH} HTTP/1.1"),
    request(PATH, AUTH, line=f"GET http://127.0.0.1{PATH} HTTP/1.1"),
    request(PATH, AUTH, "Content-Length: 0"),
    request(PATH, AUTH, "Transfer-Encoding: chunked"),
    request(PATH, AUTH, "Expect: 100-continue"),
    request(PATH, AUTH, "Upgrade: websocket"),
    request(PATH, AUTH, "Connection: close"),
    request(PATH, AUTH, "Connection: Upgrade"),
    request(PATH, AUTH, " folded: continuation"),
    request(PATH, AUTH, "Bad Header: x"),
    request(PATH, AUTH, "X-Tab: a\tb"),
    request(PATH, AUTH, "X-Latin: caf\u00e9"),
    request(PATH, AUTH, "no colon"),
    # Edges httptools (llhttp) decides, or that its answers are checked for:
    request(PATH, AUTH, "X-Nul: a\x00b"),
    request(PATH, AUTH, "X-Del: a\x7fb"),
    request(PATH, AUTH, "Name : value"),
    request(PATH, AUTH, "Connection: keep-alive, Upgrade"),
    request(PATH, AUTH, line=f"GET {PATH} HTTP/1.1 "),
    request(PATH, AUTH, line=f"GET {PATH}HTTP/1.1"),
    request(PATH, AUTH, line=f"GET {PATH}"),
    request(PATH, AUTH, line=f"GET {PATH} HTTP/2.0"),
    request(PATH, f"Authorization: Token {TOKEN}"),
    request(PATH, f"Authorization: Bearer\t{TOKEN}"),
    f"GET {PATH} HTTP/1.1\nHost: t\n{AUTH}\r\n\r\n".encode(),  # bare LF
    f"GET {PATH} HTTP/1.1\r\nHost: t\r{AUTH}\r\n\r\n".encode(),  # bare CR
])
def test_anything_else_goes_back_to_the_node(data: bytes) -> None:
    assert next_request(data) is HAND_BACK


@given(st.binary(max_size=300))
def test_any_bytes_get_a_decision_and_a_lookup_is_whole(data: bytes) -> None:
    found = next_request(data)
    if isinstance(found, Lookup):
        assert data[:found.size].endswith(b"\r\n\r\n")
        assert re.fullmatch(rb"[A-Za-z0-9._:@-]+", found.value.encode())


async def test_the_answer_is_aiohttp_s_bytes() -> None:
    body = b'{"type":"ipv4-addr"}'

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    app = web.Application()
    app.router.add_get("/x", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        got = head + await reader.readexactly(len(body))
        writer.close()
    finally:
        await runner.cleanup()
    date = re.search(rb"\r\nDate: ([^\r]*)", got)
    assert date is not None
    assert ok_response(body, date[1], SERVER_SOFTWARE.encode()) == got


def test_the_host_is_read_and_a_browser_request_goes_back() -> None:
    data = request(PATH, AUTH)
    found = next_request(data)
    assert isinstance(found, Lookup) and found.host == HOST
    # Origin: only browsers send it; the node's middleware judges it, not the reader.
    assert next_request(request(PATH, AUTH, "Origin: http://127.0.0.1:8470")) is HAND_BACK
    twice = f"GET {PATH} HTTP/1.1\r\nHost: a\r\nHost: b\r\n{AUTH}\r\n\r\n".encode()
    assert next_request(twice) is HAND_BACK
    no_host = f"GET {PATH} HTTP/1.1\r\n{AUTH}\r\n\r\n".encode()
    assert next_request(no_host) is HAND_BACK
