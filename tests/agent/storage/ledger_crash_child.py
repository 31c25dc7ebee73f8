"""Child process of test_ledger_crash: writes batches until it is killed.

Usage: ``python -m tests.agent.storage.ledger_crash_child LEDGER_PATH SEED``

After each batch has been committed (``append_own`` or ``ingest`` returned), it writes
one line ``A|I <id>,<id>,...`` to stdout in a single ``write`` (atomic on a pipe for
lines under PIPE_BUF), so the parent never sees a batch that was not committed.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path

from tests.agent._ledger_helpers import chain, draft, identity, ip, observation, open_ledger

ME = identity(1)
REMOTE = identity(2)
MAX_BATCH = 40  # 40 ids of 65 bytes stay under PIPE_BUF (4096)


async def main(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ledger = await open_ledger(path, ME)
    while True:
        size = rng.randint(1, MAX_BATCH)
        if rng.random() < 0.7:
            entries = await ledger.append_own(
                [draft(observation(ip(rng.randrange(1 << 16)))) for _ in range(size)])
            tag = "A"
        else:
            entries = chain(REMOTE, size, start=ledger.head(REMOTE.public_key))
            result = await ledger.ingest(entries)
            if result.stored != size:
                raise SystemExit(f"ingest stored {result.stored} of {size}")
            tag = "I"
        os.write(1, f"{tag} {','.join(e.id for e in entries)}\n".encode())


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
