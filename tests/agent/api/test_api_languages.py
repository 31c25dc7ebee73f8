"""The API's error messages in the reader's language: ``Accept-Language: fr`` gets the
French message and ``Content-Language: fr``; no header, or a language we do not have,
gets English; the code is the same in every language. A real node and a real HTTP
server on 127.0.0.1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.i18n import localize
from protocol.errors import PayloadError
from protocol.stix_pattern import parse_pattern
from tests.agent._api_helpers import running_api

FR = {"Accept-Language": "fr-CA,fr;q=0.9,en;q=0.5"}


async def test_api_languages_error_message_follows_accept_language(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        status, body = await api.call("GET", "/api/v1/status", scope=None, headers=FR)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert body["error"]["message"] == ("un jeton porteur est requis "
                                            "(Authorization: Bearer <jeton>)")
        status, english = await api.call("GET", "/api/v1/status", scope=None)
        assert status == 401 and english["error"]["code"] == "unauthorized"
        assert english["error"]["message"].startswith("a bearer token is required")
        status, german = await api.call("GET", "/api/v1/status", scope=None,
                                        headers={"Accept-Language": "de"})
        assert german == english

        # A message with values (from a lower layer) keeps them in French.
        status, body = await api.call("POST", "/api/v1/peers", scope="read", headers=FR,
                                      json_body={"card": "x"})
        assert status == 403
        assert body["error"]["message"] == ("il faut un jeton de portée admin; celui-ci a "
                                            "la portée read")
        status, body = await api.call("DELETE", "/api/v1/peers/ATLANTIS", headers=FR)
        assert status == 404 and body["error"]["code"] == "not_found"
        assert body["error"]["message"] == ("aucun pair nommé 'ATLANTIS' dans la liste de "
                                            "confiance")


async def test_api_languages_content_language_and_validation(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        response = await api.client.post("/api/v1/observations", data=b"{not json",
                                         headers={**api.auth("write"), **FR,
                                                  "Content-Type": "application/json"})
        body = await response.json()
        assert response.status == 400 and response.headers["Content-Language"] == "fr"
        assert body["error"]["code"] == "bad_json"
        assert body["error"]["message"].startswith("le corps n'est pas du JSON valide : ")

        response = await api.client.post(
            "/api/v1/observations", json={"type": "ipv4-addr", "value": "203.0.113.7",
                                          "colour": "red"},
            headers={**api.auth("write"), **FR})
        body = await response.json()
        assert response.status == 422 and body["error"]["code"] == "unknown_field"
        assert body["error"]["message"] == "colour : champ non permis"

        response = await api.client.get("/api/v1/nowhere", headers={**api.auth("read")})
        assert response.status == 404 and response.headers["Content-Language"] == "en"
        assert (await response.json())["error"]["message"] == "Not Found"


@pytest.mark.parametrize(("english", "french"), [
    ("no entry abc", "aucune entrée abc"),
    ("the body is over 1048576 bytes", "le corps dépasse 1048576 octets"),
    ("something nobody wrote a template for", "something nobody wrote a template for"),
    # A one-word value is never translated, even when it is a msgid ("options").
    ("no token named options", "aucun jeton nommé options"),
])
def test_api_languages_localize_fills_templates(english: str, french: str) -> None:
    assert localize(english, "fr") == french
    assert localize(english, "en") == english


def test_api_languages_long_messages_are_not_matched() -> None:
    # A message quoting a long hostile value stays English rather than cost regex time.
    long_name = "'" + "x" * 700 + "'"
    message = f"no peer named {long_name} in the trust list"
    assert localize(message, "fr") == message
    assert localize("no peer named 'ON' in the trust list", "fr") == (
        "aucun pair nommé 'ON' dans la liste de confiance")


_BAD_PATTERNS = (
    "", "ipv4-addr:value = '1.2.3.4'", "[ipv4-addr:value = '1.2.3.4'",
    "[ipv4-addr:value = ]", "[ipv4-addr:value == '1']", "[ipv4-addr:value = 'unterminated]",
    "[IPV4:value = '1']", "[ipv4-addr:value = '1'] WITHIN -5 SECONDS",
    "[ipv4-addr:value = '1'] REPEATS 1.5 TIMES", "[ipv4-addr:value = '1'] START 5",
    "[ipv4-addr:value = '1'] extra", "[a:b = '1' AND]", "[a:b", "[a:b =",
    "[a:b[x] = '1']", "[a:b LIKE 5]", "[a:b ! '1']", "(" * 40 + "[a-b:c = 1]" + ")" * 40,
)


@pytest.mark.parametrize("pattern", _BAD_PATTERNS)
def test_api_languages_a_refused_stix_patterns_reason_reads_in_french(pattern: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_pattern(pattern)
    english = str(caught.value)
    french = localize(english, "fr")
    assert french.startswith("motif STIX invalide : "), french
    words = re.compile(r"\b(expected|found|unexpected|needs|nested|empty|end|over|after|"
                       r"must|character|offset|number|integer|value|name|operator)\b")
    quoted = re.sub(r"'[^']*'", "''", french)  # the pattern's own tokens, quoted
    assert not words.search(quoted.replace("ipv4-addr", "")), (english, french)
