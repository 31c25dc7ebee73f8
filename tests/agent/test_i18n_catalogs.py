"""Every message a person reads has its French, and what ships is what the catalogs say
(issue 18; docs/operations.md, "Languages").

For each gettext domain of agent/locale (``entraide``: CLI, API, demo; ``console``: the
web console), the messages are extracted from the sources with Babel and its mapping
file (``agent/locale/<domain>.cfg``, as ``scripts/i18n`` does), and:
- each has a French translation in ``fr/LC_MESSAGES/<domain>.po``, not fuzzy, with the
  same placeholders as the English (``{name}``, ``%(name)s``, ``%s``);
- each compiled ``.mo`` holds exactly its ``.po``'s translations (not stale).
"""

from __future__ import annotations

import gettext
import re

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from agent.i18n import DOMAINS, LOCALE_DIR

ROOT = LOCALE_DIR.parents[1]
PRESENT = [d for d in DOMAINS if (LOCALE_DIR / f"{d}.cfg").exists()
           or (LOCALE_DIR / "fr" / "LC_MESSAGES" / f"{d}.po").exists()]
_PLACEHOLDERS = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*(?:![rsa])?(?::[^{}]*)?\}|%\(\w+\)\w|%\w")


def _po(domain: str, lang: str) -> dict[str, tuple[str, bool]]:
    path = LOCALE_DIR / lang / "LC_MESSAGES" / f"{domain}.po"
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=lang)
    return {str(m.id): (str(m.string or ""), m.fuzzy) for m in catalog if m.id}


def _extracted(domain: str) -> set[str]:
    cfg = LOCALE_DIR / f"{domain}.cfg"
    with cfg.open(encoding="utf-8") as handle:
        method_map, options_map = parse_mapping_cfg(handle, str(cfg))
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords={"_": None, "N_": None,
                                                          "gettext": None}):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_i18n_catalogs_some_domain_is_present() -> None:
    assert "entraide" in PRESENT


@pytest.mark.parametrize("domain", PRESENT)
def test_i18n_catalogs_every_message_has_its_french(domain: str) -> None:
    french = _po(domain, "fr")
    if (LOCALE_DIR / f"{domain}.cfg").exists():
        missing = sorted(_extracted(domain) - set(french))
        assert not missing, f"not in fr/{domain}.po (run scripts/i18n): {missing[:10]}"
    untranslated = sorted(msgid for msgid, (text, fuzzy) in french.items()
                          if not text.strip() or fuzzy)
    assert not untranslated, f"no French in fr/{domain}.po: {untranslated[:10]}"
    for msgid, (text, _fuzzy) in french.items():
        assert sorted(_PLACEHOLDERS.findall(msgid)) == sorted(_PLACEHOLDERS.findall(text)), (
            f"placeholders differ in fr/{domain}.po: {msgid!r} -> {text!r}")


@pytest.mark.parametrize("domain", PRESENT)
def test_i18n_catalogs_english_is_whole(domain: str) -> None:
    """English is the source: scripts/i18n gives each msgid its own text as msgstr, so
    the en catalog is whole too (and may reword a message without touching the code)."""
    english = _po(domain, "en")
    assert set(english) == set(_po(domain, "fr")), f"en/{domain}.po and fr differ: run scripts/i18n"
    empty = sorted(msgid for msgid, (text, _fuzzy) in english.items() if not text.strip())
    assert not empty, f"no text in en/{domain}.po (run scripts/i18n): {empty[:10]}"


@pytest.mark.parametrize("domain", PRESENT)
@pytest.mark.parametrize("lang", ["en", "fr"])
def test_i18n_catalogs_compiled_catalog_is_not_stale(domain: str, lang: str) -> None:
    po = LOCALE_DIR / lang / "LC_MESSAGES" / f"{domain}.po"
    if not po.exists():
        pytest.skip(f"no {lang} catalog for {domain} (English is the source)")
    mo = po.with_suffix(".mo")
    assert mo.exists(), f"{mo.relative_to(ROOT)} missing: run scripts/i18n compile"
    with mo.open("rb") as handle:
        compiled: dict[object, str] = gettext.GNUTranslations(handle)._catalog
    shipped = {k: v for k, v in compiled.items() if k}  # the header is metadata
    expected = {msgid: text for msgid, (text, fuzzy) in _po(domain, lang).items()
                if text and not fuzzy}
    assert shipped == expected, f"{mo.relative_to(ROOT)} is stale: run scripts/i18n compile"


def test_i18n_catalogs_stale_check_can_fail() -> None:
    # The comparison above sees a changed translation (so it is not vacuous).
    po = LOCALE_DIR / "fr" / "LC_MESSAGES" / "entraide.po"
    with po.with_suffix(".mo").open("rb") as handle:
        compiled = dict(gettext.GNUTranslations(handle)._catalog)
    msgid = next(k for k in compiled if k)
    compiled[msgid] = "changé"
    expected = {m: t for m, (t, f) in _po("entraide", "fr").items() if t and not f}
    assert {k: v for k, v in compiled.items() if k} != expected
