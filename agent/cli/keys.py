"""``entraide key rotate``: hand this node's key over to a new one (docs/operations.md,
"Rotate a key"; agent/node/keys.py has the two steps); ``entraide peers compromised``
(docs/operations.md, "A key is compromised").

The new key is made here, written to ``<data-dir>/next-key/`` (sealed with the same
passphrase when ``node.key`` is sealed), and countersigns the hand-over; the running
node signs it as the last entry of its old chain. Restart the node afterwards: it then
installs the new key. An error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

from agent.cli.client import _client, _common, call_api
from agent.cli.lang import _
from agent.cli.trustcmds import UsageError
from agent.config.datadir import DataDir, passphrase_from_env
from agent.config.trust import NEXT_KEY_DIR
from agent.errors import ConfigError
from protocol.handover import countersign
from protocol.keys import Identity

__all__ = ["key_rotate_command", "peers_compromised_command"]


def key_rotate_command(argv: list[str], data_dir: Path) -> int:
    """Make a new key, have the running node sign the hand-over, print what to do next.

    Raises:
        ConfigError: a rotation already waits for a restart, or the key is sealed and
            the passphrase variable is not set.
        EntraideError: the node refused (see the message); ``next-key/`` is removed.
    """
    parser = argparse.ArgumentParser(
        prog="entraide key rotate",
        description=_("Hand this node's key over to a new one: the running node signs a "
                      "hand-over entry naming the new key, its peers follow, and after a "
                      "restart the node signs with the new key."))
    parser.add_argument("--passphrase-env", default="ENTRAIDE_PASSPHRASE", metavar="VAR",
                        help=_("variable holding the key passphrase, when the key is "
                               "sealed (the new key is sealed with it too)"))
    _common(parser)
    args = parser.parse_args(argv)
    dd = DataDir(data_dir)
    dd.require_node()
    base, token = _client(args, data_dir)
    old = dd.public_key()
    next_dir = DataDir(dd.root / NEXT_KEY_DIR)
    if next_dir.key_path.exists():
        raise ConfigError(f"{next_dir.root} exists: a rotation waits for the node to be "
                          "restarted (or remove it if the hand-over was never signed)")
    passphrase = (passphrase_from_env(args.passphrase_env) if dd.key_is_sealed() else None)
    new = Identity(os.urandom(32))
    next_dir.create()
    next_dir.write_identity(new, passphrase)
    payload = countersign(new, old)
    try:
        result = call_api(base, token, "POST", "/api/v1/key/rotate",
                          payload.model_dump(mode="json", exclude={"kind"}))
    except BaseException:
        shutil.rmtree(next_dir.root, ignore_errors=True)
        raise
    if args.json:
        print(json.dumps(result))
    else:
        print(_("hand-over signed at seq {seq}: {old} -> {new} (fingerprint {fp}). "
                "Restart the node to sign with the new key; peers follow by themselves.")
              .format(seq=result["seq"], old=old.fingerprint, new=new.public_key.text,
                      fp=new.public_key.fingerprint))
    sys.stdout.flush()
    return 0


def peers_compromised_command(argv: list[str], data_dir: Path) -> int:
    """``entraide peers compromised NAME --since SEQ|TIME``: through the running node,
    mark a member's current key compromised from a seq or a time (docs/operations.md,
    "A key is compromised").

    Raises:
        UsageError: ``--since`` is neither a seq nor an ISO 8601 time.
        EntraideError: the node refused (see the message); nothing changed.
    """
    parser = argparse.ArgumentParser(
        prog="entraide peers compromised",
        description=_("Declare a peer's current key compromised from a seq, or from its "
                      "first entry signed at or after a time: this node refuses that key's "
                      "entries from there and shows those it holds as quarantined. Then "
                      "trust the peer's new key: entraide peers update NAME --card CARD."))
    parser.add_argument("name", metavar="NAME", help=_("the peer's name in the trust list"))
    parser.add_argument("--since", required=True, metavar="SEQ|TIME",
                        help=_("the first seq of its key not to trust, or a time (ISO "
                               "8601, e.g. 2026-03-01T00:00:00Z)"))
    _common(parser)
    args = parser.parse_args(argv)
    since = args.since.strip()
    body: dict[str, object]
    if since.isdigit():
        body = {"since_seq": int(since)}
    else:
        try:
            moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(_("--since takes a seq (a whole number) or an ISO 8601 time, "
                               "not {value!r}").format(value=since)) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        body = {"since": moment.isoformat()}
    base, token = _client(args, data_dir)
    name = urllib.parse.quote(args.name, safe="")
    result = call_api(base, token, "POST", f"/api/v1/peers/{name}/compromised", body)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(_("peer {name}: key {fp} compromised from seq {seq}; its entries from there "
                "are quarantined ({held} held). Trust its new key with: entraide peers "
                "update {name} --card CARD").format(
            name=result["name"], fp=result["fingerprint"],
            seq=result["compromised_since_seq"], held=result["quarantined"]))
    return 0
