"""Indicator fidelity through the local API (issue 16): URLs matched by one RFC 3986
form, defanged values refanged on request, CIDR blocks matched by containment, and
batches that keep their good items and report duplicates.

Real data: ESET's published IOC lists (tests/data/ioc/README.md: source, commit and
licence), read as a defanged feed is read.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.agent._api_helpers import Api, obs, running_api

ESET = Path(__file__).parents[2] / "data" / "ioc" / "eset"


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    async with running_api(tmp_path) as running:
        yield running


async def lookup(api: Api, type: str, value: str) -> dict[str, Any]:
    path = f"/api/v1/indicators/{type}/{urllib.parse.quote(value, safe='')}"
    status, body = await api.call("GET", path, scope="read")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


# --- URLs -------------------------------------------------------------------------------


async def test_api_url_spellings_find_each_other(api: Api) -> None:
    first = await api.submit(obs("http://Bücher.example/%7Euser/straße?q=café", "url"))
    second = await api.submit(obs("http://xn--bcher-kva.example/~user/stra%C3%9Fe?q=caf%c3%a9",
                                  "url"))
    assert first["value"] == "http://xn--bcher-kva.example/%7Euser/straße?q=café"  # as given
    for spelling in ("http://b%C3%BCcher.example/~user/./stra%c3%9fe?q=caf%C3%A9",
                     "HTTP://BÜCHER.EXAMPLE:80/x/../%7euser/straße?q=café"):
        found = await lookup(api, "url", spelling)
        assert {o["id"] for o in found["observations"]} == {first["id"], second["id"]}
    status, listed = await api.call(
        "GET", "/api/v1/observations?type=url&value="
        + urllib.parse.quote("http://bücher.example/~user/stra%C3%9Fe?q=café"), scope="read")
    assert status == 200 and len(listed["observations"]) == 2
    other = await lookup(api, "url", "http://xn--bcher-kva.example/~User/straße?q=café")
    assert other["observations"] == []


# --- defanged values (ESET's published IOC lists) ------------------------------------------


def eset_defanged(name: str) -> list[str]:
    """The defanged indicators of one of ESET's IOC pages, as an analyst copies them."""
    text = (ESET / f"{name}.adoc").read_text(encoding="utf-8")
    return re.findall(r"(?:hxxps?://[^\s`|]+|[^\s`|]*\[\.\][^\s`|]*)", text)


def guess_type(value: str) -> str:
    if "://" in value:
        return "url"
    return "ipv4-addr" if re.fullmatch(r"[0-9.\[\]]+", value) else "domain-name"


async def test_api_defanged_value_is_refused_without_refang(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                  json_body=obs("5.39.222[.]150"))
    assert status == 422, body
    status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                  json_body=obs("hxxps://217.12.208.28/", "url"))
    assert status == 422 and "hxxp" in body["error"]["message"]


async def test_api_refang_one_observation_says_so(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/observations?refang=true", scope="write",
                                  json_body=obs("hXXps[:]//Evil[.]Example/a", "url"))
    assert status == 201, body
    assert body["value"] == "https://evil.example/a"
    assert body["refanged"] == {"index": 0, "submitted": "hXXps[:]//Evil[.]Example/a",
                                "value": "https://evil.example/a"}
    status, plain = await api.call("POST", "/api/v1/observations?refang=true", scope="write",
                                   json_body=obs("203.0.113.9"))
    assert status == 201 and "refanged" not in plain


async def test_api_refang_eset_lists_in_one_batch(api: Api) -> None:
    values = [*eset_defanged("asylum_ambuscade"), *eset_defanged("rakos")]
    assert len(values) == 90 + 11  # 88 IPs and 2 domains; 11 C&C URLs
    items = [obs(v, guess_type(v)) for v in values]
    status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                  json_body={"observations": items, "refang": True})
    assert status == 201, body
    assert body["count"] == 101 and body["duplicates"] == []
    assert len(body["refanged"]) == 101
    by_index = {r["index"]: r for r in body["refanged"]}
    assert by_index[0] == {"index": 0, "submitted": "5.39.222[.]150", "value": "5.39.222.150"}
    assert by_index[2]["value"] == "snowzet.com"
    assert by_index[90] == {"index": 90, "submitted": "hxxps://217.12.208.28/",
                            "value": "https://217.12.208.28/"}
    found = await lookup(api, "domain-name", "namesilo.my.id")
    assert len(found["observations"]) == 1


# --- partial batches and duplicates --------------------------------------------------------


async def test_api_batch_duplicates_are_stored_once_and_reported(api: Api) -> None:
    values = eset_defanged("keydnap")  # 13 defanged URLs, several repeated in the tables
    items = [obs(v, "url") for v in values]
    status, body = await api.call("POST", "/api/v1/observations?refang=true", scope="write",
                                  json_body={"observations": items})
    assert status == 201, body
    distinct = {v.rstrip("/") for v in values}
    assert body["count"] == len(distinct) == 6
    assert len(body["duplicates"]) == 13 - 6 and len(body["ids"]) == 13
    for index in body["duplicates"]:
        first = next(i for i, v in enumerate(values) if v.rstrip("/") == values[index].rstrip("/"))
        assert body["ids"][index] == body["ids"][first]
    status, listed = await api.call("GET", "/api/v1/observations?type=url&limit=100",
                                    scope="read")
    assert len(listed["observations"]) == 6


async def test_api_partial_batch_keeps_the_valid_items(api: Api) -> None:
    items = [obs("203.0.113.1"), obs("not-an-ip"), obs("203.0.113.1"),
             obs("evil[.]example", "domain-name"), obs("203.0.113.2", tlp="RED"),
             obs("203.0.113.3", tlp="AMBER", audience=["NOBODY"]), obs("CVE-2021-44228", "cve")]
    status, body = await api.call("POST", "/api/v1/observations?partial=true", scope="write",
                                  json_body={"observations": items})
    assert status == 201, body
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["stored", "refused", "duplicate", "refused", "refused", "refused",
                        "stored"]
    assert (body["stored"], body["duplicates"], body["refused"]) == (2, 1, 4)
    assert body["results"][2]["of"] == 0
    assert body["results"][2]["id"] == body["results"][0]["id"] == body["ids"][0]
    assert "ipv4-addr" in body["results"][1]["reason"]
    assert "observations.0" not in body["results"][1]["reason"]
    assert "NOBODY" in body["results"][5]["reason"]
    status, listed = await api.call("GET", "/api/v1/observations", scope="read")
    assert len(listed["observations"]) == 2


async def test_api_partial_in_the_body_with_refang(api: Api) -> None:
    status, body = await api.call(
        "POST", "/api/v1/observations", scope="write",
        json_body={"observations": [obs("evil[.]example", "domain-name"), obs("x", "cve")],
                   "partial": True, "refang": True})
    assert status == 201, body
    assert [r["status"] for r in body["results"]] == ["stored", "refused"]
    assert body["refanged"] == [{"index": 0, "submitted": "evil[.]example",
                                 "value": "evil.example"}]


async def test_api_batch_without_partial_is_still_all_or_nothing(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                  json_body={"observations": [obs("203.0.113.1"),
                                                              obs("not-an-ip")]})
    assert status == 422, body
    status, listed = await api.call("GET", "/api/v1/observations", scope="read")
    assert listed["observations"] == []


# --- CIDR blocks matched by containment ----------------------------------------------------


async def test_api_ip_lookups_match_cidr_blocks_by_containment(api: Api) -> None:
    ids = {}
    for value in ("203.0.113.0/24", "203.0.0.0/16", "203.0.113.7", "203.0.113.200",
                  "198.51.100.1", "203.0.114.0/24"):
        ids[value] = (await api.submit(obs(value)))["id"]
    for value in ("2001:db8::/32", "2001:db8::1", "2001:db9::1"):
        ids[value] = (await api.submit(obs(value, "ipv6-addr")))["id"]

    def found(body: dict[str, Any]) -> set[str]:
        by_id = {v: k for k, v in ids.items()}
        return {by_id[o["id"]] for o in body["observations"]}

    one = await lookup(api, "ipv4-addr", "203.0.113.7")
    assert found(one) == {"203.0.113.7", "203.0.113.0/24", "203.0.0.0/16"}
    assert one["value"] == "203.0.113.7" and one["count"] == 3
    block = await lookup(api, "ipv4-addr", "203.0.113.0/24")
    assert found(block) == {"203.0.113.0/24", "203.0.0.0/16", "203.0.113.7", "203.0.113.200"}
    # a block over 256 addresses: the blocks holding it, not every address inside
    assert found(await lookup(api, "ipv4-addr", "203.0.0.0/16")) == {"203.0.0.0/16"}
    assert found(await lookup(api, "ipv4-addr", "203.0.113.128/25")) == {
        "203.0.113.0/24", "203.0.0.0/16", "203.0.113.200"}
    assert found(await lookup(api, "ipv6-addr", "2001:db8::1")) == {"2001:db8::/32",
                                                                   "2001:db8::1"}
    assert found(await lookup(api, "ipv4-addr", "192.0.2.1")) == set()


# --- user-account (personal data) ----------------------------------------------------------


async def test_api_user_account_is_personal_data(api: Api) -> None:
    created = await api.submit(obs("EXAMPLE\\jdoe", "user-account"))
    assert created["tlp"] == "AMBER" and created["value"] == "EXAMPLE\\jdoe"
    found = await lookup(api, "user-account", "EXAMPLE\\jdoe")
    assert [o["id"] for o in found["observations"]] == [created["id"]]
    assert (await lookup(api, "user-account", "example\\jdoe"))["observations"] == []
    status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                  json_body=obs("j doe secret", "user-account"))
    assert status == 422 and "redacted" in body["error"]["message"]
    assert "secret" not in body["error"]["message"]
