"""One rate limiter per upstream shared by every freight process: Redis (``--redis-url``).

The rules are ``freight.domain.shared_rate``; the script below is their transcription in Lua, so that a
decision (read the upstream's hash, decide, write it) is one atomic step on the Redis server, on the
server's clock (``TIME``): processes on several machines never compare their own clocks.

Why Redis and not PostgreSQL: an admission is a read-modify-write on one hot row per upstream, made
before every request sent (6,000 RPM is 100 a second, from every worker). In PostgreSQL that is a row
lock held across a round trip per admission, in the same database the claims and results compete for,
with a WAL write each; a Lua script in Redis is one round trip of about 0.1 ms, serialised in memory,
and nothing of it needs to survive a restart (a lost state only means a fresh budget, as after a
minute of idleness). See docs/deployment.md.

If Redis cannot be reached, the limiter *fails open* to the process's own limiter (which still keeps
each process under ``rpm``/``tpm`` and still backs off on 429s), with a warning at most once a minute:
an outage of the limiter's store must not stop every batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: Seconds of the rate a budget may run ahead of now (as the process's own limiter's ``burst_s``).
BURST_S = 0.1
#: After Redis could not be reached, admissions go without it for this long before it is tried again
#: (an unreachable host would otherwise cost every admission a connect timeout).
RETRY_AFTER_S = 5.0
#: Redis keys of the shared limiters.
PREFIX = "freight:ratelimit:"

# KEYS[1]: the upstream's hash. ARGV: op ("reserve" | "settle" | "penalize"), rpm, tpm, tokens|delta|retry_s,
# burst_s[, now (tests only: the server's TIME otherwise)]. Numbers go back as strings (Redis would
# truncate a Lua number to an integer).
SCRIPT = """
local now = tonumber(ARGV[6] or '')
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local op = ARGV[1]
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local x = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'rtat', 'ttat', 'cool')
local rtat = tonumber(h[1]) or 0
local ttat = tonumber(h[2]) or 0
local cool = tonumber(h[3]) or 0
local function gwait(tat, per_minute)
  if per_minute <= 0 then return 0 end
  local w = tat - now - burst
  if w > 0.000001 then return w end
  return 0
end
local function gtake(tat, cost, per_minute)
  if per_minute <= 0 then return tat end
  return math.max(tat, now) + cost * 60 / per_minute
end
local wait = 0
if op == 'reserve' then
  wait = math.max(cool - now, gwait(rtat, rpm), gwait(ttat, tpm))
  if wait > 0 then return tostring(wait) end
  rtat = gtake(rtat, 1, rpm)
  ttat = gtake(ttat, x, tpm)
elseif op == 'settle' then
  if tpm > 0 and ttat > 0 then ttat = ttat + x * 60 / tpm end
elseif op == 'penalize' then
  cool = math.max(cool, now + math.max(0, x))
  wait = cool - now
end
redis.call('HSET', KEYS[1], 'rtat', tostring(rtat), 'ttat', tostring(ttat), 'cool', tostring(cool))
local horizon = math.max(rtat, ttat, cool) - now
redis.call('PEXPIRE', KEYS[1], math.floor((math.max(0, horizon) + 120) * 1000))
return tostring(wait)
"""


def upstream_key(base_url: str, fingerprint: str | None) -> str:
    """The Redis key of one upstream (its URL and API key, as the process's own registry keys it)."""
    digest = hashlib.sha256(f"{base_url}\n{fingerprint or ''}".encode()).hexdigest()[:24]
    return PREFIX + digest


class SharedLimits:
    """The shared limiter of the processes that name the same Redis: one per process, ``bind`` gives the
    handle of one upstream on the running event loop."""

    def __init__(self, url: str):
        self.url = url

    def __repr__(self) -> str:
        return "SharedLimits(redis)"  # the URL may carry a password

    def bind(self, base_url: str, fingerprint: str | None) -> SharedBudget:
        return SharedBudget(self.url, upstream_key(base_url, fingerprint))


class SharedBudget:
    """One upstream's shared budget, used from one event loop."""

    def __init__(self, url: str, key: str):
        self.key = key
        self._client: Any = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script: Any = self._client.register_script(SCRIPT)
        self._last_warning = -math.inf
        self._skip_until = -math.inf
        #: Admissions decided by Redis / made without it (it could not be reached).
        self.admitted = 0
        self.unavailable = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _call(self, op: str, rpm: float | None, tpm: float | None, x: float) -> float | None:
        if time.monotonic() < self._skip_until:
            self.unavailable += 1
            return None
        try:
            value = await self._script(keys=[self.key], args=[op, rpm or 0, tpm or 0, x, BURST_S])
        except (RedisError, OSError) as exc:
            self.unavailable += 1
            now = time.monotonic()
            self._skip_until = now + RETRY_AFTER_S
            if now - self._last_warning > 60.0:
                self._last_warning = now
                log.warning("the shared rate limiter (Redis) cannot be reached (%s: %s); this process keeps "
                            "to its own limits meanwhile", type(exc).__name__, exc,
                            extra={"event": "shared_limit_unavailable"})
            return None
        return float(value)

    async def admit(self, rpm: float | None, tpm: float | None, tokens: int) -> None:
        """Wait until the shared budget admits one request of ``tokens`` (returns at once when neither
        limit is known, or when Redis cannot be reached)."""
        if not rpm and not tpm:
            return
        while True:
            wait = await self._call("reserve", rpm, tpm, tokens)
            if wait is None or wait <= 0:
                self.admitted += wait is not None
                return
            await asyncio.sleep(min(wait, 60.0))

    async def settle(self, tpm: float | None, delta_tokens: int) -> None:
        if tpm and delta_tokens:
            await self._call("settle", None, tpm, delta_tokens)

    async def penalize(self, retry_after_s: float) -> None:
        await self._call("penalize", None, None, retry_after_s)

    def settle_soon(self, tpm: float | None, delta_tokens: int) -> None:
        """``settle`` without waiting for it (from code that does not await)."""
        if tpm and delta_tokens:
            self._soon(self.settle(tpm, delta_tokens))

    def penalize_soon(self, retry_after_s: float) -> None:
        self._soon(self.penalize(retry_after_s))

    def _soon(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass
