"""Where a catching-up node's time goes per entry, in one process (issue 20).

``python -m bench.chainrun_profile [N] [noprof]``: N entries (default 40,000) of 200
origins, cut into runs of 256 as WANT replies arrive (origins interleaved), checked with
``verify_batch`` as the verify pool does, then stored with ``Ledger.ingest`` 2,048 at a
time (the ingest pipeline's ``store_max_entries``) into a fresh ledger. Prints the rate
of each step, then (unless ``noprof``) the cProfile of both, by own time.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from agent.storage.ledger import Ledger
from bench.ingest import make_entries
from protocol.chainrun import verify_batch
from protocol.keys import Identity


async def _main(raws: list[list[bytes]], n: int) -> None:
    ledger = await Ledger.open(Path(tempfile.mkdtemp()) / "ledger.db",
                               identity=Identity(b"p" * 32),
                               is_trusted_origin=lambda _key: True)
    t0 = time.perf_counter()
    checked = [e for run in raws for e in verify_batch(run) if e is not None]
    t1 = time.perf_counter()
    for at in range(0, len(checked), 2048):
        await ledger.ingest(checked[at:at + 2048])
    t2 = time.perf_counter()
    await ledger.close()
    print(f"verify_batch {n / (t1 - t0):,.0f}/s ({(t1 - t0) / n * 1e6:.1f} us/entry); "
          f"ingest {n / (t2 - t1):,.0f}/s ({(t2 - t1) / n * 1e6:.1f} us/entry)")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    _, entries = make_entries(200, n, "prof")
    per = n // 200
    raws = [[e.raw for e in entries[o * per + i:o * per + min(per, i + 256)]]
            for i in range(0, per, 256) for o in range(200)]
    prof = None if "noprof" in sys.argv[2:] else cProfile.Profile()
    if prof is not None:
        prof.enable()
    asyncio.run(_main(raws, len(entries)))
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
