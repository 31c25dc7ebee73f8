"""Command-line entry point (placeholder until the CLI lands)."""

from __future__ import annotations

import sys

from agent import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("--version", "version"):
        print(f"entraide {__version__}")
        return 0
    print(f"entraide {__version__}\nusage: entraide [--version]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
