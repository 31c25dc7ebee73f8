"""Prometheus metrics for the local API's ``GET /metrics`` (text exposition format 0.0.4).

A deliberately small registry: counters, gauges and histograms with labels, plus
*collectors*, callables run at scrape time that report values owned elsewhere (the
ledger's size, the replicator's per-peer state). No third-party client library is
needed for this much.

Invariants:
- Label cardinality is bounded: each metric keeps at most ``MAX_SERIES`` label sets;
  later new label sets are folded into one series labelled ``"_other"`` so a hostile
  or buggy caller cannot grow memory. Route labels use the route *template*
  (``/api/v1/observations/{id}``), never the raw path.
- Rendering never raises on a misbehaving collector: its error is counted in
  ``entraide_metrics_collector_errors_total`` and its samples are left out.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_LATENCY_BUCKETS",
    "MAX_SERIES",
    "PIPELINE_BUCKETS",
    "Collector",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricFamily",
    "Registry",
    "parse_text",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SERIES = 512
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
PIPELINE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Buckets of the replication and stream delays: fine between 10 and 200 ms, where a
node's targets are (docs/benchmarks.md), so that a p99 read off them tells 50 from
100 ms."""
_OVERFLOW = "_other"

LabelValues = tuple[str, ...]


@dataclass(frozen=True)
class MetricFamily:
    """Samples reported by a collector at scrape time.

    ``samples`` maps a label-value tuple (in ``labelnames`` order) to a value.
    ``kind`` is ``"gauge"`` or ``"counter"``; counter names end in ``_total``.
    """

    name: str
    help: str
    kind: str
    labelnames: tuple[str, ...] = ()
    samples: dict[LabelValues, float] = field(default_factory=dict)


Collector = Callable[[], Iterable[MetricFamily]]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str], store: Mapping[LabelValues, object]) -> LabelValues:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels!r}")
        key = tuple(map(str, labels))  # on every API request: no generator frame
        if key not in store and len(store) >= MAX_SERIES:
            return tuple(_OVERFLOW for _ in self.labelnames)
        return key

    def render(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError


class _Scalar(_Metric):
    """One float per label set (counters and gauges)."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelValues, float] = {}

    def value(self, labels: Sequence[str] = ()) -> float:
        return self._values.get(tuple(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return [f"{self.name}{_labels_text(self.labelnames, k)} {_format_value(v)}"
                for k, v in items]


_MetricT = TypeVar("_MetricT", bound=_Metric)


class Counter(_Scalar):
    """A monotonically increasing count (names end in ``_total``)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, labels: Sequence[str] = ()) -> None:
        """Add ``amount`` (>= 0) to the series of ``labels``."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            key = self._key(labels, self._values)
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Scalar):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, labels: Sequence[str] = ()) -> None:
        with self._lock:
            self._values[self._key(labels, self._values)] = float(value)

    def inc(self, amount: float = 1.0, labels: Sequence[str] = ()) -> None:
        with self._lock:
            key = self._key(labels, self._values)
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, labels: Sequence[str] = ()) -> None:
        self.inc(-amount, labels)


def bucket_index(buckets: Sequence[float], value: float) -> int:
    """The bucket ``value`` counts in: the first whose bound is >= it, or +Inf
    (``len(buckets)``)."""
    return bisect.bisect_left(buckets, value)


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        super().__init__(name, help, labelnames)
        if "le" in self.labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        self.buckets = tuple(sorted(float(b) for b in buckets))
        # per series: [count per bucket (non-cumulative) ..., +Inf bucket], sum
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Sequence[str] = ()) -> None:
        with self._lock:
            counts, total = self._series_of(labels)
            counts[bucket_index(self.buckets, value)] += 1
            total[0] += value

    def add_counts(self, counts: Sequence[int], total: float,
                   labels: Sequence[str] = ()) -> None:
        """Merge observations made elsewhere: ``counts`` per bucket (not cumulative,
        +Inf last, as :func:`bucket_index` places them) and their ``total``."""
        if len(counts) != len(self.buckets) + 1 or any(c < 0 for c in counts):
            raise ValueError("one non-negative count per bucket, +Inf included")
        with self._lock:
            mine, sums = self._series_of(labels)
            for i, c in enumerate(counts):
                mine[i] += c
            sums[0] += total

    def _series_of(self, labels: Sequence[str]) -> tuple[list[int], list[float]]:
        key = self._key(labels, self._series)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ([0] * (len(self.buckets) + 1), [0.0])
        return series

    def count(self, labels: Sequence[str] = ()) -> int:
        series = self._series.get(tuple(labels))
        return 0 if series is None else sum(series[0])

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._series.items())
        lines: list[str] = []
        for key, (counts, total) in items:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                le = f'le="{_format_value(bound)}"'
                lines.append(f"{self.name}_bucket{_labels_text(self.labelnames, key, le)} "
                             f"{cumulative}")
            labels = _labels_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {_format_value(total)}")
            lines.append(f"{self.name}_count{labels} {cumulative}")
        return lines


class Registry:
    """The metrics of one node: owned metrics plus scrape-time collectors."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Collector] = []
        self.collector_errors = self.counter(
            "entraide_metrics_collector_errors_total",
            "Collectors that raised while the metrics were scraped.")

    def _register(self, metric: _MetricT) -> _MetricT:
        """Add ``metric``; the same definition registered again returns the first one
        (so two apps built on one node share their series)."""
        existing = self._metrics.get(metric.name)
        if existing is None:
            self._metrics[metric.name] = metric
            return metric
        if type(existing) is not type(metric) or existing.labelnames != metric.labelnames:
            raise ValueError(f"metric {metric.name} registered twice, differently")
        return existing

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS) -> Histogram:
        return self._register(Histogram(name, help, labelnames, buckets))

    def add_collector(self, collector: Collector) -> None:
        """Run ``collector`` at every scrape; its families are appended to the output."""
        self._collectors.append(collector)

    def remove_collector(self, collector: Collector) -> None:
        if collector in self._collectors:
            self._collectors.remove(collector)

    def render(self) -> str:
        """The whole exposition, in the Prometheus text format (ends with a newline)."""
        families: list[MetricFamily] = []
        for collector in list(self._collectors):
            try:
                families.extend(collector())
            except Exception:  # a collector must never break the scrape
                log.exception("metrics collector %r failed", collector)
                self.collector_errors.inc()
        lines: list[str] = []
        seen: set[str] = set()
        for metric in self._metrics.values():
            seen.add(metric.name)
            lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.render())
        merged: dict[str, MetricFamily] = {}
        for fam in families:
            if fam.name in seen:
                continue  # an owned metric wins; never emit a name twice
            if fam.name in merged:
                merged[fam.name].samples.update(fam.samples)
            else:
                merged[fam.name] = MetricFamily(fam.name, fam.help, fam.kind, fam.labelnames,
                                                dict(fam.samples))
        for fam in merged.values():
            lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.kind}")
            for key, value in sorted(fam.samples.items())[: MAX_SERIES]:
                lines.append(f"{fam.name}{_labels_text(fam.labelnames, key)} "
                             f"{_format_value(value)}")
        return "\n".join(lines) + "\n"


def parse_text(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse the text exposition format (the subset :meth:`Registry.render` writes).

    Returns ``{sample name: {sorted (label, value) pairs: value}}``. Used by tests and
    by tools that read a node's metrics without a Prometheus client.

    Raises:
        ValueError: a line that is not a comment, a blank or a well-formed sample.
    """
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            if line.startswith("# TYPE ") and len(line.split()) != 4:
                raise ValueError(f"line {lineno}: bad TYPE line")
            continue
        try:
            name, labels, rest = _split_sample(line, lineno)
        except IndexError as exc:
            raise ValueError(f"line {lineno}: truncated sample") from exc
        parts = rest.split()
        if len(parts) not in (1, 2):
            raise ValueError(f"line {lineno}: expected a value (and an optional timestamp)")
        try:
            value = float(parts[0])
        except ValueError as exc:
            raise ValueError(f"line {lineno}: bad value {parts[0]!r}") from exc
        out.setdefault(name, {})[labels] = value
    return out


def _split_sample(line: str, lineno: int) -> tuple[str, tuple[tuple[str, str], ...], str]:
    i = 0
    while i < len(line) and (line[i].isalnum() or line[i] in "_:"):
        i += 1
    name = line[:i]
    if not name or name[0].isdigit():
        raise ValueError(f"line {lineno}: bad metric name")
    labels: list[tuple[str, str]] = []
    if i < len(line) and line[i] == "{":
        i += 1
        while line[i] != "}":
            j = line.index("=", i)
            key = line[i:j]
            if not key.replace("_", "a").isalnum() or line[j + 1] != '"':
                raise ValueError(f"line {lineno}: bad label")
            k = j + 2
            value_chars: list[str] = []
            while line[k] != '"':
                if line[k] == "\\":
                    k += 1
                    value_chars.append({"n": "\n", "\\": "\\", '"': '"'}.get(line[k], line[k]))
                else:
                    value_chars.append(line[k])
                k += 1
            labels.append((key, "".join(value_chars)))
            i = k + 1
            if line[i] == ",":
                i += 1
        i += 1
    if i >= len(line) or line[i] != " ":
        raise ValueError(f"line {lineno}: expected a space after the name")
    return name, tuple(sorted(labels)), line[i + 1 :]
