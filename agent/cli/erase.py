"""``entraide erase ID [--reason TEXT] [--json]``: erase one of this node's own entries
on every node, through the running node's API (docs/privacy.md, "Erasure").

Help and output in the CLI's language (agent/cli/lang.py). An error (not this node's entry, unknown,
already erased) is one line on stderr and exit status 1; nothing is changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.client import _client, _common, call_api
from agent.cli.examples import epilog
from agent.cli.lang import _

__all__ = ["erase_command"]


def erase_command(argv: list[str], data_dir: Path) -> int:
    """Erase entry ID (POST /api/v1/observations/{id}/erase) and print what was done."""
    parser = argparse.ArgumentParser(
        prog="entraide erase", epilog=epilog("erase"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("Erase one of this node's own entries: its body is dropped here and "
                      "on every node that holds it, without a trace, and each node sends "
                      "back a signed receipt (see 'GET /api/v1/observations/ID/erasure')."))
    parser.add_argument("id", metavar="ID", help=_("the entry id (64 hex)"))
    parser.add_argument("--reason", help=_("why, for the privacy officer (never the value)"))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    body = {} if args.reason is None else {"reason": args.reason}
    result = call_api(base, token, "POST",
                      f"/api/v1/observations/{args.id.strip().lower()[:64]}/erase", body)
    if args.json:
        print(json.dumps(result))
    else:
        print(_("erased: {of} at {at} (erasure {id})").format(
            of=result["of"], at=result["erased_at"], id=result["id"]))
    sys.stdout.flush()
    return 0
