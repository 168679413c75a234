"""Spending caps against the upstream simulator (freight.testing.upstream), as an audit found them
(/tmp/audit-bench capskew.py): a batch whose first request is cheap and the rest dear."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai import OpenAI
from servers import TERMINAL, FreightServer, config_text, jsonl_bytes, parse_jsonl, wait_for

from freight.testing.upstream import Upstream, UpstreamConfig

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(UpstreamConfig()) as up:
        yield up


@pytest.fixture(scope="module")
def client(make_server: Callable[..., FreightServer], upstream: Upstream) -> Iterator[OpenAI]:
    server = make_server(
        config_text(
            extra=f"""
[models."sim"]
backend = "openai"
base_url = "{upstream.base_url}"
upstream_model = "sim-chat"
price = {{ input_per_mtok = 2.0, output_per_mtok = 8.0 }}
"""
        )
    )
    c = server.client()
    yield c
    c.close()


def skewed(n: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"r-{i:04d}",
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": "sim",
                "messages": [{"role": "user", "content": f"skew {i} q"}],
                "max_tokens": 1 if i == 0 else 200,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]


def test_one_cheap_request_first_does_not_carry_a_capped_batch_past_its_cap(client: OpenAI) -> None:
    """It spent $0.0601 under a $0.02 cap: the one-token request's mean let one claim start the 99 others."""
    f = client.files.create(file=("in.jsonl", jsonl_bytes(skewed(100))), purpose="batch")
    created = client.batches.create(
        input_file_id=f.id, endpoint=CHAT, completion_window="24h", extra_body={"max_cost_usd": 0.02}
    )

    def ended() -> Any:
        b = client.batches.retrieve(created.id)
        return b if b.status in TERMINAL else None

    batch = wait_for(ended, 60, "the capped batch to end")
    assert batch.status == "cancelled"
    assert batch.model_extra is not None
    cost = batch.model_extra["freight"]["cost_usd"]
    # (the prompts' estimate, 4 characters a token, is the only slack: see docs/cost.md)
    assert 0 < cost <= 0.02 * 1.05
    c = batch.request_counts
    assert c is not None and 0 < c.completed < c.total
    assert batch.error_file_id is not None
    errors = parse_jsonl(client.files.content(batch.error_file_id).content)
    assert len(errors) == c.total - c.completed
    assert {e["error"]["code"] for e in errors} == {"budget_exceeded"}
