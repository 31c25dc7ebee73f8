"""``python -m chaos [--profile short|long|satellite] [--nodes N] [--duration S | --minutes M]
[--netns auto|on|off] [--dir DIR] [--seed N]``: one chaos run; prints its report; exit
status 1 when an invariant fails (docs/chaos.md). ``python -m chaos --cleanup`` removes
the network namespaces of runs that ended without removing theirs (kill -9)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
from pathlib import Path

from chaos.netns import cleanup_leftovers, unavailable_reason
from chaos.run import NAMES, PROFILES, run_chaos
from protocol.errors import EntraideError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--nodes", type=int, help="number of nodes (profile's default)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float,
                        help="seconds of faults (profile's default)")
    length.add_argument("--minutes", type=float, help="minutes of faults")
    parser.add_argument("--netns", choices=("auto", "on", "off"), default="auto",
                        help="each node in its own network namespace: auto (when root and "
                             "ip netns work, else loopback), on (or fail), off (loopback)")
    parser.add_argument("--seed", type=int, default=0, help="fault schedule seed (0: random)")
    parser.add_argument("--dir", type=Path, help="keep the data dirs and logs here")
    parser.add_argument("--cleanup", action="store_true",
                        help="only remove namespaces left by runs that are gone")
    args = parser.parse_args(argv)
    if args.cleanup:
        if unavailable_reason() is None:
            for what in cleanup_leftovers():
                print(f"removed {what}")
        return 0
    profile = PROFILES[args.profile]
    duration = args.minutes * 60 if args.minutes else args.duration
    changes = {k: v for k, v in (("nodes", args.nodes), ("duration", duration),
                                 ("seed", args.seed)) if v}
    profile = dataclasses.replace(profile, **changes)
    most = len(NAMES) + (1 if profile.satellite else 0)
    if not 3 <= profile.nodes <= most:
        parser.error(f"between 3 and {most} nodes")
    root = args.dir or Path(tempfile.mkdtemp(prefix="entraide-chaos-"))
    try:
        report = run_chaos(profile, root, netns=args.netns)
    except (RuntimeError, EntraideError) as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"chaos: interrupted; nodes stopped, namespaces removed; logs in {root}",
              file=sys.stderr)
        return 130
    print(report.text())
    print(f"data dirs and logs: {root}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
