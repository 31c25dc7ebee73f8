"""The TAXII server's messages in the reader's language: error titles and descriptions,
and each object's message in a status resource, by ``Accept-Language`` as the REST API
answers (English by default; ``fr-CA`` is French). The media types and TAXII's
required fields never change."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.taxii.app import API_ROOT
from protocol.entries import TLP
from protocol.stix import TLP2_MARKINGS
from tests.agent._api_helpers import Api, running_api
from tests.agent.taxii.test_taxii import MEDIA, indicator, raw

OBJECTS = f"{API_ROOT}collections/local/objects/"
FR = {"Accept-Language": "fr-CA"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


def post(data: bytes, **headers: str) -> dict[str, Any]:
    return {"scope": "write", "data": data, "headers": {"Content-Type": MEDIA, **headers}}


# (method, path, options, status, English description, French description, French title)
CASES: list[tuple[str, str, dict[str, Any], int, str, str, str]] = [
    ("GET", f"{API_ROOT}collections/nope/objects/", {}, 404,
     "no such collection", "collection introuvable", "Introuvable"),
    ("POST", OBJECTS, post(b'{"objects": []}', **{"Content-Type": "application/json"}), 415,
     f"post a TAXII envelope as {MEDIA}; the Content-Type was 'application/json'",
     f"envoyez une enveloppe TAXII en {MEDIA}; le Content-Type était 'application/json'",
     "Type de média non pris en charge"),
    ("POST", OBJECTS, post(b'{"type": "indicator"}'), 422,
     'the body is a bare STIX object; post it inside a TAXII envelope: '
     '{"objects": [<the object>]}',
     'le corps est un objet STIX seul; envoyez-le dans une enveloppe TAXII : '
     '{"objects": [<l\'objet>]}', "Entité non traitable"),
    ("POST", OBJECTS, post(b"{not json"), 400,
     "the body is not UTF-8 JSON: ", "le corps n'est pas du JSON en UTF-8 : ",
     "Requête incorrecte"),
    ("GET", OBJECTS + "?limit=0", {}, 400,
     "limit must be a positive integer", "limit doit être un entier positif",
     "Requête incorrecte"),
]


async def test_taxii_errors_in_english_by_default_and_in_french_for_fr_ca(api: Api) -> None:
    entries = api.node.ledger.counts().entries
    for method, path, options, status, english, french, title in CASES:
        for extra, description in (({}, english), (FR, french)):
            opts = {**options, "headers": {**options.get("headers", {}), **extra}}
            got, body, headers = await raw(api, method, path, **opts)
            assert got == status, (path, got, body)
            assert headers["Content-Type"] == MEDIA
            assert body["http_status"] == str(status) and body["error_code"]
            assert body["description"].startswith(description), body
            assert headers["Content-Language"] == ("fr" if extra else "en")
            if extra:
                assert body["title"] == title
    assert api.node.ledger.counts().entries == entries


async def test_taxii_406_without_taxii_accept_is_the_api_error_in_french(api: Api) -> None:
    for lang, start in (("en", "this server answers"), ("fr-CA", "ce serveur ne répond")):
        status, body, headers = await raw(api, "GET", "/taxii2/", headers={
            "Accept": "application/json", "Accept-Language": lang})
        assert status == 406 and body["error"]["code"] == "not_acceptable"
        assert headers["Content-Language"] == lang[:2]
        assert body["error"]["message"].startswith(start), body


async def test_taxii_status_messages_follow_the_readers_language(api: Api) -> None:
    envelope = json.dumps({"objects": [
        indicator(1), indicator(2, object_marking_refs=[TLP2_MARKINGS[TLP.RED]])]}).encode()
    status, doc, headers = await raw(api, "POST", OBJECTS, **post(envelope, **FR))
    assert status == 202 and headers["Content-Type"] == MEDIA
    assert headers["Content-Language"] == "fr"
    assert doc["total_count"] == 2 and doc["success_count"] == 1
    assert doc["successes"][0]["message"].startswith("entrée ")
    assert doc["successes"][0]["message"].endswith("aussi partagé comme observation Entraide")
    assert doc["failures"][0]["message"].startswith("TLP:RED exige une audience explicite")
    # Kept in English, shown in each reader's language.
    path = f"{API_ROOT}status/{doc['id']}/"
    _, english, _ = await raw(api, "GET", path)
    assert english["failures"][0]["message"].startswith("TLP:RED needs an explicit audience")
    assert english["successes"][0]["message"].endswith("also shared as an Entraide observation")
    _, french, _ = await raw(api, "GET", path, headers=FR)
    assert french["failures"] == doc["failures"]
    # Posted again: already there, said in French.
    _, again, _ = await raw(api, "POST", OBJECTS, **post(envelope, **FR))
    assert again["successes"][0]["message"] == "déjà dans la collection"
