"""bench.fed.histogram_quantile: a quantile of what a node's histogram observed between
two scrapes, as Prometheus's histogram_quantile reads it."""

from __future__ import annotations

import math

from bench.fed import histogram_quantile

Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _scrape(counts: dict[str, float], **labels: str) -> Scrape:
    extra = tuple(sorted(labels.items()))
    return {"h_bucket": {(*extra, ("le", le)): n for le, n in counts.items()}}


def test_histogram_quantile_interpolates_inside_the_bucket_of_the_rank() -> None:
    before = _scrape({"0.01": 5, "0.02": 5, "+Inf": 5})
    after = _scrape({"0.01": 15, "0.02": 95, "+Inf": 105})
    # Between the scrapes: 10 at <= 10 ms, 80 in (10, 20] ms, 10 above.
    assert math.isclose(histogram_quantile(before, after, "h", 0.5), 0.01 + 0.01 * 40 / 80)
    assert math.isclose(histogram_quantile(before, after, "h", 0.05), 0.005)
    assert histogram_quantile(before, after, "h", 0.99) == 0.02  # past the last bound


def test_histogram_quantile_reads_only_the_labels_asked_and_nan_when_empty() -> None:
    both = {"h_bucket": {**_scrape({"0.01": 10, "+Inf": 10}, stage="a")["h_bucket"],
                         **_scrape({"0.01": 0, "0.1": 10, "+Inf": 10}, stage="b")["h_bucket"]}}
    assert histogram_quantile({}, both, "h", 0.5, stage="a") == 0.005
    assert math.isclose(histogram_quantile({}, both, "h", 0.5, stage="b"), 0.055)
    assert math.isnan(histogram_quantile(both, both, "h", 0.5, stage="a"))
