"""protocol/matching.py: ``indicator_key``, the one form URLs are matched by (RFC 3986
§6.2.2 for the path, query, fragment and userinfo; IDNA host and default port come from
``normalise_indicator``), every other type's canonical value unchanged;
``containment_keys`` for IP lookups; ``refang``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from protocol.errors import PayloadError
from protocol.indicators import IndicatorType, normalise_indicator
from protocol.matching import containment_keys, indicator_key, refang


def url_key(value: str) -> str:
    return indicator_key(IndicatorType.URL, normalise_indicator(IndicatorType.URL, value))


# Spellings of one URL, each group matched by one key (and its display kept as given).
SAME_URL = [
    ["http://example.com/~user/index.html", "http://example.com/%7Euser/index.html",
     "http://example.com/%7euser/index.html", "HTTP://EXAMPLE.COM:80/%7Euser/./index.html",
     "http://example.com/a/../%7Euser/index.html"],
    ["https://bücher.example/straße?q=café#résumé",
     "https://xn--bcher-kva.example/stra%C3%9Fe?q=caf%C3%A9#r%C3%A9sum%C3%A9",
     "https://XN--BCHER-KVA.EXAMPLE:443/stra%c3%9fe?q=caf%c3%a9#r%c3%a9sum%c3%a9",
     "https://b%C3%BCcher.example/straße?q=café#résumé"],
    ["http://例え.jp/パス", "http://xn--r8jz45g.jp/%E3%83%91%E3%82%B9",
     "http://%E4%BE%8B%E3%81%88.jp/%e3%83%91%e3%82%b9"],
    ["http://example.com/a%2Fb", "http://example.com/a%2fb"],
    ["http://example.com/100%", "http://example.com/100%25"],
    ["http://u%73er:p%41ss@example.com/", "http://user:pAss@example.com/"],
]

# Different URLs that must keep different keys.
DIFFERENT_URLS = [
    ("http://example.com/a%2Fb", "http://example.com/a/b"),  # an encoded '/' is data
    ("http://example.com/?a=1%262", "http://example.com/?a=1&2"),  # so is an encoded '&'
    ("http://example.com/~User", "http://example.com/~user"),  # paths are case-sensitive
    ("http://example.com/x", "https://example.com/x"),
    ("http://example.com:8080/", "http://example.com/"),
]


@pytest.mark.parametrize("group", SAME_URL, ids=[g[0][:30] for g in SAME_URL])
def test_indicator_key_spellings_of_one_url_share_one_key(group: list[str]) -> None:
    keys = {url_key(u) for u in group}
    assert len(keys) == 1, keys
    (key,) = keys
    assert key.isascii()
    assert url_key(key) == key


@pytest.mark.parametrize(("a", "b"), DIFFERENT_URLS)
def test_indicator_key_different_urls_keep_different_keys(a: str, b: str) -> None:
    assert url_key(a) != url_key(b)


def test_indicator_key_keeps_the_submitted_path_for_display() -> None:
    canonical = normalise_indicator("url", "http://Example.com/%7euser/é")
    assert canonical == "http://example.com/%7euser/é"
    assert indicator_key("url", canonical) == "http://example.com/~user/%C3%A9"


def test_indicator_key_of_other_types_is_the_canonical_value() -> None:
    for kind, value in (("ipv4-addr", "192.0.2.0/24"), ("domain-name", "xn--bcher-kva.example"),
                        ("file:md5", "d41d8cd98f00b204e9800998ecf8427e")):
        assert indicator_key(kind, value) == value


def test_indicator_key_dot_segments_follow_rfc_3986_section_5_2_4() -> None:
    assert url_key("http://e.example/a/b/c/./../../g") == "http://e.example/a/g"
    assert url_key("http://e.example/..") == "http://e.example/"
    assert url_key("http://e.example/a/b/..") == "http://e.example/a/"
    assert url_key("http://e.example/a/./") == "http://e.example/a/"


def test_normalise_url_percent_encoded_host_must_be_a_name() -> None:
    with pytest.raises(PayloadError, match="delimiter"):
        normalise_indicator("url", "http://evil.example%2Fgood.example/")


@settings(max_examples=300, deadline=None)
@given(urls())
def test_indicator_key_generated_urls_is_idempotent(url: str) -> None:
    try:
        key = url_key(url)
    except PayloadError:
        return
    assert url_key(key) == key
    assert key.isascii()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_indicator_key_any_path_is_idempotent_and_ascii(path: str) -> None:
    try:
        key = url_key("http://example.com/" + path)
    except PayloadError:
        return
    assert url_key(key) == key
    assert key.isascii()


@pytest.mark.parametrize(("defanged", "plain"), [
    ("hxxp://evil[.]example/a", "http://evil.example/a"),
    ("hXXps[:]//203.0.113(.)7/", "https://203.0.113.7/"),
    ("fxp://files[dot]example/x", "ftp://files.example/x"),
    ("http[://]evil.example", "http://evil.example"),
    ("evil{.}example", "evil.example"),
    ("victim[@]example(dot)com", "victim@example.com"),
    ("  5.39.222[.]150 ", "5.39.222.150"),
    ("evil.example", "evil.example"),
])
def test_refang_undoes_the_usual_defanging(defanged: str, plain: str) -> None:
    assert refang(defanged) == plain
    assert refang(plain) == plain


def test_refang_never_makes_an_invalid_value_valid() -> None:
    with pytest.raises(PayloadError):
        normalise_indicator("url", refang("hxxp://evil[.]example[.]/a b"))
    with pytest.raises(PayloadError, match="scheme"):
        normalise_indicator("url", refang("hxxpz://evil[.]example/"))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="hxtps:/[](){}.dota@ ", max_size=40))
def test_refang_any_text_is_one_bounded_pass(text: str) -> None:
    once = refang(text)
    assert len(once) <= len(text.strip())
    assert refang("[[.]]") == "[.]"  # defanged twice: refanged once


def test_containment_keys_of_an_address_are_the_blocks_holding_it() -> None:
    keys = containment_keys("ipv4-addr", "203.0.113.7")
    assert keys[0] == "203.0.113.7" and len(keys) == 33
    assert {"203.0.113.6/31", "203.0.113.0/24", "203.0.0.0/16", "0.0.0.0/0"} <= set(keys)
    for key in keys:  # every key is canonical, so it can equal a stored value
        assert normalise_indicator("ipv4-addr", key) == key
    six = containment_keys("ipv6-addr", "2001:db8::1")
    assert len(six) == 129 and "2001:db8::/32" in six and six[-1] == "::/0"


def test_containment_keys_of_a_small_block_hold_what_is_inside() -> None:
    keys = containment_keys("ipv4-addr", "203.0.113.0/24")
    assert len(keys) == 1 + 24 + 510
    assert {"203.0.113.7", "203.0.113.128/25", "203.0.113.254/31"} <= set(keys)
    assert len(containment_keys("ipv4-addr", "10.0.0.0/8")) == 1 + 8  # too large: no inside
    assert containment_keys("domain-name", "evil.example") == ("evil.example",)
