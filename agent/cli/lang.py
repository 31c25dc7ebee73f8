"""The CLI's language: French or English for help, output and the error line.

Chosen once per run, before any parser is built (help texts are translated when the
parser is made): ``--lang fr|en`` anywhere on the command line, else
``$ENTRAIDE_LANG``, else the POSIX locale (``LC_ALL``, then ``LC_MESSAGES``, then
``LANG``: ``fr_CA.UTF-8`` is French), else English.

Every module of the CLI writes its messages as ``_("English text")`` (gettext domain
``entraide``, catalogs in agent/locale, built with ``scripts/i18n``); a message with
values is a template formatted after translation, ``_("{n} entries").format(n=n)``.
argparse's own words (``usage:``, ``options``, its errors) go through the same catalog.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from agent.i18n import DEFAULT_LANG, LANGS, N_, Lang, localize, translation

__all__ = ["N_", "_", "choose_lang", "current_lang", "localize_error", "set_lang"]

_state: dict[str, Lang] = {"lang": DEFAULT_LANG}


# argparse's own messages (Python 3.11), here so `pybabel extract` puts them in the
# catalog; argparse looks them up through the gettext functions set_lang gives it.
_ARGPARSE = (
    N_("usage: "), N_("options"), N_("positional arguments"), N_("commands"),
    N_("show this help message and exit"), N_("show program's version number and exit"),
    N_("%(prog)s: error: %(message)s\n"), N_("unrecognized arguments: %s"),
    N_("the following arguments are required: %s"), N_("expected one argument"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"),
    N_("invalid %(type)s value: %(value)r"), N_("not allowed with argument %s"),
    N_("ambiguous option: %(option)s could match %(matches)s"),
    N_("one of the arguments %s is required"),
)

# Errors of the data dir and the key file (agent/config, protocol/keys.py) the CLI
# shows most; localize_error matches their formatted text against these.
_DATA_DIR = (
    N_("no Entraide node in {dir} (run 'entraide init --name NAME' or pass --data-dir / "
       "set ENTRAIDE_HOME)"),
    N_("{path}: a node already exists here"),
    N_("environment variable {var} is unset or empty (passphrase expected)"),
    N_("the key file is sealed: a passphrase is needed"),
    N_("wrong passphrase, or a damaged key file"),
)


def _(message: str) -> str:
    """``message`` in the CLI's language."""
    return translation(_state["lang"], "entraide").gettext(message)


def current_lang() -> Lang:
    return _state["lang"]


def _from_locale(value: str | None) -> Lang | None:
    if not value:
        return None
    primary = value.split(".")[0].split("@")[0].replace("-", "_").split("_")[0].lower()
    for lang in LANGS:
        if primary == lang:
            return lang
    return None


def choose_lang(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Lang:
    """The language of this run (see the module docstring); an unknown value is
    ignored, so a broken locale never stops a command."""
    env = os.environ if environ is None else environ
    for index, word in enumerate(argv):
        if word == "--":
            break
        value = None
        if word == "--lang" and index + 1 < len(argv):
            value = argv[index + 1]
        elif word.startswith("--lang="):
            value = word.partition("=")[2]
        found = _from_locale(value)
        if found:
            return found
    found = _from_locale(env.get("ENTRAIDE_LANG"))
    if found:
        return found
    # POSIX: the first of these that is set decides, even when it is not one of ours.
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(name):
            return _from_locale(env[name]) or DEFAULT_LANG
    return DEFAULT_LANG


def set_lang(lang: Lang) -> None:
    """Use ``lang`` for the rest of this run, argparse's own words included."""
    _state["lang"] = lang
    catalog = translation(lang, "entraide")
    # argparse binds gettext at import: give it our catalog (this process is the CLI).
    argparse._ = catalog.gettext  # type: ignore[attr-defined]
    argparse.ngettext = catalog.ngettext  # type: ignore[attr-defined]


def localize_error(message: str) -> str:
    """An error raised anywhere in the node, in the CLI's language where its message
    is in the catalog (agent.i18n.localize)."""
    return localize(message, _state["lang"])
