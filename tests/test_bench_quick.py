"""``scripts/bench --quick``: every scenario runs at tiny sizes and produces its figures.

No timed assertions: the figures must exist and be numbers, the result file must be
well formed; how good they are is docs/benchmarks.md's business.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SCENARIOS
from bench.common import Figure, Result, percentile, table

REPO = Path(__file__).resolve().parent.parent

FIGURES = {
    "baseline": {"sign_per_s", "verify_per_s", "verify_2threads_per_s", "sqlite_insert_per_s"},
    "submit": {"sign_per_s", "batched_per_s", "batched_p50_ms", "batched_p99_ms",
               "single_per_s", "single_p50_ms", "single_p99_ms", "batched_vs_sign",
               "batched_cpu_us", "batched_worker_cpu_us", "single_cpu_us",
               "batched_few_per_s", "batched_few_p50_ms"},
    "ingest": {"verify_per_s", "entries_per_s", "vs_verify", "copies_per_entry",
               "entries_per_message", "seconds", "dst_cpu_us", "dst_main_cpu_us", "src_cpu_us"},
    "propagation": {"real_p50_ms", "real_p99_ms", "real_max_ms", "real_delivery_p50_ms",
                    "real_copies", "real_control_ratio", "real_wire_control_ratio",
                    "sim_p50_ms", "sim_p99_ms", "sim_max_ms", "sim_copies",
                    "sim_control_ratio"},
    "catchup": {"entries_per_s", "wire_ratio", "copies_per_entry", "entries_per_message",
                "seconds", "reconnect_bytes", "reconnect_gossip_bytes", "handshake_bytes",
                "reconnect_total_bytes", "reconnect_ms", "b_cpu_us", "b_main_cpu_us",
                "a_cpu_us"},
    "query": {"build_per_s", "lookup_1_p50_ms", "lookup_1_p99_ms", "lookup_p50_ms",
              "lookup_p99_ms", "lookup_per_s", "lookup_cpu_us", "health_p99_ms",
              "health_per_s", "list_p50_ms", "list_p99_ms", "list_per_s", "rss_peak_mb",
              "lookup_main_cpu_us", "workers_rss_peak_mb", "workers_private_mb",
              "aiohttp_lookup_1_p99_ms", "aiohttp_lookup_p50_ms", "aiohttp_lookup_p99_ms",
              "aiohttp_lookup_per_s", "aiohttp_health_p99_ms", "aiohttp_health_per_s"},
    "aid": {"first_offer_p50_ms", "first_offer_p99_ms", "request_seen_p50_ms",
            "both_offers_p50_ms"},
    "retention": {"before_bytes_per_obs", "after_bytes_per_obs", "vacuumed_bytes_per_obs",
                  "sweep_per_s"},
    "chainrun": {"verify_per_s", "verify_2threads_per_s", "per_entry_per_s", "run_per_s",
                 "whole_per_s", "run_vs_per_entry", "run_vs_2core_verify", "catchup_per_s",
                 "catchup_vs_2core_verify", "catchup_b_cpu_us", "catchup_b_main_cpu_us",
                 "catchup_a_cpu_us"},
    "scale": {"p50_ms", "p99_ms", "copies", "control_ratio", "mb_per_node", "churn_p50_ms",
              "churn_p99_ms", "churn_linked_p99_ms", "churn_cut_off", "churn_all_up_p99_ms",
              "churn_copies", "churn_control_ratio",
              "churn_lost", "base_p99_ms", "p99_vs_base", "base_mb_per_node", "steady_cpu_s",
              "churn_cpu_s", "base_cpu_s"},
    "mixed": {"alone_lookup_p99_ms", "alone_ingest_per_s", "alone_offered_per_s",
              "alone_stream_p99_ms", "lookup_p99_ms", "lookup_vs_alone", "lookups",
              "stream_p99_ms", "stream_p50_ms", "stream_submit_p99_ms", "stream_vs_alone",
              "stream_missing", "stream_disconnects", "ingest_per_s", "ingest_vs_alone",
              "offered_per_s", "submitted_per_s", "node_cores", "node_main_cores",
              "bench_cores", "alone_ingest_main_us", "alone_stream_main_us",
              "alone_stream_events_per_s", "stream_events_per_s",
              # the node's own share, from its histograms (bench/mixed.py _in_node)
              *(f"{phase}_node_{stage}_p99_ms" for phase in ("alone", "mixed")
                for stage in ("check", "wait", "store")),
              *(f"{phase}_node_ingest_{q}_ms" for phase in ("alone", "mixed")
                for q in ("p50", "p99")),
              "mixed_node_stream_p99_ms"},
}
TARGETED = {
    "baseline": set(),
    "submit": {"batched_per_s", "batched_vs_sign"},
    "ingest": {"vs_verify"},
    "propagation": {"real_p99_ms", "real_copies", "real_control_ratio", "sim_p99_ms",
                    "sim_copies", "sim_control_ratio"},
    "catchup": {"entries_per_s", "wire_ratio", "reconnect_bytes"},
    "query": {"lookup_p99_ms", "rss_peak_mb"},
    "aid": set(),
    "retention": set(),
    "chainrun": {"catchup_per_s", "catchup_vs_2core_verify"},
    "scale": {"p99_ms", "copies", "control_ratio", "churn_p99_ms", "churn_lost"},
    "mixed": {"lookup_p99_ms", "stream_p99_ms", "ingest_per_s"},
}
"""The figures the issue sets a target for, per scenario."""


def _run_quick(tmp_path: Path, name: str) -> tuple[dict[str, float], str]:
    """``python -m bench --quick NAME``: its figures by key, and what it printed."""
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                          "--workdir", str(tmp_path / "work"), name],
                         cwd=REPO, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = out.glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["quick"] is True
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["python"]
    (scenario,) = doc["scenarios"]
    assert scenario["scenario"] == name
    figures = {f["key"]: f for f in scenario["figures"]}
    assert figures, name
    for fig in figures.values():
        assert isinstance(fig["value"], float) and math.isfinite(fig["value"]), fig
        assert fig["value"] >= 0, fig
        if fig["target"] is not None:
            assert fig["ok"] in (True, False)
    if name in FIGURES:  # else another team's scenario: it ran and produced numbers
        assert set(figures) == FIGURES[name], name
        for key, fig in figures.items():
            targeted = key in TARGETED[name]
            assert (fig["target"] is not None) == targeted, fig
            assert (fig["op"] is not None) == targeted, fig
    assert f"| {name}" in run.stdout  # the table
    # Nothing was left behind in the work dir.
    assert not any((tmp_path / "work").iterdir())
    return {key: fig["value"] for key, fig in figures.items()}, run.stdout


# One process and one time limit per scenario: all of them in one run took 147 s on a
# quiet machine and passed the suite's 300 s limit on a loaded one.
@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_bench_quick_scenario_produces_its_figures(tmp_path: Path, name: str) -> None:
    figures, _ = _run_quick(tmp_path, name)
    # Every entry reached every node (the scenarios fail otherwise; copies are counted).
    if name in ("ingest", "catchup"):
        assert figures["copies_per_entry"] >= 1.0
    if name == "mixed":
        assert figures["lookups"] > 0
        # The node measured its stages: a stored batch took time in each.
        assert figures["mixed_node_ingest_p99_ms"] > 0 and figures["alone_node_ingest_p99_ms"] > 0
    if name == "aid":
        # An offer answers a request that reached its helper first; the second comes later.
        assert 0 < figures["request_seen_p50_ms"] < figures["first_offer_p50_ms"] <= figures[
            "both_offers_p50_ms"]


def test_bench_quick_knows_only_scenarios_that_exist() -> None:
    assert FIGURES.keys() == TARGETED.keys() <= set(SCENARIOS)


def test_bench_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.5))


def test_bench_figure_judges_its_target() -> None:
    assert Figure("a", "a", 5.0, op=">=", target=4.0).ok is True
    assert Figure("a", "a", 5.0, op="<=", target=4.0).ok is False
    assert Figure("a", "a", float("nan"), op="<=", target=4.0).ok is None
    assert Figure("a", "a", 5.0).ok is None
    result = Result("x")
    result.add("k", "label", 1.5, "ms", op="<=", target=2.0)
    text = table([result])
    assert "| x" in text and "<= 2.00" in text and "ok" in text


def test_bench_storecost_times_the_writer_with_and_without_the_hash_index() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.storecost", "400", "800"],
                            capture_output=True, text=True, timeout=300, check=True)
    built, _, dropped = result.stdout.partition("without entries_by_hash")
    assert "as built: writer thread" in built and "COMMIT" in built
    assert "INSERT INTO entries" in built and "INSERT INTO observations" in built
    assert "COMMIT" in dropped and "INSERT INTO entries" in dropped
