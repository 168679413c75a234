"""The result cache through a real ``freight serve`` and the openai SDK, against the OpenAI-compatible
upstream simulator that counts the requests it answers (issue 13's tests)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI
from servers import (
    TERMINAL,
    FreightServer,
    config_text,
    freight_command,
    jsonl_bytes,
    parse_jsonl,
    subprocess_env,
    wait_for,
)

from freight.testing.upstream import Upstream, UpstreamConfig

CHAT = "/v1/chat/completions"
PRICE = "price = { input_per_mtok = 1000, output_per_mtok = 1000 }"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(UpstreamConfig()) as up:
        yield up


def sim_config(upstream: Upstream, cache: str, model: str = "") -> str:
    return config_text(extra=f"""
[models."sim"]
backend = "openai"
base_url = "{upstream.base_url}"
upstream_model = "sim-chat"
{PRICE}
{model}

[cache]
{cache}
""")


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer], upstream: Upstream) -> FreightServer:
    s = make_server(sim_config(upstream, 'ttl = "7d"'), start=False)
    s.keys = {p: s.create_key(p) for p in ("alpha", "beta")}  # type: ignore[attr-defined]
    return s.start()


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client(api_key=server.keys["alpha"])  # type: ignore[attr-defined]
    yield c
    c.close()


def lines(n: int, *, edited: frozenset[int] = frozenset(), **body: Any) -> list[dict[str, Any]]:
    def text(i: int) -> str:
        return f"line {i} (edited)" if i in edited else f"line {i}"

    return [{"custom_id": f"r{i}", "method": "POST", "url": CHAT,
             "body": {"model": "sim", "messages": [{"role": "user", "content": text(i)}], "max_tokens": 8, **body}}
            for i in range(n)]


def run(client: OpenAI, rows: list[dict[str, Any]], **extra_body: Any) -> tuple[openai.types.Batch,
                                                                                dict[str, dict[str, Any]]]:
    f = client.files.create(file=("in.jsonl", jsonl_bytes(rows)), purpose="batch")
    created = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                                    extra_body=extra_body or None)
    batch: openai.types.Batch = wait_for(
        lambda: (b := client.batches.retrieve(created.id)).status in TERMINAL and b, 120, "the batch")
    assert batch.status == "completed" and batch.output_file_id
    out = {row["custom_id"]: row for row in parse_jsonl(client.files.content(batch.output_file_id).content)}
    return batch, out


def sent(upstream: Upstream) -> int:
    return upstream.stats().count("ok")


def ext(batch: openai.types.Batch) -> dict[str, Any]:
    assert batch.model_extra is not None
    return batch.model_extra["freight"]  # type: ignore[no-any-return]


def test_a_rerun_sends_nothing_and_an_edit_sends_only_the_edited_lines(client: OpenAI, upstream: Upstream) -> None:
    upstream.reset_stats()
    first, out1 = run(client, lines(200, temperature=0))
    assert sent(upstream) == 200 and ext(first)["cached"] == 0
    second, out2 = run(client, lines(200, temperature=0))
    assert sent(upstream) == 200, "the unchanged re-run sent nothing upstream"
    assert ext(second)["cached"] == 200
    for cid, row in out2.items():  # the same answers; each line its own custom_id, request id and completion id
        again, was = row["response"]["body"], out1[cid]["response"]["body"]
        assert {k: v for k, v in again.items() if k != "id"} == {k: v for k, v in was.items() if k != "id"}
        assert again["id"] != was["id"] and again["id"].startswith("chatcmpl-")
        assert row["response"]["request_id"] != out1[cid]["response"]["request_id"]
    # Nothing was spent again; what the answers would have cost shows as saved.
    assert second.usage is not None and second.usage.total_tokens == 0
    assert ext(second)["cost_usd"] == 0
    assert ext(second)["savings_usd"] == pytest.approx(first.usage.total_tokens * 1000 / 1e6)  # type: ignore[union-attr]
    third, _ = run(client, lines(200, edited=frozenset({3, 50, 51, 120, 199}), temperature=0))
    assert sent(upstream) == 205, "exactly the five edited lines ran"
    assert ext(third)["cached"] == 195


def test_sampled_requests_without_a_seed_are_never_cached(client: OpenAI, upstream: Upstream) -> None:
    upstream.reset_stats()
    run(client, lines(10, temperature=0.7))
    batch, _ = run(client, lines(10, temperature=0.7))
    assert sent(upstream) == 20 and ext(batch)["cached"] == 0
    run(client, lines(10, temperature=0.7, seed=42))
    batch, _ = run(client, lines(10, temperature=0.7, seed=42))
    assert sent(upstream) == 30 and ext(batch)["cached"] == 10


def test_a_batch_can_opt_out(client: OpenAI, upstream: Upstream) -> None:
    upstream.reset_stats()
    rows = lines(4, temperature=0, seed=7)
    run(client, rows)
    batch, _ = run(client, rows, cache=False)
    assert sent(upstream) == 8 and ext(batch)["cached"] == 0
    with pytest.raises(openai.BadRequestError) as err:
        f = client.files.create(file=("in.jsonl", jsonl_bytes(rows)), purpose="batch")
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              extra_body={"cache": "no"})
    assert err.value.body is not None and "'cache'" in str(err.value.body)
    batch, _ = run(client, rows, cache=None)  # null: the default (cached), as on the Message Batches API
    assert sent(upstream) == 8 and ext(batch)["cached"] == 4


def test_a_project_does_not_reuse_another_projects_answers(server: FreightServer, client: OpenAI,
                                                           upstream: Upstream) -> None:
    upstream.reset_stats()
    rows = lines(5, temperature=0, seed=11)
    run(client, rows)
    beta = server.client(api_key=server.keys["beta"])  # type: ignore[attr-defined]
    try:
        batch, _ = run(beta, rows)
        assert sent(upstream) == 10 and ext(batch)["cached"] == 0, "[cache] scope = \"project\" by default"
        batch, _ = run(beta, rows)
        assert sent(upstream) == 10 and ext(batch)["cached"] == 5, "its own answers it reuses"
    finally:
        beta.close()


def test_a_message_batch_can_opt_out(server: FreightServer, upstream: Upstream) -> None:
    client = Anthropic(base_url=server.url, api_key=server.keys["alpha"], max_retries=0, timeout=30)  # type: ignore[attr-defined]
    requests: list[Any] = [{"custom_id": f"m{i}", "params": {
        "model": "sim", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": "same"}]}}
        for i in range(3)]

    def create(**extra: Any) -> Any:
        created = client.messages.batches.create(requests=requests, extra_body=extra or None)
        return wait_for(lambda: (b := client.messages.batches.retrieve(created.id)).processing_status == "ended"
                        and b, 60, "the message batch")

    try:
        upstream.reset_stats()
        first = create()
        assert first.request_counts.succeeded == 3 and sent(upstream) == 1, "duplicates run once"
        create(cache=False)
        assert sent(upstream) == 4, "cache: false runs every request"
        assert create().to_dict()["freight"]["schedule"] is None
        assert sent(upstream) == 4, "and the next batch reuses the stored answer"
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.batches.create(requests=requests, extra_body={"cache": "no"})
        assert "cache" in str(bad.value.body)
    finally:
        client.close()


def test_an_entry_past_its_ttl_runs_again(make_server: Callable[..., FreightServer], upstream: Upstream) -> None:
    c = make_server(sim_config(upstream, "ttl = 1")).client()
    try:
        upstream.reset_stats()
        rows = lines(3, temperature=0, seed=99)
        run(c, rows)
        assert sent(upstream) == 3
        time.sleep(1.2)
        batch, _ = run(c, rows)
        assert sent(upstream) == 6 and ext(batch)["cached"] == 0
    finally:
        c.close()


def test_freight_run_again_after_five_edits_runs_exactly_those(tmp_path: Path, upstream: Upstream) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(sim_config(upstream, 'ttl = "1d"'))

    def freight_run(rows: list[dict[str, Any]], name: str) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(jsonl_bytes(rows))
        r = subprocess.run([*freight_command(), "run", str(path), "-o", str(tmp_path / f"{name}.out.jsonl"),
                            "--data-dir", str(tmp_path / "data"), "--config", str(config)],
                           capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(),
                           stdin=subprocess.DEVNULL, timeout=120)
        assert r.returncode == 0, r
        return r.stderr

    upstream.reset_stats()
    first = freight_run(lines(1000, temperature=0), "v1")
    assert sent(upstream) == 1000 and re.search(r"reused: 0 from the result cache, ran: 1000", first), first
    second = freight_run(lines(1000, edited=frozenset({0, 9, 10, 500, 999}), temperature=0), "v2")
    assert sent(upstream) == 1005, "exactly the five edited lines ran"
    assert re.search(r"reused: 995 from the result cache, ran: 5", second), second
    out = parse_jsonl((tmp_path / "v2.out.jsonl").read_bytes())
    assert [row["custom_id"] for row in out] == [f"r{i}" for i in range(1000)]


def test_kill_9_during_a_cached_run_loses_and_doubles_nothing(make_server: Callable[..., FreightServer],
                                                               upstream: Upstream) -> None:
    server = make_server(sim_config(upstream, 'ttl = "1d"', "chunk_size = 4\nmax_concurrency = 4"))
    c = server.client()
    try:
        upstream.reset_stats()
        run(c, lines(100, temperature=0))  # the first 100 lines are in the cache
        assert sent(upstream) == 100
        upstream.configure(latency_s=0.05)
        f = c.files.create(file=("in.jsonl", jsonl_bytes(lines(300, temperature=0))), purpose="batch")
        created = c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
        # Half of the 200 new lines sent upstream. (After the 100 hits the cache asks for larger chunks, so the
        # batch's counts move in steps: what ran is what the upstream saw.)
        wait_for(lambda: sent(upstream) >= 200, 60, "half the new lines sent")
        half = c.batches.retrieve(created.id)
        server.kill()
        assert half.status == "in_progress", "killed mid-run"
    finally:
        c.close()
    server.start()
    c = server.client()
    try:
        batch: openai.types.Batch = wait_for(
            lambda: (b := c.batches.retrieve(created.id)).status in TERMINAL and b, 120, "the batch")
        assert batch.status == "completed" and batch.output_file_id and batch.request_counts is not None
        out = parse_jsonl(c.files.content(batch.output_file_id).content)
        assert [row["custom_id"] for row in out] == [f"r{i}" for i in range(300)], "one line each, in order"
        assert batch.request_counts.completed == 300 and ext(batch)["cached"] >= 100
        # Only requests in flight at the kill (at most chunk_size x max_concurrency) may have run twice.
        assert 300 <= sent(upstream) <= 300 + 16
    finally:
        upstream.configure(latency_s=0.0)
        c.close()
