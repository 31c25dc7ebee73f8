"""The web console against a real node: real data dir, keys, SQLite, and its API and
console served on 127.0.0.1 (aiohttp's test client plays the browser: it keeps
cookies and sends forms)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from protocol.cards import PeerCard, encode_card
from tests.agent._api_helpers import identity
from tests.agent.console._console_helpers import (
    Console,
    csrf_of,
    page,
    post,
    running_console,
    sign_in,
)

PAGES = ("/console/status", "/console/federation", "/console/feed", "/console/search",
         "/console/submit", "/console/aid", "/console/rules", "/console/trust",
         "/console/tokens", "/console/verify", "/console/capabilities",
         "/console/trust/ON/edit", "/console/search?type=ipv4-addr&value=203.0.113.9")


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(tmp_path) as started:
        yield started


async def api(console: Console, method: str, path: str, body: Any = None) -> Any:
    client = await console.browser()
    headers = {"Authorization": f"Bearer {console.tokens['admin']}"}
    async with client.request(method, path, headers=headers, json=body) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def entries(console: Console) -> int:
    return int((await api(console, "GET", "/api/v1/status"))["ledger"]["entries"])


def main_of(text: str) -> str:
    return text[text.index("<main"):]


async def test_console_sign_in_and_out(console: Console) -> None:
    client = await console.browser()
    async with client.get("/console/status", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/console/login?next=")
    status, text = await sign_in(client, "x" * 43)
    assert status == 401 and "not valid on this node" in text
    status, text = await sign_in(client, console.tokens["write"])
    assert status == 200 and "Node QC" in text and "write-1" in text
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))
    assert console.tokens["write"] not in str(cookie)  # the browser never holds the token
    status, text = await post(client, "/console/logout", {})
    assert status == 200 and 'action="/console/login"' in text
    async with client.get("/console/status", allow_redirects=False) as resp:
        assert resp.status == 303


async def test_console_cookies_and_security_headers(console: Console) -> None:
    client = await console.browser()
    async with client.get("/console/login") as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cache-Control"] == "no-store"
        # Not no-referrer: with it Chromium sends "Origin: null" on a form's POST.
        assert resp.headers["Referrer-Policy"] == "same-origin"
        text = await resp.text()
    async with client.post("/console/login", allow_redirects=False, data={
            "token": console.tokens["read"], "csrf": csrf_of(text)}) as resp:
        assert resp.status == 303
        set_cookie = [v for k, v in resp.headers.items() if k == "Set-Cookie"
                      and v.startswith("entraide_console_")
                      and not v.startswith("entraide_console_pre")]
        assert set_cookie, resp.headers
        flags = set_cookie[0].lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/console/" in flags
    # No inline script anywhere; scripts and styles from the console's own files only.
    for path in ("/console/status", "/console/feed"):
        _status, text = await page(client, path)
        assert "<script>" not in text and "style=" not in text
        for src in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert src.startswith(("/console/", "#", "data:")), src


async def test_console_refuses_a_post_without_its_csrf_token(console: Console) -> None:
    client = await console.signed_in("admin")
    before = await entries(console)
    form = {"type": "ipv4-addr", "value": "203.0.113.5", "tlp": "GREEN"}
    for data in (form, {**form, "csrf": "forged"}):
        async with client.post("/console/submit", data=data) as resp:
            assert resp.status == 403
            assert "This form has expired" in await resp.text()
    _status, text = await page(client, "/console/submit")
    async with client.post("/console/submit", data={**form, "csrf": csrf_of(text)},
                           headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403  # another site's page (the API's Origin check)
    other = await console.browser()  # sign-in too needs the form's own token
    async with other.post("/console/login", data={"token": console.tokens["admin"]}) as resp:
        assert resp.status == 403
    assert await entries(console) == before


async def test_console_read_token_sees_no_admin_page_and_changes_nothing(
        console: Console) -> None:
    client = await console.signed_in("read")
    _status, text = await page(client, "/console/status")
    for hidden in ('href="/console/trust"', 'href="/console/tokens"', 'href="/console/submit"'):
        assert hidden not in text
    for path in ("/console/trust", "/console/tokens", "/console/verify", "/console/submit"):
        status, text = await page(client, path)
        assert status == 403 and "scope does not allow" in text, path
    before = await entries(console)
    status, _text = await post(client, "/console/submit",
                               {"type": "ipv4-addr", "value": "203.0.113.5"})
    assert status == 403
    status, _text = await post(client, "/console/tokens", {"scope": "admin"})
    assert status == 403
    assert await entries(console) == before
    assert len(console.node.tokens.records()) == 3


@pytest.mark.parametrize("lang", ["en", "fr"])
async def test_console_every_page_renders_in_each_language(console: Console,
                                                           lang: str) -> None:
    client = await console.signed_in("admin", lang)
    words = {"en": ("Sign out", "Federation"), "fr": ("Se déconnecter", "Fédération")}[lang]
    for path in PAGES:
        status, text = await page(client, path)
        assert status == 200, (path, main_of(text)[:500])
        assert f'<html lang="{lang}">' in text
        assert all(word in text for word in words), path


async def test_console_language_switch_sticks(console: Console) -> None:
    client = await console.signed_in("read", "en")
    async with client.get("/console/lang?to=fr&next=/console/federation") as resp:
        assert str(resp.url).endswith("/console/federation")
        assert '<html lang="fr">' in await resp.text()
    _status, text = await page(client, "/console/rules")
    assert '<html lang="fr">' in text and "Bibliothèque de règles" in text
    async with client.get("/console/lang?to=en&next=https://evil.example/") as resp:
        assert str(resp.url).endswith("/console/status")  # never another site


async def test_console_submit_sighting_and_retract_change_the_ledger(
        console: Console) -> None:
    client = await console.signed_in("write", "fr")
    before = await entries(console)
    status, text = await post(client, "/console/submit", {
        "type": "ipv4-addr", "value": "203.0.113.9", "tlp": "GREEN", "confidence": "80",
        "description_fr": "Serveur de commande", "description_en": "C2 server"},
        csrf_from="/console/submit")
    assert status == 200 and "Observation partagée." in text
    entry = re.search(r"/console/observations/([0-9a-f]{64})/retract", text)
    assert entry, main_of(text)
    oid = entry.group(1)
    assert "Serveur de commande" in text and "C2 server" in text  # both languages shown
    observation = await api(console, "GET", f"/api/v1/observations/{oid}")
    assert observation["value"] == "203.0.113.9" and observation["confidence"] == 80
    status, text = await page(client, "/console/search?type=ipv4-addr&value=203.0.113.9")
    assert status == 200 and oid in text
    status, text = await post(client, f"/console/observations/{oid}/sighting",
                              {"note": "vu ici"}, csrf_from=f"/console/observations/{oid}")
    assert status == 200 and "Détection signalée" in text
    status, text = await post(client, f"/console/observations/{oid}/retract",
                              {"reason": "faux positif"},
                              csrf_from=f"/console/observations/{oid}")
    assert status == 200 and "L&#39;observation est retirée." in text
    assert (await api(console, "GET", f"/api/v1/observations/{oid}"))["retracted"] is True
    assert await entries(console) == before + 3


async def test_console_bad_submission_is_shown_and_writes_nothing(console: Console) -> None:
    client = await console.signed_in("write")
    before = await entries(console)
    status, text = await post(client, "/console/submit",
                              {"type": "ipv4-addr", "value": "not an address"})
    assert status == 422 and 'role="alert"' in text
    assert 'value="not an address"' in text  # the form comes back as filled in
    assert await entries(console) == before


async def test_console_trust_list_add_shows_the_fingerprint_then_remove(
        console: Console) -> None:
    client = await console.signed_in("admin")
    key = identity("BC").public_key
    card = encode_card(PeerCard("BC", key, "https://bc.example"))
    status, text = await post(client, "/console/trust/preview", {"card": card},
                              csrf_from="/console/trust")
    assert status == 200 and key.fingerprint in text
    assert "BC" not in {p["name"] for p in (await api(console, "GET", "/api/v1/peers"))["peers"]}
    status, text = await post(client, "/console/trust/add", {"card": card},
                              csrf_from="/console/trust")
    assert status == 422  # not without the phone check
    status, text = await post(client, "/console/trust/add", {
        "card": card, "confirmed": "yes", "jurisdiction": "British Columbia"},
        csrf_from="/console/trust")
    assert status == 200 and "BC is trusted" in text
    peers = {p["name"]: p for p in (await api(console, "GET", "/api/v1/peers"))["peers"]}
    assert peers["BC"]["fingerprint"] == key.fingerprint
    assert peers["BC"]["jurisdiction"] == "British Columbia"
    status, text = await post(client, "/console/trust/BC/remove", {},
                              csrf_from="/console/trust")
    assert status == 200 and "BC is no longer trusted" in text
    assert "BC" not in {p["name"] for p in (await api(console, "GET", "/api/v1/peers"))["peers"]}


async def test_console_bad_card_is_refused_with_its_reason(console: Console) -> None:
    client = await console.signed_in("admin", "fr")
    status, text = await post(client, "/console/trust/preview",
                              {"card": "entraide1<script>alert(1)</script>"},
                              csrf_from="/console/trust")
    assert status == 422 and "Cette carte est illisible" in text
    assert "<script>alert" not in text  # hostile text is shown escaped


async def test_console_revoked_token_ends_its_session(console: Console) -> None:
    client = await console.signed_in("admin")
    other = await console.signed_in("write")
    status, text = await post(client, "/console/tokens/write-1/revoke", {},
                              csrf_from="/console/tokens")
    assert status == 200 and "write-1 is revoked" in text
    async with other.get("/console/status", allow_redirects=False) as resp:
        assert resp.status == 303 and "/console/login" in resp.headers["Location"]


async def test_console_token_created_is_shown_once(console: Console) -> None:
    client = await console.signed_in("admin")
    status, text = await post(client, "/console/tokens", {"scope": "read", "name": "siem"},
                              csrf_from="/console/tokens")
    assert status == 200
    token = re.search(r'id="new-token">([^<]+)<', text)
    assert token and console.node.tokens.authenticate(token.group(1)) is not None
    _status, text = await page(client, "/console/tokens")
    assert token.group(1) not in text and "siem" in text


async def test_console_verify_shows_the_ledger_result(console: Console) -> None:
    client = await console.signed_in("admin", "fr")
    status, text = await page(client, "/console/verify")
    assert status == 200 and "Chaque signature et chaque chaîne de hachage" in text


async def test_console_aid_request_from_the_form(console: Console) -> None:
    client = await console.signed_in("write")
    status, text = await post(client, "/console/aid", {
        "title": "Ransomware at the hospital", "severity": "high", "tlp": "AMBER",
        "needs": "forensics", "contact_name": "SOC desk", "contact_channel": "+1 555 0100",
        "description_en": "Encrypted file servers"}, csrf_from="/console/aid")
    assert status == 200 and "Your request for assistance is sent." in text
    assert "Ransomware at the hospital" in text and "forensics" in text
    listing = await api(console, "GET", "/api/v1/aid/requests")
    assert [r["title"] for r in listing["requests"]] == ["Ransomware at the hospital"]
    rid = listing["requests"][0]["id"]
    status, text = await post(client, f"/console/aid/{rid}/updates",
                              {"status": "in-progress", "note": "Team on site"},
                              csrf_from=f"/console/aid/{rid}")
    assert status == 200 and "Team on site" in text
    status, text = await post(client, f"/console/aid/{rid}/close", {"summary": "Restored"},
                              csrf_from=f"/console/aid/{rid}")
    assert status == 200 and "The request is closed." in text
    assert (await api(console, "GET", f"/api/v1/aid/requests/{rid}"))["status"] == "closed"


async def test_console_live_feed_relays_the_stream_with_the_session(console: Console) -> None:
    client = await console.signed_in("read")
    async with client.get("/console/stream?type=ipv4-addr") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        await api(console, "POST", "/api/v1/observations",
                  {"type": "ipv4-addr", "value": "198.51.100.4"})
        seen = b""
        async with asyncio.timeout(20):
            while b"198.51.100.4" not in seen:
                seen += await resp.content.readany()
        assert b"event: observation" in seen
    anonymous = await console.browser()
    async with anonymous.get("/console/stream", allow_redirects=False) as resp:
        assert resp.status == 303  # no session, no stream


async def test_console_rules_library_lists_and_exports(console: Console) -> None:
    yara = (Path(__file__).resolve().parents[1] / "tools" / "data"
            / "crash_override.yar").read_text()
    await api(console, "POST", "/api/v1/rules", {
        "rule_type": "yara", "name": "crash", "text": yara,
        "description": {"en": "Industroyer's wiper", "fr": "L'effaceur d'Industroyer"}})
    client = await console.signed_in("read", "fr")
    status, text = await page(client, "/console/rules?type=yara")
    assert status == 200 and "crash" in text and "L&#39;effaceur d&#39;Industroyer" in text
    async with client.get("/console/rules/export?type=yara") as resp:
        assert resp.status == 200
        assert 'filename="entraide-yara.yar"' in resp.headers["Content-Disposition"]
        assert "rule" in await resp.text()
    status, text = await page(client, "/console/rules/export?type=nope")
    assert status == 422 and "Choisissez un type de règle" in text


async def test_console_shows_hostile_text_as_text(console: Console) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    created = await api(console, "POST", "/api/v1/observations", {
        "type": "domain-name", "value": "evil.example", "tags": ["<b>tag</b>"],
        "description": {"en": hostile, "fr": hostile}})
    client = await console.signed_in("read")
    for path in (f"/console/observations/{created['id']}",
                 "/console/search?type=domain-name&value=evil.example"):
        status, text = await page(client, path)
        assert status == 200
        assert "<img src=x" not in text and "<b>tag" not in text, path
        if "/observations/" in path:
            assert "&lt;img src=x onerror=" in text and "&lt;b&gt;tag" in text


async def test_console_message_after_a_change_survives_an_error_page(
        console: Console) -> None:
    # Another tab's request failing in between (a feed stream cut, a bad link) must
    # not eat the message meant for the page the change leads to.
    client = await console.signed_in("write")
    _status, text = await page(client, "/console/submit")
    async with client.post("/console/submit", allow_redirects=False, data={
            "type": "ipv4-addr", "value": "203.0.113.77", "csrf": csrf_of(text)}) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    status, _text = await page(client, "/console/observations/nothex")
    assert status == 404
    status, text = await page(client, location)
    assert status == 200 and "Observation shared." in text


async def test_console_two_nodes_on_one_host_keep_their_own_sessions(tmp_path: Path) -> None:
    # Browsers share cookies between the ports of a host (a local federation).
    jar = aiohttp.CookieJar(unsafe=True)
    async with running_console(tmp_path / "a", "QC") as qc, \
            running_console(tmp_path / "b", "ON", peers=("QC",)) as on, \
            aiohttp.ClientSession(cookie_jar=jar) as browser:
        for node in (qc, on):
            base = str(node.server.make_url("/"))
            async with browser.get(base + "console/login") as resp:
                csrf = csrf_of(await resp.text())
            async with browser.post(base + "console/login", data={
                    "token": node.tokens["read"], "csrf": csrf}) as resp:
                assert resp.status == 200
        for node, name in ((qc, "QC"), (on, "ON")):
            async with browser.get(str(node.server.make_url("/console/status"))) as resp:
                assert resp.status == 200 and f"Node {name}" in await resp.text()
