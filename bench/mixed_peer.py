"""The mixed scenario's peer (bench/mixed.py): a helper process that dials the node
over the real peer protocol and publishes pre-signed entries at a given rate, and the
parent's handle on it."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.workers.gcsettings import settle_heap
from bench.fed import FedNode, identity, ipv4, sign_chain

TICK_S = 0.05
"""The peer publishes what is due every ``TICK_S`` s."""
PEER_BASE = 4_000_000
"""Peer entry ``i`` observes ``ipv4(PEER_BASE + i)``."""
MAX_CHUNK = 2_000
"""Entries the peer publishes at once at most (a peer process starved by a loaded
machine falls behind its schedule, then catches up in steps of this size)."""


def _peer_main(conn: Connection, data_dir: str, target_url: str, target_key: str,
               count: int) -> None:
    """The helper process: sign ``count`` entries, run a node dialing the target, then
    on each ``("go", n, rate)`` publish the next ``n`` at ``rate``/s and send
    back ``[(first index, n, monotonic publish time), ...]``; ``("stop",)`` ends it."""
    from agent.peering.replicator import TrustedPeer
    from protocol.keys import PublicKey
    from tests.agent.nodes import Node

    ident = identity("mixed-peer")
    entries = sign_chain(ident, count, value=lambda s: ipv4(PEER_BASE + s - 1), tag="mixed")
    # The entries live to the end: out of the collector's reach, so that no full
    # collection over them stalls the peer mid-run (the node does the same:
    # agent/workers/gcsettings.py).
    settle_heap()

    async def main() -> None:
        node = Node("PEER", ident, Path(data_dir))
        node.set_trust([TrustedPeer("MIX", PublicKey.from_text(target_key), target_url)])
        await node.start()
        try:
            deadline = time.monotonic() + 60
            while not node.repl.connected():
                if time.monotonic() > deadline:
                    raise TimeoutError("the peer did not connect to the node")
                await asyncio.sleep(0.02)
            conn.send(("ready",))
            at = 0
            loop = asyncio.get_running_loop()
            while True:
                cmd = await loop.run_in_executor(None, conn.recv)
                if cmd[0] == "stop":
                    return
                _, n, rate = cmd
                sent: list[tuple[int, int, float]] = []
                start, end, t0 = at, at + n, time.monotonic()
                while at < end:
                    due = start + min(n, max(1, int((time.monotonic() - t0) * rate)))
                    due = min(due, at + MAX_CHUNK)  # a starved peer catches up in steps
                    if due > at:
                        chunk = entries[at:due]
                        node.repl.publish(chunk)
                        sent.append((at, len(chunk), time.monotonic()))
                        at = due
                    if at < end:
                        await asyncio.sleep(TICK_S)
                conn.send(("done", sent))
        finally:
            await node.stop()

    try:
        asyncio.run(main())
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class Peer:
    """The parent's handle on the helper process."""

    def __init__(self, root: Path, node: FedNode, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_peer_main, daemon=True, args=(
            child, str(root), f"http://127.0.0.1:{node.peer_port}", node.key, count))
        self.proc.start()

    async def recv(self, timeout: float) -> tuple[Any, ...]:
        def wait() -> tuple[Any, ...]:
            if not self.conn.poll(timeout):
                raise TimeoutError("the peer process did not answer")
            msg: tuple[Any, ...] = self.conn.recv()
            if msg[0] == "error":
                raise RuntimeError(f"the peer process failed: {msg[1]}")
            return msg
        return await asyncio.to_thread(wait)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def peer_times(chunks: list[tuple[int, int, float]]) -> dict[str, float]:
    return {ipv4(PEER_BASE + i): t for first, n, t in chunks for i in range(first, first + n)}
