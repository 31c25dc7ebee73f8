"""TAXII posts of real data nobody here wrote (tests/data/stix/README.md): OASIS STIX
2.1 example bundles and MITRE ATT&CK for ICS 18.1 objects, posted to a real node's
local collection with the real client, come back exactly as posted; ATT&CK's
collection object (204 KiB) is refused as a size limit; malformed envelopes get the
spec's error, not a 'complete' status with nothing in it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.taxii.app import API_ROOT, COLLECTIONS
from tests.agent._api_helpers import Api, running_api
from tests.agent.taxii.test_taxii import MEDIA, collection, raw, threaded

DATA = Path(__file__).resolve().parents[2] / "data" / "stix"
LOCAL_ID = COLLECTIONS[1].id
OBJECTS = f"{API_ROOT}collections/{LOCAL_ID}/objects/"


def bundle(name: str) -> list[dict[str, Any]]:
    objects = json.loads((DATA / name).read_text(encoding="utf-8"))["objects"]
    assert isinstance(objects, list)
    return objects


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


async def post(api: Api, body: bytes) -> tuple[int, Any]:
    status, answer, _ = await raw(api, "POST", OBJECTS, scope="write", data=body,
                                  headers={"Content-Type": MEDIA})
    return status, answer


@pytest.mark.parametrize("name", ["oasis-indicators-for-C2-with-COA.json",
                                  "oasis-malicious-email-indicator-with-attachment.json",
                                  "attack-ics-18.1-sample.json"])
async def test_taxii_real_bundle_is_accepted_whole_and_comes_back_unchanged(
        api: Api, name: str) -> None:
    objects = bundle(name)
    local = collection(api, LOCAL_ID)
    status = await threaded(local.add_objects, {"objects": objects})
    assert (status.status, status.success_count, status.failure_count) == (
        "complete", len(objects), 0), status.failures
    for obj in objects:
        back = await threaded(local.get_object, obj["id"])
        assert back["objects"] == [obj], obj["id"]  # every property, nothing added


async def test_taxii_real_attack_empty_custom_reference_is_accepted(api: Api) -> None:
    empty = [o for o in bundle("attack-ics-18.1-sample.json")
             if o.get("x_mitre_data_source_ref") == ""]
    assert len(empty) == 2  # real ATT&CK 18.1 data components
    status = await threaded(collection(api, LOCAL_ID).add_objects, {"objects": empty})
    assert status.success_count == 2


async def test_taxii_real_attack_collection_is_refused_as_too_large(api: Api) -> None:
    objects = bundle("attack-ics-18.1-collection.json")
    entries = api.node.ledger.counts().entries
    status, answer = await post(api, json.dumps({"objects": objects}).encode())
    assert status == 413, answer
    assert answer["description"].startswith("too large: x-mitre-collection--90c00720")
    assert "invalid" not in answer["description"]
    assert api.node.ledger.counts().entries == entries  # nothing stored


@pytest.mark.parametrize(("body", "says"), [
    (b"{}", "has no 'objects'"),
    (json.dumps(bundle("oasis-indicators-for-C2-with-COA.json")[2]).encode(),
     "bare STIX object"),
    (b'{"objects": []}', "is empty"),
])
async def test_taxii_malformed_envelope_is_422_and_stores_nothing(
        api: Api, body: bytes, says: str) -> None:
    entries = api.node.ledger.counts().entries
    status, answer = await post(api, body)
    assert status == 422 and says in answer["description"], answer
    assert answer["http_status"] == "422"
    assert api.node.ledger.counts().entries == entries
