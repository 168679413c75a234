"""The simulator's behaviour: a provider under load (rate limits, 429 bursts, latency, faults, refusals)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from typing import Any

from freight.testing.upstream.bodies import (
    CREATED,
    ENDPOINTS,
    Bucket,
    build_response,
    error_body,
    format_duration,
    request_key,
    validate,
)
from freight.testing.upstream.config import UpstreamConfig
from freight.testing.upstream.hostile import leak_reply, leak_wanted
from freight.testing.upstream.server import DROP, HANG, HTTPServer, Reply


class UpstreamServer(HTTPServer):
    """The simulator on an ``HTTPServer``; runs on whatever loop calls ``start``."""

    def __init__(self, config: UpstreamConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or UpstreamConfig()
        super().__init__(host, port)
        self._rng = random.Random(self.config.seed)
        self._buckets: tuple[Bucket | None, Bucket | None] = (None, None)
        self._request_ids = 0
        self.configure(self.config)

    def configure(self, config: UpstreamConfig) -> None:
        """Apply a new configuration (the rate-limit buckets start full)."""
        self.config = config
        self.max_events = config.max_events
        now = time.monotonic()
        self._buckets = (
            Bucket(config.rpm, config.burst_s, now) if config.rpm else None,
            Bucket(config.tpm, config.burst_s, now) if config.tpm else None,
        )
        self._rng = random.Random(config.seed)

    # ---- behaviour ---------------------------------------------------------------------------------------------------
    def _json(self, status: int, obj: Any, headers: list[tuple[str, str]] | None = None, *, key: str = "",
              outcome: str = "") -> Reply:
        self._request_ids += 1
        extra = [("x-request-id", f"req_sim{self._request_ids:012d}"), *(headers or [])]
        return Reply(status, json.dumps(obj, separators=(",", ":")).encode(), extra, outcome=outcome, key=key)

    def _limit_headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name, bucket in zip(("requests", "tokens"), self._buckets, strict=True):
            if bucket is None:
                continue
            out += [(f"x-ratelimit-limit-{name}", str(int(bucket.per_minute))),
                    (f"x-ratelimit-remaining-{name}", str(max(0, int(bucket.level)))),
                    (f"x-ratelimit-reset-{name}", format_duration(bucket.reset_s()))]
        return out

    def _latency(self) -> float:
        c = self.config
        if c.latency_s <= 0:
            return 0.0
        if c.latency_dist == "uniform":
            return max(0.0, c.latency_s + self._rng.uniform(-c.latency_spread_s, c.latency_spread_s))
        if c.latency_dist == "exponential":
            return self._rng.expovariate(1.0 / c.latency_s)
        if c.latency_dist == "lognormal":
            return c.latency_s * math.exp(self._rng.gauss(0.0, c.latency_spread_s))
        return c.latency_s

    async def dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> object:
        c = self.config
        if path.startswith("/_sim/"):
            return self._control(method, path, raw)
        if path in ("/health", "/v1/models") and method == "GET":
            models = [{"id": c.model or "sim", "object": "model", "created": CREATED, "owned_by": "sim"}]
            return self._json(200, {"status": "ok"} if path == "/health" else {"object": "list", "data": models})
        with self.counters.lock:
            self.counters.requests += 1
        if path not in ENDPOINTS:
            return self._json(404, error_body(f"Unknown path {path}", "invalid_request_error"), outcome="not_found")
        if method != "POST":
            return self._json(405, error_body("Use POST", "invalid_request_error"), outcome="bad_method")
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if c.api_key is not None:
            if token != c.api_key:
                with self.counters.lock:
                    self.counters.auth_ok = False
                shown = f" {token}" if c.echo_key_in_errors else ""
                return self._json(401, error_body(f"Incorrect API key provided:{shown}.", "invalid_request_error",
                                              code="invalid_api_key"), outcome="unauthorized")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._json(400, error_body("We could not parse the JSON body of your request.",
                                          "invalid_request_error"), outcome="bad_json")
        if not isinstance(body, dict):
            return self._json(400, error_body("The body must be a JSON object.", "invalid_request_error"),
                              outcome="bad_json")
        key = request_key(body)
        problem = validate(path, body)
        if problem is not None:
            return self._json(400, problem, key=key, outcome="rejected")
        if c.model is not None and body.get("model") != c.model:
            return self._json(404, error_body(f"The model `{body.get('model')}` does not exist.",
                                          "invalid_request_error", "model", "model_not_found"),
                              key=key, outcome="model_not_found")
        leak = leak_wanted(body, c.leak_key, c.leak_status)
        if leak is not None:
            self._request_ids += 1
            status, data, extra = leak_reply(leak[0], leak[1], path, build_response(path, body, c)[0], token,
                                             f"req_sim{self._request_ids:012d}")
            return Reply(status, data, extra, outcome="leaked", key=key)
        now = time.monotonic()
        if c.throttle_every_s > 0 and c.throttle_for_s > 0:
            phase = (now - self.counters.started) % c.throttle_every_s
            if phase >= c.throttle_every_s - c.throttle_for_s:
                left = c.throttle_every_s - phase
                return self._json(429, error_body("The server is overloaded, please retry.", "server_error",
                                              code="overloaded"),
                                  [("retry-after", str(max(1, math.ceil(left)))),
                                   ("retry-after-ms", str(math.ceil(left * 1000)))], key=key, outcome="throttled")
        if c.overload_rate > 0 and self._rng.random() < c.overload_rate:
            ms = math.ceil(c.overload_retry_after_s * 1000)
            return self._json(429, error_body("The server is overloaded, please retry.", "server_error",
                                          code="overloaded"),
                              [("retry-after", str(max(1, math.ceil(c.overload_retry_after_s)))),
                               ("retry-after-ms", str(ms))], key=key, outcome="throttled")
        response, tokens = build_response(path, body, c)
        requests_bucket, tokens_bucket = self._buckets
        wait = 0.0
        for bucket, cost in ((requests_bucket, 1), (tokens_bucket, tokens)):
            if bucket is not None:
                bucket.refill(now)
                wait = max(wait, bucket.shortfall_s(cost))
        if wait > 0:
            which = "requests" if requests_bucket is not None and requests_bucket.shortfall_s(1) > 0 else "tokens"
            return self._json(429, error_body(f"Rate limit reached for {which} per min. Please try again in "
                                          f"{format_duration(wait)}.", which, code="rate_limit_exceeded"),
                              [("retry-after", str(max(1, math.ceil(wait)))),
                               ("retry-after-ms", str(math.ceil(wait * 1000))), *self._limit_headers()],
                              key=key, outcome="rate_limited")
        for bucket, cost in ((requests_bucket, 1), (tokens_bucket, tokens)):
            if bucket is not None:
                bucket.level -= cost
        self.counters.admitted(tokens)
        limit_headers = self._limit_headers()

        draw = self._rng.random()
        edges = [("drop", c.drop_rate), ("timeout", c.timeout_rate), ("error", c.error_rate),
                 ("malformed", c.malformed_rate), ("missing", c.missing_fields_rate), ("slow", c.slow_body_rate)]
        fault = ""
        for name, share in edges:
            if draw < share:
                fault = name
                break
            draw -= share
        if fault == "drop":
            self.counters.outcome(key, "dropped", c.max_events)
            return DROP
        if fault == "timeout":
            self.counters.outcome(key, "timeout", c.max_events)
            return HANG
        delay = self._latency()
        if delay:
            await asyncio.sleep(delay)
        if fault == "error":
            status = self._rng.choice(tuple(c.error_statuses))
            kind = "server_error"
            message = {500: "The server had an error while processing your request.", 502: "Bad gateway.",
                       503: "The engine is currently overloaded, please try again later."}.get(status, "Server error.")
            return self._json(status, error_body(message, kind), limit_headers, key=key, outcome=str(status))
        if fault == "malformed":
            reply = self._json(200, response, limit_headers, key=key, outcome="malformed")
            reply.body = reply.body[: max(1, len(reply.body) // 2)]
            return reply
        if fault == "missing":
            return self._json(200, {"id": response.get("id"), "object": response.get("object")}, limit_headers,
                              key=key, outcome="missing_fields")
        reply = self._json(200, response, limit_headers, key=key, outcome="ok")
        if fault == "slow":
            reply.slow_s = c.slow_body_s
        return reply

    def _control(self, method: str, path: str, raw: bytes) -> Reply:
        if path == "/_sim/stats":
            return Reply(200, json.dumps(self.counters.snapshot().to_json()).encode(), outcome="")
        if path == "/_sim/reset" and method == "POST":
            with self.counters.lock:
                self.counters.reset()
            return Reply(200, b"{}", outcome="")
        if path == "/_sim/config" and method == "POST":
            self.configure(self.config.replace(**json.loads(raw or b"{}")))
            return Reply(200, json.dumps(dataclasses.asdict(self.config)).encode(), outcome="")
        return Reply(404, b'{"error":"unknown control path"}', outcome="")
