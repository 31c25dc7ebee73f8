"""Crash safety: a writer process killed with SIGKILL at random moments loses nothing
it reported as committed, and the ledger it leaves behind verifies."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from tests.agent._ledger_helpers import identity, open_ledger

ROOT = Path(__file__).resolve().parents[3]
ROUNDS = 24


async def run_child_until_killed(path: Path, seed: int, rng: random.Random) -> list[str]:
    """Start a writer, let it commit a few batches, kill it mid-flight; its committed ids."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.agent.storage.ledger_crash_child", str(path), str(seed),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[bytes] = []
    wanted = rng.randint(1, 4)
    while len(lines) < wanted:
        line = await proc.stdout.readline()
        if not line.endswith(b"\n"):
            await proc.wait()
            error = (await proc.stderr.read()).decode(errors="replace")
            pytest.fail(f"the writer died on its own (exit {proc.returncode}):\n{error}")
        lines.append(line)
    # A random moment inside the next batches: signing, inserting, committing or fsyncing.
    await asyncio.sleep(rng.random() * 0.03)
    proc.send_signal(signal.SIGKILL)
    rest = await proc.stdout.read()
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines += [line + b"\n" for line in rest.split(b"\n")[:-1]]  # only complete lines
    ids: list[str] = []
    for line in lines:
        tag, _, joined = line.decode().strip().partition(" ")
        assert tag in ("A", "I")
        ids += joined.split(",")
    return ids


@pytest.mark.slow
async def test_ledger_keeps_every_committed_batch_across_sigkill(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    path = tmp_path / "ledger.sqlite3"
    committed: list[str] = []
    for round_no in range(ROUNDS):
        new = await run_child_until_killed(path, seed + round_no, rng)
        committed += new
        async with await open_ledger(path, identity(1)) as ledger:
            for entry_id in new:
                assert await ledger.get_entry(entry_id) is not None, (seed, round_no, entry_id)
            report = await ledger.verify()
            assert report.ok, (seed, round_no, report.problems)
            assert ledger.counts().entries >= len(committed)
    async with await open_ledger(path, identity(1)) as ledger:
        missing = [i for i in committed if await ledger.get_entry(i) is None]
    assert not missing, (seed, missing[:3])
    assert len(committed) >= ROUNDS
