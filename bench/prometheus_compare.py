"""Our metrics registry (agent/metrics.py) against prometheus_client, on the node's own
use: a counter and a latency histogram per API request, and a scrape of 300 series.

The architecture issue asked for prometheus_client unless a measured cost said
otherwise; this is the measurement (docs/architecture.md, "Packages and layers").
Not a scenario of scripts/bench: prometheus_client is not a dependency.

    .venv/bin/pip install prometheus_client && .venv/bin/python -m bench.prometheus_compare
"""

from __future__ import annotations

import timeit

import prometheus_client as pc

from agent.metrics import DEFAULT_LATENCY_BUCKETS, Registry

LABELS = ("GET", "/api/v1/indicators/{type}/{value}", "200")
N = 200_000


def main() -> None:
    ours = Registry()
    counter = ours.counter("entraide_http_requests_total", "requests",
                           ("method", "route", "status"))
    latency = ours.histogram("entraide_http_request_duration_seconds", "latency",
                             ("method", "route"))
    theirs = pc.CollectorRegistry()
    pc_counter = pc.Counter("entraide_http_requests", "requests", ("method", "route", "status"),
                            registry=theirs)
    pc_latency = pc.Histogram("entraide_http_request_duration_seconds", "latency",
                              ("method", "route"), buckets=DEFAULT_LATENCY_BUCKETS,
                              registry=theirs)

    def request_ours() -> None:
        counter.inc(1, LABELS)
        latency.observe(0.0003, LABELS[:2])

    def request_theirs() -> None:
        pc_counter.labels(*LABELS).inc()
        pc_latency.labels(*LABELS[:2]).observe(0.0003)

    for name, fn in (("ours", request_ours), ("prometheus_client", request_theirs)) * 2:
        best = min(timeit.repeat(fn, number=N, repeat=5)) / N
        print(f"{name:>18}: {best * 1e6:.2f} us per request (counter + histogram)")
    for i in range(300):
        counter.inc(1, ("GET", f"/r{i}", "200"))
        pc_counter.labels("GET", f"/r{i}", "200").inc()
    for name, render in (("ours", ours.render),
                         ("prometheus_client", lambda: pc.generate_latest(theirs))):
        best = min(timeit.repeat(render, number=200, repeat=3)) / 200
        print(f"{name:>18}: {best * 1e3:.2f} ms per scrape (300 series)")


if __name__ == "__main__":
    main()
