"""Batch lanes without a network: reading providers' result lines, planning subs within limits, and
settling outcomes into results or another round (the end-to-end tests are in test_batch_lanes.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.backends.provider_batches import AnthropicBatchLane, OpenAIBatchLane, _parsed
from freight.domain.batches import Batch, BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.errors import ConfigError
from freight.domain.lanes import (
    LaneLimits,
    LaneOutcome,
    LaneRefused,
    LaneSub,
    OutcomeKind,
    SubState,
    UpstreamProgress,
    may_step,
    parse_upstream_key,
    upstream_key,
)
from freight.domain.requests import Result
from freight.engine.lanes import LaneRunner
from freight.ports import ModelInfo, NewRequest
from freight.services.catalog import ModelCatalog
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore


def test_upstream_keys_round_trip() -> None:
    key = upstream_key("sub_0123456789abcdef", 4711)
    assert key == "sub_0123456789abcdef-4711" and len(key) <= 64
    assert parse_upstream_key("sub_0123456789abcdef", key) == 4711
    assert parse_upstream_key("sub_other", key) is None
    assert parse_upstream_key("sub_0123456789abcdef", "sub_0123456789abcdef-x") is None


def test_openai_result_lines() -> None:
    ok = OpenAIBatchLane.outcome({"custom_id": "k", "response": {"status_code": 200, "request_id": "r", "body": {
        "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}}, "error": None})
    assert ok is not None and ok.kind is OutcomeKind.FINAL and ok.result is not None
    assert (ok.result.status_code, ok.result.input_tokens, ok.result.output_tokens) == (200, 3, 2)
    refused = OpenAIBatchLane.outcome({"custom_id": "k", "response": {"status_code": 400, "body": {"error": {}}}})
    assert refused is not None and refused.kind is OutcomeKind.FINAL
    limited = OpenAIBatchLane.outcome({"custom_id": "k", "response": {"status_code": 429, "body": {}}})
    assert limited is not None and limited.kind is OutcomeKind.RETRY
    for code in ("batch_expired", "batch_cancelled"):
        line = OpenAIBatchLane.outcome({"custom_id": "k", "response": None, "error": {"code": code, "message": "m"}})
        assert line is not None and line.kind is OutcomeKind.NOT_RUN
    timeout = OpenAIBatchLane.outcome({"custom_id": "k", "response": None, "error": {"code": "request_timeout"}})
    assert timeout is not None and timeout.kind is OutcomeKind.RETRY and timeout.result is not None
    assert timeout.result.error_code == "request_timeout"
    assert OpenAIBatchLane.outcome({"no": "custom_id"}) is None


def test_anthropic_result_lines() -> None:
    ok = AnthropicBatchLane.outcome({"custom_id": "k", "result": {"type": "succeeded", "message": {
        "type": "message", "usage": {"input_tokens": 5, "output_tokens": 1}}}})
    assert ok is not None and ok.kind is OutcomeKind.FINAL and ok.result is not None and ok.result.status_code == 200
    assert ok.result.input_tokens == 5

    def errored(error_type: str) -> LaneOutcome:
        line = AnthropicBatchLane.outcome({"custom_id": "k", "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": error_type, "message": "m"}, "request_id": "req_1"}}})
        assert line is not None
        return line

    bad = errored("invalid_request_error")
    assert bad.kind is OutcomeKind.FINAL and bad.result is not None and bad.result.status_code == 400
    assert bad.result.body is not None and json.loads(bad.result.body)["error"]["type"] == "invalid_request_error"
    assert errored("overloaded_error").kind is OutcomeKind.RETRY
    assert errored("not_found_error").kind is OutcomeKind.FINAL
    for kind in ("canceled", "expired"):
        line = AnthropicBatchLane.outcome({"custom_id": "k", "result": {"type": kind}})
        assert line is not None and line.kind is OutcomeKind.NOT_RUN


class FakeLane:
    """A lane that is never called over the network here: only its limits matter."""

    def __init__(self, max_requests: int, max_bytes: int, max_rounds: int = 2):
        self.limits = LaneLimits(max_requests, max_bytes)
        self.poll_interval_s = 0.1
        self.max_poll_interval_s = 1.0
        self.max_rounds = max_rounds
        self.cancel_timeout_s = 10.0

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo("lane-model", frozenset({"/v1/chat/completions"}))]

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def upload(self, sub_id: str, endpoint: str, lines: IO[bytes]) -> str | None:
        raise AssertionError
    async def find_upload(self, sub_id: str) -> str | None:
        raise AssertionError
    async def create(self, sub_id: str, endpoint: str, upload_id: str | None, lines: IO[bytes]) -> str:
        raise AssertionError
    async def find_created(self, sub_id: str, upload_id: str | None, sent_at: float, requests: int) -> str | None:
        raise AssertionError
    async def poll(self, upstream_id: str) -> UpstreamProgress:
        raise AssertionError
    async def outcomes(self, upstream_id: str) -> list[LaneOutcome]:
        raise AssertionError
    async def cancel(self, upstream_id: str) -> None:
        raise AssertionError


@pytest.fixture
def world(tmp_path: Path) -> tuple[SqliteStore, LaneRunner, FakeLane, Batch]:
    store = SqliteStore(tmp_path / "freight.db", synchronous="OFF")
    lane = FakeLane(max_requests=4, max_bytes=1000)
    runner = LaneRunner(store, LocalBlobStore(tmp_path / "blobs"), ModelCatalog([], [lane]), FixedClock())
    batch = Batch(id="batch_" + "1" * 24, project="p", endpoint="/v1/chat/completions", input_file_id="file-x",
                  completion_window="24h", status=BatchStatus.VALIDATING, created_at=0, expires_at=86400)
    store.insert_batch(batch, None)
    bodies = [{"model": "lane-model", "messages": [{"role": "user", "content": "x" * (400 if i == 5 else 10)}]}
              for i in range(11)]
    bodies.append({"model": "lane-model", "messages": [{"role": "user", "content": "y" * 2000}]})  # too big
    store.insert_requests(batch.id, [NewRequest(i, i + 1, f"c{i}", json.dumps(b).encode())
                                     for i, b in enumerate(bodies)])
    store.start_batch(batch.id, len(bodies), "lane-model", 0)
    return store, runner, lane, batch


def test_planning_splits_by_count_and_bytes(world: tuple[SqliteStore, LaneRunner, FakeLane, Batch]) -> None:
    store, runner, lane, batch = world
    runner._plan(batch, lane)  # type: ignore[arg-type]
    subs = store.lane_subs(batch.id)
    assert all(s.state is SubState.PLANNED and s.round == 1 for s in subs)
    groups = [store.lane_items(s.id) for s in subs]
    assert sorted(i for g in groups for i in g) == list(range(11)), "every request once, the too-big one aside"
    assert all(len(g) <= 4 for g in groups) and all(s.bytes <= 1000 for s in subs)
    assert len(groups) >= 3
    (too_big,) = store.results(batch.id, -1, 100)
    assert too_big.idx == 11 and too_big.result.error_code == "request_too_large"
    runner._plan(batch, lane)  # type: ignore[arg-type]
    assert len(store.lane_subs(batch.id)) == len(subs), "planning again takes nothing already held"


def test_settling_stores_finals_and_hands_back_the_rest(world: tuple[SqliteStore, LaneRunner, FakeLane,
                                                                     Batch]) -> None:
    store, runner, lane, batch = world
    runner._plan(batch, lane)  # type: ignore[arg-type]
    sub = next(s for s in store.lane_subs(batch.id) if s.requests == 4)
    a, b, c, d = store.lane_items(sub.id)
    ok = Result(status_code=200, body=b"{}")
    outcomes = [LaneOutcome(upstream_key(sub.id, a), OutcomeKind.FINAL, ok),
                LaneOutcome(upstream_key(sub.id, b), OutcomeKind.RETRY, Result(status_code=503, body=b"{}")),
                LaneOutcome(upstream_key(sub.id, c), OutcomeKind.NOT_RUN),
                LaneOutcome("someone-else-7", OutcomeKind.FINAL, ok)]  # not ours: ignored; d has no line
    assert runner._settle(batch, lane, sub, outcomes, closing=False) == 1  # type: ignore[arg-type]
    assert [r.idx for r in store.results(batch.id, -1, 100)] == sorted([a, 11])
    assert next(s for s in store.lane_subs(batch.id, live_only=False) if s.id == sub.id).state is SubState.DONE
    runner._plan(batch, lane)  # type: ignore[arg-type]
    again = [s for s in store.lane_subs(batch.id) if s.round == 2]
    assert [store.lane_items(s.id) for s in again] == [[b, c, d]], "a new round with only those"
    # the last round: what still did not work is final
    second = again[0]
    assert runner._settle(batch, lane, second, [  # type: ignore[arg-type]
        LaneOutcome(upstream_key(second.id, b), OutcomeKind.RETRY, Result(status_code=503, body=b"{}"))],
        closing=False) == 3
    finals = {r.idx: r.result for r in store.results(batch.id, -1, 100)}
    assert finals[b].status_code == 503 and finals[c].error_code == finals[d].error_code == "upstream_not_run"




@given(state=st.sampled_from(list(SubState)), paused=st.booleans(), closing=st.booleans())
def test_a_pause_holds_only_subs_that_started_nothing_upstream(state: SubState, paused: bool, closing: bool) -> None:
    moves = may_step(state, paused=paused, closing=closing)
    if closing or not paused:
        assert moves, "cancel and expiry wind every sub down; without a pause every sub moves on"
    else:
        # created upstream (or perhaps: a create or upload may have been sent) -> it goes on; else held
        assert moves == (state in {SubState.UPLOADING, SubState.CREATING, SubState.RUNNING, SubState.DONE})


class CountingLane(FakeLane):
    """Uploads and creates succeed (and are counted); upstream batches never end."""

    def __init__(self) -> None:
        super().__init__(max_requests=4, max_bytes=1000)
        self.calls: list[str] = []

    async def upload(self, sub_id: str, endpoint: str, lines: IO[bytes]) -> str | None:
        self.calls.append("upload")
        return "file-" + sub_id

    async def create(self, sub_id: str, endpoint: str, upload_id: str | None, lines: IO[bytes]) -> str:
        self.calls.append("create")
        return "up-" + sub_id

    async def poll(self, upstream_id: str) -> UpstreamProgress:
        self.calls.append("poll")
        return UpstreamProgress(status="in_progress", completed=0, failed=0, ended=False)


def test_a_paused_lane_batch_sends_nothing_new_upstream(tmp_path: Path,
                                                        world: tuple[SqliteStore, LaneRunner, FakeLane, Batch]) -> None:
    store, _, _, batch = world
    lane = CountingLane()
    runner = LaneRunner(store, LocalBlobStore(tmp_path / "blobs2"), ModelCatalog([], [lane]), FixedClock())
    running = dataclasses.replace(batch, status=BatchStatus.IN_PROGRESS, model="lane-model", expires_at=2**40)
    paused = dataclasses.replace(running, paused_at=1)
    asyncio.run(runner.advance(paused))
    assert lane.calls == [] and store.lane_subs(batch.id) == [], "nothing planned while paused"
    asyncio.run(runner.advance(running))  # resumed: planned and uploaded
    subs = store.lane_subs(batch.id)
    assert subs and all(s.state is SubState.UPLOADED for s in subs) and lane.calls == ["upload"] * len(subs)
    for _ in range(3):
        asyncio.run(runner.advance(paused))
    assert lane.calls.count("create") == 0, "an uploaded sub is not created upstream while paused"
    asyncio.run(runner.advance(running))
    assert lane.calls.count("create") == len(subs)
    asyncio.run(runner.advance(paused))
    assert lane.calls.count("poll") == len(subs), "what runs upstream is still followed while paused"



def test_a_bad_results_line_or_usage_loses_only_itself() -> None:
    """Found by an audit: one line that is not JSON (or a usage that is not a number) made the whole
    download fail and be retried until the batch expired, losing every answer of the file."""
    assert _parsed(b"{not json", "m") is None
    assert _parsed(b'{"custom_id": "k"}', "m") == {"custom_id": "k"}
    odd = OpenAIBatchLane.outcome({"custom_id": "k", "response": {"status_code": 200, "body": {
        "usage": {"prompt_tokens": "abc", "completion_tokens": 2}}}})
    assert odd is not None and odd.result is not None and (odd.result.input_tokens, odd.result.output_tokens) == (0, 2)
    assert odd.result.request_id and odd.result.request_id.startswith("req_"), "a request id, as everywhere else"
    ok = AnthropicBatchLane.outcome({"custom_id": "k", "result": {"type": "succeeded", "message": {
        "usage": {"input_tokens": True, "output_tokens": 1}}}})
    assert ok is not None and ok.result is not None and ok.result.request_id and ok.result.input_tokens == 0


def running_sub(tmp_path: Path, world: tuple[SqliteStore, LaneRunner, FakeLane, Batch], lane: FakeLane,
                **state: object) -> tuple[LaneRunner, Batch, LaneSub]:
    """The world's batch in progress on ``lane``, planned, with its first sub running upstream as ``up-1``."""
    store, _, _, batch = world
    runner = LaneRunner(store, LocalBlobStore(tmp_path / "blobs2"), ModelCatalog([], [lane]), FixedClock())
    running = dataclasses.replace(batch, status=BatchStatus.IN_PROGRESS, model="lane-model", expires_at=2**40)
    runner._plan(running, lane)  # type: ignore[arg-type]
    sub = store.lane_subs(batch.id)[0]
    store.lane_update(sub.id, state=SubState.RUNNING, upstream_id="up-1", **state)
    return runner, running, store.lane_subs(batch.id)[0]


class GoneLane(CountingLane):
    """The upstream batch is not there for this key any more (a 404 on poll)."""

    async def poll(self, upstream_id: str) -> UpstreamProgress:
        raise LaneRefused("the upstream refused polling: HTTP 404: gone")


@pytest.mark.parametrize("closing", [False, True])
def test_an_upstream_batch_that_is_gone_ends_its_requests_not_retried_until_expiry(
        tmp_path: Path, world: tuple[SqliteStore, LaneRunner, FakeLane, Batch], closing: bool) -> None:
    store, _, _, batch = world
    lane = GoneLane()
    runner, running, sub = running_sub(tmp_path, world, lane, cancel_sent=True)
    items = store.lane_items(sub.id)
    assert asyncio.run(runner._step(running, lane, sub, closing))  # type: ignore[arg-type]
    assert sub.id not in {s.id for s in store.lane_subs(batch.id)}, "the sub is finished, not polled again"
    results = {r.idx: r.result for r in store.results(batch.id, -1, 100)}
    if closing:  # back to the pool, where the close gives them batch_cancelled/batch_expired
        assert not set(items) & set(results)
    else:
        assert {results[i].error_code for i in items} == {"upstream_refused"}
        assert "HTTP 404" in (results[items[0]].error_message or "")


class GoneOnCancelLane(CountingLane):
    """The upstream batch is not there for this key when freight cancels it (a 404 on cancel)."""

    async def cancel(self, upstream_id: str) -> None:
        self.calls.append("cancel")
        raise LaneRefused("the upstream refused cancel: HTTP 404: gone")


def test_a_cancel_the_upstream_says_is_gone_settles_the_sub_at_once(
        tmp_path: Path, world: tuple[SqliteStore, LaneRunner, FakeLane, Batch]) -> None:
    """Found by an audit: a 404 on cancel was retried for cancel_timeout_s (15 min by default), and no poll
    (which would have seen the batch gone) was sent meanwhile."""
    store, _, _, batch = world
    lane = GoneOnCancelLane()
    runner, running, sub = running_sub(tmp_path, world, lane)
    items = store.lane_items(sub.id)
    assert asyncio.run(runner._step(running, lane, sub, True))  # type: ignore[arg-type]
    assert lane.calls == ["cancel"]
    assert sub.id not in {s.id for s in store.lane_subs(batch.id)}, "settled, not cancelled again"
    assert not set(items) & {r.idx for r in store.results(batch.id, -1, 100)}, "back to the pool for the close"


@pytest.mark.parametrize("status", [404, 401, 409])
def test_the_lanes_cancel_calls_a_gone_batch_gone_and_an_ended_one_nothing_to_do(status: int) -> None:
    """Over real HTTP: 401/403/404/410 on cancel mean the batch is not there for this key (final, as on poll);
    400/409 mean it has ended already (nothing to do)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # (http.server's name)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for lane in (OpenAIBatchLane("m", base_url=base + "/v1", env={}),
                     AnthropicBatchLane("c", base_url=base, env={})):
            async def cancel(lane: OpenAIBatchLane | AnthropicBatchLane = lane) -> None:
                await lane.start()
                try:
                    await lane.cancel("up-1")
                finally:
                    await lane.close()

            if status == 409:
                asyncio.run(cancel())
            else:
                with pytest.raises(LaneRefused, match=f"HTTP {status}"):
                    asyncio.run(cancel())
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("options", "message"), [
    ({"completion_window": "banana"}, "completion_window must be a duration"),
    ({"endpoints": ["/v1/bogus"]}, "endpoints must be among"),
    ({"poll_interval_s": 400.0}, "poll_interval_s = 400.0 and max_poll_interval_s = 300.0"),
    ({"max_rounds": 0}, "max_rounds must be at least 1, got 0"),
])
def test_a_lanes_options_are_checked_when_it_is_built(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OpenAIBatchLane("m", base_url="http://127.0.0.1:9/v1", env={}, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="endpoints must be among /v1/messages"):
        AnthropicBatchLane("c", base_url="http://127.0.0.1:9", env={}, endpoints=["/v1/chat/completions"])


class EndedLane(CountingLane):
    """The upstream batch completed without a line for any request (one round only)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_rounds = 1

    async def poll(self, upstream_id: str) -> UpstreamProgress:
        return UpstreamProgress(status="completed", completed=0, failed=0, ended=True)

    async def outcomes(self, upstream_id: str) -> list[LaneOutcome]:
        return []


def test_upstream_not_run_names_the_status_the_upstream_batch_ended_with(
        tmp_path: Path, world: tuple[SqliteStore, LaneRunner, FakeLane, Batch]) -> None:
    store, _, _, batch = world
    lane = EndedLane()
    runner, running, sub = running_sub(tmp_path, world, lane)
    asyncio.run(runner._step(running, lane, sub, False))  # type: ignore[arg-type]
    messages = {r.result.error_message for r in store.results(batch.id, -1, 100) if r.idx in store.lane_items(sub.id)
                or r.result.error_code == "upstream_not_run"}
    assert messages and all("(its last status: completed)" in (m or "") for m in messages), messages
