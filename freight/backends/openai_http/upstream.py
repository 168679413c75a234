"""The state of one upstream, shared by every backend that uses it: the connection pools, the limiter,
AIMD, the FIFO admission queue and the running means of the token estimate.

The process-wide registry holds a state from the first ``start()`` to the last ``close()`` of the
backends with the same ``base_url`` and API key (fingerprint); configured limits combine to the smallest.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from freight.domain.ratelimit import AIMD, OverloadShare, RateLimiter, Reservation
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
#: A request in flight for longer than this many times the mean latency of successes (and at least
#: STRAGGLER_MIN_S) is a straggler (see ``UpstreamState.straggler_s``).
STRAGGLER_FACTOR = 4.0
STRAGGLER_MIN_S = 1.0


@dataclass
class UpstreamCounters:
    sent: int = 0
    succeeded: int = 0
    overloaded: int = 0
    refused: int = 0
    server_errors: int = 0
    failures: int = 0
    cooldowns: int = 0
    retried_at_once: int = 0


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
                 timeout_s: float, loop: asyncio.AbstractEventLoop, *, initial_in_flight: int = 8):
        self.key = key
        self.base_url = base_url
        self._secret = secret
        self.limiter = RateLimiter()
        #: The budget every process shares (freight.backends.shared_limit; None: this process's limiter alone).
        self.shared: Any = None
        self.aimd = AIMD(max_in_flight, initial=min(initial_in_flight, max_in_flight))
        self.max_in_flight = max_in_flight
        self.loop_ref = weakref.ref(loop)
        headers = {"User-Agent": "freight"}
        token = secret.reveal()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Several small pools rather than one big one: httpcore's pool does work quadratic in its number of
        # connections on every request, which at 256 connections costs more CPU than the rest of freight.
        self.shards = math.ceil(max_in_flight / SHARD_CONNECTIONS)
        # One TLS context for every pool: each client would otherwise load the CA bundle itself (0.1-0.2 s
        # each, seconds for 32 pools: time in which nothing is sent). Pools are made as they are needed.
        self._client_options: dict[str, Any] = {
            # (and none for a plain-http upstream: loading the CA bundle alone takes ~0.1 s)
            "verify": httpx.create_ssl_context() if base_url.startswith("https:") else False,
            "headers": headers,
            "timeout": httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
            "limits": httpx.Limits(max_connections=SHARD_CONNECTIONS, max_keepalive_connections=SHARD_CONNECTIONS),
            "follow_redirects": False,
        }
        self.clients = [httpx.AsyncClient(**self._client_options)]
        self.client_load = [0]
        self.refs = 0
        self.in_flight = 0
        #: Send time of each request in flight, by ticket (``admit`` gives one, ``release`` takes it back).
        self.sent_at: dict[int, float] = {}
        self._tickets = 0
        self.queue = asyncio.Lock()  # FIFO: only the head of the queue waits on the budgets
        #: After an overload, one request at a time until one is answered without overload.
        self.probing = False
        self.probe: int | None = None
        self.slot_freed = asyncio.Event()
        #: Seconds from send to answer (successes), for the straggler threshold.
        self.latency = _Mean(1.0)
        self.ambiguous_503s = OverloadShare()
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
    def straggler_s(self) -> float:
        """A request in flight longer than this is a straggler: probably hung, it no longer holds a place
        in the AIMD window (nor the probe's), only one of ``max_in_flight``."""
        return max(STRAGGLER_MIN_S, STRAGGLER_FACTOR * self.latency.value)

    def blocked_for(self, now: float) -> float | None:
        """None when a request may be sent now (as far as concurrency goes), else how long until a request
        in flight turns straggler (``inf``: until one is answered)."""
        if self.in_flight >= self.max_in_flight:
            return math.inf
        since = now - self.straggler_s()
        fresh = [t for t in self.sent_at.values() if t > since]
        if self.probing:
            started = self.sent_at.get(self.probe) if self.probe is not None else None
            return None if started is None or started <= since else started - since
        if len(fresh) < self.aimd.window:
            return None
        return min(fresh) - since

    async def admit(self, tokens: int, *, first: bool = False) -> tuple[Reservation, int, int]:
        """Wait for a slot and the budget; returns the reservation, the requests in flight that count against
        the window with this one, and the ticket to ``release``. ``first``: ahead of the queue (a request
        sent again at once: it was at the head already)."""
        if first:
            return await self._wait_and_take(tokens)
        async with self.queue:
            return await self._wait_and_take(tokens)

    async def _wait_and_take(self, tokens: int) -> tuple[Reservation, int, int]:
        shared = self.shared
        while True:
            now = time.monotonic()
            blocked = self.blocked_for(now)
            if blocked is not None:
                self.slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if math.isinf(blocked) else blocked + 1e-3):
                        await self.slot_freed.wait()
                continue
            if shared is not None:  # the fleet's budget first (once), then this process's
                await shared.admit(self.limiter.rpm, self.limiter.tpm, tokens)
                shared = None
                continue
            reservation = self.limiter.reserve(tokens, now)
            if reservation.admitted:
                since = now - self.straggler_s()
                counted = 1 + sum(1 for t in self.sent_at.values() if t > since)
                self._tickets += 1
                ticket = self._tickets
                self.sent_at[ticket] = now
                self.in_flight += 1
                if self.probing:
                    self.probe = ticket
                return reservation, counted, ticket
            await asyncio.sleep(min(reservation.wait_s, 60.0))

    def pick_client(self) -> int:
        """The least busy pool (never full while fewer than ``max_in_flight`` requests are in flight: a new
        pool is made when every pool is full)."""
        loads = self.client_load
        if min(loads) >= SHARD_CONNECTIONS and len(self.clients) < self.shards:
            self.clients.append(httpx.AsyncClient(**self._client_options))
            loads.append(0)
        index = loads.index(min(loads))
        loads[index] += 1
        return index

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
        for client in self.clients:
            await client.aclose()

    def end_probe(self) -> None:
        if self.probing:
            self.probing = False
            self.probe = None
            self.slot_freed.set()

    def release(self, ticket: int) -> None:
        self.sent_at.pop(ticket, None)
        self.in_flight -= 1
        self.slot_freed.set()

    def answered(self, response: httpx.Response) -> None:
        """Any response: its rate-limit headers, and whether it is an overload (a 429, a 503 with
        ``Retry-After``, or a 503 among many: ``OverloadShare``) or ends a probe."""
        self.feedback(response)
        status = response.status_code
        explicit = "retry-after" in response.headers or "retry-after-ms" in response.headers
        crowded = self.ambiguous_503s.observe(status == 503 and not explicit)
        if status == 429 or (status == 503 and (explicit or crowded)):
            self.overloaded(response)
        else:
            self.end_probe()

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
        if self.shared is not None:
            self.shared.penalize_soon(until - now)
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
