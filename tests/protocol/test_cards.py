"""Peer cards: fixed vectors, round trips and refusal of mistyped or malformed cards."""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.cards import (
    MAX_CARD_CHARS,
    MAX_URL_BYTES,
    NAME_RE,
    PeerCard,
    card_checksum,
    dial_url,
    encode_card,
    parse_card,
    validate_peer_name,
    validate_peer_url,
)
from protocol.errors import ChecksumError, KeyFormatError
from protocol.keys import Identity, PublicKey, b64url_encode

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "card.json").read_text("utf-8"))
KEY = Identity(bytes(range(32))).public_key
CARD = PeerCard("QC", KEY, "https://qc.entraide.example:8471")


def _reseal(body: str) -> str:
    """A card with a correct checksum over an arbitrary body (to reach field checks)."""
    return f"{body}.{card_checksum(body)}"


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_encode_card_matches_vector(vector: dict[str, str]) -> None:
    key = Identity(bytes.fromhex(vector["seed_hex"])).public_key
    assert key.text == vector["key"]
    assert encode_card(PeerCard(vector["name"], key, vector["url"])) == vector["card"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_parse_card_matches_vector(vector: dict[str, str]) -> None:
    card = parse_card(vector["card"])
    assert card == PeerCard(vector["name"], PublicKey.from_text(vector["key"]), vector["url"])


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_card_checksum_follows_documented_formula(vector: dict[str, str]) -> None:
    body, _, checksum = vector["card"].rpartition(".")
    expected = hashlib.blake2b(b"entraide-card-v1\x00" + body.encode(), digest_size=32)
    assert checksum == expected.digest()[:4].hex()


def test_parse_card_accepts_surrounding_whitespace() -> None:
    text = encode_card(CARD)
    assert parse_card(f"  \t{text}\r\n") == CARD


def test_parse_card_refuses_every_single_character_substitution() -> None:
    text = VECTORS["vectors"][0]["card"]
    alphabet = string.printable + "é\u00a0\u200b．"
    tried = 0
    for index in range(len(text)):
        for char in alphabet:
            if char == text[index]:
                continue
            mutated = text[:index] + char + text[index + 1 :]
            # Whitespace at either end is stripped; a card missing a character is
            # still refused, which is what this test checks.
            with pytest.raises(KeyFormatError):
                parse_card(mutated)
            tried += 1
    assert tried > 10_000


def test_parse_card_refuses_checksum_mismatch_with_checksum_error() -> None:
    text = encode_card(CARD)
    body, _, checksum = text.rpartition(".")
    wrong = "0" * 8 if checksum != "0" * 8 else "1" * 8
    with pytest.raises(ChecksumError, match="mistyped"):
        parse_card(f"{body}.{wrong}")


def test_parse_card_refuses_mistyped_name_with_checksum_error() -> None:
    text = encode_card(CARD)
    with pytest.raises(ChecksumError):
        parse_card(text.replace(".QC.", ".QD.", 1))


def test_parse_card_refuses_uppercase_checksum() -> None:
    text = encode_card(CARD)
    body, _, checksum = text.rpartition(".")
    if checksum.upper() == checksum:
        pytest.skip("checksum has no letters")
    with pytest.raises(KeyFormatError, match="lowercase hex"):
        parse_card(f"{body}.{checksum.upper()}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "ed25519:A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg",
        "entraide1.QC.key.url",
        "entraide1.QC.key.url.checksum.extra",
        "entraide1..A.B.C",
    ],
)
def test_parse_card_refuses_non_cards(text: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_card(text)


def test_parse_card_refuses_unknown_version() -> None:
    body = ".".join(("entraide2", "QC", b64url_encode(KEY.raw), ""))
    with pytest.raises(KeyFormatError, match="version"):
        parse_card(_reseal(body))


def test_parse_card_refuses_oversize_input_before_parsing() -> None:
    with pytest.raises(KeyFormatError, match="longer"):
        parse_card("entraide1." + "A" * MAX_CARD_CHARS)


def test_parse_card_refuses_non_ascii() -> None:
    with pytest.raises(KeyFormatError, match="ASCII"):
        parse_card(encode_card(CARD).replace("Q", "Ｑ", 1))


@pytest.mark.parametrize(
    ("name", "key_field", "url_field", "match"),
    [
        ("-QC", b64url_encode(KEY.raw), "", "peer name"),
        ("Q" * 33, b64url_encode(KEY.raw), "", "peer name"),
        ("QC", b64url_encode(KEY.raw)[:-1], "", "43"),
        ("QC", b64url_encode(b"\x00" * 31 + b"\x80"), "", "Ed25519"),  # not a valid point
        ("QC", b64url_encode(KEY.raw), b64url_encode(b"\xff\xfe"), "UTF-8"),
        ("QC", b64url_encode(KEY.raw), b64url_encode(b"ftp://x.example"), "http"),
        ("QC", b64url_encode(KEY.raw), "AAA=", "base64url"),
    ],
)
def test_parse_card_refuses_bad_fields_behind_valid_checksum(
    name: str, key_field: str, url_field: str, match: str
) -> None:
    body = ".".join(("entraide1", name, key_field, url_field))
    with pytest.raises(KeyFormatError, match=match) as info:
        parse_card(_reseal(body))
    assert not isinstance(info.value, ChecksumError)


def test_parse_card_round_trips_without_url() -> None:
    card = PeerCard("FED", KEY)
    text = encode_card(card)
    assert ".." in text
    assert parse_card(text) == card
    assert parse_card(text).url is None


@given(
    name=st.from_regex(NAME_RE, fullmatch=True),
    seed=st.binary(min_size=32, max_size=32),
    host=st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    port=st.none() | st.integers(1, 65535),
    scheme=st.sampled_from(["http", "https"]),
)
def test_encode_card_round_trips(
    name: str, seed: bytes, host: str, port: int | None, scheme: str
) -> None:
    url = f"{scheme}://{host}" + ("" if port is None else f":{port}")
    card = PeerCard(name, Identity(seed).public_key, url)
    text = encode_card(card)
    assert text.isascii() and text.startswith("entraide1.")
    assert parse_card(text) == card
    assert encode_card(parse_card(text)) == text


@pytest.mark.parametrize("name", ["QC", "FED", "a", "nb-2_x", "A" * 32, "0on"])
def test_validate_peer_name_accepts(name: str) -> None:
    assert validate_peer_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-QC", "_QC", "Q C", "Q.C", "QC\n", "A" * 33, "Québec", "Q/C", "Q:C"]
)
def test_validate_peer_name_refuses(name: str) -> None:
    with pytest.raises(KeyFormatError, match="peer name"):
        validate_peer_name(name)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8471",
        "https://qc.entraide.example",
        "https://gw.example/entraide/",
        "http://[::1]:8471",
        "https://québec.example",
    ],
)
def test_validate_peer_url_accepts(url: str) -> None:
    assert validate_peer_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://x.example",
        "ws://x.example",
        "x.example:8471",
        "http://",
        "http:///path",
        "http://user:pw@x.example",
        "http://x.example/?a=1",
        "http://x.example/#frag",
        "http://x.example:99999",
        "http://x.example:0",
        "http://x.example:port",
        "http://x .example",
        "http://x.example/\n",
        "https://x.example/" + "a" * MAX_URL_BYTES,
    ],
)
def test_validate_peer_url_refuses(url: str) -> None:
    with pytest.raises(KeyFormatError):
        validate_peer_url(url)


def test_peer_card_refuses_bad_fields_on_construction() -> None:
    with pytest.raises(KeyFormatError):
        PeerCard("bad name", KEY)
    with pytest.raises(KeyFormatError):
        PeerCard("QC", KEY.text)  # type: ignore[arg-type]
    with pytest.raises(KeyFormatError):
        PeerCard("QC", KEY, "ftp://x")


def test_dial_url_appends_peer_path_once() -> None:
    assert dial_url("https://gw.example/entraide/") == "https://gw.example/entraide/peer/v1"
    assert dial_url("http://127.0.0.1:8471") == "http://127.0.0.1:8471/peer/v1"
