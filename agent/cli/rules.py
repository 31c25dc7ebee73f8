"""``entraide rules ...`` and ``entraide playbooks ...``: shared tools through the running
node's local API (routes: agent/api/rules.py; engines: agent/tools/).

Commands (help and output in the CLI's language, agent/cli/lang.py)::

    entraide rules submit FILE --type yara|sigma|suricata|snort [--name N] [--tlp T]
                               [--audience A,B] [--description-en/-fr ...] [--supersedes ID]
    entraide rules list [--type T] [--origin NAME] [--current] [--include-retracted]
    entraide rules show ID
    entraide rules export --type T [-o FILE]
    entraide rules retract ID [--reason TEXT]
    entraide playbooks submit FILE [--tlp T] [--audience A,B] [--supersedes ID]
    entraide playbooks list | show ID | retract ID

``FILE`` may be ``-`` (standard input). A rule the engine refuses is one line on stderr
with the engine's message and line (422 ``invalid_rule``), exit 1, and nothing is
written. ``export`` writes the ruleset file the engine loads as is (to ``-o FILE``
atomically, else to standard output); how many rules were left out for a clashing name
or sid goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent.cli.client import (
    _client,
    _common,
    _csv,
    call_api,
    call_api_text,
    localized,
    print_result,
    render_table,
)
from agent.cli.examples import epilog
from agent.cli.lang import _
from agent.config.datadir import atomic_write
from agent.errors import ConfigError
from protocol.payload_fields import RuleType

__all__ = ["playbooks_command", "rules_command"]

MAX_FILE_BYTES = 512 * 1024  # above every API bound (rule text, playbook body)
_TYPES = [t.value for t in RuleType]
_TLPS = ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]


def _read(path: str) -> str:
    """The file's text (``-``: standard input), bounded, UTF-8.

    Raises:
        ConfigError: too large or not UTF-8 (one line, nothing sent).
        OSError: it cannot be read.
    """
    if path == "-":
        raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    else:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(_("{path}: larger than {limit} bytes").format(
            path=path, limit=MAX_FILE_BYTES))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(_("{path}: not UTF-8 text (byte {at})").format(
            path=path, at=exc.start)) from None


def _state(item: dict[str, Any]) -> str:
    if not item.get("valid", True):
        return _("INVALID")
    if item.get("retracted"):
        return _("retracted")
    if item.get("superseded_by"):
        return _("superseded")
    return _("current")


def _show_rule(r: dict[str, Any]) -> str:
    lines = [f"{r['name']}  [{r['rule_type']}]  {r['tlp']}",
             f"  id: {r['id']}",
             "  " + _("from: {origin}").format(origin=r.get("origin_name") or r["origin"])
             + f"    seq {r['seq']}",
             "  " + _("state: {state}").format(state=_state(r))]
    if not r.get("valid", True):
        lines.append("  " + _("engine: {message}").format(message=r.get("engine_message")))
    if r.get("superseded_by"):
        lines.append("  " + _("superseded by: {id}").format(id=r["superseded_by"]))
    if r.get("description"):
        lines.append(f"  {localized(r['description'])}")
    if r.get("audience"):
        lines.append("  " + _("audience: {names}").format(names=", ".join(r["audience"])))
    lines.append("")
    lines.append(r["text"].rstrip("\n"))
    return "\n".join(lines)


def _show_playbook(p: dict[str, Any]) -> str:
    book = p.get("playbook") or {}
    lines = [f"{book.get('name', '?')}  [CACAO {book.get('spec_version', '?')}]  {p['tlp']}",
             f"  id: {p['id']}",
             f"  playbook: {book.get('id', '?')}",
             "  " + _("from: {origin}").format(origin=p.get("origin_name") or p["origin"])
             + f"    seq {p['seq']}",
             "  " + _("state: {state}").format(state=_state(p))]
    if not p.get("valid", True):
        lines.append("  " + _("schema: {message}").format(message=p.get("engine_message")))
    if book.get("description"):
        lines.append(f"  {book['description']}")
    if book.get("playbook_types"):
        lines.append(f"  types: {', '.join(book['playbook_types'])}")
    lines.append("  " + _("steps: {n}").format(n=len(book.get("workflow") or {})))
    return "\n".join(lines)


def _routing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tlp", type=str.upper, default="GREEN", choices=_TLPS,
                   help=_("TLP (default GREEN)"))
    p.add_argument("--audience", "--to", dest="audience",
                   help=_("audience: peer names, comma-separated"))
    p.add_argument("--supersedes", metavar="ID",
                   help=_("the entry id this version replaces"))


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--origin", metavar="NAME", help=_("only this member's"))
    p.add_argument("--current", action="store_true", help=_("hide superseded versions"))
    p.add_argument("--include-retracted", action="store_true",
                   help=_("show retracted ones too"))
    p.add_argument("--limit", type=int, default=100, help=_("at most this many (1-1000)"))
    _common(p)


def _list_params(args: argparse.Namespace) -> dict[str, str]:
    params = {"limit": str(args.limit)}
    if args.origin:
        params["origin"] = args.origin
    if args.current:
        params["current"] = "true"
    if args.include_retracted:
        params["include_retracted"] = "true"
    return params


def _retract(args: argparse.Namespace, base: str, token: str, kind: str) -> int:
    body = {"reason": args.reason} if args.reason else {}
    got = call_api(base, token, "POST", f"/api/v1/{kind}/{_entry_id(args.id)}/retract", body)
    return print_result(args, got, _("retracted: {of}  (entry {id})").format(
        of=got["of"], id=got["id"]))


def _entry_id(text: str) -> str:
    """An entry id (64 hex) for a path; anything else is refused before any request."""
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ConfigError(_("{text}: not an entry id (64 hex digits)").format(
            text=repr(text[:80])))
    return text.lower()


def rules_command(argv: list[str], data_dir: Path) -> int:
    """``entraide rules ACTION ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="entraide rules", epilog=epilog("rules"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("Detection rules shared with the federation, checked by their "
                      "engines."))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("submit", help=_("share a rule"))
    p.add_argument("file", metavar="FILE", help=_("the rule file, or -"))
    p.add_argument("--type", required=True, choices=_TYPES, dest="rule_type",
                   help=_("the rule's engine"))
    p.add_argument("--name", help=_("default: the file name"))
    p.add_argument("--description-en", metavar="TEXT", help=_("description in English"))
    p.add_argument("--description-fr", metavar="TEXT", help=_("description in French"))
    _routing(p)
    _common(p)

    p = actions.add_parser("list", help=_("rules this node can read"))
    p.add_argument("--type", choices=_TYPES, dest="rule_type", help=_("only this engine's"))
    _list_args(p)

    p = actions.add_parser("show", help=_("one rule"))
    p.add_argument("id", metavar="ID", help=_("the rule's entry id (64 hex)"))
    _common(p)

    p = actions.add_parser("export", help=_("one ruleset file the engine loads"))
    p.add_argument("--type", required=True, choices=_TYPES, dest="rule_type",
                   help=_("the engine"))
    p.add_argument("-o", "--output", metavar="FILE",
                   help=_("write here, atomically (default: standard output)"))
    _common(p)

    p = actions.add_parser("retract", help=_("withdraw one of this node's rules"))
    p.add_argument("id", metavar="ID", help=_("the rule's entry id (64 hex)"))
    p.add_argument("--reason", help=_("why"))
    _common(p)

    args = parser.parse_args(argv)
    if args.action == "submit":
        text = _read(args.file)  # before any request: a bad file sends nothing
    base, token = _client(args, data_dir)

    if args.action == "submit":
        body: dict[str, Any] = {
            "rule_type": args.rule_type, "text": text, "tlp": args.tlp,
            "name": args.name or (Path(args.file).stem if args.file != "-" else args.rule_type)}
        description = {k: v for k, v in (("en", args.description_en),
                                         ("fr", args.description_fr)) if v}
        if description:
            body["description"] = description
        if args.audience:
            body["audience"] = _csv(args.audience)
        if args.supersedes:
            body["supersedes"] = _entry_id(args.supersedes)
        created = call_api(base, token, "POST", "/api/v1/rules", body)
        return print_result(args, created, f"{created['id']}  seq {created['seq']}  "
                            f"{created['tlp']}  " + _("valid"))
    if args.action == "list":
        params = _list_params(args)
        if args.rule_type:
            params["type"] = args.rule_type
        answer = call_api(base, token, "GET", "/api/v1/rules?" + urllib.parse.urlencode(params))
        found = answer["rules"]
        if not args.json and not found:
            print(_("(no rules)"), file=sys.stderr)
        return print_result(args, answer, render_table(
            ["id", "type", _("name"), _("from"), "tlp", _("state")],
            [[r["id"][:16], r["rule_type"], r["name"], r.get("origin_name") or r["origin"][:16],
              r["tlp"], _state(r)] for r in found]))
    if args.action == "show":
        got = call_api(base, token, "GET", f"/api/v1/rules/{_entry_id(args.id)}")
        return print_result(args, got, _show_rule(got))
    if args.action == "export":
        query = urllib.parse.urlencode({"type": args.rule_type})
        text, headers = call_api_text(base, token, f"/api/v1/rules/export?{query}")
        skipped = int(headers.get("X-Entraide-Skipped", "0") or 0)
        if args.output:
            atomic_write(Path(args.output), text.encode("utf-8"), mode=0o644)
        if args.json:
            print(json.dumps({"type": args.rule_type, "bytes": len(text.encode("utf-8")),
                              "skipped": skipped, "output": args.output}))
        elif not args.output:
            sys.stdout.write(text)
        if skipped and not args.json:
            print(_("{n} rule(s) left out: a name or sid clash").format(n=skipped),
                  file=sys.stderr)
        return 0
    return _retract(args, base, token, "rules")


def playbooks_command(argv: list[str], data_dir: Path) -> int:
    """``entraide playbooks ACTION ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="entraide playbooks", epilog=epilog("playbooks"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("OASIS CACAO 2.0 playbooks shared with the federation, checked "
                      "against their schema."))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("submit", help=_("share a playbook"))
    p.add_argument("file", metavar="FILE", help=_("CACAO 2.0 JSON, or -"))
    _routing(p)
    _common(p)
    p = actions.add_parser("list", help=_("playbooks this node can read"))
    _list_args(p)
    p = actions.add_parser("show", help=_("one playbook"))
    p.add_argument("id", metavar="ID", help=_("the playbook's entry id (64 hex)"))
    _common(p)
    p = actions.add_parser("retract", help=_("withdraw one of this node's playbooks"))
    p.add_argument("id", metavar="ID", help=_("the playbook's entry id (64 hex)"))
    p.add_argument("--reason", help=_("why"))
    _common(p)

    args = parser.parse_args(argv)
    if args.action == "submit":
        try:
            playbook = json.loads(_read(args.file))
        except ValueError as exc:
            raise ConfigError(_("{file}: not JSON ({error})").format(
                file=args.file, error=exc)) from None
    base, token = _client(args, data_dir)

    if args.action == "submit":
        params = {"tlp": args.tlp}
        if args.audience:
            params["audience"] = ",".join(_csv(args.audience))
        if args.supersedes:
            params["supersedes"] = _entry_id(args.supersedes)
        created = call_api(base, token, "POST",
                           "/api/v1/playbooks?" + urllib.parse.urlencode(params), playbook)
        return print_result(args, created, f"{created['id']}  seq {created['seq']}  "
                            f"{created['tlp']}  " + _("valid"))
    if args.action == "list":
        answer = call_api(base, token, "GET", "/api/v1/playbooks?"
                          + urllib.parse.urlencode(_list_params(args)))
        found = answer["playbooks"]
        if not args.json and not found:
            print(_("(no playbooks)"), file=sys.stderr)
        return print_result(args, answer, render_table(
            ["id", _("name"), _("from"), "tlp", _("state")],
            [[p["id"][:16], str((p.get("playbook") or {}).get("name", "?")),
              p.get("origin_name") or p["origin"][:16], p["tlp"], _state(p)] for p in found]))
    if args.action == "show":
        got = call_api(base, token, "GET", f"/api/v1/playbooks/{_entry_id(args.id)}")
        return print_result(args, got, _show_playbook(got))
    return _retract(args, base, token, "playbooks")
