"""Results where the work needs them: partial results, ``freight results``, ``freight download --partial``
and ``freight.client`` (sync, async, pandas, polars), against a real ``freight serve``."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import SCRIPTED, SCRIPTED_SLOW, FreightServer, config_text, freight_command, subprocess_env, wait_for

from freight.client import AsyncClient, Client, from_dataframe

CHAT = "/v1/chat/completions"
PRICE = """
[models."priced"]
backend = "scripted"
price = { input_per_mtok = 1000, output_per_mtok = 2000 }
"""


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text(extra=PRICE))


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


def line(i: int, model: str = SCRIPTED, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"r{i}", "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user", "content": f"q{i}"}], **body}}


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*freight_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)


def test_partial_results_while_a_batch_runs_are_in_input_order_and_resumable(client: Client,
                                                                              server: FreightServer) -> None:
    # The slow model runs chunks of 4: r0-r3 wait for r0 (3 s); r4-r7 finish first, r5 with a 400.
    lines = [line(0, SCRIPTED_SLOW, script={"sleep_s": 3}),
             *[line(i, SCRIPTED_SLOW, script={"sleep_s": 0.05}) for i in (1, 2, 3, 4, 6, 7)],
             line(5, SCRIPTED_SLOW, script={"status": 400})]
    lines.sort(key=lambda x: int(x["custom_id"][1:]))
    batch = client.submit(lines)

    def some() -> httpx.Response | None:
        r = httpx.get(f"{server.base_url}/batches/{batch['id']}/partial")
        return r if int(r.headers["freight-lines"]) >= 4 else None

    r = wait_for(some, 30, "some lines finished")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/jsonl")
    got = [json.loads(x) for x in r.content.splitlines()]
    assert [g["custom_id"] for g in got] == ["r4", "r5", "r6", "r7"]  # input order among those finished
    assert r.headers["freight-complete-through"] == "-1" and r.headers["freight-last-index"] == "7"
    assert got[1]["response"]["status_code"] == 400 and got[0]["response"]["status_code"] == 200
    # Paging: one line at a time, resumed from the last index.
    page = httpx.get(f"{server.base_url}/batches/{batch['id']}/partial", params={"after": 4, "limit": 1})
    assert page.headers["freight-lines"] == "1" and page.headers["freight-has-more"] == "true"
    assert json.loads(page.content)["custom_id"] == "r5"
    done = client.wait(batch["id"], poll_s=0.1, timeout_s=30)
    assert done["status"] == "completed"
    final = client.partial(batch["id"])
    assert [x["custom_id"] for x in final] == [f"r{i}" for i in range(8)]
    r = httpx.get(f"{server.base_url}/batches/{batch['id']}/partial", params={"after": 5})
    assert r.headers["freight-complete-through"] == "7" and len(r.content.splitlines()) == 2
    bad = httpx.get(f"{server.base_url}/batches/{batch['id']}/partial", params={"after": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"


def test_results_rows_with_answers_tokens_cost_and_errors(client: Client) -> None:
    lines = [line(0, "priced", script={"reply": '{"x": 1}'}, response_format={"type": "json_object"}),
             line(1, "priced", script={"reply": "plain words"}),
             line(2, "priced", script={"status": 400})]
    batch = client.wait(client.submit(lines)["id"], poll_s=0.1, timeout_s=30)
    rows = client.results(batch["id"])
    assert [r["custom_id"] for r in rows] == ["r0", "r1", "r2"]
    assert rows[0]["answer"] == {"x": 1} and rows[0]["status"] == "succeeded"  # parsed: it asked for JSON
    assert rows[1]["answer"] == "plain words"
    assert rows[2]["status"] == "failed" and rows[2]["error_code"] and rows[2]["answer"] is None
    r = rows[1]
    assert r["input_tokens"] > 0 and r["cost_usd"] == pytest.approx(
        (r["input_tokens"] * 1000 + r["output_tokens"] * 2000) / 1e6)
    total = sum(x["cost_usd"] for x in rows)
    assert total == pytest.approx(batch["freight"]["cost_usd"], rel=1e-6)


def test_answers_checked_by_the_batch_output_schema_are_parsed_json(client: Client) -> None:
    """The batch's output_schema checked every answer as JSON: the rows give it parsed, as for a request's own
    schema (they were strings)."""
    lines = [line(0, script={"reply": '{"x": 1}'}), line(1, script={"reply": '{"x": 2}'})]
    batch = client.wait(client.submit(lines, output_schema={"type": "object"})["id"], poll_s=0.1, timeout_s=30)
    assert [r["answer"] for r in client.results(batch["id"])] == [{"x": 1}, {"x": 2}]


def test_freight_results_cli_joins_a_data_file_and_writes_csv_and_parquet(client: Client, server: FreightServer,
                                                                           tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    batch = client.wait(client.submit([line(i) for i in range(3)])["id"], poll_s=0.1, timeout_s=30)
    data = tmp_path / "data.csv"
    data.write_text("custom_id,title,status\nr0,first,x\nr2,third,y\n")
    r = cli("results", batch["id"], "--join", data, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["custom_id"] for x in rows] == ["r0", "r1", "r2"]
    assert rows[0]["title"] == "first" and rows[0]["status_data"] == "x" and rows[0]["status"] == "succeeded"
    assert "title" not in rows[1]
    r = cli("results", batch["id"], "--format", "csv", "-o", tmp_path / "out.csv", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "out.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [x["custom_id"] for x in table] == ["r0", "r1", "r2"] and table[0]["answer"].startswith("echo")
    r = cli("results", batch["id"], "-o", tmp_path / "out.parquet", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("custom_id").to_pylist() == ["r0", "r1", "r2"]
    r = cli("results", "batch_" + "0" * 24, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1 and "No batch found" in r.stderr


def test_freight_download_partial(client: Client, server: FreightServer, tmp_path: Path) -> None:
    batch = client.wait(client.submit([line(i) for i in range(4)])["id"], poll_s=0.1, timeout_s=30)
    r = cli("download", batch["id"], "--partial", "-o", tmp_path, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert [json.loads(x)["custom_id"] for x in path.read_text().splitlines()] == ["r0", "r1", "r2", "r3"]
    assert "through input line 4" in r.stderr


def test_data_frames_both_ways_pandas_and_polars(client: Client) -> None:
    import pandas as pd
    import polars as pl

    df = pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]})
    lines = from_dataframe(df, model=SCRIPTED, template="Say {text}", id_column="id", max_tokens=5)
    assert lines[0]["custom_id"] == "a" and lines[0]["body"]["messages"][0]["content"] == "Say one"
    assert lines[0]["body"]["max_tokens"] == 5
    batch = client.wait(client.submit(lines)["id"], poll_s=0.1, timeout_s=30)
    frame = client.to_dataframe(batch["id"])
    assert list(frame["custom_id"]) == ["a", "b"] and frame["answer"][0] == "echo: Say one"
    polars_frame = client.to_dataframe(batch["id"], library="polars")
    assert polars_frame["custom_id"].to_list() == ["a", "b"]
    embed = from_dataframe(pl.DataFrame({"t": ["x"]}), model=SCRIPTED, template="{t}", endpoint="/v1/embeddings")
    assert embed[0]["body"]["input"] == "x" and embed[0]["custom_id"] == "0"


def test_the_async_client(server: FreightServer) -> None:
    async def go() -> list[dict[str, Any]]:
        async with AsyncClient(server.url) as c:
            batch = await c.submit([{"model": SCRIPTED, "messages": [{"role": "user", "content": "hi"}]}])
            await c.wait(batch["id"], poll_s=0.1, timeout_s=30)
            return await c.results(batch["id"])

    rows = asyncio.run(go())
    assert rows[0]["custom_id"] == "0" and rows[0]["answer"] == "echo: hi"
