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
from functools import cache
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_LANG",
    "DOMAINS",
    "LANGS",
    "LOCALE_DIR",
    "Lang",
    "negotiate",
    "translation",
]

Lang = Literal["en", "fr"]
LANGS: tuple[Lang, ...] = ("en", "fr")
DEFAULT_LANG: Lang = "en"
DOMAINS = ("entraide", "console")
LOCALE_DIR = Path(__file__).parent / "locale"

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
