"""STIX 2.1 patterning: a syntax checker and the one-comparison form Entraide maps.

``parse_pattern(text)`` checks a STIX 2.1 pattern (STIX 2.1 §9) against the grammar
and returns its comparisons; ``pattern_for(type, value)`` writes the pattern of an
Entraide indicator and ``indicator_of(pattern)`` reads one back when the pattern is
exactly one equality on a path Entraide models (``[ipv4-addr:value = '...']``,
``[file:hashes.'SHA-256' = '...']``, ``[autonomous-system:number = 64500]`` ...).
``simple_indicator(text)`` reads that form straight from the text, without the parser,
when it is written exactly as ``pattern_for`` writes it (the common case on import).

Invariants:
- ``indicator_of(pattern_for(t, v)) == (t, v)`` for every canonical value ``v`` of a
  type that has a pattern (every type but ``cve``, which STIX models as a
  vulnerability, not an observable).
- The parser is bounded: at most ``MAX_PATTERN_CHARS`` characters and
  ``MAX_PATTERN_DEPTH`` levels of parentheses; it never recurses deeper.
- Every refusal is a ``PayloadError`` whose message starts with "invalid STIX pattern".
- ``simple_indicator(text)``, when not None, equals ``indicator_of(parse_pattern(text))``
  (so the text is a valid pattern); None says nothing (use the parser).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from protocol.errors import PayloadError
from protocol.indicators import IndicatorType

__all__ = [
    "MAX_PATTERN_CHARS",
    "Comparison",
    "Pattern",
    "indicator_of",
    "parse_pattern",
    "pattern_for",
    "quote",
    "simple_indicator",
]

MAX_PATTERN_CHARS = 64 * 1024
MAX_PATTERN_DEPTH = 32

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<ts>t'[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z')
  | (?P<hex>h'(?:[0-9a-fA-F]{2})*')
  | (?P<b64>b'[A-Za-z0-9+/]*={0,2}')
  | (?P<str>'(?:[^'\\]|\\['\\])*')
  | (?P<num>[+-]?(?:[0-9]+\.[0-9]+|[0-9]+))
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[\[\]():.,*])
  | (?P<word>[A-Za-z_][A-Za-z0-9_-]*)
    """,
    re.VERBOSE | re.ASCII,
)
_KEYWORDS = frozenset({
    "AND", "OR", "NOT", "FOLLOWEDBY", "LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET", "IN",
    "EXISTS", "START", "STOP", "WITHIN", "SECONDS", "REPEATS", "TIMES", "true", "false",
})
_WORD_OPS = frozenset({"LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET"})
_OBJECT_TYPE = re.compile(r"(?:x-)?[a-z0-9][a-z0-9-]*[a-z0-9]|[a-z0-9]", re.ASCII)
# Dictionary keys (hashes.MD5) may be upper case; property names proper are lower case.
_PROPERTY = re.compile(r"[A-Za-z0-9_]{1,250}", re.ASCII)


@dataclass(frozen=True)
class Comparison:
    """One comparison: ``<object_type>:<path> [NOT] <op> <value>``.

    ``path`` holds property names (str) and list indexes (int, or ``"*"`` for any);
    ``value`` is the literal as Python: str for strings, int/float, bool, or for
    typed literals (``t'..'``, ``h'..'``, ``b'..'``) the whole token text; a list for IN.
    """

    object_type: str
    path: tuple[str | int, ...]
    op: str
    negated: bool
    value: object


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: every comparison in it, and whether it is the simple form
    (one observation expression holding one comparison, no qualifiers)."""

    comparisons: tuple[Comparison, ...]
    simple: bool


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    at: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise _error(f"unexpected character {text[at]!r} at offset {at}")
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, match.group(), at))
        at = match.end()
    return out


def _error(message: str) -> PayloadError:
    return PayloadError(f"invalid STIX pattern: {message}")


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.comparisons: list[Comparison] = []
        self.observations = 0
        self.qualifiers = 0

    # -- token helpers

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text == text and tok.kind in ("word", "punct", "op")

    def take(self, text: str) -> _Tok:
        tok = self.peek()
        if tok is None or tok.text != text:
            got = "the end" if tok is None else repr(tok.text)
            raise _error(f"expected {text!r}, found {got}")
        self.i += 1
        return tok

    def next(self, what: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise _error(f"expected {what}, found the end")
        self.i += 1
        return tok

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_PATTERN_DEPTH:
            raise _error(f"nested deeper than {MAX_PATTERN_DEPTH} levels")

    # -- observation expressions (STIX 2.1 §9.5)

    def pattern(self) -> Pattern:
        if not self.toks:
            raise _error("it is empty")
        self.observation_expressions()
        tok = self.peek()
        if tok is not None:
            raise _error(f"unexpected {tok.text!r} at offset {tok.at}")
        simple = (self.observations == 1 and self.qualifiers == 0
                  and len(self.comparisons) == 1)
        return Pattern(tuple(self.comparisons), simple)

    def observation_expressions(self) -> None:
        self.observation_or()
        while self.at("FOLLOWEDBY"):
            self.i += 1
            self.observation_or()

    def observation_or(self) -> None:
        self.observation_and()
        while self.at("OR"):
            self.i += 1
            self.observation_and()

    def observation_and(self) -> None:
        self.observation_qualified()
        while self.at("AND"):
            self.i += 1
            self.observation_qualified()

    def observation_qualified(self) -> None:
        if self.at("("):
            self.enter()
            self.i += 1
            self.observation_expressions()
            self.take(")")
            self.depth -= 1
        elif self.at("["):
            self.i += 1
            self.observations += 1
            self.comparison_or()
            self.take("]")
        else:
            tok = self.peek()
            raise _error("expected '[' or '(' to start an observation expression, found "
                         + ("the end" if tok is None else repr(tok.text)))
        while self.qualifier():
            self.qualifiers += 1

    def qualifier(self) -> bool:
        if self.at("WITHIN"):
            self.i += 1
            self.number("WITHIN", positive=True)
            self.take("SECONDS")
            return True
        if self.at("REPEATS"):
            self.i += 1
            self.number("REPEATS", positive=True, integer=True)
            self.take("TIMES")
            return True
        if self.at("START"):
            self.i += 1
            self.timestamp("START")
            self.take("STOP")
            self.timestamp("STOP")
            return True
        return False

    def number(self, what: str, *, positive: bool = False, integer: bool = False) -> None:
        tok = self.next(f"a number after {what}")
        if tok.kind != "num" or (integer and "." in tok.text) or (
                positive and float(tok.text) <= 0):
            raise _error(f"{what} needs a positive {'integer' if integer else 'number'}")

    def timestamp(self, what: str) -> None:
        tok = self.next(f"a t'...' timestamp after {what}")
        if tok.kind != "ts":
            raise _error(f"{what} needs a t'YYYY-MM-DDTHH:MM:SSZ' timestamp")

    # -- comparison expressions (STIX 2.1 §9.4)

    def comparison_or(self) -> None:
        self.comparison_and()
        while self.at("OR"):
            self.i += 1
            self.comparison_and()

    def comparison_and(self) -> None:
        self.comparison_atom()
        while self.at("AND"):
            self.i += 1
            self.comparison_atom()

    def comparison_atom(self) -> None:
        if self.at("("):
            self.enter()
            self.i += 1
            self.comparison_or()
            self.take(")")
            self.depth -= 1
            return
        if self.at("EXISTS"):
            self.i += 1
            object_type, path = self.object_path()
            self.comparisons.append(Comparison(object_type, path, "EXISTS", False, None))
            return
        object_type, path = self.object_path()
        negated = False
        if self.at("NOT"):
            self.i += 1
            negated = True
        tok = self.next("a comparison operator")
        value: object
        if tok.kind == "op":
            op = "!=" if tok.text == "<>" else tok.text
            value = self.literal(op)
        elif tok.kind == "word" and tok.text in _WORD_OPS:
            op = tok.text
            value = self.literal(op)
            if op in ("LIKE", "MATCHES") and not isinstance(value, str):
                raise _error(f"{op} needs a string")
        elif tok.kind == "word" and tok.text == "IN":
            op = "IN"
            self.take("(")
            values = [self.literal("IN")]
            while self.at(","):
                self.i += 1
                values.append(self.literal("IN"))
            self.take(")")
            value = values
        else:
            raise _error(f"expected a comparison operator, found {tok.text!r}")
        self.comparisons.append(Comparison(object_type, path, op, negated, value))

    def object_path(self) -> tuple[str, tuple[str | int, ...]]:
        tok = self.next("an object path")
        if tok.kind != "word" or tok.text in _KEYWORDS or not _OBJECT_TYPE.fullmatch(tok.text):
            raise _error(f"expected an object type (e.g. ipv4-addr), found {tok.text!r}")
        object_type = tok.text
        if len(object_type) > 250:
            raise _error("object type is over 250 characters")
        self.take(":")
        path: list[str | int] = [self.property_name()]
        while True:
            if self.at("."):
                self.i += 1
                path.append(self.property_name())
            elif self.at("["):
                self.i += 1
                tok = self.next("a list index")
                if tok.text == "*":
                    path.append("*")
                elif tok.kind == "num" and "." not in tok.text and not tok.text.startswith(
                        ("+", "-")):
                    path.append(int(tok.text))
                else:
                    raise _error(f"a list index is a non-negative integer or '*', "
                                 f"not {tok.text!r}")
                self.take("]")
            else:
                return object_type, tuple(path)

    def property_name(self) -> str:
        tok = self.next("a property name")
        if tok.kind == "str":
            name = _unquote(tok.text)
            if not name or len(name) > 250:
                raise _error("a quoted property name must be 1 to 250 characters")
            return name
        if tok.kind == "word" and _PROPERTY.fullmatch(tok.text):
            return tok.text
        raise _error(f"expected a property name, found {tok.text!r}")

    def literal(self, op: str) -> object:
        tok = self.next(f"a value after {op}")
        if tok.kind == "str":
            return _unquote(tok.text)
        if tok.kind == "num":
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "word" and tok.text in ("true", "false"):
            return tok.text == "true"
        if tok.kind in ("ts", "hex", "b64"):
            return tok.text
        raise _error(f"expected a value after {op}, found {tok.text!r}")


def _unquote(token: str) -> str:
    return re.sub(r"\\(['\\])", r"\1", token[1:-1])


def quote(value: str) -> str:
    """A STIX pattern string literal: single quotes, ``\\`` and ``'`` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_pattern(text: str) -> Pattern:
    """Check a STIX 2.1 pattern and return its comparisons.

    Raises:
        PayloadError: not a string, too long, or not valid STIX 2.1 pattern syntax
            (the message says where and what was expected).
    """
    if not isinstance(text, str):
        raise _error("a pattern is a string")
    if len(text) > MAX_PATTERN_CHARS:
        raise _error(f"it is over {MAX_PATTERN_CHARS} characters")
    return _parse(text)


@functools.lru_cache(maxsize=1024)  # an import checks, then maps, the same pattern
def _parse(text: str) -> Pattern:
    return _Parser(text).pattern()


# --- the indicator forms -----------------------------------------------------------

_HASH_NAMES = {
    IndicatorType.FILE_MD5: "MD5",
    IndicatorType.FILE_SHA1: "SHA-1",
    IndicatorType.FILE_SHA256: "SHA-256",
    IndicatorType.FILE_SHA512: "SHA-512",
}
_HASH_BY_NAME = {name.replace("-", "").upper(): kind for kind, name in _HASH_NAMES.items()}
_VALUE_TYPES = {
    "ipv4-addr": IndicatorType.IPV4_ADDR,
    "ipv6-addr": IndicatorType.IPV6_ADDR,
    "domain-name": IndicatorType.DOMAIN_NAME,
    "url": IndicatorType.URL,
    "email-addr": IndicatorType.EMAIL_ADDR,
}


def pattern_for(type: IndicatorType | str, value: str) -> str:
    """The STIX pattern of an Entraide indicator (value already canonical).

    Raises:
        PayloadError: ``cve`` (a vulnerability, not an observable) or an unknown type.
    """
    kind = IndicatorType(type)
    if kind.value in _VALUE_TYPES:
        return f"[{kind.value}:value = {quote(value)}]"
    if kind in _HASH_NAMES:
        return f"[file:hashes.{quote(_HASH_NAMES[kind])} = {quote(value)}]"
    if kind is IndicatorType.AUTONOMOUS_SYSTEM:
        return f"[autonomous-system:number = {int(value.removeprefix('AS'))}]"
    if kind is IndicatorType.USER_ACCOUNT:
        return f"[user-account:account_login = {quote(value)}]"
    raise PayloadError(f"{kind.value} has no STIX pattern (STIX models it as a vulnerability)")


def indicator_of(pattern: Pattern) -> tuple[IndicatorType, str] | None:
    """The (type, raw value) of a simple pattern on a path Entraide models, else None.

    The value is returned as written in the pattern (not yet normalised); an
    autonomous-system number comes back as ``AS<n>``.
    """
    if not pattern.simple:
        return None
    (c,) = pattern.comparisons
    if c.op != "=" or c.negated:
        return None
    if c.object_type in _VALUE_TYPES and c.path == ("value",) and isinstance(c.value, str):
        return _VALUE_TYPES[c.object_type], c.value
    if (c.object_type == "file" and len(c.path) == 2 and c.path[0] == "hashes"
            and isinstance(c.path[1], str) and isinstance(c.value, str)):
        kind = _HASH_BY_NAME.get(c.path[1].replace("-", "").upper())
        return None if kind is None else (kind, c.value)
    if (c.object_type == "autonomous-system" and c.path == ("number",)
            and isinstance(c.value, int) and not isinstance(c.value, bool)):
        return IndicatorType.AUTONOMOUS_SYSTEM, f"AS{c.value}"
    if (c.object_type == "user-account" and c.path == ("account_login",)
            and isinstance(c.value, str)):
        return IndicatorType.USER_ACCOUNT, c.value
    return None


# The exact texts pattern_for writes, with a value that needs no escape. Each is one
# "[", object type, ":", path, "=", literal, "]" token sequence the parser accepts as a
# simple pattern; anything else (other spacing, escapes, other paths) goes to the parser.
_SIMPLE_VALUE = re.compile(
    r"\[(ipv4-addr|ipv6-addr|domain-name|url|email-addr):value = '([^'\\]*)'\]", re.ASCII)
_SIMPLE_HASH = re.compile(r"\[file:hashes\.'(MD5|SHA-1|SHA-256|SHA-512)' = '([0-9a-fA-F]+)'\]",
                          re.ASCII)
_HASH_DIGITS = {"MD5": 32, "SHA-1": 40, "SHA-256": 64, "SHA-512": 128}
_SIMPLE_AS = re.compile(r"\[autonomous-system:number = ([0-9]{1,20})\]", re.ASCII)
_HASH_KINDS = {name: kind for kind, name in _HASH_NAMES.items()}


def simple_indicator(text: object) -> tuple[IndicatorType, str] | None:
    """``indicator_of(parse_pattern(text))`` for a pattern written exactly in the form
    :func:`pattern_for` writes (single spaces, a string value without escapes; a hash
    as hex digits of its length); None for any other text, valid or not, which the
    parser must then judge.
    """
    if not isinstance(text, str) or len(text) > MAX_PATTERN_CHARS:
        return None
    match = _SIMPLE_VALUE.fullmatch(text)
    if match is not None:
        return _VALUE_TYPES[match.group(1)], match.group(2)
    match = _SIMPLE_HASH.fullmatch(text)
    if match is not None and len(match.group(2)) == _HASH_DIGITS[match.group(1)]:
        return _HASH_KINDS[match.group(1)], match.group(2)
    match = _SIMPLE_AS.fullmatch(text)
    if match is not None:
        return IndicatorType.AUTONOMOUS_SYSTEM, f"AS{int(match.group(1))}"
    return None
