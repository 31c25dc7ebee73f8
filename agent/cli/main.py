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
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from agent import __version__
from agent.config.datadir import DataDir, passphrase_from_env, resolve_data_dir
from agent.config.settings import (
    NodeConfig,
    PeerEntry,
    TrustList,
    create_node,
    edit_trust_list,
    load_node_config,
    load_trust_list,
    parse_node_config,
)
from agent.config.tokens import Scope, TokenStore
from agent.errors import ConfigError
from protocol.cards import PeerCard, encode_card, parse_card
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
        _print_json({**info, "data_dir": str(data_dir.root)})
        return 0
    sealed = " (sealed with the passphrase)" if passphrase else ""
    print(f"Initialised node {config.name} in {data_dir.root}{sealed}")
    _print_identity(info)
    print(
        "\nNext: give your card to the other admins, add theirs with "
        "'entraide peers add --card CARD',\ncreate an API token with "
        "'entraide token create --scope admin', then start the node with 'entraide run'."
    )
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
    info = _identity_info(config, key.text, key.fingerprint)
    if args.json:
        _print_json(info)
        return 0
    _print_identity(info)
    if config.peer.public_url is None:
        print(
            "\nnote: no [peer] public_url in entraide.toml; peers on other hosts need one "
            "(entraide init --public-url, or edit the file)",
            file=sys.stderr,
        )
    return 0


def _cmd_peers_add(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    if args.card is not None:
        if args.name is not None or args.key is not None or args.url is not None:
            raise _UsageError("give either --card, or --name and --key (with --url)")
        entry = PeerEntry.from_card(parse_card(args.card), args.jurisdiction)
    else:
        if args.name is None or args.key is None:
            raise _UsageError("peers add needs --card CARD, or --name NAME and --key KEY")
        entry = PeerEntry.build(
            name=args.name, key=args.key, url=args.url, jurisdiction=args.jurisdiction
        )
    config = load_node_config(data_dir)
    own_key = data_dir.public_key()
    edit_trust_list(
        data_dir,
        lambda trust: trust.with_peer(entry, own_key=own_key, own_name=config.name),
        own_key=own_key,
        own_name=config.name,
    )
    if args.json:
        _print_json(_peer_json(entry))
        return 0
    where = f" ({entry.jurisdiction})" if entry.jurisdiction else ""
    print(f"Added peer {entry.name}{where}")
    print(f"  fingerprint  {entry.key.fingerprint}   <- confirm it with {entry.name}'s admin")
    print(f"  url          {entry.url or '(none: trusted as an author, not dialled)'}")
    return 0


def _cmd_peers_remove(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    edit_trust_list(data_dir, lambda trust: trust.without(args.name))
    print(f"Removed peer {args.name}; a running node ends its sessions and refuses its "
          "later entries")
    return 0


def _cmd_peers_list(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    trust: TrustList = load_trust_list(data_dir)
    if args.json:
        _print_json({"peers": [_peer_json(p) for p in trust]})
        return 0
    if not len(trust):
        print("No peers yet: add one with 'entraide peers add --card CARD'")
        return 0
    rows = [("NAME", "JURISDICTION", "FINGERPRINT", "URL")]
    rows += [(p.name, p.jurisdiction or "-", p.key.fingerprint, p.url or "-") for p in trust]
    _print_table(rows)
    return 0


def _cmd_token_create(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    store = TokenStore(data_dir)
    token = store.create(Scope(args.scope), args.name)
    record = store.authenticate(token)
    if record is None:  # the file changed under us between create and read
        raise EntraideError("the new token could not be read back from tokens.toml")
    if args.json:
        _print_json({"token": token, **record.to_json()})
        return 0
    print(token)
    print(f"token {record.name!r} (scope {record.scope}) created; it is shown only this once",
          file=sys.stderr)
    return 0


def _cmd_token_list(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    records = TokenStore(data_dir).records()
    if args.json:
        _print_json({"tokens": [r.to_json() for r in records]})
        return 0
    if not records:
        print("No API tokens yet: create one with 'entraide token create --scope read'")
        return 0
    _print_table([("NAME", "SCOPE", "CREATED")]
                 + [(r.name, str(r.scope), r.to_json()["created"]) for r in records])
    return 0


def _cmd_token_revoke(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    record = TokenStore(data_dir).revoke(args.name)
    print(f"Revoked token {record.name} (scope {record.scope})")
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


def _erase(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import erase

    return erase.erase_command(argv, data_dir.root)


def _demo(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import demo

    return demo.demo_command(argv, data_dir.root)


def _import_misp(argv: list[str], data_dir: DataDir) -> int:
    from agent.cli import misp

    return misp.import_misp_command(argv, data_dir.root)


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


class _UsageError(ConfigError):
    """Bad combination of options: reported like argparse does (exit 2)."""


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
    """The whole ``entraide`` parser. ``--data-dir`` is accepted before or after
    the command words.

    A command's handler is in ``handler`` (takes the parsed arguments) or, for a
    command that parses its own arguments, in ``passthrough`` (takes the words left).
    """
    # Subcommands get --data-dir with SUPPRESS so an absent one does not overwrite
    # a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="node data dir (default: $ENTRAIDE_HOME, else ./entraide-data)")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON")

    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Entraide: federated threat-intelligence sharing between jurisdictions.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="node data dir (default: $ENTRAIDE_HOME, else ./entraide-data)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")

    def sub(group: Any, name: str, help_text: str, handler: Handler | None,
            parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, allow_abbrev=False,
            parents=[common, *parents],
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

    p = sub(commands, "init", "create a node: key pair, entraide.toml, empty trust list",
            _cmd_init, [json_flag])
    p.add_argument("--name", required=True, help="this node's peer name (e.g. QC)")
    p.add_argument("--jurisdiction", help='human name, e.g. "Québec"')
    p.add_argument("--api-port", type=int, default=8470, metavar="PORT")
    p.add_argument("--peer-port", type=int, default=8471, metavar="PORT")
    p.add_argument("--peer-host", default="0.0.0.0", metavar="HOST")
    p.add_argument("--public-url", metavar="URL",
                   help="base URL peers dial (http/https); it goes on the peer card")
    p.add_argument("--passphrase-env", metavar="VAR",
                   help="seal node.key with the passphrase held in this environment variable")

    p = sub(commands, "id", "print this node's peer card and fingerprint", _cmd_id, [json_flag])
    p.add_argument("--passphrase-env", metavar="VAR",
                   help="also open a sealed node.key with this variable's passphrase")

    peer_cmds = group(commands, "peers", "edit the trust list (peers.toml)")
    p = sub(peer_cmds, "add", "trust a peer, from its card or its name and key",
            _cmd_peers_add, [json_flag])
    p.add_argument("--card", help="the peer's card (entraide1....)")
    p.add_argument("--name")
    p.add_argument("--key", help="ed25519:<base64url>")
    p.add_argument("--url", help="base URL to dial (omit: trusted as author, not dialled)")
    p.add_argument("--jurisdiction")
    p = sub(peer_cmds, "remove", "stop trusting a peer", _cmd_peers_remove)
    p.add_argument("name", metavar="NAME")
    sub(peer_cmds, "list", "show the trust list", _cmd_peers_list, [json_flag])

    token_cmds = group(commands, "token", "manage local API tokens (tokens.toml)")
    p = sub(token_cmds, "create", "create a bearer token (printed once)",
            _cmd_token_create, [json_flag])
    p.add_argument("--scope", required=True, choices=[s.value for s in Scope])
    p.add_argument("--name", help="a label to find and revoke it by (default <scope>-<n>)")
    sub(token_cmds, "list", "show tokens (names and scopes, never the tokens)",
        _cmd_token_list, [json_flag])
    p = sub(token_cmds, "revoke", "delete a token", _cmd_token_revoke)
    p.add_argument("name", metavar="NAME")

    passthrough(commands, "run", "run the node (the daemon)", _run)
    passthrough(commands, "submit", "share an observation via the running node", _submit)
    passthrough(commands, "query", "search observations on the running node", _query)
    passthrough(commands, "erase", "erase one of this node's entries on every node / "
                "effacer une entrée de ce nœud sur tous les nœuds", _erase)

    ledger_cmds = group(commands, "ledger", "inspect, back up and restore the local ledger",
                        "action1")
    passthrough(ledger_cmds, "verify",
                "re-check every signature and hash chain of the ledger", _ledger_verify)
    passphrase = argparse.ArgumentParser(add_help=False)
    passphrase.add_argument("--passphrase-env", default="ENTRAIDE_PASSPHRASE", metavar="VAR",
                            help="variable holding the key passphrase, when the key is "
                                 "sealed (default ENTRAIDE_PASSPHRASE)")
    p = sub(ledger_cmds, "export", "write every entry and fork proof to a file (node stopped)",
            _cmd_ledger_export, [json_flag, passphrase])
    p.add_argument("file", metavar="FILE", help="the export to write (replaced if it exists)")
    p = sub(ledger_cmds, "import",
            "verify an export and store its entries (node stopped; all or nothing)",
            _cmd_ledger_import, [json_flag, passphrase])
    p.add_argument("file", metavar="FILE", help="an export written by 'entraide ledger export'")

    p = sub(commands, "backup", "write the whole node (config, trust list, token hashes, "
            "key as stored, ledger) to one archive; works while the node runs",
            _cmd_backup, [json_flag])
    p.add_argument("file", metavar="FILE", help="the archive to write (mode 0600, replaced "
                   "if it exists)")
    p = sub(commands, "restore", "restore a node from a backup archive into a new or empty "
            "data dir (node stopped)", _cmd_restore, [json_flag])
    p.add_argument("file", metavar="FILE", help="an archive written by 'entraide backup'")
    p.add_argument("--force", action="store_true",
                   help="move a data dir that is not empty aside first (never deleted)")
    p = sub(commands, "doctor", "check this node: files, disk, limits, the running node, "
            "peers, clock skew, forks", _cmd_doctor, [json_flag])
    p.add_argument("--api", metavar="URL", help="the node's API (default from entraide.toml)")
    p.add_argument("--token", help="an admin token (default: the CLI's own)")

    forks_cmds = group(commands, "forks", "forked origins (via the running node)", "action1")
    passthrough(forks_cmds, "list",
                "show the forks recorded (origins that signed two entries at one seq)",
                _forks_list)
    passthrough(forks_cmds, "clear",
                "accept a forked origin's entries again (after talking to its admin)",
                _forks_clear)

    passthrough(commands, "demo", "run a local federation, end to end", _demo)
    passthrough(commands, "aid", "requests for assistance during an incident (request, list, "
                "show, offer, accept, update, close) / demandes d'assistance", _aid)
    passthrough(commands, "capabilities", "the expertise directory (set, list) / "
                "le répertoire d'expertise", _capabilities)
    passthrough(commands, "rules", "detection rules (submit, list, show, export, retract) / "
                "règles de détection", _rules)
    passthrough(commands, "playbooks", "CACAO playbooks (submit, list, show, retract) / "
                "playbooks CACAO", _playbooks)
    import_cmds = group(commands, "import", "import commands", "action1")
    passthrough(import_cmds, "misp", "share a MISP event's indicators via the running node",
                _import_misp)
    export_cmds = group(commands, "export", "export commands", "action1")
    passthrough(export_cmds, "misp", "write observations as MISP event JSON", _export_misp)
    return parser


# --- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (never raises SystemExit)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(args_list)
        passthrough: Passthrough | None = getattr(args, "passthrough", None)
        handler: Handler | None = getattr(args, "handler", None)
        if passthrough is None and extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    except _UsageError as exc:
        _error(str(exc))
        return 2
    except EntraideError as exc:
        _error(str(exc) or type(exc).__name__)
        return 1
    except OSError as exc:
        _error(_os_message(exc))
        return 1
    except KeyboardInterrupt:
        return 130


# --- output helpers ----------------------------------------------------------------


def _identity_info(config: NodeConfig, key_text: str, fingerprint: str) -> dict[str, str]:
    card = encode_card(PeerCard(config.name, PublicKey.from_text(key_text), config.peer_url))
    return {"name": config.name, "key": key_text, "fingerprint": fingerprint,
            "card": card, "peer_url": config.peer_url}


def _print_identity(info: dict[str, str]) -> None:
    _print_table([
        ("name", info["name"]), ("key", info["key"]), ("fingerprint", info["fingerprint"]),
        ("peer url", info["peer_url"]), ("card", info["card"]),
    ])


def _peer_json(entry: PeerEntry) -> dict[str, Any]:
    return {**entry.model_dump(mode="json"), "fingerprint": entry.key.fingerprint}


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _error(message: str) -> None:
    # One line, whatever the message holds (a TOML error can span lines).
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def _os_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


if __name__ == "__main__":
    raise SystemExit(main())
