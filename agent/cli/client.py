"""CLI commands that talk to the running node's local API: submit, query, forks; and
verify.

``submit`` and ``query`` are thin HTTP clients of ``/api/v1``; they find the API from
``entraide.toml`` and authenticate with, in order: ``--token``, ``$ENTRAIDE_TOKEN``,
or a token of their own kept in ``<data-dir>/cli.token`` (0600, created on first use;
whoever can read the data dir can read ``node.key`` too, so this grants nothing new).

``forks list`` and ``forks clear`` go through the API too: the running node holds the
ledger's write lock, and clearing must reach its replication as well.

``ledger verify`` opens the ledger file directly (WAL lets it read beside a running
daemon), so it also works when the node is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent.cli.examples import epilog
from agent.cli.lang import _, current_lang, localize_error
from agent.config.datadir import DataDir, atomic_write
from agent.config.settings import load_node_config, load_trust_list
from agent.config.tokens import Scope, TokenStore
from agent.errors import ConfigError, NodeNotRunningError
from agent.storage.types import bodies_json
from protocol.errors import EntraideError

__all__ = ["forks_clear_command", "forks_list_command", "ledger_verify_command",
           "query_command", "submit_command"]

CLI_TOKEN_FILE = "cli.token"
_TIMEOUT_S = 30.0


class ApiError(EntraideError):
    """The node answered with an error body; ``str()`` is its message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status, self.code, self.message = status, code, message


def api_base(data_dir: DataDir) -> str:
    """The local API's base URL, from ``entraide.toml``."""
    config = load_node_config(data_dir)
    host = config.api.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.api.port}"


def cli_token(data_dir: DataDir, explicit: str | None) -> str:
    """The token to send: explicit, from the environment, or this CLI's own."""
    if explicit:
        return explicit
    if os.environ.get("ENTRAIDE_TOKEN"):
        return os.environ["ENTRAIDE_TOKEN"]
    path = data_dir.root / CLI_TOKEN_FILE
    store = TokenStore(data_dir)
    if path.exists():
        token = path.read_text().strip()
        if store.authenticate(token) is not None:
            return token
    token = store.create(Scope.ADMIN, name=_free_name(store))
    atomic_write(path, (token + "\n").encode(), mode=0o600)
    return token


def _free_name(store: TokenStore) -> str:
    names = {r.name for r in store.records()}
    n = 1
    while f"cli-{n}" in names:
        n += 1
    return f"cli-{n}"


def call_api(base: str, token: str, method: str, path: str, body: Any = None, *,
             content_type: str = "application/json", accept: str = "application/json") -> Any:
    """One JSON request to the node; returns the decoded body.

    Raises:
        NodeNotRunningError: nothing answers at ``base``.
        ApiError: the node answered with an error (its message in the CLI's language).
    """
    data = None if body is None else json.dumps(body).encode()
    with _open(base, token, method, path, data, accept, content_type) as response:
        raw = response.read()
    return json.loads(raw or b"null")


def call_api_text(base: str, token: str, path: str) -> tuple[str, dict[str, str]]:
    """GET a ``text/plain`` answer (a ruleset export): its text and headers; errors as
    :func:`call_api` raises them."""
    with _open(base, token, "GET", path, None, "text/plain") as response:
        return response.read().decode("utf-8"), dict(response.headers)


def open_stream(base: str, token: str, path: str, last_event_id: str | None,
                timeout: float) -> Any:
    """The node's event stream (``text/event-stream``), open; the caller reads its lines
    and closes it. Errors as :func:`call_api` raises them."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    return _open(base, token, "GET", path, None, "text/event-stream", headers=headers,
                 timeout=timeout)


def _open(base: str, token: str, method: str, path: str, data: bytes | None, accept: str,
          content_type: str = "application/json", *, headers: dict[str, str] | None = None,
          timeout: float = _TIMEOUT_S) -> Any:
    """The one HTTP exchange with the node: the open response, or the node's error as
    :class:`ApiError`. The node answers errors in the CLI's language (Accept-Language)."""
    sent = {"Authorization": f"Bearer {token}", "Accept": accept,
            "Accept-Language": current_lang(), **(headers or {})}
    if data is not None:
        sent["Content-Type"] = content_type
    request = urllib.request.Request(base + path, data=data, method=method, headers=sent)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            error = error.get("error", error)  # TAXII errors are {"title", "description"}
            code = str(error.get("code") or error.get("http_status") or exc.code)
            message = str(error.get("message") or error["description"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ApiError(exc.code, "http_error", exc.reason) from exc
        raise ApiError(exc.code, code, message) from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise NodeNotRunningError(
            _("no node answers at {base} (is 'entraide run' running?)").format(base=base)
        ) from exc


def print_result(args: argparse.Namespace, value: Any, human: str) -> int:
    """Print ``value`` as JSON with ``--json``, else the ``human`` text; exit status 0."""
    print(json.dumps(value, ensure_ascii=False) if args.json else human)
    return 0


def localized(text: dict[str, Any] | None) -> str:
    """A ``{"en", "fr"}`` text on one line: both languages that are there, the
    reader's first."""
    if not text:
        return ""
    order = ("fr", "en") if current_lang() == "fr" else ("en", "fr")
    return " / ".join(v for v in (text.get(order[0]), text.get(order[1])) if v)


def _client(argv_ns: argparse.Namespace, data_dir: Path) -> tuple[str, str]:
    dd = DataDir(data_dir)
    dd.require_node()
    base = argv_ns.api or api_base(dd)
    return base.rstrip("/"), cli_token(dd, argv_ns.token)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help=_("print JSON (the API's shape) instead of text"))
    _common_http(parser)


def _common_http(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", help=_("API token (default: $ENTRAIDE_TOKEN, else the "
                                          "CLI's own admin token cli-N in cli.token)"))
    parser.add_argument("--api", metavar="URL",
                        help=_("API base URL (default: from entraide.toml)"))


def _parser(words: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``entraide <words>``, with its examples."""
    return argparse.ArgumentParser(prog=f"entraide {words}", description=description,
                                   epilog=epilog(words),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def submit_command(argv: list[str], data_dir: Path) -> int:
    """``entraide submit --type T --value V [--tlp ...] [--to N,...]``."""
    parser = _parser("submit", _("Share one observation via the running node."))
    parser.add_argument("--type", required=True, help=_("indicator type, e.g. ipv4-addr"))
    parser.add_argument("--value", required=True, help=_("indicator value"))
    parser.add_argument("--tlp", default="GREEN",
                        help=_("CLEAR, GREEN (default), AMBER, AMBER+STRICT or RED"))
    parser.add_argument("--to", help=_("audience: peer names, comma-separated"))
    parser.add_argument("--confidence", type=int, help=_("confidence, 0-100"))
    parser.add_argument("--severity", help=_("low, medium, high or critical"))
    parser.add_argument("--description", help=_("description in English"))
    parser.add_argument("--description-fr", help=_("description in French"))
    parser.add_argument("--tags", help=_("comma-separated tags"))
    parser.add_argument("--valid-until", metavar="TIME",
                        help=_("RFC 3339 time, e.g. 2026-12-31T00:00:00Z"))
    parser.add_argument("--refang", action="store_true",
                        help=_("undo defanging first (hxxp://, [.], (.), [dot], [:]//)"))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    body: dict[str, Any] = {"type": args.type, "value": args.value, "tlp": args.tlp.upper()}
    if args.to:
        body["audience"] = _csv(args.to)
    if args.confidence is not None:
        body["confidence"] = args.confidence
    if args.severity:
        body["severity"] = args.severity
    description = {k: v for k, v in (("en", args.description), ("fr", args.description_fr)) if v}
    if description:
        body["description"] = description
    if args.tags:
        body["tags"] = _csv(args.tags)
    if args.valid_until:
        body["valid_until"] = args.valid_until
    path = "/api/v1/observations" + ("?refang=true" if args.refang else "")
    result = call_api(base, token, "POST", path, body)
    if result.get("refanged") and not args.json:
        print(_("refanged {submitted!r} as {value!r}").format(**result["refanged"]),
              file=sys.stderr)
    return print_result(args, result, f"{result['id']}  seq {result.get('seq', '?')}")


def query_command(argv: list[str], data_dir: Path) -> int:
    """``entraide query [--type T] [--value V] [--json]``."""
    parser = _parser("query", _("Search the observations this node can read."))
    parser.add_argument("--type", help=_("only this indicator type"))
    parser.add_argument("--value", help=_("only this indicator value (with --type)"))
    parser.add_argument("--origin", help=_("only this origin: peer name or ed25519 key"))
    parser.add_argument("--tlp", help=_("only this TLP"))
    parser.add_argument("--since", metavar="TIME",
                        help=_("RFC 3339 time or ms since the epoch"))
    parser.add_argument("--limit", type=int, default=100,
                        help=_("at most this many (default 100)"))
    parser.add_argument("--include-retracted", action="store_true",
                        help=_("list retracted observations too"))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    params = {k: v for k, v in (("type", args.type), ("value", args.value),
                                ("origin", args.origin), ("tlp", args.tlp),
                                ("since", args.since), ("limit", str(args.limit))) if v}
    if args.include_retracted:
        params["include_retracted"] = "true"
    result = call_api(base, token, "GET", "/api/v1/observations?" + urllib.parse.urlencode(params))
    observations = result["observations"]
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(render_table([_("origin"), "seq", "tlp", "type", _("value"), "conf", "id"], [
        [o.get("origin_name") or o["origin"][:16], str(o["seq"]), o["tlp"], o["type"], o["value"],
         "" if o.get("confidence") is None else str(o["confidence"]), o["id"][:16]]
        + ([_("retracted")] if o.get("retracted") else [])
        for o in observations]))
    if not observations:
        print(_("(no observations)"), file=sys.stderr)
    return 0


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [c.ljust(widths[i]) if i < len(widths) else c for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def forks_list_command(argv: list[str], data_dir: Path) -> int:
    """``entraide forks list [--json]``: every fork the node recorded, oldest first."""
    parser = _parser("forks list", _(
        "Show the forks this node recorded: origins that signed two different entries "
        "with the same seq. A fork not cleared quarantines its origin."))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    result = call_api(base, token, "GET", "/api/v1/forks")
    forks = result["forks"]
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(render_table([_("origin"), "seq", _("detected"), _("state"), _("key")], [
        [f.get("origin_name") or "?", str(f["seq"]), f["detected"],
         _("quarantined") if f["cleared"] is None
         else _("cleared {at}").format(at=f["cleared"]), f["origin"]]
        for f in forks]))
    if not forks:
        print(_("(no forks)"), file=sys.stderr)
    return 0


def forks_clear_command(argv: list[str], data_dir: Path) -> int:
    """``entraide forks clear ORIGIN``: accept a forked origin's entries again."""
    parser = _parser("forks clear", _("Lift a forked origin's quarantine, once its admin "
                                      "has explained the fork. The proof stays as evidence."))
    parser.add_argument("origin", metavar="ORIGIN", help=_("peer name or ed25519:<key>"))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    record = call_api(base, token, "POST",
                      f"/api/v1/forks/{urllib.parse.quote(args.origin, safe=':')}/clear")
    return print_result(args, record, _(
        "cleared: {origin} (fork at seq {seq}, detected {detected}); its entries are "
        "accepted again").format(origin=record.get("origin_name") or record["origin"],
                                 seq=record["seq"], detected=record["detected"]))


def ledger_verify_command(argv: list[str], data_dir: Path) -> int:
    """``entraide ledger verify [--json]``: re-check every signature and chain.

    Asks the running node (which holds the ledger's lock) when there is one;
    otherwise opens the ledger file itself.
    """
    parser = _parser("ledger verify", _(
        "Re-check every signature and hash chain of the local ledger: through the running "
        "node, else by opening the ledger file. Exit status 1 when anything is wrong."))
    parser.add_argument("--json", action="store_true",
                        help=_("print JSON (the API's shape) instead of text"))
    parser.add_argument("--passphrase-env", default="ENTRAIDE_PASSPHRASE", metavar="VAR",
                        help=_("variable holding the key passphrase, when the node is "
                               "stopped and its key sealed (default ENTRAIDE_PASSPHRASE)"))
    _common_http(parser)
    args = parser.parse_args(argv)
    dd = DataDir(data_dir)
    dd.require_node()
    base = (args.api or api_base(dd)).rstrip("/")
    try:
        report = call_api(base, cli_token(dd, args.token), "GET", "/api/v1/ledger/verify")
    except NodeNotRunningError:
        report = asyncio.run(_verify_offline(dd, args.passphrase_env))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    elif report["ok"]:
        print(_("ok: {entries} entries from {origins} origins verified").format(
            entries=report["entries"], origins=report["origins"]))
        bodies = report.get("bodies") or {}
        if any(bodies.get(state) for state in ("expired", "erased", "absent")):
            print(_("bodies: {present} present, {expired} expired, {erased} erased, "
                    "{absent} absent").format(**{state: bodies.get(state, 0) for state in
                                                 ("present", "expired", "erased", "absent")}))
    else:
        print(verify_problems_text(report), file=sys.stderr)
    return 0 if report["ok"] else 1


def verify_problems_text(report: dict[str, Any]) -> str:
    """``ledger verify``'s text for a broken ledger: each problem with the origin (name
    when known, else key) and seq it is at."""
    problems = report.get("problems") or []
    lines = [_("BROKEN: {n} problem(s) in {entries} entries").format(
        n=len(problems), entries=report.get("entries", 0))]
    for problem in problems:
        origin = problem.get("origin_name") or problem.get("origin") or _("(unknown origin)")
        seq = "?" if problem.get("seq") is None else problem["seq"]
        lines.append("  " + _("origin {origin} seq {seq}: {what}").format(
            origin=origin, seq=seq, what=localize_error(str(problem["what"]))))
    return "\n".join(lines)


async def _verify_offline(dd: DataDir, passphrase_env: str) -> dict[str, Any]:
    from agent.storage.ledger import Ledger

    config = load_node_config(dd)
    path = config.ledger_path(dd)
    if not path.exists():
        raise ConfigError(f"{path}: no ledger yet (the node has never run)")
    passphrase = os.environ.get(passphrase_env, "").encode() or None
    identity = dd.load_identity(passphrase)
    ledger = await Ledger.open(path, identity=identity, is_trusted_origin=lambda _key: True)
    try:
        report = await ledger.verify()
    finally:
        await ledger.close()
    names = {peer.key.text: peer.name for peer in load_trust_list(dd)}
    names[identity.public_key.text] = config.name
    return verify_report_json(report, names)


def verify_report_json(report: Any, names: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON shape of a ``VerifyReport``, the API's (``names``: origin key text to
    trust-list name)."""
    names = names or {}
    return {
        "ok": report.ok, "entries": report.entries, "origins": report.origins,
        "fork_proofs": report.fork_proofs, "bodies": bodies_json(report.bodies),
        "problems": [{"origin": None if p.origin is None else p.origin.text,
                      "origin_name": None if p.origin is None else names.get(p.origin.text),
                      "seq": p.seq, "what": p.what} for p in report.problems],
    }
