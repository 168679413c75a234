"""``GET /metrics``: Prometheus text, parsed with prometheus_client's own parser, its counters
checked against a real batch run through the openai SDK (and its Batch object's counts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import SCRIPTED, SCRIPTED_SLOW, TERMINAL, FreightServer, config_text, jsonl_bytes, request_line, wait_for

from freight.observe.metrics import METRICS, StoreCollector, metrics_table

DOCS = Path(__file__).parent.parent / "docs" / "metrics.md"


def scrape(server: FreightServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    r = httpx.get(server.url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


#: A model priced per token, and one priced by the machine hour ($1 a second of a batch's running time).
PRICED = """
[models."priced"]
backend = "scripted"
price = { input_per_mtok = 1000.0, output_per_mtok = 4000.0, batch_discount = 0.5 }

[models."machine"]
backend = "scripted"
machine_cost_per_hour = 3600.0
"""


def run_batch(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    return wait_for(lambda: (x := client.batches.retrieve(b.id)).status in TERMINAL and x, 60, "the batch")


def test_counters_match_a_real_batch(make_server: Callable[..., FreightServer]) -> None:
    server = make_server(config_text(extra=PRICED))
    client = server.client()
    lines = [request_line(f"ok{i}") for i in range(4)]
    lines.append(request_line("bad", status=400))
    lines.append(request_line("throttled", status=429, fail_times=2, key="throttled"))
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b = wait_for(lambda: (x := client.batches.retrieve(b.id)).status in TERMINAL and x, 60, "the batch")
    assert b.status == "completed" and b.request_counts is not None and b.usage is not None
    m = scrape(server)
    chat = {"model": SCRIPTED, "endpoint": "/v1/chat/completions"}
    assert value(m, "freight_requests_finished_total", **chat, outcome="completed") == b.request_counts.completed
    assert value(m, "freight_requests_finished_total", **chat, outcome="failed") == b.request_counts.failed
    assert b.request_counts.completed + b.request_counts.failed == 6
    assert value(m, "freight_tokens_total", model=SCRIPTED, kind="input") == b.usage.input_tokens > 0
    assert value(m, "freight_tokens_total", model=SCRIPTED, kind="output") == b.usage.output_tokens > 0
    assert value(m, "freight_batches", status="completed") == 1
    assert value(m, "freight_batch_duration_seconds_count", status="completed") == 1
    assert value(m, "freight_batch_duration_seconds_bucket", status="completed", le="+Inf") == 1
    assert value(m, "freight_upstream_rate_limited_total", model=SCRIPTED) == 2
    assert value(m, "freight_request_retries_total", model=SCRIPTED) == 2
    assert value(m, "freight_request_duration_seconds_count", model=SCRIPTED) == 8, "6 requests, 2 of them retried"
    assert not any("project" in dict(labels) for _, labels in m), "no tenant label unless configured"
    # Cost: the sum of the Batch objects' freight.cost_usd, per model (none for an unpriced one).
    priced = run_batch(client, [request_line(f"p{i}", model="priced") for i in range(3)])
    machine = run_batch(client, [request_line(f"m{i}", model="machine", sleep_s=1.2) for i in range(2)])
    m = scrape(server)
    for batch in (priced, machine):
        assert batch.status == "completed"
        cost = batch.model_extra["freight"]["cost_usd"]
        assert cost > 0
        assert value(m, "freight_cost_usd_total", model=batch.model) == pytest.approx(cost, abs=1e-8)
    assert ("freight_cost_usd_total", (("model", SCRIPTED),)) not in m
    # a batch that fails validation has no model: it adds no model="" series
    invalid = run_batch(client, [request_line("x", model="no-such-model")])
    assert invalid.status == "failed"
    m = scrape(server)
    assert not [key for key in m if dict(key[1]).get("model") == ""], [key for key in m if ("model", "") in key[1]]
    names = {name for name, _ in m}
    for spec in METRICS:  # every declared series is exposed
        assert any(n.startswith(spec.name) for n in names), spec.name
    client.close()


def test_queued_and_running_while_a_batch_runs(make_server: Callable[..., FreightServer]) -> None:
    server = make_server(config_text(slow_chunk=2, slow_concurrency=1))
    client = server.client()
    f = client.files.create(file=("in.jsonl", jsonl_bytes([request_line(f"r{i}", model=SCRIPTED_SLOW, sleep_s=0.5)
                                                             for i in range(10)])), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

    def running() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        m = scrape(server)
        return m if value(m, "freight_requests_running", model=SCRIPTED_SLOW) > 0 else None

    m = wait_for(running, 30, "requests running")
    assert value(m, "freight_requests_running", model=SCRIPTED_SLOW) <= 2, "one chunk of 2 at a time"
    open_now = value(m, "freight_requests_running", model=SCRIPTED_SLOW) + value(
        m, "freight_requests_queued", model=SCRIPTED_SLOW)
    assert 0 < open_now <= 10 and value(m, "freight_batches", status="in_progress") == 1
    client.batches.cancel(b.id)
    wait_for(lambda: client.batches.retrieve(b.id).status in TERMINAL, 30, "the cancel")
    m = scrape(server)
    assert value(m, "freight_requests_running", model=SCRIPTED_SLOW) == 0
    assert value(m, "freight_requests_queued", model=SCRIPTED_SLOW) == 0
    assert value(m, "freight_batches", status="cancelled") == 1
    client.close()


def test_a_project_label_only_when_configured(tmp_path: Path) -> None:
    from freight.domain.batches import Batch, BatchStatus
    from freight.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "t.db", synchronous="OFF")
    try:
        store.insert_batch(Batch(id="batch_" + "a" * 24, project="team-a", endpoint="/v1/embeddings",
                                 input_file_id="file-" + "0" * 24, completion_window="24h",
                                 status=BatchStatus.VALIDATING, created_at=1, expires_at=2), None)
        plain = {s.labels.get("project") for f in StoreCollector(store).collect() for s in f.samples}
        labelled = {s.labels.get("project") for f in StoreCollector(store, by_project=True).collect()
                    for f_s in [f] if f.name in ("freight_batches", "freight_tokens") for s in f_s.samples}
    finally:
        store.close()
    assert plain == {None} and labelled == {"team-a"}


def test_docs_list_every_metric_as_declared() -> None:
    assert metrics_table() in DOCS.read_text(), "regenerate: python -c 'from freight.observe.metrics import " \
                                                 "metrics_table; print(metrics_table())'"


@pytest.mark.parametrize("name", [s.name for s in METRICS])
def test_names_follow_prometheus_conventions(name: str) -> None:
    spec = next(s for s in METRICS if s.name == name)
    assert name.startswith("freight_") and name == name.lower()
    assert name.endswith("_total") == (spec.kind == "counter")
    assert "duration" not in name or name.endswith("_seconds")


def test_a_request_withdrawn_unsent_is_neither_a_retry_nor_a_duration() -> None:
    """Found by an audit: pausing a batch counted each request taken back from the backend's queue as a
    retry and as an answer's duration, though none of them ran."""
    from freight.domain.requests import Failure, Result
    from freight.observe.metrics import ProcessMeter
    from freight.ports import WITHDRAWN

    meter = ProcessMeter()
    bodies = [{"model": "m"}] * 4
    meter.observe(bodies, [Result(status_code=200, body=b"{}"), Failure(WITHDRAWN, "paused"),
                           Failure(WITHDRAWN, "paused"), Failure("timeout", "no answer")], 1.5)
    samples = {(s.name, s.labels.get("model")): s.value for m in meter.collect() for s in m.samples}
    assert samples[("freight_request_retries_total", "m")] == 1
    assert samples[("freight_request_duration_seconds_count", "m")] == 2
