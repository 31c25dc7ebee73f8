"""Coverage-guided fuzzing of one target of tests/fuzz/targets.py with atheris (libFuzzer).

Run through ``scripts/fuzz TARGET --seconds N``. The committed corpus is
tests/fuzz/corpus/<TARGET>/ (seeded from the test vectors when empty); what libFuzzer
finds new goes to build/fuzz/<TARGET>/ (not committed), and a crashing input to
build/fuzz/<TARGET>-crash-*: turn it into a regression test, fix the parser, and copy
the input into the committed corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["protocol", "agent.misp", "agent.taxii"]):
    from tests.fuzz.targets import CORPUS, ROOT, TARGETS, seeds


def seed_corpus(target: str) -> Path:
    """tests/fuzz/corpus/<target>/, written from :func:`seeds` when missing or empty."""
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        for data in seeds(target):
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=int, default=60, help="how long (default 60)")
    parser.add_argument("--max-len", type=int, default=65536,
                        help="largest input tried, in bytes (default 65536)")
    args, rest = parser.parse_known_args()
    corpus = seed_corpus(args.target)
    work = ROOT / "build" / "fuzz" / args.target
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(work), str(corpus), f"-max_total_time={args.seconds}",
            f"-max_len={args.max_len}", "-rss_limit_mb=2048",
            f"-artifact_prefix={work.parent}/{args.target}-", *rest]
    atheris.Setup(argv, TARGETS[args.target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
