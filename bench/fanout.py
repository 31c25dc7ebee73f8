"""What one stream event costs the node to write (issue 20, "mixed"): CPU per event.

``python -m bench.fanout [SUBSCRIBERS] [ENTRIES] [CHUNK] [PAUSE_S]`` (defaults 16,
20,000, 500 and 0.01): a node (tests/agent/_api_helpers.py's ``running_api``: a real
node and its API on 127.0.0.1) stores ENTRIES pre-signed GREEN observations of a
trusted peer, CHUNK per ledger ingest with PAUSE_S between them, once with no stream
client and once with SUBSCRIBERS unfiltered ``GET /api/v1/stream`` clients (all in a
helper process, each reading every event). Prints the node process's CPU time
(``time.process_time``: its loop and its SQLite threads) of each run and their
difference per event written: ``(cpu_with - cpu_without) / (ENTRIES * SUBSCRIBERS)``.
A client the node drops as too slow fails the run (it would not have read every event).
Run it from an older tree (``PYTHONPATH=<tree>``) to compare.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Semaphore
from pathlib import Path

import aiohttp

from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import identity, running_api


def _readers(url: str, token: str, expected: int, count: int, ready: Semaphore,
             done: Queue[list[int]]) -> None:
    """The helper process: ``count`` streams, each read until ``expected`` events."""

    async def one(session: aiohttp.ClientSession) -> int:
        seen = 0
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            buf = b""
            ready.release()
            async for data in resp.content.iter_any():
                buf += data
                *events, buf = buf.split(b"\n\n")
                seen += sum(1 for e in events if e.startswith(b"event: observation\n"))
                if seen >= expected:
                    break
        return seen

    async def main() -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            done.put(list(await asyncio.gather(*(one(session) for _ in range(count)))))

    asyncio.run(main())


def _entries(count: int) -> list[VerifiedEntry]:
    who = identity("ON")
    out: list[VerifiedEntry] = []
    prev = None
    for i in range(count):
        value = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        entry = sign_entry(who, seq=i + 1, prev=prev, now_ms=1_700_000_000_000 + i,
                           tlp=TLP.GREEN, audience=None,
                           body=encode_payload(Observation(type="ipv4-addr", value=value)))
        out.append(entry)
        prev = entry.hash
    return out


async def _run(entries: list[VerifiedEntry], subscribers: int, chunk: int,
               pause: float) -> float:
    """CPU seconds of this process while it stores ``entries`` and, with subscribers,
    until each of them read every event."""
    with tempfile.TemporaryDirectory() as tmp:
        async with running_api(Path(tmp)) as api:
            ctx = multiprocessing.get_context("spawn")
            ready, done = ctx.Semaphore(0), ctx.Queue()
            helper = None
            if subscribers:
                url = str(api.client.make_url("/api/v1/stream"))
                helper = ctx.Process(target=_readers, daemon=True, args=(
                    url, api.tokens["read"], len(entries), subscribers, ready, done))
                helper.start()
                for _ in range(subscribers):
                    await asyncio.to_thread(ready.acquire, True, 60)
                await asyncio.sleep(0.5)  # each stream past its catch-up
            cpu0 = time.process_time()
            for start in range(0, len(entries), chunk):
                await api.node.ledger.ingest(entries[start:start + chunk])
                await asyncio.sleep(pause)
            if helper is not None:
                got = await asyncio.to_thread(done.get, True, 300)
                if got != [len(entries)] * subscribers:
                    raise RuntimeError(f"a client was dropped: events read {got}")
            cpu = time.process_time() - cpu0
            if helper is not None:
                helper.join(10)
            return cpu


def main(argv: list[str]) -> None:
    subscribers = int(argv[0]) if argv else 16
    count = int(argv[1]) if len(argv) > 1 else 20_000
    chunk = int(argv[2]) if len(argv) > 2 else 500
    pause = float(argv[3]) if len(argv) > 3 else 0.01
    entries = _entries(count)
    without = asyncio.run(_run(entries, 0, chunk, pause))
    with_subs = asyncio.run(_run(entries, subscribers, chunk, pause))
    events = count * subscribers
    print(f"{count:,} entries, {chunk} per ingest: node CPU {without:.3f} s without a "
          f"stream client, {with_subs:.3f} s with {subscribers}: "
          f"{(with_subs - without) / events * 1e6:.2f} us per event written "
          f"({events:,} events)")


if __name__ == "__main__":
    main(sys.argv[1:])
