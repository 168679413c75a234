"""The state of one upstream, shared by every backend that uses it: the connection pools, the limiter,
AIMD, the FIFO admission queue and the running means of the token estimate.

The process-wide registry holds a state from the first ``start()`` to the last ``close()`` of the
backends with the same ``base_url`` and API key (fingerprint); configured limits combine to the smallest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from freight.backends.openai_http.checks import redact_url
from freight.domain.ratelimit import AIMD, RateLimiter, Reservation
from freight.domain.secrets import Secret
from freight.wire.ratelimit_headers import parse_retry_after_s, read_ratelimit_headers
from freight.wire.token_estimate import (
    CHARS_PER_TOKEN,
    DEFAULT_OUTPUT_TOKENS,
    EMBEDDINGS,
    choices_requested,
    prompt_parts,
    requested_output,
)

log = logging.getLogger("freight.backends.openai_http")

#: Weight of a new observation in the running means.
EMA_ALPHA = 0.05
#: Connections per httpx pool (an upstream gets ceil(max_concurrency / this) pools).
SHARD_CONNECTIONS = 8


@dataclass
class UpstreamCounters:
    sent: int = 0
    succeeded: int = 0
    overloaded: int = 0
    refused: int = 0
    server_errors: int = 0
    failures: int = 0
    cooldowns: int = 0


@dataclass
class _Mean:
    value: float
    seen: int = 0

    def add(self, x: float) -> None:
        self.seen += 1
        alpha = max(EMA_ALPHA, 1.0 / self.seen)  # an exact mean first, then exponential
        self.value += alpha * (x - self.value)


class UpstreamState:
    """One upstream's connection pool, limiter, concurrency window and FIFO admission queue."""

    def __init__(self, key: tuple[str, str | None], base_url: str, secret: Secret, max_in_flight: int,
                 timeout_s: float, loop: asyncio.AbstractEventLoop):
        self.key = key
        self.base_url = base_url
        self._secret = secret
        self.limiter = RateLimiter()
        self.aimd = AIMD(max_in_flight)
        self.max_in_flight = max_in_flight
        self.loop_ref = weakref.ref(loop)
        headers = {"User-Agent": "freight"}
        token = secret.reveal()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Several small pools rather than one big one: httpcore's pool does work quadratic in its number of
        # connections on every request, which at 256 connections costs more CPU than the rest of freight.
        shards = math.ceil(max_in_flight / SHARD_CONNECTIONS)
        self.clients = [
            httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
                limits=httpx.Limits(max_connections=SHARD_CONNECTIONS, max_keepalive_connections=SHARD_CONNECTIONS),
                follow_redirects=False,
            )
            for _ in range(shards)
        ]
        self.client_load = [0] * shards
        self.refs = 0
        self.in_flight = 0
        self.queue = asyncio.Lock()  # FIFO: only the head of the queue waits on the budgets
        #: After a 429/503, one request at a time until one is answered without overload.
        self.probing = False
        self.slot_freed = asyncio.Event()
        self.counters = UpstreamCounters()
        self.output_means: dict[str, _Mean] = {}
        self.prompt_ratio = _Mean(1.0)
        self._last_cooldown_log = -math.inf

    def __repr__(self) -> str:
        return (f"UpstreamState(base_url={redact_url(self.base_url)!r}, api_key={self._secret!r}, "
                f"rpm={self.limiter.rpm}, tpm={self.limiter.tpm}, window={self.aimd.window})")

    # ---- estimates -------------------------------------------------------------------------------------------------
    def estimate(self, endpoint: str, body: Mapping[str, Any]) -> tuple[int, int]:
        """(estimated prompt tokens, estimated total tokens)."""
        chars, exact = prompt_parts(endpoint, body)
        ratio = min(4.0, max(0.25, self.prompt_ratio.value))
        prompt = math.ceil(chars / CHARS_PER_TOKEN * ratio) + exact
        output = requested_output(endpoint, body)
        if output is None:
            n = choices_requested(body)
            mean = self.output_means.get(endpoint)
            output = math.ceil((mean.value if mean else DEFAULT_OUTPUT_TOKENS) * n)
        return prompt, max(1, prompt + output)

    def learn(self, endpoint: str, body: Mapping[str, Any], prompt_estimate: int, usage: tuple[int, int]) -> None:
        prompt, output = usage
        chars, exact = prompt_parts(endpoint, body)
        if chars > 0 and prompt > exact:
            raw = chars / CHARS_PER_TOKEN
            self.prompt_ratio.add(min(4.0, max(0.25, (prompt - exact) / raw)))
        if endpoint != EMBEDDINGS:
            n = choices_requested(body)
            mean = self.output_means.setdefault(endpoint, _Mean(float(DEFAULT_OUTPUT_TOKENS)))
            mean.add(output / n)

    # ---- admission -------------------------------------------------------------------------------------------------
    async def admit(self, tokens: int) -> tuple[Reservation, int]:
        """Wait for a slot and the budget; returns the reservation and the in-flight count with this one."""
        async with self.queue:
            while True:
                if self.in_flight >= (1 if self.probing else self.aimd.window):
                    self.slot_freed.clear()
                    await self.slot_freed.wait()
                    continue
                reservation = self.limiter.reserve(tokens, time.monotonic())
                if reservation.admitted:
                    self.in_flight += 1
                    return reservation, self.in_flight
                await asyncio.sleep(min(reservation.wait_s, 60.0))

    def pick_client(self) -> int:
        """The least busy pool (never full while fewer than ``max_in_flight`` requests are in flight)."""
        loads = self.client_load
        index = loads.index(min(loads))
        loads[index] += 1
        return index

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    def end_probe(self) -> None:
        if self.probing:
            self.probing = False
            self.slot_freed.set()

    def release(self) -> None:
        self.in_flight -= 1
        self.slot_freed.set()

    def feedback(self, response: httpx.Response) -> None:
        """The rate-limit headers of any response."""
        seen = read_ratelimit_headers(response.headers)
        if seen is None:
            return
        self.limiter.observe_headers(
            seen.remaining_requests, seen.remaining_tokens, seen.reset_requests_s, seen.reset_tokens_s,
            time.monotonic(), limit_requests=seen.limit_requests, limit_tokens=seen.limit_tokens,
        )

    def overloaded(self, response: httpx.Response) -> None:
        now = time.monotonic()
        retry_after = parse_retry_after_s(response.headers.get("retry-after"), response.headers.get("retry-after-ms"),
                                          time.time())
        until = self.limiter.penalize(retry_after, now)
        self.aimd.on_overload(now)
        self.probing = True
        self.counters.overloaded += 1
        self.counters.cooldowns += 1
        if now - self._last_cooldown_log > 5.0:
            self._last_cooldown_log = now
            log.info("upstream %s answered %d: every request to it waits %.2f s; in flight now at most %d",
                     redact_url(self.base_url), response.status_code, until - now, self.aimd.window,
                     extra={"event": "upstream_cooldown"})


#: The upstreams in use in this process, by (base_url, key fingerprint).
REGISTRY: dict[tuple[str, str | None], UpstreamState] = {}
REGISTRY_LOCK = threading.Lock()


def shared_states() -> list[UpstreamState]:
    """The upstreams in use in this process (for tests and diagnostics)."""
    with REGISTRY_LOCK:
        return list(REGISTRY.values())
