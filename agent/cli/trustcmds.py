"""Commands that edit the trust list and the token file in the data dir, whether or not
the node runs (a running node notices changes to peers.toml and tokens.toml by itself):
``entraide peers add|update|remove|list`` and ``entraide token create|list|revoke``.
Wired in agent/cli/main.py."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from agent.cli.lang import _
from agent.config.datadir import DataDir
from agent.config.settings import (
    PeerEntry,
    TrustList,
    edit_trust_list,
    load_node_config,
    load_trust_list,
)
from agent.config.tokens import Scope, TokenStore
from agent.errors import ConfigError, UnknownPeerError
from protocol.cards import parse_card
from protocol.errors import EntraideError

__all__ = ["UsageError", "cmd_peers_add", "cmd_peers_list", "cmd_peers_remove",
           "cmd_peers_update", "cmd_token_create", "cmd_token_list", "cmd_token_revoke",
           "peer_json", "print_json", "print_table", "updated_peer"]


class UsageError(ConfigError):
    """Bad combination of options: reported like argparse does (exit 2)."""


def cmd_peers_add(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    if args.card is not None:
        if args.name is not None or args.key is not None or args.url is not None:
            raise UsageError(_("give either --card, or --name and --key (with --url)"))
        entry = PeerEntry.from_card(parse_card(args.card), args.jurisdiction)
    else:
        if args.name is None or args.key is None:
            raise UsageError(_("peers add needs --card CARD, or --name NAME and --key KEY"))
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
        print_json(peer_json(entry))
        return 0
    print_peer(_("Added peer {name}"), entry)
    return 0


def cmd_peers_remove(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    edit_trust_list(data_dir, lambda trust: trust.without(args.name))
    print(_("Removed peer {name}; a running node ends its sessions and refuses its "
            "later entries").format(name=args.name))
    return 0


def cmd_peers_list(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    trust: TrustList = load_trust_list(data_dir)
    if args.json:
        print_json({"peers": [peer_json(p) for p in trust]})
        return 0
    if not len(trust):
        print(_("No peers yet: add one with 'entraide peers add --card CARD'"))
        return 0
    rows = [(_("NAME"), _("JURISDICTION"), _("FINGERPRINT"), "URL")]
    rows += [(p.name, p.jurisdiction or "-", p.key.fingerprint, p.url or "-") for p in trust]
    print_table(rows)
    return 0


def cmd_token_create(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    store = TokenStore(data_dir)
    token = store.create(Scope(args.scope), args.name)
    record = store.authenticate(token)
    if record is None:  # the file changed under us between create and read
        raise EntraideError(_("the new token could not be read back from tokens.toml"))
    if args.json:
        print_json({"token": token, **record.to_json()})
        return 0
    print(token)
    print(_("token {name!r} (scope {scope}) created; it is shown only this once").format(
        name=record.name, scope=record.scope), file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    records = TokenStore(data_dir).records()
    if args.json:
        print_json({"tokens": [r.to_json() for r in records]})
        return 0
    if not records:
        print(_("No API tokens yet: create one with 'entraide token create --scope read'"))
        return 0
    print_table([(_("NAME"), _("SCOPE"), _("CREATED"))]
                 + [(r.name, str(r.scope), r.to_json()["created"]) for r in records])
    return 0


def cmd_token_revoke(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    record = TokenStore(data_dir).revoke(args.name)
    print(_("Revoked token {name} (scope {scope})").format(name=record.name,
                                                           scope=record.scope))
    return 0


def cmd_peers_update(args: argparse.Namespace, data_dir: DataDir) -> int:
    data_dir.require_node()
    config = load_node_config(data_dir)
    own_key = data_dir.public_key()
    holder: list[PeerEntry] = []

    def change(trust: TrustList) -> TrustList:
        url, key = args.url, args.key
        if args.card is not None:
            if url is not None or key is not None:
                raise UsageError(_("give either --card, or --key and --url"))
            card = parse_card(args.card)
            if card.name != args.name:
                raise UsageError(_("the card is {card}'s, not {name}'s").format(
                    card=card.name, name=args.name))
            key, url = card.key.text, card.url or ""
        holder.append(updated_peer(trust, args.name, url=url, key=key,
                                   jurisdiction=args.jurisdiction))
        # In place, so the file keeps its order; duplicates are checked as on add.
        return TrustList(tuple(holder[-1] if peer.name == args.name else peer
                               for peer in trust.peers))

    edit_trust_list(data_dir, change, own_key=own_key, own_name=config.name)
    entry = holder[-1]
    if args.json:
        print_json(peer_json(entry))
        return 0
    print_peer(_("Updated peer {name}; a running node applies it at once"), entry)
    return 0


def print_peer(title: str, entry: PeerEntry) -> None:
    where = f" ({entry.jurisdiction})" if entry.jurisdiction else ""
    print(title.format(name=entry.name) + where)
    print_table([
        ("  " + _("fingerprint"), entry.key.fingerprint + "   <- " + _(
            "confirm it with {name}'s admin").format(name=entry.name)),
        ("  url", entry.url or _("(none: trusted as an author, not dialled)")),
    ])


def peer_json(entry: PeerEntry) -> dict[str, Any]:
    return {**entry.model_dump(mode="json"), "fingerprint": entry.key.fingerprint}


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())




def updated_peer(trust: TrustList, name: str, *, url: str | None, key: str | None,
                 jurisdiction: str | None) -> PeerEntry:
    """The entry ``name`` with the fields given changed (``url=""`` removes the URL).

    Raises:
        UnknownPeerError: no peer has that name.
        UsageError: nothing to change.
        ConfigError: a new value is invalid.
    """
    current = trust.by_name(name)
    if current is None:
        raise UnknownPeerError(f"no peer named {name!r} in the trust list")
    if url is None and key is None and jurisdiction is None:
        raise UsageError(_("peers update needs --url, --key, --card or --jurisdiction"))
    return current.updated(url=url, key=key, jurisdiction=jurisdiction)
