"""Prometheus metrics: every series freight exposes at ``GET /metrics`` is declared in ``METRICS``
(docs/metrics.md is generated from it, and a test checks that it is).

Two sources:

- ``store``: read from the store at scrape time (``StatsStore``) by ``StoreCollector``, so any
  process serving ``/metrics`` reports the same totals whichever process did the work, and a
  restart loses nothing. Counters among them are totals kept on batch rows.
- ``process``: counted by this process as its backends run requests (``ProcessMeter``, through
  ``MeteredBackend``); each process has its own, reset when it restarts (Prometheus handles resets),
  and only a process serving HTTP exposes them (``freight worker`` has no ``/metrics``).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from freight.domain.pricing import Tokens
from freight.domain.requests import Failure, Result
from freight.domain.retry import is_transient_status
from freight.ports import WITHDRAWN, Backend, ModelInfo, StatsStore
from freight.services.prices import PriceBook


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    source: str
    #: Whether ``[metrics] project_label = true`` adds a ``project`` label.
    per_project: bool = False


BATCH_DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0,
                          24 * 3600.0, 48 * 3600.0)
REQUEST_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("freight_batches", "gauge", ("status",), "Batches by status.", "store", True),
    MetricSpec("freight_requests_finished_total", "counter", ("model", "endpoint", "outcome"),
               "Requests of batches that have their final result, by outcome (completed: a response; "
               "failed: an error line), as the Batch object's request_counts.", "store", True),
    MetricSpec("freight_tokens_total", "counter", ("model", "kind"),
               "Tokens of finished batch requests, kind input or output (the usage the Batch object reports).",
               "store", True),
    MetricSpec("freight_cost_usd_total", "counter", ("model",),
               "US dollars the batches of a model cost so far: the sum of their Batch objects' freight.cost_usd "
               "(prices from freight.toml or the pinned table; models without a price have no sample).",
               "store", True),
    MetricSpec("freight_requests_queued", "gauge", ("model",),
               "Requests of active batches waiting to run (including those backing off before a retry).", "store"),
    MetricSpec("freight_requests_running", "gauge", ("model",), "Requests of active batches running now.", "store"),
    MetricSpec("freight_batch_duration_seconds", "histogram", ("status",),
               "Seconds from a batch's creation to its end, of ended batches, by final status.", "store"),
    MetricSpec("freight_request_duration_seconds", "histogram", ("model",),
               "Seconds a backend took to answer a request (batch and real-time; requests run together "
               "in one backend call each count that call's time).", "process"),
    MetricSpec("freight_upstream_rate_limited_total", "counter", ("model",),
               "Answers with HTTP 429 from a model (an upstream's rate limit).", "process"),
    MetricSpec("freight_request_retries_total", "counter", ("model",),
               "Attempts that ended in a retryable outcome (429, 5xx, no answer); the engine runs each again "
               "unless its attempts are used up.", "process"),
)
SPECS = {s.name: s for s in METRICS}


def _labels(spec: MetricSpec, by_project: bool) -> list[str]:
    return (["project"] if by_project and spec.per_project else []) + list(spec.labels)


def _family(name: str, by_project: bool) -> Any:
    spec = SPECS[name]
    kind = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}[spec.kind]
    return kind(name, spec.help, labels=_labels(spec, by_project))


class StoreCollector(Collector):
    """The ``store`` series, read at each scrape."""

    def __init__(self, store: StatsStore, by_project: bool = False, models: Sequence[str] = (),
                 prices: PriceBook | None = None, now: Callable[[], float] = time.time):
        self.store = store
        self.by_project = by_project
        #: Served models: their queued/running gauges read 0 rather than being absent.
        self.models = tuple(models)
        self.prices = prices or PriceBook()
        self.now = now

    def describe(self) -> Iterator[Metric]:
        return iter([])  # no scrape at registration

    def collect(self) -> Iterator[Metric]:
        s = self.store.stats(self.by_project)
        p = self.by_project

        def key(project: str, *rest: str) -> list[str]:
            return ([project] if p else []) + list(rest)

        batches = _family("freight_batches", p)
        for (project, status), n in sorted(s.batches.items()):
            batches.add_metric(key(project, status), n)
        # (A batch that failed validation has no model and nothing finished: it adds no model="" series.)
        finished = _family("freight_requests_finished_total", p)
        for (project, model, endpoint, outcome), n in sorted(s.finished.items()):
            if model or n:
                finished.add_metric(key(project, model, endpoint, outcome), n)
        tokens = _family("freight_tokens_total", p)
        for (project, model, kind), n in sorted(s.tokens.items()):
            if model or n:
                tokens.add_metric(key(project, model, kind), n)
        cost = _family("freight_cost_usd_total", p)
        now = self.now()
        for (project, model), spend in sorted(s.spend.items()):
            busy_s = spend.busy_s + spend.running * now - spend.running_since
            usd = self.prices.for_model(model or None).cost_usd(
                Tokens(input=spend.input_tokens, output=spend.output_tokens), busy_s=busy_s)
            if usd is not None:
                cost.add_metric(key(project, model), usd)
        queued, running = _family("freight_requests_queued", p), _family("freight_requests_running", p)
        open_requests = {**{(m, st): 0 for m in self.models for st in ("queued", "running")}, **s.open_requests}
        for (model, state), n in sorted(open_requests.items()):
            (queued if state == "queued" else running).add_metric([model], n)
        durations = _family("freight_batch_duration_seconds", p)
        for status in sorted({st for st, _ in s.batch_durations}):
            seen = {sec: n for (st, sec), n in s.batch_durations.items() if st == status}
            buckets = [(repr(le), sum(n for sec, n in seen.items() if sec <= le)) for le in BATCH_DURATION_BUCKETS]
            buckets.append(("+Inf", sum(seen.values())))
            durations.add_metric([status], buckets, sum_value=float(sum(sec * n for sec, n in seen.items())))
        yield from (batches, finished, tokens, cost, queued, running, durations)


class _Histogram:
    """A labelled histogram that takes ``n`` observations of one value in one call: a backend call
    answers a whole chunk at once, and every request in it counts that call's time (prometheus_client's
    ``Histogram`` takes one observation per call, which cost more than the scripted backend's answers)."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self._series: dict[str, list[float]] = {}  # label -> per-bucket counts (not cumulative), then the sum
        self._lock = threading.Lock()

    def observe(self, label: str, value: float, n: int = 1) -> None:
        i = bisect.bisect_left(self.buckets, value)  # the first bucket whose upper bound is >= value
        with self._lock:
            series = self._series.get(label)
            if series is None:
                series = self._series[label] = [0.0] * (len(self.buckets) + 2)
            series[i] += n
            series[-1] += value * n

    def family(self, spec: MetricSpec) -> HistogramMetricFamily:
        family = HistogramMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        with self._lock:
            series = {label: list(counts) for label, counts in self._series.items()}
        for label, counts in sorted(series.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(repr, self.buckets), "+Inf"), counts[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([label], buckets, sum_value=counts[-1])
        return family


class ProcessMeter(Collector):
    """The ``process`` series of this process."""

    def __init__(self) -> None:
        self.duration = _Histogram(REQUEST_DURATION_BUCKETS)
        r = SPECS["freight_upstream_rate_limited_total"]
        self.rate_limited = Counter(r.name, r.help, r.labels, registry=None)
        t = SPECS["freight_request_retries_total"]
        self.retries = Counter(t.name, t.help, t.labels, registry=None)

    def observe(self, bodies: Sequence[dict[str, Any]], results: Sequence[Result | Failure], seconds: float) -> None:
        models: dict[str, int] = {}
        for body, result in zip(bodies, results, strict=False):
            model = str(body.get("model", "")) if isinstance(body, dict) else ""
            if isinstance(result, Failure) and result.code == WITHDRAWN:
                continue  # (taken back unsent by a pause or a cancel: it neither ran nor was retried)
            models[model] = models.get(model, 0) + 1
            if type(result) is Result and (result.status_code is None or result.status_code < 400):
                continue  # the common case: an answer that is neither a rate limit nor retryable
            status = result.status_code if isinstance(result, Result) else None
            if status == 429:
                self.rate_limited.labels(model).inc()
            if isinstance(result, Failure) or (status is not None and is_transient_status(status)):
                self.retries.labels(model).inc()
        for model, n in models.items():
            self.duration.observe(model, seconds, n)

    def collect(self) -> Iterator[Metric]:
        yield self.duration.family(SPECS["freight_request_duration_seconds"])
        for metric in (self.rate_limited, self.retries):
            yield from metric.collect()


class MeteredBackend:
    """A ``Backend`` that tells a ``ProcessMeter`` how its calls went (everything else is the inner one's)."""

    def __init__(self, inner: Backend, meter: ProcessMeter):
        self.inner = inner
        self.meter = meter

    @property
    def chunk_size(self) -> int:
        return self.inner.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        self.inner.chunk_size = value

    @property
    def max_concurrency(self) -> int:
        return self.inner.max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int) -> None:
        self.inner.max_concurrency = value

    def models(self) -> Sequence[ModelInfo]:
        return self.inner.models()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        started = time.perf_counter()
        results = await self.inner.execute(endpoint, bodies)
        self.meter.observe(bodies, results, time.perf_counter() - started)
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def registry(store: StatsStore, meter: ProcessMeter, by_project: bool, models: Sequence[str] = (),
             prices: PriceBook | None = None, now: Callable[[], float] = time.time) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(store, by_project, models, prices, now))
    reg.register(meter)
    return reg


def metrics_table() -> str:
    """The Markdown table of docs/metrics.md."""
    rows = ["| Name | Type | Labels | Source | Meaning |", "|---|---|---|---|---|"]
    for s in METRICS:
        labels = ("[project], " if s.per_project else "") + ", ".join(s.labels)
        rows.append(f"| `{s.name}` | {s.kind} | {labels} | {s.source} | {s.help} |")
    return "\n".join(rows) + "\n"
