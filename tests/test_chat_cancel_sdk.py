"""Cancelling a Message Batch on the bundled chat model, through the official ``anthropic`` SDK.

``freight serve`` with SmolLM2-135M-Instruct on 8 slots: the engine claims up to 4 chunks of 8
requests at once, so 8 decode and 24 wait inside the backend for a slot (the rest wait in the
store). A cancel must end every request that is not decoding as ``canceled`` at once; only the
ones in a slot may finish. (Before the engine withdrew requests waiting inside a backend, the 24
ran to the end too: 32 succeeded.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from anthropic import Anthropic
from servers import FreightServer, request_states, wait_for

CHAT_MODEL = "SmolLM2-135M-Instruct"
N_SLOTS = 8
N = 60
CONFIG = f"""\
[models."{CHAT_MODEL}"]
backend = "llama-cpp"
n_slots = {N_SLOTS}
n_ctx = {N_SLOTS * 1024}

[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
drain_timeout_s = 600  # nothing is abandoned: what runs after the cancel runs to its end
"""


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(CONFIG)


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[Anthropic]:
    c = Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=120)
    yield c
    c.close()


def test_cancel_ends_requests_waiting_for_a_slot(client: Anthropic, server: FreightServer) -> None:
    # Load the model first, so that the cancel lands while requests decode and others wait for a slot.
    warm = client.messages.create(model=CHAT_MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert warm.content
    created = client.messages.batches.create(requests=[
        {"custom_id": f"s{i}", "params": {"model": CHAT_MODEL, "max_tokens": 40, "messages": [
            {"role": "user", "content": f"Write a long story about a lighthouse keeper named Ann{i}."}]}}
        for i in range(N)])
    # Four chunks claimed: 8 requests in slots, 24 queued inside the backend.
    wait_for(lambda: request_states(server.db_path).get(1, 0) >= 4 * N_SLOTS, 60, "four chunks claimed")
    canceling = client.messages.batches.cancel(created.id)
    assert canceling.processing_status in ("canceling", "ended")

    def ended() -> object:
        b = client.messages.batches.retrieve(created.id)
        return b if b.processing_status == "ended" else None

    done = wait_for(ended, 300, "the batch to end", every_s=0.2)
    counts = done.request_counts
    assert counts.succeeded + counts.canceled == N and counts.errored == counts.expired == 0, counts
    # Only requests that had a slot before the cancel finished (one wave, and a few that took a slot freed by a
    # request ending early); none of the 24 queued inside the backend, nor the 28 in the store, ran.
    assert counts.succeeded <= N_SLOTS + 4 and counts.canceled >= N - N_SLOTS - 4, counts
    got = {item.custom_id: item.result for item in client.messages.batches.results(created.id)}
    assert len(got) == N
    assert sum(1 for r in got.values() if r.type == "canceled") == counts.canceled
    assert all(r.message.content for r in got.values() if r.type == "succeeded")
