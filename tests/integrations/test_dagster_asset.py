"""freight_batch_asset and FreightResource in real Dagster (``materialize``) against a real ``freight serve``.

Runs in .venv-pipelines (Makefile: test-integrations).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from dagster import asset, materialize
from servers import FreightServer

from freight.integrations.batches import BatchNotCompleted
from freight.integrations.dagster import FreightResource, freight_batch_asset


@asset
def reviews() -> pd.DataFrame:
    return pd.DataFrame({"review_id": ["a", "b", "c"], "text": ["great tea", "cold soup", "slow service"]})


summaries = freight_batch_asset("summaries", requests_from=reviews, model="freight-priced",
                                template="Summarize: {text}", id_column="review_id", body={"max_tokens": 8},
                                extra_body={"priority": 2, "max_cost_usd": 1.0})


@asset
def bodies() -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"slow {i}"}], "script": {"sleep_s": 1.5}} for i in range(16)]


expiring = freight_batch_asset("expiring", requests_from="bodies", model="freight-scripted-slow",
                               completion_window="1s")


def test_an_asset_is_a_batch_over_its_upstream_frame(server: FreightServer) -> None:
    result = materialize([reviews, summaries], resources={"freight": FreightResource(base_url=server.url)})
    assert result.success
    frame = result.output_for_node("summaries")
    assert list(frame["custom_id"]) == ["a", "b", "c"]
    assert list(frame["status"]) == ["succeeded"] * 3
    assert list(frame["answer"]) == ["echo: Summarize: great tea", "echo: Summarize: cold soup",
                                     "echo: Summarize: slow service"]
    (materialization,) = result.asset_materializations_for_node("summaries")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["status"] == "completed" and meta["total"] == 3 and meta["completed"] == 3
    assert meta["cost_usd"] > 0
    batch = server.client().batches.retrieve(meta["batch_id"])
    assert batch.status == "completed" and batch.metadata and batch.metadata["dagster_asset"] == "summaries"
    assert batch.model_extra and batch.model_extra["freight"]["max_cost_usd"] == 1.0
    assert batch.model_extra["freight"]["priority"] == 2


def test_a_batch_that_expires_fails_the_run(server: FreightServer) -> None:
    result = materialize([bodies, expiring], resources={"freight": FreightResource(base_url=server.url)},
                         raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "expiring"
    cause = failure.event_specific_data.error.cause
    assert cause.cls_name == BatchNotCompleted.__name__ and "ended expired" in cause.message
