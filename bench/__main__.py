"""``python -m bench [SCENARIO ...] [--quick] [--out DIR] [--keep]``.

Runs the named scenarios (default: all, in the order below), prints a table of the
figures against the targets and writes ``<out>/<UTC timestamp>.json``. Exit status 0
when every scenario ran (missed targets are reported, not failures); 1 when one broke.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.common import REPO, Context, Result, machine_info, stderr_log, table, write_results

SCENARIOS = ("baseline", "submit", "ingest", "propagation", "catchup", "query", "taxii",
             "aid", "retention", "chainrun", "scale", "mixed")
ON_REQUEST = ("bigledger",)
"""Run only when named: the 10M-observation ledger takes most of an hour to build (once:
it is cached under /var/tmp/entraide-bench), and its quick size more than a minute."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of: {', '.join(SCENARIOS + ON_REQUEST)} (default: all "
                        f"but {', '.join(ON_REQUEST)})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: every scenario in under 2 minutes in all")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results",
                        help="directory for the JSON result file (default: bench-results/)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where temporary nodes live (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary nodes")
    args = parser.parse_args(argv)
    chosen = args.scenarios or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS + ON_REQUEST]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from "
                     f"{', '.join(SCENARIOS + ON_REQUEST)}")
    started = datetime.now(UTC)
    machine = machine_info()
    stderr_log(f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}; "
               f"{'quick' if args.quick else 'full'} run of {', '.join(chosen)}")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="entraide-bench-", dir=args.workdir))
    ctx = Context(quick=args.quick, workdir=workdir, log=stderr_log)
    results: list[Result] = []
    broken: list[str] = []
    path: Path | None = None
    try:
        for name in chosen:
            module = importlib.import_module(f"bench.{name}")
            stderr_log(f"--- {name}")
            t0 = time.perf_counter()
            try:
                result = module.run(ctx)
            except Exception as exc:
                traceback.print_exc()
                broken.append(name)
                result = Result(name, notes=[f"failed: {type(exc).__name__}: {exc}"])
            result.wall_s = round(time.perf_counter() - t0, 2)
            stderr_log(f"{name} done in {result.wall_s:.1f} s")
            results.append(result)
            print(table([result]), file=sys.stderr, flush=True)
            # Written after every scenario: a later one that hangs loses nothing.
            path = write_results(results, args.out, quick=args.quick, started=started,
                                 machine=machine, path=path)
    finally:
        if args.keep:
            stderr_log(f"nodes kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    for result in results:
        for note in result.notes:
            print(f"- {result.scenario}: {note}")
    print(f"results: {path}")
    if broken:
        print(f"broken scenarios: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
