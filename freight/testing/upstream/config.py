"""The simulator's configuration and what it counts (per request key, per second, in order)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class UpstreamConfig:
    rpm: int | None = None
    tpm: int | None = None
    #: Bucket size in seconds of the rate (the provider's quantization of its per-minute limits).
    burst_s: float = 1.0
    latency_s: float = 0.0
    #: "fixed", "uniform" (latency_s ± latency_spread_s), "exponential" (mean latency_s) or "lognormal"
    #: (median latency_s, sigma latency_spread_s).
    latency_dist: str = "fixed"
    latency_spread_s: float = 0.0
    error_rate: float = 0.0
    #: The statuses ``error_rate`` answers, drawn uniformly.
    error_statuses: tuple[int, ...] = (500, 502, 503)
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    missing_fields_rate: float = 0.0
    slow_body_rate: float = 0.0
    slow_body_s: float = 1.0
    throttle_every_s: float = 0.0
    throttle_for_s: float = 0.0
    #: Share of requests answered 429 "overloaded" with ``retry-after-ms`` = overload_retry_after_s.
    overload_rate: float = 0.0
    overload_retry_after_s: float = 0.25
    #: Required bearer token (None: any or none).
    api_key: str | None = None
    #: 401 bodies quote the token received, as some providers do (tests check it is scrubbed).
    echo_key_in_errors: bool = False
    #: Quote the received key in every answer, in this form (``hostile.LEAK_MODES``; "": only requests
    #: whose text says ``leak=<mode>/<status>``), with this status.
    leak_key: str = ""
    leak_status: int = 400
    #: The model name to expect (None: any; otherwise other names get 404 model_not_found).
    model: str | None = None
    #: Output length cap when the request gives none.
    default_max_tokens: int = 256
    embedding_dim: int = 16
    seed: int = 0
    #: Keep this many (time, key, outcome) events for tests (0: none).
    max_events: int = 100_000

    def replace(self, **changes: Any) -> UpstreamConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class UpstreamStats:
    """What the upstream did. ``per_key[key][outcome]`` counts outcomes: ``ok`` (a valid 2xx fully sent),
    ``rejected`` (400), ``unauthorized``, ``rate_limited`` (429 over rpm/tpm), ``throttled`` (429 of a
    burst), ``500``/``502``/``503``, ``timeout``, ``dropped``, ``malformed``, ``missing_fields``,
    ``aborted`` (the client left while a slow body was being sent)."""

    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    per_key: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Tokens charged against tpm (usage of admitted requests).
    tokens: int = 0
    max_in_flight: int = 0
    #: Per second since start: [second, admitted requests, admitted tokens].
    timeline: list[list[int]] = field(default_factory=list)
    #: [seconds since start, key, outcome] in the order decided (bounded by max_events).
    events: list[list[Any]] = field(default_factory=list)
    #: Seen bearer tokens were all the configured one (False once any other was seen).
    auth_ok: bool = True

    def ok(self, key: str) -> int:
        return self.per_key.get(key, {}).get("ok", 0)

    def count(self, outcome: str) -> int:
        return self.outcomes.get(outcome, 0)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpstreamStats:
        return cls(**data)


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.outcomes: Counter[str] = Counter()
        self.per_key: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.tokens = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.timeline: dict[int, list[int]] = {}
        self.events: list[list[Any]] = []
        self.auth_ok = True

    def since(self) -> float:
        return time.monotonic() - self.started

    def outcome(self, key: str, outcome: str, max_events: int) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.per_key[key][outcome] += 1
            if len(self.events) < max_events:
                self.events.append([round(self.since(), 6), key, outcome])

    def admitted(self, tokens: int) -> None:
        with self.lock:
            self.tokens += tokens
            second = int(self.since())
            cell = self.timeline.setdefault(second, [second, 0, 0])
            cell[1] += 1
            cell[2] += tokens

    def snapshot(self) -> UpstreamStats:
        with self.lock:
            return UpstreamStats(
                requests=self.requests,
                outcomes=dict(self.outcomes),
                per_key={k: dict(v) for k, v in self.per_key.items()},
                tokens=self.tokens,
                max_in_flight=self.max_in_flight,
                timeline=[list(v) for _, v in sorted(self.timeline.items())],
                events=[list(e) for e in self.events],
                auth_ok=self.auth_ok,
            )
