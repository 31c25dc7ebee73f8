"""The console's peer lag, trust-list edits and expertise directory against a real node
(real data dir, keys, SQLite; API and console on 127.0.0.1; aiohttp's client plays the
browser): every change goes through the API, needs the admin scope and the session's
CSRF token, and a refused one changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.settings import load_trust_list
from protocol.cards import PeerCard, encode_card
from tests.agent._api_helpers import identity
from tests.agent.console._console_helpers import (
    Console,
    csrf_of,
    page,
    post,
    running_console,
)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(tmp_path, peers=("ON", "FED")) as started:
        yield started


def main_of(text: str) -> str:
    return text[text.index("<main"):]


def peers_toml(console: Console) -> bytes:
    return console.node.data_dir.peers_path.read_bytes()


@pytest.mark.parametrize(("lang", "words"), [("en", ("Entries it lacks", "Entries we lack")),
                                             ("fr", ("Entrées qui lui manquent",
                                                     "Entrées qui nous manquent"))])
async def test_console_federation_shows_each_peers_lag(console: Console, lang: str,
                                                       words: tuple[str, str]) -> None:
    client = await console.signed_in("read", lang)
    status, text = await page(client, "/console/federation")
    assert status == 200
    assert all(word in text for word in words)
    row = main_of(text).split('data-peer="ON"')[1].split("</tr>")[0]
    assert row.count('class="num') == 2 and "—" in row  # never heard: no figure yet


async def test_console_trust_edit_changes_url_and_jurisdiction(console: Console) -> None:
    client = await console.signed_in("admin")
    status, text = await page(client, "/console/trust")
    assert 'href="/console/trust/ON/edit"' in text
    status, text = await page(client, "/console/trust/ON/edit")
    assert status == 200 and identity("ON").public_key.fingerprint in text
    status, text = await post(client, "/console/trust/ON/update", {
        "url": "https://on.example:8471", "jurisdiction": "Ontario"},
        csrf_from="/console/trust/ON/edit")
    assert status == 200 and "ON is updated" in text
    entry = load_trust_list(console.node.data_dir).by_name("ON")
    assert entry is not None and entry.url == "https://on.example:8471"
    assert entry.jurisdiction == "Ontario"
    # A bad URL: the API's reason on the form, the file untouched.
    before = peers_toml(console)
    status, text = await post(client, "/console/trust/ON/update", {
        "url": "ftp://on.example", "jurisdiction": "Ontario"},
        csrf_from="/console/trust/ON/edit")
    assert status == 422 and 'role="alert"' in text and 'value="ftp://on.example"' in text
    assert peers_toml(console) == before
    status, text = await post(client, "/console/trust/ON/update", {
        "url": "", "jurisdiction": ""}, csrf_from="/console/trust/ON/edit")
    entry = load_trust_list(console.node.data_dir).by_name("ON")
    assert status == 200 and entry is not None and entry.url is None
    assert entry.jurisdiction is None


@pytest.mark.parametrize("lang", ["en", "fr"])
async def test_console_trust_new_key_from_card_shows_fingerprint_first(
        console: Console, lang: str) -> None:
    client = await console.signed_in("admin", lang)
    new = identity("ON-2").public_key
    card = encode_card(PeerCard("ON", new, "https://on2.example"))
    before = peers_toml(console)
    status, text = await post(client, "/console/trust/ON/card", {"card": card},
                              csrf_from="/console/trust/ON/edit")
    assert status == 200 and new.fingerprint in text
    assert identity("ON").public_key.fingerprint in text  # the current one, to compare
    assert peers_toml(console) == before  # read, not applied
    status, text = await post(client, "/console/trust/ON/key", {"card": card},
                              csrf_from="/console/trust/ON/edit")
    assert status == 422 and peers_toml(console) == before  # not confirmed
    status, text = await post(client, "/console/trust/ON/key",
                              {"card": card, "confirmed": "yes"},
                              csrf_from="/console/trust/ON/edit")
    assert status == 200
    entry = load_trust_list(console.node.data_dir).by_name("ON")
    assert entry is not None and entry.key == new and entry.url == "https://on2.example"
    assert new in console.node.trust


async def test_console_trust_card_of_another_peer_or_garbage_is_refused(
        console: Console) -> None:
    client = await console.signed_in("admin", "fr")
    before = peers_toml(console)
    other = encode_card(PeerCard("AB", identity("AB").public_key, None))
    status, text = await post(client, "/console/trust/ON/card", {"card": other},
                              csrf_from="/console/trust/ON/edit")
    assert status == 422 and "Cette carte est celle de AB, pas de ON." in text
    status, text = await post(client, "/console/trust/ON/card", {"card": "entraide1.x"},
                              csrf_from="/console/trust/ON/edit")
    assert status == 422 and "Cette carte est illisible" in text
    status, text = await post(client, "/console/trust/ON/key", {
        "card": other, "confirmed": "yes"}, csrf_from="/console/trust/ON/edit")
    assert status == 422
    assert peers_toml(console) == before
    status, _text = await page(client, "/console/trust/NOPE/edit")
    assert status == 404


@pytest.mark.parametrize("scope", ["read", "write"])
async def test_console_trust_edit_refused_below_admin(console: Console, scope: str) -> None:
    client = await console.signed_in(scope)
    before = peers_toml(console)
    status, text = await page(client, "/console/trust/ON/edit")
    assert status == 403 and "scope does not allow" in text
    card = encode_card(PeerCard("ON", identity("ON-2").public_key, None))
    for path, data in (("/console/trust/ON/update", {"url": "https://x.example"}),
                       ("/console/trust/ON/card", {"card": card}),
                       ("/console/trust/ON/key", {"card": card, "confirmed": "yes"})):
        status, text = await post(client, path, data)
        assert status == 403, path
    assert peers_toml(console) == before


async def test_console_trust_edit_without_csrf_changes_nothing(console: Console) -> None:
    client = await console.signed_in("admin")
    before = peers_toml(console)
    status, _text = await post(client, "/console/trust/ON/update",
                               {"url": "https://x.example", "csrf": "forged"})
    assert status == 403 and peers_toml(console) == before


async def _publish(client: Any, **fields: Any) -> tuple[int, str]:
    data: list[tuple[str, str]] = [(k, v) for k, v in fields.items() if k != "skills"]
    data += [("skills", s) for s in fields.get("skills", ())]
    _status, text = await page(client, "/console/capabilities")
    data.append(("csrf", csrf_of(text)))
    async with client.post("/console/capabilities", data=data) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("lang", ["en", "fr"])
async def test_console_directory_publish_then_filter(console: Console, lang: str) -> None:
    client = await console.signed_in("admin", lang)
    status, text = await page(client, "/console/capabilities")
    assert status == 200 and 'id="profile-form"' in text
    assert 'href="/console/capabilities"' in text  # in the navigation
    status, text = await _publish(client, skills=("forensics", "malware-analysis"),
                                  languages="fr, en", hours="24/7", available="yes",
                                  contact_name="CCO Québec", contact_channel="+1 418 555 0100",
                                  detail_fr="Équipe de réponse", tlp="GREEN")
    assert status == 200, main_of(text)[:800]
    assert {"en": "profile is published", "fr": "profil de ce nœud est publié"}[lang] in text
    row = main_of(text).split('data-origin="QC"')[1].split("</tr>")[0]
    assert "CCO Québec" in row and "24/7" in row and "fr, en" in row
    assert {"en": "forensics", "fr": "criminalistique"}[lang] in row
    # The form starts from the published profile.
    assert 'id="skill-forensics" name="skills" value="forensics" checked' in text
    for query, found in (("need=forensics&language=fr&available=true", True),
                         ("need=recovery", False), ("language=iu", False),
                         ("need=bogus&language=%3Cx%3E", True)):  # bad filters: dropped
        status, text = await page(client, f"/console/capabilities?{query}")
        assert status == 200 and ('data-origin="QC"' in text) is found, query


async def test_console_directory_read_token_sees_it_but_cannot_publish(
        console: Console) -> None:
    admin = await console.signed_in("admin")
    await _publish(admin, skills=("recovery",), languages="en", available="yes")
    for scope in ("read", "write"):
        client = await console.signed_in(scope)
        status, text = await page(client, "/console/capabilities")
        assert status == 200 and 'data-origin="QC"' in text
        assert 'id="profile-form"' not in text
        status, text = await post(client, "/console/capabilities",
                                  {"skills": "forensics", "languages": "fr"},
                                  csrf_from="/console/capabilities")
        assert status == 403, scope
    status, text = await page(admin, "/console/capabilities?need=forensics")
    assert 'data-origin="QC"' not in text  # still the admin's profile: recovery only


async def test_console_directory_bad_profile_is_shown_and_publishes_nothing(
        console: Console) -> None:
    client = await console.signed_in("admin")
    before = console.node.ledger.counts().entries
    status, text = await _publish(client, languages="not a language!", available="yes",
                                  hours="x" * 10)
    assert status == 422 and 'role="alert"' in text
    assert 'value="not a language!"' in text
    assert console.node.ledger.counts().entries == before
