"""French and English for everything a person reads: language negotiation and the
gettext catalogs shipped in ``agent/locale``.

Two domains share one mechanism: ``entraide`` (CLI help and messages, API error
messages, demo output) and ``console`` (the web console's pages). Catalogs are
``agent/locale/<lang>/LC_MESSAGES/<domain>.po``, edited by hand or with Babel
(``scripts/i18n``); the ``.mo`` files next to them are compiled from them and a test
fails when one is stale or a message lacks its translation.

English is the source language: the English catalog may be empty, and a message with no
French translation falls back to its English text (a test keeps that from shipping).
"""

from __future__ import annotations

import gettext
import re
from functools import cache
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_LANG",
    "DOMAINS",
    "LANGS",
    "LOCALE_DIR",
    "N_",
    "Lang",
    "localize",
    "negotiate",
    "translation",
]

Lang = Literal["en", "fr"]
LANGS: tuple[Lang, ...] = ("en", "fr")
DEFAULT_LANG: Lang = "en"
DOMAINS = ("entraide", "console")
LOCALE_DIR = Path(__file__).parent / "locale"



def N_(message: str) -> str:
    """Marks a message for extraction (``scripts/i18n``) without translating it: the
    text is used in English where it is made and translated where it is shown."""
    return message


# An Accept-Language header longer than this is not parsed (it is hostile or broken).
_MAX_HEADER = 1024


def negotiate(accept_language: str | None, default: Lang = DEFAULT_LANG) -> Lang:
    """The best of our languages for an ``Accept-Language`` header (RFC 9110 §12.5.4).

    Quality values are honoured; ``fr-CA`` counts as ``fr``; ``*`` means the default.
    Anything unparseable yields ``default``.
    """
    if not accept_language or len(accept_language) > _MAX_HEADER:
        return default
    best: tuple[float, int, Lang] | None = None
    for position, item in enumerate(accept_language.split(",")):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary == "*":
            lang: Lang = default
        elif primary in LANGS:
            lang = primary
        else:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        if not 0 < quality <= 1:
            continue
        # Higher quality wins; between equals, the earlier item.
        candidate = (quality, -position, lang)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return best[2] if best else default


@cache
def translation(lang: str, domain: str = "entraide") -> gettext.NullTranslations:
    """The catalog of ``domain`` in ``lang``; English text when there is none."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown message domain {domain!r}")
    if lang not in LANGS:
        lang = DEFAULT_LANG
    return gettext.translation(domain, localedir=LOCALE_DIR, languages=[lang], fallback=True)


# Messages may quote hostile input: a longer one is not matched against the templates
# (their lazy groups would cost time with the length), it stays English.
_MAX_TEMPLATED = 600

# A placeholder of a message template: {name}, {name!r}, {name:,}.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(![rsa])?(:[^{}]*)?\}")


@cache
def _templates(lang: str, domain: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Every msgid of ``domain`` with placeholders, as a pattern over the English text it
    formats to, with its translation; the longest literal text first, so a specific
    template wins over a general one."""
    catalog: dict[object, str] = getattr(translation(lang, domain), "_catalog", {})
    found: list[tuple[int, re.Pattern[str], str]] = []
    for msgid, msgstr in catalog.items():
        if not isinstance(msgid, str) or not _PLACEHOLDER.search(msgid) or not msgstr:
            continue
        pattern, literal, seen, end = [], 0, set(), 0
        for match in _PLACEHOLDER.finditer(msgid):
            pattern.append(re.escape(msgid[end:match.start()]))
            literal += match.start() - end
            name = match.group(1)
            pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
            seen.add(name)
            end = match.end()
        pattern.append(re.escape(msgid[end:]))
        literal += len(msgid) - end
        if literal >= 8:  # a template that is mostly placeholders would match anything
            found.append((literal, re.compile("".join(pattern), re.DOTALL), msgstr))
    found.sort(key=lambda item: -item[0])
    return tuple((pattern, msgstr) for _, pattern, msgstr in found)


def localize(message: str, lang: str, domain: str = "entraide", *, _depth: int = 0) -> str:
    """``message``, an English text already formatted, in ``lang``.

    A message that is a msgid is looked up as is. One formatted from a msgid with
    placeholders (``N_("no peer named {name!r}").format(...)``, or an f-string that
    spells the same text) is matched against that template and its translation filled
    with the same values, so messages raised deep in the node get translated where
    they are shown (the API's error middleware, the CLI's error line) without every
    layer knowing the reader's language. A value that is itself a sentence (a reason
    inside "{field}: {reason}") is translated the same way; a value of one word (a
    name, a type) never is. Anything unknown stays English.
    """
    if lang == DEFAULT_LANG or not message:
        return message
    translated = translation(lang, domain).gettext(message)
    if translated != message or len(message) > _MAX_TEMPLATED:
        return translated
    for pattern, msgstr in _templates(lang, domain):
        match = pattern.fullmatch(message)
        if match is not None:
            values = match.groupdict()
            if _depth < 3:
                values = {k: localize(v, lang, domain, _depth=_depth + 1) if " " in v else v
                          for k, v in values.items()}
            return _fill(msgstr, values)
    return message


def _fill(msgstr: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1)) or m.group(0), msgstr)
