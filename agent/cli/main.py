"""The ``entraide`` command line (docs/operations.md).

Commands built here edit the data dir directly, whether or not the node runs (a
running node notices changes to peers.toml and tokens.toml by itself)::

    entraide init --name QC [...]     entraide id [--json]
    entraide peers add|remove|list    entraide token create|list|revoke

Every command is wired in :func:`build_parser` to a handler function. Handlers of
commands built in other modules import them when run, so ``entraide id`` never pays
for aiohttp. ``ledger export`` and ``ledger import`` (agent/cli/ledger.py) get their
parsed arguments; the others parse their own, as *passthrough* commands::

    def run_command(argv: list[str], data_dir: pathlib.Path) -> int

``argv`` holds the arguments after the command words (``--data-dir`` removed, it is
resolved here, wherever it was given); the function parses them itself (with
``prog="entraide <command>"``), may raise ``EntraideError`` or ``OSError`` (printed
as one line, exit 1) and returns the exit status.

Exit statuses: 0 success, 1 an expected error (one line on stderr, no traceback),
2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from agent import __version__
from agent.cli.examples import epilog
from agent.cli.lang import _, choose_lang, localize_error, set_lang
from agent.cli.trustcmds import (
    UsageError,
    cmd_peers_add,
    cmd_peers_list,
    cmd_peers_remove,
    cmd_peers_update,
    cmd_token_create,
    cmd_token_list,
    cmd_token_revoke,
    print_json,
    print_table,
)
from agent.config.datadir import DataDir, passphrase_from_env, resolve_data_dir
from agent.config.settings import (
    NodeConfig,
    create_node,
    load_node_config,
    parse_node_config,
)
from agent.config.tokens import Scope
from protocol.cards import PeerCard, encode_card
from protocol.errors import EntraideError
from protocol.keys import Identity, PublicKey

__all__ = ["build_parser", "main"]

PROG = "entraide"

Handler = Callable[[argparse.Namespace, DataDir], int]
"""A command parsed here: its arguments and the data dir; returns the exit status."""
Passthrough = Callable[[list[str], DataDir], int]
"""A command that parses its own arguments (the words after its command words)."""


# --- commands ----------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace, data_dir: DataDir) -> int:
    config = parse_node_config({
        "name": args.name,
        "jurisdiction": args.jurisdiction,
        "api": {"port": args.api_port},
        "peer": {"host": args.peer_host, "port": args.peer_port, "public_url": args.public_url},
    })
    passphrase = passphrase_from_env(args.passphrase_env) if args.passphrase_env else None
    identity = Identity(os.urandom(Identity.SEED_SIZE))
    create_node(data_dir, config, identity, passphrase)
    info = _identity_info(config, identity.public_key.text, identity.public_key.fingerprint)
    if args.json:
        print_json({**info, "data_dir": str(data_dir.root)})
        return 0
    print((_("Initialised node {name} in {dir} (sealed with the passphrase)") if passphrase
           else _("Initialised node {name} in {dir}")).format(name=config.name,
                                                              dir=data_dir.root))
    _print_identity(info)
    print("\n" + _("Next: give your card to the other admins, add theirs with "
                   "'entraide peers add --card CARD',\ncreate an API token with "
                   "'entraide token create --scope admin', then start the node with "
                   "'entraide run'."))
    return 0


def _cmd_id(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    config = load_node_config(data_dir)
    if args.passphrase_env:
        key = data_dir.load_identity(passphrase_from_env(args.passphrase_env)).public_key
    elif not data_dir.key_is_sealed():
        key = data_dir.load_identity().public_key
    else:
        key = data_dir.public_key()
    info: dict[str, Any] = _identity_info(config, key.text, key.fingerprint)
    # A key rotation (docs/operations.md, "Rotate a key"): the keys this node signed
    # with before, and a new key waiting for the node's restart.
    from agent.config.trust import NEXT_KEY_DIR, previous_keys

    info["previous_keys"] = [{"key": r.key.text, "fingerprint": r.key.fingerprint,
                              "last_seq": r.last_seq} for r in previous_keys(data_dir)]
    pending = DataDir(data_dir.root / NEXT_KEY_DIR)
    info["next_key"] = pending.public_key().text if pending.pub_path.exists() else None
    if args.json:
        print_json(info)
        return 0
    _print_identity(info)
    for old in info["previous_keys"]:
        print(_("previous key {fingerprint}: its chain ended at seq {seq} (key rotated)")
              .format(fingerprint=old["fingerprint"], seq=old["last_seq"]))
    if info["next_key"] is not None:
        print(_("a key rotation waits for the node's restart: new key {fingerprint}").format(
            fingerprint=PublicKey.from_text(info["next_key"]).fingerprint))
    if config.peer.public_url is None:
        print(
            "\n" + _("note: no [peer] public_url in entraide.toml; peers on other hosts need "
                     "one (entraide init --public-url, or edit the file)"),
            file=sys.stderr,
        )
    return 0


# --- commands implemented elsewhere (imported when run) ------------------------------
#
# Each parses the arguments after its command words itself, with
# ``prog="entraide <command>"``, and gets the data dir's root (see the module docstring).


def _run(argv: list[str], data_dir: DataDir) -> int:
    from agent import daemon

    return daemon.run_command(argv, data_dir.root)


def _submit(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import client

    return client.submit_command(argv, data_dir.root)


def _query(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import client

    return client.query_command(argv, data_dir.root)


def _ledger_verify(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import client

    return client.ledger_verify_command(argv, data_dir.root)


def _forks_list(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import client

    return client.forks_list_command(argv, data_dir.root)


def _forks_clear(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import client

    return client.forks_clear_command(argv, data_dir.root)


def _key_rotate(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import keys

    return keys.key_rotate_command(argv, data_dir.root)


def _peers_compromised(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import keys

    return keys.peers_compromised_command(argv, data_dir.root)


def _erase(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import erase

    return erase.erase_command(argv, data_dir.root)


def _completion(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import completion

    return completion.completion_command(argv, build_parser())


def _demo(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import demo

    return demo.demo_command(argv, data_dir.root)


def _ops(word: str) -> Passthrough:
    # retract, sighting, status, stream, import (agent/cli/ops.py).
    def command(argv: list[str], data_dir: DataDir) -> int:
        from agent.cli import ops

        return ops.ops_command(word, argv, data_dir.root)

    return command


def _export_misp(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import misp

    return misp.export_misp_command(argv, data_dir.root)


def _cmd_ledger_export(args: argparse.Namespace, data_dir: DataDir) -> int:
    from agent.cli import ledger

    return ledger.export_command(args, data_dir)


def _cmd_ledger_import(args: argparse.Namespace, data_dir: DataDir) -> int:
    from agent.cli import ledger

    return ledger.import_command(args, data_dir)


def _cmd_backup(args: argparse.Namespace, data_dir: DataDir) -> int:
    from agent.cli import backup

    return backup.backup_command(args, data_dir)


def _cmd_restore(args: argparse.Namespace, data_dir: DataDir) -> int:
    from agent.cli import backup

    return backup.restore_command(args, data_dir)


def _cmd_doctor(args: argparse.Namespace, data_dir: DataDir) -> int:
    from agent.cli import doctor

    return doctor.doctor_command(args, data_dir)


# --- parser ------------------------------------------------------------------------


def _aid(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import aid

    return aid.aid_command(argv, data_dir.root)


def _capabilities(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import aid

    return aid.capabilities_command(argv, data_dir.root)


def _rules(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import rules

    return rules.rules_command(argv, data_dir.root)


def _playbooks(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import rules

    return rules.playbooks_command(argv, data_dir.root)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``entraide`` parser, in the CLI's language (agent/cli/lang.py).
    ``--data-dir`` and ``--lang`` are accepted before or after the command words.

    A command's handler is in ``handler`` (takes the parsed arguments) or, for a
    command that parses its own arguments, in ``passthrough`` (takes the words left).
    """
    # Subcommands get --data-dir with SUPPRESS so an absent one does not overwrite
    # a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help=_("node data dir (default: $ENTRAIDE_HOME, else ./entraide-data)"))
    common.add_argument("--lang", default=argparse.SUPPRESS, choices=["en", "fr"],
                        help=_("language of messages (default: $ENTRAIDE_LANG, else the "
                               "locale, else en)"))
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true",
                           help=_("print JSON (the API's shape) instead of text"))

    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog(""),
        description=_("Entraide: federated threat-intelligence sharing between "
                      "jurisdictions."),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    # Not the `common` parent: a default set here would be set on its shared actions.
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help=_("node data dir (default: $ENTRAIDE_HOME, else ./entraide-data)"))
    parser.add_argument("--lang", default=argparse.SUPPRESS, choices=["en", "fr"],
                        help=_("language of messages (default: $ENTRAIDE_LANG, else the "
                               "locale, else en)"))
    commands = parser.add_subparsers(title=_("commands"), metavar="COMMAND", dest="command")

    def sub(group: Any, name: str, help_text: str, handler: Handler | None,
            parents: Sequence[argparse.ArgumentParser] = (),
            words: str | None = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, allow_abbrev=False,
            parents=[common, *parents], epilog=epilog(words or name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    def group(parent: Any, name: str, help_text: str, dest: str = "action") -> Any:
        holder = sub(parent, name, help_text, None)
        return holder.add_subparsers(metavar="ACTION", dest=dest, required=True)

    def passthrough(parent: Any, name: str, help_text: str, handler: Passthrough) -> None:
        # Its own parser handles -h and every option; only --data-dir is taken here.
        p = parent.add_parser(name, help=help_text, add_help=False, allow_abbrev=False,
                              parents=[common])
        p.set_defaults(passthrough=handler)

    p = sub(commands, "init", _("create a node: key pair, entraide.toml, empty trust list"),
            _cmd_init, [json_flag])
    p.add_argument("--name", required=True, help=_("this node's peer name (e.g. QC)"))
    p.add_argument("--jurisdiction", help=_('human name, e.g. "Québec"'))
    p.add_argument("--api-port", type=int, default=8470, metavar="PORT",
                   help=_("local API port, on 127.0.0.1 (default 8470)"))
    p.add_argument("--peer-port", type=int, default=8471, metavar="PORT",
                   help=_("peer listener port (default 8471)"))
    p.add_argument("--peer-host", default="0.0.0.0", metavar="HOST",
                   help=_("peer listener address (default 0.0.0.0)"))
    p.add_argument("--public-url", metavar="URL",
                   help=_("base URL peers dial (http/https); it goes on the peer card"))
    p.add_argument("--passphrase-env", metavar="VAR",
                   help=_("seal node.key with the passphrase held in this environment "
                          "variable"))

    p = sub(commands, "id", _("print this node's peer card and fingerprint"), _cmd_id,
            [json_flag])
    p.add_argument("--passphrase-env", metavar="VAR",
                   help=_("also open a sealed node.key with this variable's passphrase"))

    peer_cmds = group(commands, "peers", _("edit the trust list (peers.toml)"))
    p = sub(peer_cmds, "add", _("trust a peer, from its card or its name and key"),
            cmd_peers_add, [json_flag], "peers add")
    p.add_argument("--card", help=_("the peer's card (entraide1....)"))
    p.add_argument("--name", help=_("the peer's name (with --key)"))
    p.add_argument("--key", help="ed25519:<base64url>")
    p.add_argument("--url", help=_("base URL to dial (omit: trusted as author, not dialled)"))
    p.add_argument("--jurisdiction", help=_('human name, e.g. "Ontario"'))
    p = sub(peer_cmds, "update", _("change a trusted peer's URL or key (applied live)"),
            cmd_peers_update, [json_flag], "peers update")
    p.add_argument("name", metavar="NAME", help=_("the peer's name in the trust list"))
    p.add_argument("--url", help=_("new base URL to dial ('' : no longer dialled)"))
    p.add_argument("--key", help=_("new key, ed25519:<base64url> (confirm its fingerprint "
                                   "with the peer's admin)"))
    p.add_argument("--jurisdiction", help=_("new human name"))
    p.add_argument("--card", help=_("the peer's new card (entraide1....): its key and URL "
                                    "(after a key compromise)"))
    p = sub(peer_cmds, "remove", _("stop trusting a peer"), cmd_peers_remove,
            words="peers remove")
    p.add_argument("name", metavar="NAME", help=_("the peer's name in the trust list"))
    sub(peer_cmds, "list", _("show the trust list"), cmd_peers_list, [json_flag], "peers list")
    passthrough(peer_cmds, "compromised", _("declare a peer's key compromised from a seq or "
                                            "a time (via the running node)"),
                _peers_compromised)

    token_cmds = group(commands, "token", _("manage local API tokens (tokens.toml)"))
    p = sub(token_cmds, "create", _("create a bearer token (printed once)"),
            cmd_token_create, [json_flag], "token create")
    p.add_argument("--scope", required=True, choices=[s.value for s in Scope],
                   help=_("read < write < admin"))
    p.add_argument("--name", help=_("a label to find and revoke it by (default <scope>-<n>)"))
    sub(token_cmds, "list", _("show tokens (names and scopes, never the tokens)"),
        cmd_token_list, [json_flag], "token list")
    p = sub(token_cmds, "revoke", _("delete a token"), cmd_token_revoke, words="token revoke")
    p.add_argument("name", metavar="NAME", help=_("the token's name (see 'token list')"))

    passthrough(commands, "run", _("run the node (the daemon)"), _run)
    passthrough(commands, "submit", _("share an observation via the running node"), _submit)
    passthrough(commands, "query", _("search observations on the running node"), _query)
    passthrough(commands, "retract", _("retract one of this node's observations"),
                _ops("retract"))
    passthrough(commands, "sighting", _("report a sighting of an observation"),
                _ops("sighting"))
    passthrough(commands, "status", _("the running node's status: peers, ledger, forks"),
                _ops("status"))
    passthrough(commands, "stream", _("follow new observations as they arrive"),
                _ops("stream"))
    passthrough(commands, "import", _("share a file of indicators (CSV, TXT, STIX bundle, "
                                      "MISP event) via the running node"), _ops("import"))
    passthrough(commands, "erase", _("erase one of this node's entries on every node"), _erase)

    ledger_cmds = group(commands, "ledger", _("inspect, back up and restore the local ledger"),
                        "action1")
    passthrough(ledger_cmds, "verify",
                _("re-check every signature and hash chain of the ledger"), _ledger_verify)
    passphrase = argparse.ArgumentParser(add_help=False)
    passphrase.add_argument("--passphrase-env", default="ENTRAIDE_PASSPHRASE", metavar="VAR",
                            help=_("variable holding the key passphrase, when the key is "
                                   "sealed (default ENTRAIDE_PASSPHRASE)"))
    p = sub(ledger_cmds, "export",
            _("write every entry and fork proof to a file (node stopped)"),
            _cmd_ledger_export, [json_flag, passphrase], "ledger export")
    p.add_argument("file", metavar="FILE", help=_("the export to write (replaced if it "
                                                  "exists)"))
    p = sub(ledger_cmds, "import",
            _("verify an export and store its entries (node stopped; all or nothing)"),
            _cmd_ledger_import, [json_flag, passphrase], "ledger import")
    p.add_argument("file", metavar="FILE",
                   help=_("an export written by 'entraide ledger export'"))

    p = sub(commands, "backup", _("write the whole node (config, trust list, token hashes, "
                                  "key as stored, ledger) to one archive; works while the "
                                  "node runs"), _cmd_backup, [json_flag])
    p.add_argument("file", metavar="FILE", help=_("the archive to write (mode 0600, "
                                                  "replaced if it exists)"))
    p = sub(commands, "restore", _("restore a node from a backup archive into a new or "
                                   "empty data dir (node stopped)"), _cmd_restore, [json_flag])
    p.add_argument("file", metavar="FILE", help=_("an archive written by 'entraide backup'"))
    p.add_argument("--force", action="store_true",
                   help=_("move a data dir that is not empty aside first (never deleted)"))
    p = sub(commands, "doctor", _("check this node: files, disk, limits, the running node, "
                                  "peers, clock skew, forks"), _cmd_doctor, [json_flag])
    p.add_argument("--api", metavar="URL",
                   help=_("the node's API (default from entraide.toml)"))
    p.add_argument("--token", help=_("an admin token (default: the CLI's own)"))

    key_cmds = group(commands, "key", _("this node's key"), "action1")
    passthrough(key_cmds, "rotate", _("hand this node's key over to a new one (node "
                                      "running; restart it afterwards)"), _key_rotate)

    forks_cmds = group(commands, "forks", _("forked origins (via the running node)"),
                       "action1")
    passthrough(forks_cmds, "list",
                _("show the forks recorded (origins that signed two entries at one seq)"),
                _forks_list)
    passthrough(forks_cmds, "clear",
                _("accept a forked origin's entries again (after talking to its admin)"),
                _forks_clear)

    passthrough(commands, "demo", _("run a local federation, end to end"), _demo)
    passthrough(commands, "completion", _("print a shell completion script (bash)"),
                _completion)
    passthrough(commands, "aid", _("requests for assistance during an incident (request, "
                                   "list, show, offer, accept, update, close)"), _aid)
    passthrough(commands, "capabilities", _("the expertise directory (set, list)"),
                _capabilities)
    passthrough(commands, "rules", _("detection rules (submit, list, show, export, "
                                     "retract)"), _rules)
    passthrough(commands, "playbooks", _("CACAO playbooks (submit, list, show, retract)"),
                _playbooks)
    export_cmds = group(commands, "export", _("export commands"), "action1")
    passthrough(export_cmds, "misp", _("write observations as MISP event JSON"), _export_misp)
    return parser


# --- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (never raises SystemExit)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Before the parser: its help texts are translated when it is built.
    set_lang(choose_lang(args_list))
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(args_list)
        passthrough: Passthrough | None = getattr(args, "passthrough", None)
        handler: Handler | None = getattr(args, "handler", None)
        if passthrough is None and extra:
            parser.error(_("unrecognized arguments: %s") % " ".join(extra))
        if passthrough is None and handler is None:
            parser.print_help(sys.stderr)
            return 2
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    data_dir = DataDir(resolve_data_dir(args.data_dir))
    try:
        if passthrough is not None:
            return int(passthrough(extra, data_dir) or 0)
        assert handler is not None
        return handler(args, data_dir)
    except UsageError as exc:
        _error(localize_error(str(exc)))
        return 2
    except EntraideError as exc:
        _error(localize_error(str(exc)) or type(exc).__name__)
        return 1
    except OSError as exc:
        _error(_os_message(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # a passthrough command's argparse: --help, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


# --- output helpers ----------------------------------------------------------------


def _identity_info(config: NodeConfig, key_text: str, fingerprint: str) -> dict[str, str]:
    card = encode_card(PeerCard(config.name, PublicKey.from_text(key_text), config.peer_url))
    return {"name": config.name, "key": key_text, "fingerprint": fingerprint,
            "card": card, "peer_url": config.peer_url}


def _print_identity(info: dict[str, Any]) -> None:
    print_table([
        (_("name"), info["name"]), (_("key"), info["key"]),
        (_("fingerprint"), info["fingerprint"]), (_("peer url"), info["peer_url"]),
        (_("card"), info["card"]),
    ])


def _error(message: str) -> None:
    # One line, whatever the message holds (a TOML error can span lines).
    line = _("{prog}: error: {message}").format(prog=PROG, message=" ".join(message.split()))
    print(line, file=sys.stderr)


def _os_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


if __name__ == "__main__":
    raise SystemExit(main())
