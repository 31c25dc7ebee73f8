"""baseline: the denominators. Raw PyNaCl Ed25519 sign and verify rates on one core
(and verify on two threads, which PyNaCl allows by releasing the GIL), and SQLite
batched inserts into a WAL file."""

from __future__ import annotations

import concurrent.futures
import time

from bench.common import Context, Result, sign_rate, sqlite_insert_rate, verify_rate


def _parallel_verify_rate(threads: int, seconds: float) -> float:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        rates = list(pool.map(lambda _: verify_rate(seconds), range(threads)))
        elapsed = time.perf_counter() - start
    return sum(rates) * seconds / elapsed if elapsed > seconds else sum(rates)


def run(ctx: Context) -> Result:
    seconds = 0.3 if ctx.quick else 2.0
    rows = 20_000 if ctx.quick else 200_000
    result = Result("baseline", params={"seconds_each": seconds, "sqlite_rows": rows,
                                        "sqlite_batch": 1000, "message_bytes": 256})
    result.add("sign_per_s", "raw Ed25519 sign, 1 core", sign_rate(seconds), "ops/s")
    result.add("verify_per_s", "raw Ed25519 verify, 1 core", verify_rate(seconds), "ops/s")
    result.add("verify_2threads_per_s", "raw Ed25519 verify, 2 threads",
               _parallel_verify_rate(2, seconds), "ops/s")
    result.add("sqlite_insert_per_s", "SQLite insert, batches of 1,000",
               sqlite_insert_rate(rows, directory=ctx.workdir), "rows/s")
    return result
