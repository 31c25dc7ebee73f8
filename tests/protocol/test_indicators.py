from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains, urls

import protocol.indicators
from protocol.errors import EntraideError, PayloadError
from protocol.indicators import (
    MAX_INDICATOR_CHARS,
    IndicatorType,
    normalise_domain,
    normalise_indicator,
    normalise_url,
)

GOOD = [
    # IPv4
    ("ipv4-addr", "203.0.113.7", "203.0.113.7"),
    ("ipv4-addr", "  203.0.113.7\n", "203.0.113.7"),
    ("ipv4-addr", "0.0.0.0", "0.0.0.0"),
    ("ipv4-addr", "255.255.255.255", "255.255.255.255"),
    ("ipv4-addr", "10.0.0.0/8", "10.0.0.0/8"),
    ("ipv4-addr", "198.51.100.7/32", "198.51.100.7"),
    ("ipv4-addr", "0.0.0.0/0", "0.0.0.0/0"),
    ("ipv4-addr", "::ffff:192.0.2.1", "192.0.2.1"),
    ("ipv4-addr", "::FFFF:c000:0201", "192.0.2.1"),
    # IPv6
    ("ipv6-addr", "2001:DB8::1", "2001:db8::1"),
    ("ipv6-addr", "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("ipv6-addr", "2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ("ipv6-addr", "2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
    ("ipv6-addr", "::", "::"),
    ("ipv6-addr", "::1", "::1"),
    ("ipv6-addr", "2001:DB8::/32", "2001:db8::/32"),
    ("ipv6-addr", "2001:db8::5/128", "2001:db8::5"),
    # Domain names
    ("domain-name", "Example.COM", "example.com"),
    ("domain-name", "example.com.", "example.com"),
    ("domain-name", "bücher.example", "xn--bcher-kva.example"),
    ("domain-name", "XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("domain-name", "BÜCHER.example", "xn--bcher-kva.example"),
    ("domain-name", "straße.de", "xn--strae-oqa.de"),  # IDNA 2008: not mapped to "ss"
    ("domain-name", "ｅｘａｍｐｌｅ．ｃｏｍ", "example.com"),  # full-width, UTS 46 mapped
    ("domain-name", "例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("domain-name", "québec.gouv.qc.ca", "xn--qubec-csa.gouv.qc.ca"),
    ("domain-name", "_dmarc.example.com", "_dmarc.example.com"),
    ("domain-name", "a-b.example", "a-b.example"),
    ("domain-name", "localhost", "localhost"),
    ("domain-name", "1.example", "1.example"),
    ("domain-name", "a" * 63 + ".example", "a" * 63 + ".example"),
    # URLs
    ("url", "http://example.com", "http://example.com/"),
    ("url", "HTTP://Example.COM/Path?Q=1#Frag", "http://example.com/Path?Q=1#Frag"),
    ("url", "https://example.com:443/a", "https://example.com/a"),
    ("url", "https://example.com:8443/a", "https://example.com:8443/a"),
    ("url", "http://example.com:/a", "http://example.com/a"),
    ("url", "http://example.com:0080/", "http://example.com/"),
    ("url", "http://example.com?x", "http://example.com/?x"),
    ("url", "http://example.com/?", "http://example.com/?"),
    ("url", "http://bücher.example/straße", "http://xn--bcher-kva.example/straße"),
    ("url", "http://User:Pass@Example.com/", "http://User:Pass@example.com/"),
    ("url", "http://203.0.113.7/x", "http://203.0.113.7/x"),
    ("url", "http://[2001:DB8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
    ("url", "ftp://files.example/pub/x.exe", "ftp://files.example/pub/x.exe"),
    ("url", "wss://example.com/socket", "wss://example.com/socket"),
    ("url", "http://example.com/a%20b/%7Euser", "http://example.com/a%20b/%7Euser"),
    ("url", "http://ex%41mple.com/", "http://example.com/"),
    ("url", "http://%E4%BE%8B.jp/", "http://xn--fsq.jp/"),
    # E-mail addresses
    ("email-addr", "Alice@Example.COM", "Alice@example.com"),
    ("email-addr", "first.last+tag@bücher.example", "first.last+tag@xn--bcher-kva.example"),
    ("email-addr", '"a@b"@example.com', '"a@b"@example.com'),
    # Hashes
    ("file:md5", "D41D8CD98F00B204E9800998ECF8427E", "d41d8cd98f00b204e9800998ecf8427e"),
    ("file:sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709",
     "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ("file:sha256", "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("file:sha512", "CF83" + "e1" * 62, "cf83" + "e1" * 62),
    # CVE ids
    ("cve", "CVE-2021-44228", "CVE-2021-44228"),
    ("cve", "cve-2014-0160", "CVE-2014-0160"),
    ("cve", "CVE-1999-0001", "CVE-1999-0001"),
    ("cve", "CVE-2024-1234567", "CVE-2024-1234567"),
    # Autonomous systems
    ("autonomous-system", "AS64500", "AS64500"),
    ("autonomous-system", "as64500", "AS64500"),
    ("autonomous-system", "64500", "AS64500"),
    ("autonomous-system", "As1", "AS1"),
    ("autonomous-system", "AS4294967295", "AS4294967295"),
    ("user-account", " EXAMPLE\\jdoe ", "EXAMPLE\\jdoe"),
    ("user-account", "Jdoe", "Jdoe"),
    ("user-account", "jose\u0301", "jos\u00e9"),  # NFC
    ("user-account", "root@host", "root@host"),
]

BAD = [
    # IPv4
    ("ipv4-addr", "", "empty"),
    ("ipv4-addr", "   ", "empty"),
    ("ipv4-addr", "010.0.0.1", "Leading zeros"),
    ("ipv4-addr", "1.2.3", "not an IPv4 address"),
    ("ipv4-addr", "1.2.3.4.5", "not an IPv4 address"),
    ("ipv4-addr", "256.0.0.1", "not an IPv4 address"),
    ("ipv4-addr", "0x7f.0.0.1", "not an IPv4 address"),
    ("ipv4-addr", "2130706433", "not an IPv4 address"),
    ("ipv4-addr", "١.٢.٣.٤", "not an IPv4 address"),  # Arabic-Indic digits
    ("ipv4-addr", "1.2.3.4 5", "not an IPv4 address"),
    ("ipv4-addr", "10.0.0.1/8", "host bits set"),
    ("ipv4-addr", "10.0.0.0/33", "prefix length"),
    ("ipv4-addr", "10.0.0.0/08", "prefix length"),
    ("ipv4-addr", "10.0.0.0/", "prefix length"),
    ("ipv4-addr", "2001:db8::1", "use the type ipv6-addr"),
    ("ipv4-addr", "example.com", "not an IPv4 address"),
    # IPv6
    ("ipv6-addr", "203.0.113.7", "use the type ipv4-addr"),
    ("ipv6-addr", "::ffff:192.0.2.1", "submit it as ipv4-addr 192.0.2.1"),
    ("ipv6-addr", "fe80::1%eth0", "zone id"),
    ("ipv6-addr", "2001:db8:::1", "not an IPv6 address"),
    ("ipv6-addr", "2001:db8::g", "not an IPv6 address"),
    ("ipv6-addr", "2001:db8::1/129", "prefix length"),
    ("ipv6-addr", "2001:db8::1/64", "host bits set"),
    # Domain names
    ("domain-name", "", "empty"),
    ("domain-name", ".", "not a domain name"),
    ("domain-name", "example..com", "empty label"),
    ("domain-name", ".example.com", "empty label"),
    ("domain-name", "example.com..", "empty label"),
    ("domain-name", "-example.com", "invalid label"),
    ("domain-name", "example-.com", "invalid label"),
    ("domain-name", "exa mple.com", "invalid label"),
    ("domain-name", "exa/mple.com", "invalid label"),
    ("domain-name", "a" * 64 + ".example", "over 63"),
    ("domain-name", ".".join(["a" * 60] * 5), "over 253"),
    ("domain-name", "xn--abc.example", "invalid label"),
    ("domain-name", "xn--.example", "invalid label"),
    ("domain-name", "a\u200db.example", "invalid label"),  # ZWJ out of context
    ("domain-name", "aش.example", "invalid label"),  # bidi rule
    ("domain-name", "\u0301a.example", "invalid label"),  # leading combining mark
    ("domain-name", "203.0.113.7", "use ipv4-addr"),
    ("domain-name", "example.123", "numeric label"),
    # URLs
    ("url", "example.com/path", "not an absolute URL"),
    ("url", "//example.com/", "not an absolute URL"),
    ("url", "hxxp://example.com/", "scheme 'hxxp'"),
    ("url", "javascript://example.com/%0Aalert(1)", "scheme 'javascript'"),
    ("url", "file:///etc/passwd", "scheme 'file'"),
    ("url", "http:///path", "no host"),
    ("url", "http://user@/path", "no host"),
    ("url", "http://exa mple.com/", "whitespace"),
    ("url", "http://example.com/a b", "whitespace"),
    ("url", "http://example.com/\x00", "control character"),
    ("url", "http://exa\tmple.com/", "whitespace"),
    ("url", "http://example.com/\u202e", "control character"),
    ("url", "http://example.com:99999/", "invalid port"),
    ("url", "http://example.com:8o/", "invalid port"),
    ("url", "http://[2001:db8::1/", "unclosed"),
    ("url", "http://[2001:db8::1]x/", "after its bracketed host"),
    ("url", "http://[fe80::1%25eth0]/", "zone id"),
    ("url", "http://[v1.x]/", "IPvFuture"),
    ("url", "http://1.2.3/", "not an IPv4 address"),
    ("url", "http://0x7f.1/", "numeric label"),
    ("url", "http://ex%4mple.com/", "not a percent-encoded octet"),
    ("url", "http://ex%FFmple.com/", "not UTF-8"),
    ("url", "http://evil%2Fexample.com/", "percent-encoded delimiter"),
    ("url", "http://a%40b.example/", "percent-encoded delimiter"),
    ("url", "http://a%09b.example/", "control character"),
    ("url", "http://example.com\\@evil.example/", "backslash"),
    ("url", "http://a..example/", "empty label"),
    ("url", "http://example.com/" + "a" * MAX_INDICATOR_CHARS, "over"),
    # E-mail addresses
    ("email-addr", "alice", "not an e-mail address"),
    ("email-addr", "@example.com", "not an e-mail address"),
    ("email-addr", "alice@", "not an e-mail address"),
    ("email-addr", "al ice@example.com", "whitespace"),
    ("email-addr", "alice@[192.0.2.1]", "address literal"),
    ("email-addr", "a" * 65 + "@example.com", "local part over 64"),
    ("email-addr", "alice@exa_mple..com", "empty label"),
    ("email-addr", "alice@" + ".".join(["a" * 60] * 4) + ".example", "over 254"),
    # Hashes
    ("file:md5", "d41d8cd98f00b204e9800998ecf8427", "32 hex digits"),
    ("file:md5", "d41d8cd98f00b204e9800998ecf8427e0", "32 hex digits"),
    ("file:md5", "g41d8cd98f00b204e9800998ecf8427e", "32 hex digits"),
    ("file:sha1", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
     "40 hex digits"),
    ("file:sha256", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "64 hex digits"),
    ("file:sha256", "0x" + "a" * 62, "64 hex digits"),
    ("file:sha256", "a" * 32 + " " + "a" * 31, "64 hex digits"),
    ("file:sha512", "a" * 127, "128 hex digits"),
    # CVE ids
    ("cve", "2021-44228", "not a CVE id"),
    ("cve", "CVE-2021-123", "not a CVE id"),
    ("cve", "CVE-2021-012345", "not a CVE id"),
    ("cve", "CVE-21-1234", "not a CVE id"),
    ("cve", "CVE-1998-1234", "before 1999"),
    ("cve", "CVE 2021 44228", "not a CVE id"),
    ("cve", "CVE-٢٠٢١-44228", "not a CVE id"),
    # Autonomous systems
    ("autonomous-system", "AS0", "out of range"),
    ("autonomous-system", "0", "out of range"),
    ("autonomous-system", "AS4294967296", "out of range"),
    ("autonomous-system", "AS99999999999", "not an AS number"),
    ("autonomous-system", "AS-1", "not an AS number"),
    ("autonomous-system", "AS 64500", "not an AS number"),
    ("autonomous-system", "AS1.10", "not an AS number"),
    ("autonomous-system", "AS64_500", "not an AS number"),
    ("autonomous-system", "ASN64500", "not an AS number"),
    ("user-account", "j doe", "whitespace"),
    ("user-account", "jdoe\x00", "control character"),
    ("user-account", "a" * 257, "over 256"),
    ("autonomous-system", "AS６４５００", "not an AS number"),  # full-width digits
]


@pytest.mark.parametrize(("kind", "value", "expected"), GOOD)
def test_normalise_indicator_accepts_and_canonicalises(
    kind: str, value: str, expected: str
) -> None:
    assert normalise_indicator(kind, value) == expected


@pytest.mark.parametrize(("kind", "value", "expected"), GOOD)
def test_normalise_indicator_is_idempotent(kind: str, value: str, expected: str) -> None:
    assert normalise_indicator(kind, expected) == expected


@pytest.mark.parametrize(("kind", "value", "message"), BAD)
def test_normalise_indicator_refuses_with_clear_message(
    kind: str, value: str, message: str
) -> None:
    with pytest.raises(PayloadError, match=r"^" + kind) as info:
        normalise_indicator(kind, value)
    assert message in str(info.value)


def test_normalise_indicator_covers_every_type() -> None:
    assert {kind for kind, _, _ in GOOD} == {t.value for t in IndicatorType}
    assert {kind for kind, _, _ in BAD} == {t.value for t in IndicatorType}


def test_normalise_indicator_accepts_enum_members() -> None:
    assert normalise_indicator(IndicatorType.CVE, "cve-2021-44228") == "CVE-2021-44228"


def test_normalise_indicator_refuses_unknown_type_listing_known_ones() -> None:
    with pytest.raises(PayloadError, match=r"unknown indicator type 'mac-addr'.*ipv4-addr"):
        normalise_indicator("mac-addr", "00:11:22:33:44:55")


def test_normalise_indicator_refuses_non_string_value() -> None:
    with pytest.raises(PayloadError, match="must be a string"):
        normalise_indicator("ipv4-addr", 16909060)  # type: ignore[arg-type]


def test_normalise_indicator_refuses_oversize_before_parsing() -> None:
    with pytest.raises(PayloadError, match=f"over {MAX_INDICATOR_CHARS}"):
        normalise_indicator("domain-name", "a." * MAX_INDICATOR_CHARS)


def test_normalise_indicator_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        normalise_indicator("cve", "nope")


def test_normalise_domain_and_url_match_the_indicator_types() -> None:
    assert normalise_domain("Bücher.Example.") == "xn--bcher-kva.example"
    assert normalise_url("HTTPS://Example.com") == "https://example.com/"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(IndicatorType)), st.text(max_size=80))
def test_normalise_indicator_any_text_is_refused_or_idempotent(
    kind: IndicatorType, value: str
) -> None:
    try:
        canonical = normalise_indicator(kind, value)
    except EntraideError as exc:
        assert isinstance(exc, PayloadError)
        return
    assert normalise_indicator(kind, canonical) == canonical
    assert canonical == canonical.strip()
    assert len(canonical) <= MAX_INDICATOR_CHARS


@settings(max_examples=200, deadline=None)
@given(domains())
def test_normalise_domain_generated_names_are_idempotent(name: str) -> None:
    try:
        canonical = normalise_domain(name)
    except PayloadError:
        # hypothesis may produce a numeric TLD, which we refuse on purpose
        assert name.rsplit(".", 1)[-1].isdigit()
        return
    assert canonical == name.lower()
    assert normalise_domain(canonical) == canonical


@settings(max_examples=200, deadline=None)
@given(urls())
def test_normalise_url_generated_urls_are_idempotent(url: str) -> None:
    try:
        canonical = normalise_url(url)
    except PayloadError as exc:
        assert "numeric label" in str(exc) or "over" in str(exc)
        return
    assert normalise_url(canonical) == canonical
    assert canonical.split("://", 1)[0] == url.split("://", 1)[0].lower()


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses())
def test_normalise_indicator_generated_ip_addresses_round_trip(address: object) -> None:
    text = str(address)
    kind = "ipv4-addr" if ":" not in text else "ipv6-addr"
    try:
        canonical = normalise_indicator(kind, text.upper())
    except PayloadError as exc:
        assert "IPv4-mapped" in str(exc)
        return
    assert canonical == text


_OCTET_SPELLINGS = ["0", "00", "7", "07", "10", "010", "99", "100", "199", "200", "249",
                    "250", "255", "256", "299", "300", "0255", "1000", "", "-1", "+1", " 1"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_OCTET_SPELLINGS), min_size=1, max_size=5),
       st.sampled_from(["", "/32", "/24", "\n", "."]))
def test_ipv4_fast_path_agrees_with_ipaddress(octets: list[str], suffix: str) -> None:
    # The canonical-form regex returns the text as is; the full path must agree on
    # every spelling, accepted or refused.
    text = ".".join(octets) + suffix
    try:
        fast = protocol.indicators._normalise_ipv4(text)
    except protocol.indicators._Invalid:
        fast = None
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        if fast is not None:
            assert "/" in text  # a CIDR block, not taken by the fast path
            assert not protocol.indicators._CANONICAL_IPV4.fullmatch(text)
        return
    assert fast == str(address)
