"""freight.integrations.batches, the library-free part of the pipeline adapters, against a real server.

``enrich`` is what the dbt example's Python model calls (examples/dbt); the Airflow and Dagster
adapters themselves are tested in their own virtualenvs (tests/integrations/).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest
from servers import SCRIPTED, SCRIPTED_SLOW, FreightServer, config_text

from freight.integrations.batches import BatchNotCompleted, enrich, fail_on_of, lines_of, summary


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text())


def test_enrich_adds_each_rows_answer_in_row_order(server: FreightServer) -> None:
    frame = pd.DataFrame({"id": [7, 3, 5], "text": ["tea", "soup", "bread"]})
    out = enrich(frame, model=SCRIPTED, template="About {text}", url=server.url, column="note", poll_s=0.1)
    assert list(out["note"]) == ["echo: About tea", "echo: About soup", "echo: About bread"]
    assert list(out["id"]) == [7, 3, 5] and "note" not in frame


def test_enrich_raises_when_the_batch_expires(server: FreightServer) -> None:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(16)]})
    with pytest.raises(BatchNotCompleted, match="ended expired"):
        enrich(frame, model=SCRIPTED_SLOW, template="{text}", url=server.url, poll_s=0.1,
               body={"script": {"sleep_s": 1.5}}, completion_window="1s")


def test_lines_of_fills_bodies_and_keeps_lines() -> None:
    lines = lines_of([{"messages": []}, {"custom_id": "x", "url": "/v1/embeddings", "body": {"input": "a"}}],
                     model="m", endpoint="/v1/chat/completions", body={"max_tokens": 4})
    assert lines == [
        {"custom_id": "0", "method": "POST", "url": "/v1/chat/completions",
         "body": {"max_tokens": 4, "messages": [], "model": "m"}},
        {"custom_id": "x", "url": "/v1/embeddings", "body": {"max_tokens": 4, "input": "a", "model": "m"}},
    ]
    assert lines_of("in.jsonl") == "in.jsonl"
    with pytest.raises(ValueError, match="no requests"):
        lines_of([])
    with pytest.raises(ValueError, match="not a dict"):
        lines_of(["text"])
    with pytest.raises(ValueError, match="needs a model"):
        lines_of([{"a": 1}], template="{a}")


def test_fail_on_and_summary() -> None:
    assert fail_on_of(None) == {"failed", "expired", "cancelled"}
    assert fail_on_of([]) == frozenset()
    with pytest.raises(ValueError, match="fail_on"):
        fail_on_of(["completed"])
    batch = {"id": "b", "status": "completed", "output_file_id": "f", "error_file_id": None,
             "request_counts": {"total": 2, "completed": 1, "failed": 1}, "freight": {"cost_usd": 0.5}}
    assert summary(batch) == {"batch_id": "b", "status": "completed", "output_file_id": "f", "error_file_id": None,
                              "total": 2, "completed": 1, "failed": 1, "cost_usd": 0.5}
