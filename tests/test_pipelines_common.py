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


def test_enrich_leaves_a_failed_requests_answer_none_not_nan(server: FreightServer) -> None:
    """pandas 3 stores None in a text column as NaN; the docs promise None."""
    bad = pd.DataFrame({"text": ["a", '#script {"status": 400}', "c"]})
    out = enrich(bad, model=SCRIPTED, template="{text}", url=server.url, poll_s=0.1)
    assert out["answer"].tolist() == ["echo: a", None, "echo: c"] and out["answer"][1] is None


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
    assert fail_on_of("expired") == {"expired"}  # one state as a str, not its letters
    assert fail_on_of([]) == frozenset()
    with pytest.raises(ValueError, match="fail_on"):
        fail_on_of(["completed"])
    batch = {"id": "b", "status": "completed", "output_file_id": "f", "error_file_id": None,
             "request_counts": {"total": 2, "completed": 1, "failed": 1}, "freight": {"cost_usd": 0.5}}
    assert summary(batch) == {"batch_id": "b", "status": "completed", "output_file_id": "f", "error_file_id": None,
                              "total": 2, "completed": 1, "failed": 1, "cost_usd": 0.5}


def test_a_jsonl_file_or_batch_lines_keep_their_own_endpoint() -> None:
    """No endpoint given: bare bodies are chat requests, lines keep their url (an embeddings file
    failed: the adapters forced chat completions on it)."""
    lines = lines_of([{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}])
    assert lines[0]["url"] == "/v1/embeddings"
    assert lines_of([{"messages": []}])[0]["url"] == "/v1/chat/completions"
    assert lines_of([{"input": "x"}], endpoint="/v1/embeddings")[0]["url"] == "/v1/embeddings"


def test_a_template_or_rows_that_do_not_fit_get_a_clear_error() -> None:
    frame = pd.DataFrame({"id": [1, 2], "text": ["a", "b"]})
    with pytest.raises(ValueError, match=r"row 0: the template names \{txt\}, which is not one of its columns"):
        lines_of(frame, model="m", template="{txt}")
    with pytest.raises(ValueError, match=r"row 0: no id_column 'key' among its columns"):
        lines_of(frame, model="m", template="{text}", id_column="key")
    with pytest.raises(TypeError, match="a JSONL file of requests is submitted as it is"):
        lines_of("in.jsonl", model="m", template="{text}")
    with pytest.raises(TypeError, match="template must be a str"):
        lines_of(frame, model="m", template=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rows must be a pandas or polars data frame or a list of dicts, got int"):
        lines_of(5, model="m", template="{text}")


def test_batch_not_completed_names_each_error_once() -> None:
    same = {"message": "The provided model 'nope' is not served."}
    batch = {"id": "b", "status": "failed", "errors": {"data": [same] * 50 + [{"message": f"other {i}."}
                                                                             for i in range(9)]}}
    message = str(BatchNotCompleted(batch))
    assert message.count("'nope'") == 1 and message.endswith("; and 5 more")
    assert message.startswith("freight batch b ended failed: The provided model 'nope' is not served; other 0")


def test_a_non_ascii_api_key_is_refused_clearly() -> None:
    from freight.client import Client

    with pytest.raises(ValueError, match="not ASCII"):
        Client("http://127.0.0.1:9", api_key="\u2026")
