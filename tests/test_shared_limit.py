"""The rate limiter every process shares (freight.domain.shared_rate, freight/backends/shared_limit.py):
its rules hold for any traffic, the Lua script in Redis decides exactly as the domain does, and three
``freight worker`` processes against one upstream keep to its limit together, near it."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.backends.shared_limit import SCRIPT, SharedBudget, SharedLimits, upstream_key
from freight.domain.shared_rate import SharedState, decide, penalize, settle
from freight.testing.limit_fleet import measure

REDIS_URL = "redis://127.0.0.1:6379/0"


# ---- the rules ---------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 500)), min_size=1, max_size=300),
       st.sampled_from([60.0, 600.0, 6000.0]), st.sampled_from([0.0, 0.1, 1.0]))
def test_any_interval_admits_at_most_its_share_of_the_rate(steps: list[tuple[float, int]], rpm: float,
                                                           burst_s: float) -> None:
    state, now, admitted = SharedState(), 1000.0, []
    for gap, tokens in steps:
        now += gap
        while not (d := decide(state, now, tokens, rpm, 0, burst_s)).admitted:
            now += d.wait_s
        state = d.state
        admitted.append(now)
    rate = rpm / 60.0
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate * (admitted[j] - start + burst_s) + 1 + 1e-6


def test_a_cool_down_stops_every_admission_and_settle_gives_tokens_back() -> None:
    state = decide(SharedState(), 10.0, 1000, 0, 6000, 0.0).state  # 1000 tokens at 100/s: 10 s owed
    assert decide(state, 10.0, 1, 0, 6000, 0.0).wait_s == pytest.approx(10.0)
    state = settle(state, -900, 6000)  # only 100 used
    assert decide(state, 11.0, 1, 0, 6000, 0.0).admitted
    cooled = penalize(state, 11.0, 2.5)
    assert decide(cooled, 12.0, 1, 0, 6000, 0.0).wait_s == pytest.approx(1.5)
    assert decide(cooled, 13.5, 1, 0, 6000, 0.0).admitted


def test_the_lua_script_decides_as_the_domain() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    script = client.register_script(SCRIPT)
    key = f"freight:test:{uuid.uuid4().hex}"
    rng = random.Random(7)
    state, now = SharedState(), 5000.0
    try:
        for _ in range(400):
            now += rng.choice([0.0, 0.001, 0.01, 0.05, 0.3])
            op = rng.choices(["reserve", "settle", "penalize"], [8, 2, 1])[0]
            rpm, tpm = 600.0, 60_000.0
            x = rng.randint(-50, 300) if op == "settle" else rng.choice([0.0, 0.2]) if op == "penalize" \
                else rng.randint(1, 400)
            got = float(script(keys=[key], args=[op, rpm, tpm, x, 0.1, repr(now)]))
            if op == "reserve":
                d = decide(state, now, x, rpm, tpm, 0.1)
                assert got == pytest.approx(d.wait_s, abs=1e-9)
                state = d.state
            elif op == "settle":
                state = settle(state, x, tpm)
            else:
                state = penalize(state, now, x)
            stored = client.hmget(key, "rtat", "ttat", "cool")
            assert [float(v) for v in stored] == pytest.approx([state.rtat, state.ttat, state.cool], abs=1e-6)
        assert 0 < client.pttl(key) <= 1000 * (max(state.rtat, state.ttat, state.cool) - now + 121)
    finally:
        client.delete(key)


def test_two_budgets_on_one_upstream_share_it_and_fail_open_without_redis() -> None:
    async def go() -> tuple[float, int]:
        limits = SharedLimits(REDIS_URL)
        base = f"http://upstream-{uuid.uuid4().hex}/v1"
        a, b = limits.bind(base, "k"), limits.bind(base, "k")
        assert a.key == b.key == upstream_key(base, "k") != upstream_key(base, "other")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for budget in (a, b) * 3:  # 60 RPM with a 0.1 s burst: one a second, whoever asks
            await budget.admit(60, None, 1)
        elapsed = loop.time() - started
        await a.aclose()
        await b.aclose()
        down = SharedBudget("redis://127.0.0.1:1/0", "freight:ratelimit:none")
        tries = 0
        original = down._script

        async def counted(**kw: Any) -> Any:
            nonlocal tries
            tries += 1
            return await original(**kw)

        down._script = counted
        await down.admit(60, None, 1)
        await down.admit(60, None, 1)
        await down.aclose()
        assert tries == 1, "after a failure Redis is left alone for a while (no connect timeout per request)"
        return elapsed, down.unavailable

    elapsed, unavailable = asyncio.run(go())
    assert elapsed >= 4.8, "six admissions across two handles are paced as one budget"
    assert unavailable == 2, "without Redis every admission goes ahead (the process's own limiter remains)"


# ---- processes ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_workers_keep_to_one_upstream_limit_together(tmp_path: Path) -> None:
    run = measure(tmp_path, workers=3, rpm=1200, requests=150, redis_url=REDIS_URL)
    print(run.line())
    assert run.ok == 150
    assert run.rate_limited == 0, run.line()
    assert 0.8 <= run.used <= 1.1, run.line()


def test_redis_url_comes_from_flag_env_or_config_and_reaches_remote_backends(tmp_path: Path) -> None:
    from freight.backends import build_backend
    from freight.config import load_settings

    config = tmp_path / "freight.toml"
    config.write_text('[server]\nredis_url = "redis://from-config:6379/0"\n')
    assert load_settings(config, env={}).redis_url == "redis://from-config:6379/0"
    assert load_settings(config, env={"FREIGHT_REDIS_URL": "redis://env/1"}).redis_url == "redis://env/1"
    assert load_settings(config, env={}, redis_url="redis://flag/2").redis_url == "redis://flag/2"
    assert load_settings(None, env={}).redis_url is None
    table = {"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "rpm": 60}
    shared = build_backend("m", table, "redis://flag/2")
    assert isinstance(getattr(shared, "shared_limits", None), SharedLimits)
    assert "flag" not in repr(shared.shared_limits), "the URL (it may hold a password) is not in a repr"
    assert getattr(build_backend("m", table), "shared_limits", "missing") is None


def test_a_backend_with_shared_limits_admits_through_redis_and_shares_a_429s_cool_down() -> None:
    from freight.backends.openai_http import OpenAIHTTPBackend
    from freight.testing.upstream import Upstream, UpstreamConfig

    with Upstream(UpstreamConfig(overload_rate=1.0, overload_retry_after_s=5.0)) as up:
        backend = OpenAIHTTPBackend("m", up.base_url, rpm=600)
        backend.shared_limits = SharedLimits(REDIS_URL)
        body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

        async def go() -> tuple[Any, int]:
            await backend.start()
            assert backend.state is not None and backend.state.shared is not None
            shared = backend.state.shared
            (result,) = await backend.execute("/v1/chat/completions", [body])
            await backend.close()  # waits for the penalty to reach Redis
            return result, shared.admitted

        result, admitted = asyncio.run(go())
        assert result.status_code == 429 and admitted == 1
        client = redis.Redis.from_url(REDIS_URL)
        key = upstream_key(backend.base_url, None)
        seconds, micros = client.time()
        cool = float(client.hget(key, "cool") or 0)
        client.delete(key)
        assert 3.0 < cool - (seconds + micros / 1e6) <= 5.0, "every process now waits out the upstream's 5 s"
