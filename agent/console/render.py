"""Rendering: one Jinja2 environment per language, with the ``console`` gettext domain,
and the filters that show dates, numbers and bilingual text in the reader's locale.

Invariants:
- Autoescaping is on for every template: text from peers (descriptions, names, notes)
  is hostile and is only ever shown as text.
- A word of a fixed vocabulary shown from data (a status, a need, a scope) is translated
  by the ``word`` filter only when it is in :data:`WORDS`; anything else is shown as
  the (escaped) text it is, never through gettext, whose answer Jinja trusts as markup.
- A template's words come from ``agent/locale/<lang>/LC_MESSAGES/console.mo``; a word
  without its French translation falls back to English (a test keeps that from
  shipping).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from babel.dates import format_datetime
from babel.numbers import format_decimal
from jinja2 import Environment, FileSystemLoader, select_autoescape

from agent.i18n import LANGS, N_, Lang, translation

__all__ = ["LOCALES", "TEMPLATES", "WORDS", "environment", "localized_text", "when"]

TEMPLATES = Path(__file__).parent / "templates"
LOCALES: dict[str, str] = {"en": "en_CA", "fr": "fr_CA"}

WORDS = frozenset({
    # token scopes
    N_("read"), N_("write"), N_("admin"),
    # severities
    N_("low"), N_("medium"), N_("high"), N_("critical"),
    # mutual aid: request and offer statuses, thread events
    N_("open"), N_("in-progress"), N_("closed"), N_("accepted"), N_("withdrawn"),
    N_("request"), N_("offer"), N_("withdraw"), N_("accept"), N_("update"), N_("close"),
    # mutual aid: needs (protocol/aid.py's NeedKind)
    N_("forensics"), N_("malware-analysis"), N_("incident-coordination"),
    N_("threat-hunting"), N_("surge-staff"), N_("recovery"), N_("communications"),
    N_("legal-privacy"), N_("other"),
})
"""The data words the ``word`` filter translates."""


def when(value: int | float | str | None, lang: str) -> str:
    """A time (ms since the epoch, or ISO 8601 text) in the reader's locale, in UTC."""
    if value is None or value == "":
        return "—"
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        else:
            moment = datetime.fromtimestamp(value / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment, "medium", tzinfo=UTC, locale=LOCALES.get(lang, "en_CA")) \
        + " UTC"


def number(value: int | float | None, lang: str) -> str:
    if value is None:
        return "—"
    return format_decimal(value, locale=LOCALES.get(lang, "en_CA"))


def localized_text(value: Any, lang: str) -> tuple[str, str | None, str | None]:
    """A free text ``{"en", "fr"}`` as (text in ``lang`` or the other, the other
    language's code, the other text) — the other is None when there is only one."""
    if isinstance(value, str):
        return value, None, None
    if not isinstance(value, dict):
        return "", None, None
    other: Lang = "fr" if lang == "en" else "en"
    mine, theirs = value.get(lang), value.get(other)
    if mine:
        return str(mine), (other if theirs else None), (str(theirs) if theirs else None)
    if theirs:
        return str(theirs), None, None
    return "", None, None


@cache
def environment(lang: str) -> Environment:
    """The template environment of ``lang`` (built once per language)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(["html"], default=True),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_translations(  # type: ignore[attr-defined]
        translation(lang if lang in LANGS else "en", "console"), newstyle=True)
    words = translation(lang if lang in LANGS else "en", "console").gettext
    env.filters["word"] = lambda value: words(value) if value in WORDS else str(value)
    env.filters["when"] = lambda value: when(value, lang)
    env.filters["number"] = lambda value: number(value, lang)
    env.globals["localized"] = lambda value: localized_text(value, lang)
    return env
