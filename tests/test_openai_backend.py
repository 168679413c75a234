"""The ``openai`` backend against the upstream simulator (a real HTTP server on 127.0.0.1).

Mapping of every outcome (permanent vs transient), the secret never showing, the limiter corrected by
``usage``, the shared cool-down, limits shared by two model names, bounded concurrency.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from freight.backends import build_backend
from freight.backends.openai_http import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    OpenAIHTTPBackend,
    missing_fields,
    prompt_parts,
    requested_output,
    shared_states,
    usage_tokens,
)
from freight.domain.errors import ConfigError
from freight.domain.requests import Failure, Result
from freight.domain.retry import is_transient_status
from freight.domain.secrets import Secret
from freight.testing.upstream import Upstream, UpstreamConfig, UpstreamStats
from freight.wire import jsonx
from freight.wire.redaction import redact_body

SECRET = "sk-test-3f9c2b7e1d5a4c8b9e0f1a2b3c4d5e6f"
WRONG = "sk-wrong-a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
ENV = {"UPSTREAM_KEY": SECRET, "OTHER_NAME_SAME_KEY": SECRET, "WRONG_KEY": WRONG}

BODIES: dict[str, dict[str, Any]] = {
    CHAT: {"model": "remote", "messages": [{"role": "user", "content": "Say hello to the river."}], "max_tokens": 40},
    COMPLETIONS: {"model": "remote", "prompt": "Once upon a time", "max_tokens": 12},
    EMBEDDINGS: {"model": "remote", "input": ["the mill", "the market square"]},
    RESPONSES: {"model": "remote", "input": "Describe winter.", "max_output_tokens": 30},
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(UpstreamConfig(api_key=SECRET, echo_key_in_errors=True)) as up:
        yield up


@pytest.fixture(autouse=True)
def clean(upstream: Upstream) -> Iterator[None]:
    upstream.configure(**{k: v for k, v in vars(UpstreamConfig(api_key=SECRET, echo_key_in_errors=True)).items()})
    upstream.reset_stats()
    yield
    assert not shared_states(), "every backend was closed"


def backend(up: Upstream, *, key_env: str = "UPSTREAM_KEY", name: str = "remote", **kw: Any) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend(name, up.base_url, api_key_env=key_env, upstream_model="sim-model", env=ENV, **kw)


async def run(b: OpenAIHTTPBackend, endpoint: str, bodies: list[dict[str, Any]]) -> list[Result | Failure]:
    try:
        return await b.execute(endpoint, bodies)
    finally:
        await b.close()


def stats_once(up: Upstream, ready: Callable[[UpstreamStats], bool], timeout_s: float = 5) -> UpstreamStats:
    """The simulator's counts once ``ready`` holds (it counts an answer after writing it, which may be
    just after the client has read it), or as they are after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready(stats := up.stats()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return stats


def chat(i: int | str, **extra: Any) -> dict[str, Any]:
    return {"model": "remote", "messages": [{"role": "user", "content": f"hello {i}"}], "user": f"k{i}",
            "max_tokens": 20, **extra}


# ---- success on every endpoint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES])
def test_each_endpoint_succeeds_with_the_model_mapped(upstream: Upstream, endpoint: str) -> None:
    [result] = asyncio.run(run(backend(upstream), endpoint, [BODIES[endpoint]]))
    assert isinstance(result, Result) and result.status_code == 200
    assert result.request_id and result.request_id.startswith("req_sim")
    assert result.body is not None and b"\n" not in result.body
    body = jsonx.loads(result.body)
    assert body["model"] == "sim-model"
    assert missing_fields(endpoint, body) is None
    assert result.input_tokens > 0
    assert (result.output_tokens > 0) == (endpoint != EMBEDDINGS)
    assert upstream.stats().auth_ok


def test_models_and_restricted_endpoints(upstream: Upstream) -> None:
    b = backend(upstream, endpoints=[EMBEDDINGS])
    [info] = b.models()
    assert info.id == "remote" and info.endpoints == frozenset({EMBEDDINGS})
    [result] = asyncio.run(run(b, CHAT, [BODIES[CHAT]]))
    assert isinstance(result, Result) and result.status_code == 400
    assert upstream.stats().requests == 0


# ---- outcomes: permanent and transient -------------------------------------------------------------------------------


def test_rejected_request_is_permanent_with_the_upstream_body(upstream: Upstream) -> None:
    [result] = asyncio.run(run(backend(upstream), CHAT, [chat(1, reject=True)]))
    assert isinstance(result, Result) and result.status_code == 400
    assert not is_transient_status(400)
    assert result.body is not None
    assert jsonx.loads(result.body) == {"error": {"message": "Unrecognized request argument supplied: reject",
                                                  "type": "invalid_request_error", "param": "reject", "code": None}}


@pytest.mark.parametrize(("changes", "timeout_s", "expect"), [
    ({"error_rate": 1.0}, 5, "5xx"),
    ({"timeout_rate": 1.0}, 0.3, "timeout"),
    ({"drop_rate": 1.0}, 5, "connection_error"),
    ({"malformed_rate": 1.0}, 5, "invalid_response"),
    ({"missing_fields_rate": 1.0}, 5, "invalid_response"),
    ({"slow_body_rate": 1.0, "slow_body_s": 1.5}, 0.4, "timeout"),
    ({"slow_body_rate": 1.0, "slow_body_s": 0.2}, 5, "ok"),
    ({"model": "another-model"}, 5, "404"),
])
def test_fault_mapping(upstream: Upstream, changes: dict[str, Any], timeout_s: float, expect: str) -> None:
    upstream.configure(**changes)
    [result] = asyncio.run(run(backend(upstream, timeout_s=timeout_s), CHAT, [chat(1)]))
    if expect == "5xx":
        assert isinstance(result, Result) and result.status_code in (500, 502, 503)
        assert is_transient_status(result.status_code)
        assert result.body is not None and jsonx.loads(result.body)["error"]["type"] == "server_error"
    elif expect == "ok":
        assert isinstance(result, Result) and result.status_code == 200
    elif expect == "404":
        assert isinstance(result, Result) and result.status_code == 404
        assert not is_transient_status(404)
    else:
        assert isinstance(result, Failure), result
        assert result.code == expect


def test_error_body_that_is_not_json_is_wrapped(upstream: Upstream) -> None:
    # The simulator's bodies are JSON; the wrapping is checked on the helper directly.
    b = backend(upstream)
    body = jsonx.loads(b._wrapped_error(502, b"<html>Bad gateway</html>\n"))
    assert body["error"]["message"] == "The upstream answered HTTP 502: <html>Bad gateway</html>"
    assert body["error"]["type"] == "server_error"
    one_line, data = redact_body(Secret(SECRET), b'{\n "error": {"message": "x"}\n}')
    assert one_line == b'{"error":{"message":"x"}}' and data == {"error": {"message": "x"}}


# ---- secrets ---------------------------------------------------------------------------------------------------------


def test_secret_never_in_results_logs_or_reprs(upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.configure(error_rate=0.3, drop_rate=0.2, overload_rate=0.1, overload_retry_after_s=0.05, seed=7)
    good = backend(upstream, timeout_s=2)
    wrong = backend(upstream, key_env="WRONG_KEY", name="wrong", timeout_s=2)

    async def both() -> list[Result | Failure]:
        out = await good.execute(CHAT, [chat(i) for i in range(10)])
        out += await wrong.execute(CHAT, [chat(i) for i in range(3)])
        text = repr(good) + repr(wrong) + repr(good.state) + repr(wrong.state) + str(vars(good)) + str(vars(wrong))
        await good.close()
        await wrong.close()
        return [*out, Failure("reprs", text)]

    results = asyncio.run(both())
    refused = [r for r in results[10:13] if isinstance(r, Result)]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert refused[0].body is not None and b"***" in refused[0].body  # the upstream quoted the key: scrubbed
    assert "HTTP Request: POST" in caplog.text  # httpx logged every request (and the test sees the logs)
    everything = caplog.text + "".join(repr(r) for r in results)
    for secret in (SECRET, WRONG):
        assert secret not in everything
        assert secret[8:24] not in everything
    assert "api_key='***'" in repr(good)


def test_key_comes_from_the_environment_only(upstream: Upstream) -> None:
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE") as info:
        OpenAIHTTPBackend("m", upstream.base_url, api_key_env="NOT_SET_ANYWHERE", env={})
    assert "remote" not in str(info.value)
    with pytest.raises(ConfigError, match="api_key_env") as info:
        build_backend("m", {"backend": "openai", "base_url": upstream.base_url, "api_key": SECRET})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="http"):
        build_backend("m", {"backend": "openai", "base_url": "gpu-box:8000"})
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_backend("m", {"backend": "openai", "base_url": upstream.base_url, "rpn": 5})
    with pytest.raises(ConfigError, match="rpm"):
        build_backend("m", {"backend": "openai", "base_url": upstream.base_url, "rpm": 0})
    with pytest.raises(ConfigError, match="initial_concurrency"):
        build_backend("m", {"backend": "openai", "base_url": upstream.base_url, "initial_concurrency": 0})


def test_the_window_starts_at_initial_concurrency(upstream: Upstream) -> None:
    async def window(b: OpenAIHTTPBackend) -> int:
        await b.start()
        try:
            assert b.state is not None
            return b.state.aimd.window
        finally:
            await b.close()

    assert asyncio.run(window(backend(upstream, max_concurrency=64))) == 8
    assert asyncio.run(window(backend(upstream, max_concurrency=64, initial_concurrency=20))) == 20
    assert asyncio.run(window(backend(upstream, max_concurrency=12, initial_concurrency=20))) == 12


def test_build_backend_dispatch(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREIGHT_TEST_UPSTREAM_KEY", SECRET)
    b = build_backend("llama", {"backend": "openai", "base_url": upstream.base_url,
                                "api_key_env": "FREIGHT_TEST_UPSTREAM_KEY", "rpm": 3000, "tpm": 2_000_000,
                                "max_concurrency": 64, "timeout_s": 30, "chunk_size": 8})
    assert isinstance(b, OpenAIHTTPBackend)
    assert (b.rpm, b.tpm, b.max_in_flight, b.chunk_size, b.max_concurrency) == (3000, 2_000_000, 64, 8, 10)
    [result] = asyncio.run(run(b, CHAT, [chat(1)]))
    assert isinstance(result, Result) and result.status_code == 200


# ---- the limiter and feedback ----------------------------------------------------------------------------------------


def test_limiter_is_corrected_with_usage(upstream: Upstream) -> None:
    b = backend(upstream, rpm=600, tpm=1_000_000)

    async def go() -> tuple[float, float, int]:
        await b.start()
        assert b.state is not None
        _, estimate = b.state.estimate(CHAT, chat(1, max_tokens=2_000))
        [result] = await b.execute(CHAT, [chat(1, max_tokens=2_000)])
        requests, tokens = b.state.limiter.usage(time.monotonic())
        await b.close()
        assert isinstance(result, Result) and result.body is not None
        usage = jsonx.loads(result.body)["usage"]
        assert tokens == usage["total_tokens"] < estimate
        return requests, tokens, estimate

    requests, tokens, estimate = asyncio.run(go())
    assert requests == 1 and estimate >= 2_000


def test_output_mean_is_learned_when_no_maximum_is_given(upstream: Upstream) -> None:
    b = backend(upstream)

    async def go() -> tuple[int, int, float]:
        await b.start()
        assert b.state is not None
        body = {"model": "remote", "messages": [{"role": "user", "content": "hi"}]}
        _, before = b.state.estimate(CHAT, body)
        results = await b.execute(CHAT, [{**body, "user": f"u{i}"} for i in range(20)])
        observed = sum(r.output_tokens for r in results if isinstance(r, Result)) / 20
        _, after = b.state.estimate(CHAT, body)
        await b.close()
        return before, after, observed

    before, after, observed = asyncio.run(go())
    assert before >= 256  # nothing known yet: the documented default
    assert after == pytest.approx(observed + 12, abs=8)


def test_limits_are_discovered_from_headers(upstream: Upstream) -> None:
    upstream.configure(rpm=1200, tpm=500_000, burst_s=0.2)
    b = backend(upstream)

    async def go() -> tuple[float | None, float | None, float]:
        await b.start()
        assert b.state is not None
        started = time.monotonic()
        pending = [chat(i) for i in range(30)]
        while pending:  # like the engine: what was refused goes again
            results = await b.execute(CHAT, pending)
            pending = [body for body, r in zip(pending, results, strict=True)
                       if not (isinstance(r, Result) and r.status_code == 200)]
        elapsed = time.monotonic() - started
        limits = b.state.limiter.rpm, b.state.limiter.tpm
        await b.close()
        return *limits, elapsed

    rpm, tpm, elapsed = asyncio.run(go())
    assert (rpm, tpm) == (1200, 500_000)
    stats = stats_once(upstream, lambda s: s.count("ok") >= 30)
    assert all(stats.ok(f"k{i}") == 1 for i in range(30))
    assert stats.count("rate_limited") <= 8  # at most the first burst, before the first headers came back
    assert elapsed >= (30 - 4 - 8) / 20


def test_overload_cools_down_every_request_and_probes(upstream: Upstream) -> None:
    """After a 429 nobody sends until its Retry-After has passed, and then one at a time until it works."""
    upstream.configure(overload_rate=1.0, overload_retry_after_s=0.3)
    b = backend(upstream)

    async def go() -> list[Result | Failure]:
        await b.start()
        first = await b.execute(CHAT, [chat("first")])
        rest = await b.execute(CHAT, [chat(i) for i in range(4)])
        upstream.configure(overload_rate=0.0)
        after = await b.execute(CHAT, [chat(f"after{i}") for i in range(8)])
        await b.close()
        return first + rest + after

    results = asyncio.run(go())
    assert [r.status_code for r in results[:5] if isinstance(r, Result)] == [429] * 5
    assert all(isinstance(r, Result) and r.status_code == 200 for r in results[5:])
    times = [t for t, _, outcome in upstream.stats().events if outcome == "throttled"]
    assert len(times) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.28, gaps  # serialized: each refused probe restarts the cool-down


def test_scattered_503s_are_retried_not_a_cooldown_but_many_are(upstream: Upstream) -> None:
    """A 503 without Retry-After among other answers costs its own request a retry (by the engine), not
    every request a cool-down; once 10 of the last 20 answers are such 503s, they are an overload."""
    upstream.configure(error_rate=1.0, error_statuses=(503,))
    b = backend(upstream)

    async def go() -> tuple[list[int], list[int]]:
        await b.start()
        state = b.state
        assert state is not None
        cooldowns = []
        for i in range(12):
            [result] = await b.execute(CHAT, [chat(i)])
            assert isinstance(result, Result) and result.status_code == 503
            cooldowns.append(state.counters.cooldowns)
        await b.close()
        return cooldowns, [state.counters.sent, state.counters.retried_at_once]

    cooldowns, sent = asyncio.run(go())
    assert cooldowns[:9] == [0] * 9  # no shared pause for the first ones
    assert cooldowns[9] == 1 and cooldowns[-1] >= 2  # the tenth in the last twenty: overload
    assert sent == [12, 0]  # 503s are not sent again at once


def test_server_errors_are_retried_at_once(upstream: Upstream) -> None:
    upstream.configure(error_rate=1.0, error_statuses=(500,))
    b = backend(upstream)

    async def go() -> tuple[Result | Failure, int]:
        [result] = await b.execute(CHAT, [chat("once")])
        assert b.state is not None
        retried = b.state.counters.retried_at_once
        await b.close()
        return result, retried

    result, retried = asyncio.run(go())
    assert isinstance(result, Result) and result.status_code == 500
    assert retried == 2
    assert stats_once(upstream, lambda s: s.count("500") >= 3).per_key["konce"] == {"500": 3}
    upstream.configure(error_rate=0.0)
    upstream.reset_stats()
    [ok] = asyncio.run(run(backend(upstream), CHAT, [chat("once")]))
    assert isinstance(ok, Result) and ok.status_code == 200


def test_stragglers_hold_no_place_in_the_window_or_the_probe(upstream: Upstream) -> None:
    """Requests in flight for longer than the straggler threshold (probably hung until timeout_s) no
    longer block the AIMD window or a probe; ``max_concurrency`` still bounds everything in flight."""
    b = backend(upstream, max_concurrency=12)

    async def go() -> None:
        await b.start()
        state = b.state
        assert state is not None
        now = 1000.0
        window = state.aimd.window
        old = now - 10 * state.straggler_s()
        state.sent_at = {i: old for i in range(window)}
        state.in_flight = window
        assert state.blocked_for(now) is None  # all stragglers
        state.sent_at = {i: now - 0.01 for i in range(window)}
        wait = state.blocked_for(now)
        assert wait is not None and 0 < wait <= state.straggler_s()  # a full window: until one straggles
        state.probing, state.probe = True, 0
        state.sent_at, state.in_flight = {0: now - 0.01}, 1
        assert state.blocked_for(now) is not None  # the probe is out
        state.sent_at = {0: old}
        assert state.blocked_for(now) is None  # the probe hung: another may go
        state.probing, state.probe = False, None
        state.sent_at = {i: old for i in range(12)}
        state.in_flight = 12
        assert state.blocked_for(now) == math.inf  # max_concurrency holds whatever the ages
        state.sent_at, state.in_flight = {}, 0
        await b.close()

    asyncio.run(go())


def test_two_model_names_share_one_upstream(upstream: Upstream) -> None:
    a = backend(upstream, name="a", rpm=1200)
    b = backend(upstream, key_env="OTHER_NAME_SAME_KEY", name="b", rpm=2400)
    c = backend(upstream, key_env="WRONG_KEY", name="c")

    async def go() -> float:
        for x in (a, b, c):
            await x.start()
        assert a.state is b.state and a.state is not c.state
        assert a.state is not None and a.state.limiter.rpm == 1200  # the smaller limit
        started = time.monotonic()
        await asyncio.gather(a.execute(CHAT, [chat(f"a{i}") for i in range(15)]),
                             b.execute(CHAT, [chat(f"b{i}") for i in range(15)]))
        elapsed = time.monotonic() - started
        assert a.state.limiter.usage(time.monotonic())[0] == 30
        for x in (a, b, c):
            await x.close()
        return elapsed

    elapsed = asyncio.run(go())
    assert elapsed >= (30 - 3) / 20  # 20/s together, not 20/s each
    stats = stats_once(upstream, lambda s: s.count("ok") >= 30)
    times = sorted(t for t, _, outcome in stats.events if outcome == "ok")
    assert len(times) == 30
    for i, start in enumerate(times):  # never more than 20 in a second (plus the pacer's 0.1 s burst)
        assert sum(1 for t in times[i:] if t < start + 1.0) <= 23


def test_concurrency_is_bounded(upstream: Upstream) -> None:
    upstream.configure(latency_s=0.05)
    b = backend(upstream, max_concurrency=4)
    assert b.max_concurrency == math.ceil(4 / 16) + 2
    results = asyncio.run(run(b, CHAT, [chat(i) for i in range(40)]))
    assert all(isinstance(r, Result) and r.status_code == 200 for r in results)
    stats = stats_once(upstream, lambda s: s.count("ok") >= 40)
    assert 1 < stats.max_in_flight <= 4
    assert all(stats.ok(f"k{i}") == 1 for i in range(40))


# ---- estimates -------------------------------------------------------------------------------------------------------


def test_estimate_helpers() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a" * 40},
                                                     {"type": "image_url", "image_url": {"url": "data:..."}}]}]}
    assert prompt_parts(CHAT, body) == (40, 3 + 4 + 765)
    assert prompt_parts(EMBEDDINGS, {"input": [[1, 2, 3], [4, 5]]}) == (0, 5)
    assert prompt_parts(COMPLETIONS, {"prompt": "abcd"}) == (4, 3)
    assert requested_output(CHAT, {"max_tokens": 10, "n": 3}) == 30
    assert requested_output(CHAT, {"max_completion_tokens": 7, "max_tokens": 10}) == 7
    assert requested_output(CHAT, {}) is None
    assert requested_output(COMPLETIONS, {"prompt": ["a", "b"]}) == 32
    assert requested_output(RESPONSES, {"max_output_tokens": 5}) == 5
    assert requested_output(EMBEDDINGS, {"input": "x"}) == 0
    assert usage_tokens(CHAT, {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}) == (5, 7)
    assert usage_tokens(RESPONSES, {"input_tokens": 5, "output_tokens": 7}) == (5, 7)
    assert usage_tokens(EMBEDDINGS, {"prompt_tokens": 9, "total_tokens": 9}) == (9, 0)
    assert usage_tokens(CHAT, None) is None
    assert missing_fields(CHAT, {"choices": [{"text": "x"}]}) is not None
    assert missing_fields(EMBEDDINGS, {"data": [{"embedding": "AAAA"}]}) is None
    assert missing_fields(RESPONSES, {"id": "x"}) is not None
