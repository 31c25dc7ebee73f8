"""taxii: the same indicators through Entraide's TAXII endpoint and through medallion.

Both servers are driven by taxii2-client (the OASIS client) from this process. Entraide
is a real ``entraide run`` process: every object posted is signed and durably committed
before the status answers. medallion (the OASIS reference TAXII 2.1 server) runs its
memory backend on loopback: nothing signed, nothing persisted.

Figures, for each server: ingest (objects/s, envelopes of ``ENVELOPE`` objects), full
paginated read (objects/s, pages of ``PAGE``), single-object GET latency p50/p99 (over
``SAMPLES`` random ids); and the ratios Entraide/medallion against the targets
(ingest >= 1x, read >= 10x, GET p50 <= 0.1x).

Needs the test extra (taxii2-client, medallion): ``pip install -e '.[test]'``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Context, Result, percentile
from bench.fed import new_federation

FULL, QUICK = 20_000, 2_000
ENVELOPE = 1_000
PAGE = 1_000
SAMPLES = 200
LOCAL = "e4f0c3b6-7a52-4d0e-9c1f-2b8d6a3e5f17"  # agent/taxii/app.py: the read-write collection
MEDALLION_BUDGET_S = 60.0
MEDALLION_COLLECTION = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"


def indicator(i: int) -> dict[str, Any]:
    value = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    return {"type": "indicator", "spec_version": "2.1",
            "id": f"indicator--{i:08x}-5a3e-4c2b-9d8f-1e2a3b4c5d6e",
            "created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
            "name": value, "pattern": f"[ipv4-addr:value = '{value}']", "pattern_type": "stix",
            "pattern_version": "2.1", "valid_from": "2026-01-01T00:00:00Z", "confidence": 80,
            "labels": ["bench"]}


def measure(collection_url: str, user: str, password: str, n: int,
            log: Any, budget_s: float | None = None) -> dict[str, float]:
    """Ingest, full read and single GETs through taxii2-client; figures by name.

    ``budget_s`` caps the GETs and the read each (rates come from what was done in
    time): medallion's read of 20,000 objects alone takes over ten minutes, which would
    blow the full run's 15-minute budget without changing the ratio's verdict.
    """
    from taxii2client.v21 import Collection

    collection = Collection(collection_url, user=user, password=password)
    objects = [indicator(i) for i in range(n)]
    start = time.perf_counter()
    for at in range(0, n, ENVELOPE):
        status = collection.add_objects({"objects": objects[at:at + ENVELOPE]},
                                        wait_for_completion=True, poll_interval=0.05)
        assert status.failure_count == 0, status.failures[:3]
    ingest = n / (time.perf_counter() - start)
    log(f"  ingest {ingest:,.0f} objects/s")
    # GETs before the read: a read cut by the budget leaves a page request running in
    # the server, which would slow the GETs after it.
    rng = random.Random(7)
    latencies: list[float] = []
    start = time.perf_counter()
    for i in rng.sample(range(n), min(SAMPLES, n)):
        if budget_s is not None and latencies and time.perf_counter() - start > budget_s:
            log(f"  GETs stopped by the {budget_s:.0f} s budget after {len(latencies)}")
            break
        t0 = time.perf_counter()
        got = collection.get_object(objects[i]["id"])
        latencies.append(time.perf_counter() - t0)
        assert got["objects"][0]["id"] == objects[i]["id"]
    read = _read_rate(collection, n, log, budget_s)
    log(f"  read {read:,.0f} objects/s")
    return {"ingest": ingest, "read": read, "get_p50": percentile(latencies, 0.5) * 1000,
            "get_p99": percentile(latencies, 0.99) * 1000}


def _read_rate(collection: Any, n: int, log: Any, budget_s: float | None) -> float:
    """Objects/s of a paginated read of every object, within ``budget_s`` if given.

    The read runs in a thread so that one page that takes longer than the budget (the
    first page of medallion's 20,000 objects takes minutes) cannot hold the run: past
    the budget the rate counts the page in flight as read, an upper bound of what the
    server did, so a ratio against it is never flattered.
    """
    from taxii2client.v21 import as_pages

    seen = 0
    failure: list[BaseException] = []

    def read_all() -> None:
        nonlocal seen
        try:
            for envelope in as_pages(collection.get_objects, per_request=PAGE,
                                     type="indicator"):
                seen += len(envelope.get("objects", []))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    start = time.perf_counter()
    reader = threading.Thread(target=read_all, name="bench-taxii-read", daemon=True)
    reader.start()
    reader.join(budget_s)
    elapsed = time.perf_counter() - start
    if reader.is_alive():
        log(f"  read stopped by the {budget_s:.0f} s budget after {seen} objects "
            f"(the page in flight counted as read)")
        return min(seen + PAGE, n) / elapsed
    if failure:
        raise failure[0]
    assert seen == n, f"read {seen} of {n} objects"
    return seen / elapsed


def start_medallion(root: Path, port: int) -> subprocess.Popen[bytes]:
    data = {
        "/discovery": {"title": "medallion", "default": f"http://127.0.0.1:{port}/api1/",
                       "api_roots": [f"http://127.0.0.1:{port}/api1/"]},
        "api1": {"information": {"title": "bench", "versions": [
            "application/taxii+json;version=2.1"], "max_content_length": 64 * 1024 * 1024},
            "status": [],
            "collections": [{"id": MEDALLION_COLLECTION, "title": "bench", "can_read": True,
                             "can_write": True,
                             "media_types": ["application/stix+json;version=2.1"],
                             "objects": [], "manifest": []}]},
    }
    (root / "data.json").write_text(json.dumps(data))
    config = {"backend": {"module": "medallion.backends.memory_backend",
                          "module_class": "MemoryBackend", "filename": str(root / "data.json")},
              "users": {"bench": "bench"}, "taxii": {"max_page_size": PAGE}}
    (root / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from medallion.scripts.run import main; "
         f"sys.argv = ['medallion', '--port', '{port}', '{root / 'config.json'}']; main()"],
        stdout=subprocess.DEVNULL, stderr=(root / "medallion.log").open("wb"))
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/taxii2/", timeout=1)
        except OSError as exc:
            if getattr(exc, "code", None) in (401, 406):
                return process  # it answers
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("medallion did not start (see medallion.log)") from exc
            time.sleep(0.1)
        else:
            return process


def run(ctx: Context) -> Result:
    n = QUICK if ctx.quick else FULL
    result = Result("taxii", params={"objects": n, "envelope": ENVELOPE, "page": PAGE,
                                     "samples": SAMPLES})
    root = ctx.tempdir("taxii")
    fed = new_federation(root, ["QC"])
    fed.start()
    try:
        node = fed["QC"]
        ctx.log("entraide:")
        ours = measure(f"{node.api}/taxii2/entraide/collections/{LOCAL}/", "bench", node.token,
                       n, ctx.log)
    finally:
        fed.stop()
    from agent.cli.localfed import free_ports

    (port,) = free_ports(1)
    medallion_root = root / "medallion"
    medallion_root.mkdir()
    process = start_medallion(medallion_root, port)
    try:
        ctx.log("medallion:")
        theirs = measure(f"http://127.0.0.1:{port}/api1/collections/{MEDALLION_COLLECTION}/",
                         "bench", "bench", n, ctx.log, budget_s=MEDALLION_BUDGET_S)
    finally:
        process.terminate()
        process.wait(timeout=10)
    for who, figures in (("entraide", ours), ("medallion", theirs)):
        result.add(f"{who}_ingest", f"{who} ingest", figures["ingest"], "obj/s")
        result.add(f"{who}_read", f"{who} paginated read", figures["read"], "obj/s")
        result.add(f"{who}_get_p50", f"{who} GET p50", figures["get_p50"], "ms")
        result.add(f"{who}_get_p99", f"{who} GET p99", figures["get_p99"], "ms")
    result.add("ingest_ratio", "ingest Entraide/medallion", ours["ingest"] / theirs["ingest"],
               "x", op=">=", target=1.0)
    result.add("read_ratio", "read Entraide/medallion", ours["read"] / theirs["read"], "x",
               op=">=", target=10.0)
    result.add("get_ratio", "GET p50 Entraide/medallion", ours["get_p50"] / theirs["get_p50"],
               "x", op="<=", target=0.1)
    return result
