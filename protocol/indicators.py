"""Indicator types and their one canonical text form (docs/protocol.md §6, "Indicators").

``normalise_indicator(type, value)`` maps every accepted spelling of an indicator
to exactly one string, so that the same address, domain or hash submitted by two
jurisdictions lands on the same query key, and refuses anything else with a
``PayloadError`` whose message says what is wrong.

Invariants:
- Normalisation is idempotent: ``normalise_indicator(t, normalise_indicator(t, v))``
  returns its input unchanged. The payload decoder relies on it: a value on the wire
  must already be canonical.
- The result is printable text with no surrounding whitespace and no control
  characters, at most ``MAX_INDICATOR_CHARS`` characters long.
- Only ASCII digits count as digits (``re.ASCII``); ``int()`` never sees a string the
  patterns here have not matched, so Unicode digits and underscores cannot sneak in.
- What two values are matched by (a URL's RFC 3986 normal form, an IP's CIDR blocks)
  and how defanged input is refanged live in protocol/matching.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
import urllib.parse
from collections.abc import Callable
from enum import StrEnum

import idna

from protocol.errors import PayloadError

__all__ = [
    "MAX_INDICATOR_CHARS",
    "PERSONAL_DATA_TYPES",
    "IndicatorType",
    "normalise_domain",
    "normalise_indicator",
    "normalise_url",
    "shown_value",
]

MAX_INDICATOR_CHARS = 2048
"""Longest indicator value accepted, before and after normalisation (URLs are the long ones)."""

_MAX_DOMAIN_CHARS = 253  # RFC 1035 §2.3.4, without the trailing dot
_MAX_LABEL_CHARS = 63
_MAX_EMAIL_CHARS = 254  # RFC 5321 §4.5.3.1.3 path limit, less the angle brackets
_MAX_LOCAL_PART_CHARS = 64
_MAX_AS_NUMBER = (1 << 32) - 1


class IndicatorType(StrEnum):
    """The indicator types an observation may carry; values follow STIX 2.1 names."""

    IPV4_ADDR = "ipv4-addr"
    IPV6_ADDR = "ipv6-addr"
    DOMAIN_NAME = "domain-name"
    URL = "url"
    EMAIL_ADDR = "email-addr"
    FILE_SHA256 = "file:sha256"
    FILE_SHA1 = "file:sha1"
    FILE_MD5 = "file:md5"
    FILE_SHA512 = "file:sha512"
    CVE = "cve"
    AUTONOMOUS_SYSTEM = "autonomous-system"
    USER_ACCOUNT = "user-account"


PERSONAL_DATA_TYPES: frozenset[str] = frozenset({IndicatorType.EMAIL_ADDR.value,
                                                IndicatorType.USER_ACCOUNT.value})
"""Indicator types whose values can identify a person (docs/privacy.md). An observation
of one is at least AMBER unless its submitter says otherwise, has a shorter default
retention (protocol/retention.py), and its value never appears in logs, metrics or
error messages (``agent.errors.redact``). A new type that can name a person (an
account name, a phone number) joins this set when it is added."""


def shown_value(type: str, value: str) -> str:
    """How a value may appear in a log line, metric or error message: quoted (first 80
    characters) for most types; for a personal-data type, never the value, only
    ``<redacted sha256:xxxxxxxx>`` (the first 8 hex digits of its SHA-256), enough
    to match two lines about one value without showing it."""
    if str(type) in PERSONAL_DATA_TYPES:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        return f"<redacted sha256:{digest}>"
    return repr(value[:80])


def normalise_indicator(type: IndicatorType | str, value: str) -> str:
    """Return the canonical form of an indicator value.

    Surrounding whitespace is ignored for every type. The canonical forms are:

    - ``ipv4-addr``: dotted decimal, no leading zeros (``010.0.0.1`` is refused as
      ambiguous: some tools read it as octal). A CIDR block is accepted when its host
      bits are zero; ``/32`` is dropped. An IPv4-mapped IPv6 address
      (``::ffff:192.0.2.1``) is unwrapped to its IPv4 address.
    - ``ipv6-addr``: RFC 5952 text (lowercase, longest zero run compressed), optional
      CIDR as for IPv4 (``/128`` dropped). Zone ids (``%eth0``) are refused, and so are
      IPv4-mapped addresses, which must be submitted as ``ipv4-addr``.
    - ``domain-name``: UTS 46 mapping (non-transitional), lowercase, every non-ASCII
      label as its IDNA 2008 A-label (``xn--``), trailing dot removed. ASCII labels may
      hold letters, digits, hyphens (not at either end) and underscores (``_dmarc``).
    - ``url``: scheme and host lowercased, host normalised as a domain or IP address
      (a percent-encoded host is decoded first, as UTF-8), default port dropped, empty
      path written ``/``; userinfo, path, query and fragment kept exactly as given
      (``protocol.matching.indicator_key`` is what URLs are matched by).
    - ``email-addr``: local part kept as given, domain normalised as ``domain-name``.
    - ``file:md5`` / ``file:sha1`` / ``file:sha256`` / ``file:sha512``: lowercase hex of
      the exact digest length.
    - ``cve``: ``CVE-YYYY-NNNN`` uppercase (four digits, or more without a leading zero).
    - ``autonomous-system``: ``AS<number>``, 0 < number < 2**32; ``AS64500``,
      ``as64500`` and ``64500`` are accepted.
    - ``user-account``: an account's login name (STIX ``user-account:account_login``)
      as given, in Unicode NFC, at most 256 characters, no whitespace or control
      characters (``EXAMPLE\\jdoe``, ``jdoe``, ``root`` are three accounts: case and
      domain are kept, since systems differ on what they ignore).

    Args:
        type: an ``IndicatorType`` or its string value.
        value: the value as submitted.

    Returns:
        The canonical value.

    Raises:
        PayloadError: unknown type, or a value that is not a valid indicator of that
            type; the message names the type and the reason.
    """
    try:
        kind = IndicatorType(type)
    except ValueError:
        known = ", ".join(t.value for t in IndicatorType)
        raise PayloadError(f"unknown indicator type {type!r}; known types: {known}") from None
    if not isinstance(value, str):
        raise PayloadError(f"{kind.value}: value must be a string")
    if len(value) > MAX_INDICATOR_CHARS:
        raise PayloadError(f"{kind.value}: value is over {MAX_INDICATOR_CHARS} characters")
    text = value.strip()
    if not text:
        raise PayloadError(f"{kind.value}: value is empty")
    try:
        return _NORMALISERS[kind](text)
    except _Invalid as exc:
        raise PayloadError(f"{kind.value}: {shown_value(kind.value, text)} {exc}") from None


def normalise_domain(value: str) -> str:
    """Canonical form of a domain name, as for the ``domain-name`` indicator type.

    Raises:
        PayloadError: not a valid domain name.
    """
    return normalise_indicator(IndicatorType.DOMAIN_NAME, value)


def normalise_url(value: str) -> str:
    """Canonical form of a URL, as for the ``url`` indicator type.

    Raises:
        PayloadError: not a valid URL with an allowed scheme and a host.
    """
    return normalise_indicator(IndicatorType.URL, value)


class _Invalid(PayloadError):
    """Internal: why a value is refused, without its type; ``normalise_indicator``
    catches it and raises a ``PayloadError`` naming the type, so it never escapes."""


# --- IP addresses ----------------------------------------------------------------

_PREFIX = re.compile(r"0|[1-9][0-9]{0,2}", re.ASCII)


def _split_prefix(text: str, max_prefix: int) -> tuple[str, int | None]:
    address, slash, prefix = text.partition("/")
    if not slash:
        return address, None
    if not _PREFIX.fullmatch(prefix) or int(prefix) > max_prefix:
        raise _Invalid(f"has an invalid prefix length (0 to {max_prefix}, no leading zeros)")
    return address, int(prefix)


def _ipv4_address(text: str) -> ipaddress.IPv4Address:
    if ":" in text:
        v6 = _ipv6_address(text, allow_mapped=True)
        if v6.ipv4_mapped is None:
            raise _Invalid("is an IPv6 address; use the type ipv6-addr")
        return v6.ipv4_mapped
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise _Invalid(f"is not an IPv4 address ({exc})") from None


def _ipv6_address(text: str, *, allow_mapped: bool = False) -> ipaddress.IPv6Address:
    if "%" in text:
        raise _Invalid("has a zone id (%...), which only means something on one host")
    if ":" not in text:
        raise _Invalid("is not an IPv6 address (an IPv4 address? use the type ipv4-addr)")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError as exc:
        raise _Invalid(f"is not an IPv6 address ({exc})") from None
    if address.ipv4_mapped is not None and not allow_mapped:
        raise _Invalid(
            f"is an IPv4-mapped address; submit it as ipv4-addr {address.ipv4_mapped}"
        )
    return address


def _network_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int) -> str:
    if prefix == address.max_prefixlen:
        return str(address)
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    if network.network_address != address:
        raise _Invalid(f"has host bits set; did you mean {network}?")
    return f"{address}/{prefix}"


# Dotted decimal already in canonical form (no leading zeros, each octet <= 255): what
# str(IPv4Address(text)) gives back unchanged. Most submissions look like this, and
# the regex costs a tenth of ipaddress's parse; anything else takes the full path.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)


def _normalise_ipv4(text: str) -> str:
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    address_text, prefix = _split_prefix(text, 32)
    address = _ipv4_address(address_text)
    return str(address) if prefix is None else _network_text(address, prefix)


def _normalise_ipv6(text: str) -> str:
    address_text, prefix = _split_prefix(text, 128)
    address = _ipv6_address(address_text)
    return str(address) if prefix is None else _network_text(address, prefix)


# --- Domain names ----------------------------------------------------------------

# An ASCII label after UTS 46 mapping (so already lowercase). Underscores are
# allowed: they are not valid host names but appear in real DNS names (_dmarc,
# _domainkey, SRV owners) and in malicious infrastructure worth sharing.
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?", re.ASCII)
_ALL_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def _normalise_domain(text: str) -> str:
    try:
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError) as exc:
        raise _Invalid(f"is not a valid domain name ({exc})") from None
    if mapped.endswith("."):
        mapped = mapped[:-1]
    if not mapped:
        raise _Invalid("is not a domain name")
    labels = [_normalise_label(label) for label in mapped.split(".")]
    if _ALL_DIGITS.fullmatch(labels[-1]):
        raise _Invalid("ends in a numeric label: an IP address? use ipv4-addr")
    name = ".".join(labels)
    if len(name) > _MAX_DOMAIN_CHARS:
        raise _Invalid(f"is over {_MAX_DOMAIN_CHARS} characters in ASCII form")
    return name


def _normalise_label(label: str) -> str:
    if not label:
        raise _Invalid("has an empty label (two dots in a row, or a leading dot)")
    if label.isascii() and not label.startswith("xn--"):
        ascii_label = label
        if not _ASCII_LABEL.fullmatch(ascii_label):
            raise _Invalid(
                f"has an invalid label {label[:63]!r} (letters, digits, '-' and '_' only, "
                "no '-' at either end)"
            )
    else:
        try:
            ascii_label = idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise _Invalid(f"has an invalid label {label[:63]!r} ({exc})") from None
        # An A-label given as such must be the one IDNA would produce, so that each
        # name has one spelling (punycode has none other, but be explicit).
        if label.startswith("xn--") and ascii_label != label:
            raise _Invalid(f"has a non-canonical A-label {label[:63]!r}")
    if len(ascii_label) > _MAX_LABEL_CHARS:
        raise _Invalid(f"has a label over {_MAX_LABEL_CHARS} characters in ASCII form")
    return ascii_label


# --- URLs ------------------------------------------------------------------------

_URL_SCHEMES = frozenset({"http", "https", "ftp", "ftps", "ws", "wss"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.ASCII | re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_IPV4_LIKE = re.compile(r"[0-9.]+", re.ASCII)


def _check_no_space_or_control(text: str) -> None:
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise _Invalid(f"contains whitespace or a control character (U+{ord(char):04X})")


def _normalise_url(text: str) -> str:
    _check_no_space_or_control(text)
    match = _URL.fullmatch(text)
    if match is None:
        raise _Invalid("is not an absolute URL (scheme://host/...)")
    scheme, authority, rest = match.group(1).lower(), match.group(2), match.group(3)
    if scheme not in _URL_SCHEMES:
        allowed = ", ".join(sorted(_URL_SCHEMES))
        raise _Invalid(f"has scheme {scheme!r}; allowed: {allowed}")
    if "\\" in authority:
        raise _Invalid("has a backslash in its authority")
    userinfo, at, hostport = authority.rpartition("@")
    host, port = _split_host_port(hostport)
    if not host:
        raise _Invalid("has no host")
    canonical_host = _normalise_url_host(host)
    port_text = ""
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        port_text = f":{port}"
    if not rest.startswith("/"):
        rest = "/" + rest
    result = f"{scheme}://{userinfo}{at}{canonical_host}{port_text}{rest}"
    if len(result) > MAX_INDICATOR_CHARS:
        raise _Invalid(f"is over {MAX_INDICATOR_CHARS} characters once normalised")
    return result


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _Invalid("has an unclosed '[' in its host")
        host, after = hostport[: end + 1], hostport[end + 1 :]
        if after and not after.startswith(":"):
            raise _Invalid("has text after its bracketed host")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if colon else None
    if port_text is None or port_text == "":
        # "http://host:/" is allowed by RFC 3986 and means the default port.
        return host, None
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise _Invalid("has an invalid port (0 to 65535)")
    return host, int(port_text)


def _normalise_url_host(host: str) -> str:
    if host.startswith("["):
        inner = host[1:-1]
        if inner[:1] in ("v", "V"):
            raise _Invalid("uses an IPvFuture literal, which is not supported")
        return f"[{_ipv6_address(inner, allow_mapped=True)}]"
    if "%" in host:
        host = _decode_host(host)
    if _IPV4_LIKE.fullmatch(host):
        return str(_ipv4_address(host))
    return _normalise_domain(host)


def _decode_host(host: str) -> str:
    """A percent-encoded registered name (RFC 3986 §3.2.2) decoded as UTF-8."""
    if not _PCT_TRIPLETS.fullmatch(host):
        raise _Invalid("has a '%' in its host that is not a percent-encoded octet")
    try:
        decoded = urllib.parse.unquote(host, errors="strict")
    except UnicodeDecodeError:
        raise _Invalid("has a percent-encoded host that is not UTF-8") from None
    _check_no_space_or_control(decoded)
    if any(c in decoded for c in "%/?#@:[]\\"):
        raise _Invalid("has a percent-encoded delimiter in its host")
    return decoded


_PCT_TRIPLETS = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*", re.ASCII | re.DOTALL)
# --- E-mail addresses ------------------------------------------------------------


def _normalise_email(text: str) -> str:
    _check_no_space_or_control(text)
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise _Invalid("is not an e-mail address (local@domain)")
    if len(local) > _MAX_LOCAL_PART_CHARS:
        raise _Invalid(f"has a local part over {_MAX_LOCAL_PART_CHARS} characters")
    if domain.startswith("["):
        raise _Invalid("has an address literal as its domain, which is not supported")
    result = f"{local}@{_normalise_domain(domain)}"
    if len(result) > _MAX_EMAIL_CHARS:
        raise _Invalid(f"is over {_MAX_EMAIL_CHARS} characters once normalised")
    return result


# --- Hashes, CVE ids, AS numbers -------------------------------------------------


def _hex_digest(length: int, name: str) -> Callable[[str], str]:
    pattern = re.compile(f"[0-9a-f]{{{length}}}", re.ASCII)

    def normalise(text: str) -> str:
        lowered = text.lower()
        if not pattern.fullmatch(lowered):
            raise _Invalid(f"is not a {name} digest ({length} hex digits)")
        return lowered

    return normalise


_CVE = re.compile(r"CVE-([0-9]{4})-(0[0-9]{3}|[1-9][0-9]{3,18})", re.ASCII)


def _normalise_cve(text: str) -> str:
    upper = text.upper()
    match = _CVE.fullmatch(upper)
    if match is None:
        raise _Invalid(
            "is not a CVE id (CVE-YYYY-NNNN: four digits, or more without a leading zero)"
        )
    if int(match.group(1)) < 1999:
        raise _Invalid("has a year before 1999, when CVE began")
    return upper


_AS_NUMBER = re.compile(r"(?:AS)?([0-9]{1,10})", re.ASCII | re.IGNORECASE)


def _normalise_as(text: str) -> str:
    match = _AS_NUMBER.fullmatch(text)
    if match is None:
        raise _Invalid("is not an AS number (AS64500, as64500 or 64500)")
    number = int(match.group(1))
    if not 0 < number <= _MAX_AS_NUMBER:
        raise _Invalid(f"is out of range (1 to {_MAX_AS_NUMBER})")
    return f"AS{number}"


_MAX_ACCOUNT_CHARS = 256


def _normalise_account(text: str) -> str:
    _check_no_space_or_control(text)
    name = unicodedata.normalize("NFC", text)
    if len(name) > _MAX_ACCOUNT_CHARS:
        raise _Invalid(f"is over {_MAX_ACCOUNT_CHARS} characters")
    return name


_NORMALISERS: dict[IndicatorType, Callable[[str], str]] = {
    IndicatorType.IPV4_ADDR: _normalise_ipv4,
    IndicatorType.IPV6_ADDR: _normalise_ipv6,
    IndicatorType.DOMAIN_NAME: _normalise_domain,
    IndicatorType.URL: _normalise_url,
    IndicatorType.EMAIL_ADDR: _normalise_email,
    IndicatorType.FILE_MD5: _hex_digest(32, "MD5"),
    IndicatorType.FILE_SHA1: _hex_digest(40, "SHA-1"),
    IndicatorType.FILE_SHA256: _hex_digest(64, "SHA-256"),
    IndicatorType.FILE_SHA512: _hex_digest(128, "SHA-512"),
    IndicatorType.CVE: _normalise_cve,
    IndicatorType.AUTONOMOUS_SYSTEM: _normalise_as,
    IndicatorType.USER_ACCOUNT: _normalise_account,
}
