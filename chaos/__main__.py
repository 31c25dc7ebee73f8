"""``python -m chaos [--profile short|long|satellite] [--dir DIR] [--seed N]``: one chaos
run; prints its report; exit status 1 when an invariant fails (docs/chaos.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from chaos.run import PROFILES, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--nodes", type=int, help="number of nodes (profile's default)")
    parser.add_argument("--duration", type=float, help="seconds of faults (profile's default)")
    parser.add_argument("--seed", type=int, default=0, help="fault schedule seed (0: random)")
    parser.add_argument("--dir", type=Path, help="keep the data dirs and logs here")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    changes = {k: v for k, v in (("nodes", args.nodes), ("duration", args.duration),
                                 ("seed", args.seed)) if v}
    profile = dataclasses.replace(profile, **changes)
    if profile.nodes < 3:
        parser.error("at least 3 nodes")
    root = args.dir or Path(tempfile.mkdtemp(prefix="entraide-chaos-"))
    report = run_chaos(profile, root)
    print(report.text())
    print(f"data dirs and logs: {root}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
