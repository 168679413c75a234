"""An OpenAI-compatible upstream for tests and benchmarks: a real HTTP/1.1 server on 127.0.0.1.

It serves ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and ``/v1/responses``
with deterministic bodies (a function of the request) and real-looking ``usage``, and behaves like a
provider under load:

- **rate limits**: ``rpm`` / ``tpm`` enforced as continuously refilled buckets holding ``burst_s``
  seconds of the rate (providers quantize their per-minute limits: 6,000 RPM may be enforced as 100
  per second; ``burst_s=60`` gives a plain per-minute bucket). Tokens are the request's real usage
  (prompt + completion), charged on arrival. Over a limit: 429 with ``retry-after``,
  ``retry-after-ms`` and ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (also sent on
  every answered request while limits are set);
- **429 bursts**: every ``throttle_every_s`` seconds, ``throttle_for_s`` seconds during which every
  request is answered 429 (an overloaded provider), with ``retry-after-ms``; and/or a share
  ``overload_rate`` of requests answered so, asking for ``overload_retry_after_s``;
- **latency**: fixed, uniform, exponential or lognormal;
- **faults**, each a share of the admitted requests: 500/502/503 (``error_rate``), never answering
  (``timeout_rate``), closing the connection without an answer (``drop_rate``), 200 with a body that
  is not JSON (``malformed_rate``) or JSON without the endpoint's fields (``missing_fields_rate``),
  and bodies sent slowly over ``slow_body_s`` (``slow_body_rate``);
- **refusals**: 400 with an OpenAI error body for invalid requests and for any body carrying
  ``"reject": true`` ("Unrecognized request argument supplied: reject", as OpenAI says);
  401 when ``api_key`` is set and the request's bearer token differs.

It counts what it did per request key (the body's ``user`` field if it is a string, else a hash of the
body without ``model``), so a test can check that every request was answered successfully exactly once.

Use::

    with Upstream(UpstreamConfig(rpm=600, error_rate=0.1)) as up:
        client = OpenAI(base_url=up.base_url, api_key="x")
        ...
        up.stats().ok("some-key")

``Upstream(..., subprocess=True)`` runs it as ``python -m freight.testing.upstream`` in a child
process (its own CPU core for benchmarks), driven through ``/_sim/stats``, ``/_sim/config`` and
``/_sim/reset`` on the same port. CLI: ``python -m freight.testing.upstream --port 8001 --rpm 6000``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import random
import re
import struct
import subprocess as _subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.request import Request, urlopen

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)

#: Every ``created`` timestamp (bodies are a function of the request only).
CREATED = 1_700_000_000

_WORDS = (
    "the of and to in is was for on that with as by at from his her an are this which be or had not but "
    "river mill market bread cheese apple wool winter square wheel stone light water field road house"
).split()
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


# =====================================================================================================================
# Configuration and counters
# =====================================================================================================================


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


class _Counters:
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


# =====================================================================================================================
# Tokens, usage and bodies (deterministic)
# =====================================================================================================================


def count_text_tokens(text: str) -> int:
    """The simulator's tokenizer: words and punctuation marks (close to BPE counts for English)."""
    return len(_TOKEN_RE.findall(text))


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings(item)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key not in ("type", "role", "detail"):
                yield from _strings(value)


def _input_tokens(value: Any) -> list[int]:
    """Token counts of each input of a prompt/input field (a string, strings, token ids or lists of them)."""
    if isinstance(value, str):
        return [count_text_tokens(value)]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [len(value)]
        out: list[int] = []
        for item in value:
            if isinstance(item, str):
                out.append(count_text_tokens(item))
            elif isinstance(item, list):
                out.append(len(item))
        return out
    return []


def count_prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """Prompt tokens as this upstream counts them (and reports in ``usage``)."""
    if endpoint == CHAT:
        total = 3
        for message in body.get("messages") or []:
            total += 3 + sum(count_text_tokens(s) for s in _strings(message))
        if body.get("tools"):
            total += sum(count_text_tokens(s) for s in _strings(body["tools"]))
        return total
    if endpoint == COMPLETIONS:
        return sum(_input_tokens(body.get("prompt")))
    if endpoint == EMBEDDINGS:
        return sum(_input_tokens(body.get("input")))
    if endpoint == RESPONSES:
        total = sum(count_text_tokens(s) for s in _strings(body.get("input")))
        if isinstance(body.get("instructions"), str):
            total += count_text_tokens(body["instructions"])
        return total + 3
    return 0


def _digest(body: dict[str, Any]) -> bytes:
    canonical = json.dumps({k: v for k, v in body.items() if k != "model"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


def request_key(body: dict[str, Any]) -> str:
    user = body.get("user")
    if isinstance(user, str) and user:
        return user
    return _digest(body).hex()[:16]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def completion_tokens(endpoint: str, body: dict[str, Any], choice: int, default_max: int) -> tuple[int, bool]:
    """(tokens, hit the cap) of one choice: between a fifth of the cap and the cap, from the body's hash."""
    if endpoint == CHAT:
        cap = _int(body.get("max_completion_tokens")) or _int(body.get("max_tokens")) or default_max
    elif endpoint == COMPLETIONS:
        cap = _int(body.get("max_tokens")) or 16
    else:
        cap = _int(body.get("max_output_tokens")) or default_max
    low = max(1, cap // 5)
    h = int.from_bytes(hashlib.sha256(_digest(body) + bytes([choice % 256])).digest()[:8], "big")
    n = low + h % (cap - low + 1)
    return n, n == cap


def _text(seed: bytes, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _choices_count(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


def _embedding(text_key: str, dim: int, seed: int) -> list[float]:
    rng = random.Random(hashlib.sha256(f"{seed}:{text_key}".encode()).digest())
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]


def build_response(endpoint: str, body: dict[str, Any], config: UpstreamConfig) -> tuple[dict[str, Any], int]:
    """(response body, total tokens) for a valid request."""
    model = str(body.get("model"))
    digest = _digest(body)
    rid = digest.hex()[:24]
    prompt = count_prompt_tokens(endpoint, body)
    if endpoint == EMBEDDINGS:
        raw = body.get("input")
        inputs = raw if isinstance(raw, list) and not all(isinstance(v, int) for v in raw) else [raw]
        dim = _int(body.get("dimensions")) or config.embedding_dim
        data = []
        for i, item in enumerate(inputs):
            vec = _embedding(json.dumps(item), dim, config.seed)
            emb: Any = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        usage: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return {"object": "list", "data": data, "model": model, "usage": usage}, prompt

    if endpoint == COMPLETIONS:
        prompts = body.get("prompt")
        count = len(prompts) if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int) else 1
        choices = []
        out = 0
        for i in range(count * _choices_count(body)):
            n, capped = completion_tokens(endpoint, body, i, config.default_max_tokens)
            out += n
            choices.append({"text": _text(digest + bytes([i % 256]), n), "index": i, "logprobs": None,
                            "finish_reason": "length" if capped else "stop"})
        usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
        return {"id": f"cmpl-{rid}", "object": "text_completion", "created": CREATED, "model": model,
                "choices": choices, "usage": usage, "system_fingerprint": "fp_freight_sim"}, prompt + out

    if endpoint == RESPONSES:
        n, capped = completion_tokens(endpoint, body, 0, config.default_max_tokens)
        text = _text(digest, n)
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + n}
        return {
            "id": f"resp_{rid}", "object": "response", "created_at": CREATED, "model": model,
            "status": "incomplete" if capped else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if capped else None,
            "error": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "parallel_tool_calls": True,
            "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
            "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "output": [{"type": "message", "id": f"msg_{rid}", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": usage,
        }, prompt + n

    choices = []
    out = 0
    for i in range(_choices_count(body)):
        n, capped = completion_tokens(endpoint, body, i, config.default_max_tokens)
        out += n
        choices.append({"index": i, "message": {"role": "assistant", "content": _text(digest + bytes([i % 256]), n),
                                                "refusal": None},
                        "logprobs": None, "finish_reason": "length" if capped else "stop"})
    usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
             "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
    return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": choices, "usage": usage, "system_fingerprint": "fp_freight_sim"}, prompt + out


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validate(endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """An OpenAI error body for a request this upstream refuses with 400, else None."""
    if "reject" in body:
        return _error("Unrecognized request argument supplied: reject", "invalid_request_error", "reject")
    if not isinstance(body.get("model"), str):
        return _error("you must provide a model parameter", "invalid_request_error", "model")
    if body.get("stream"):
        return _error("this upstream does not stream", "invalid_request_error", "stream")
    field_name = {CHAT: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input", RESPONSES: "input"}[endpoint]
    value = body.get(field_name)
    if endpoint == CHAT:
        ok = isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
    else:
        ok = isinstance(value, str) or (isinstance(value, list) and bool(value))
    if not ok:
        return _error(f"Missing or invalid '{field_name}'.", "invalid_request_error", field_name)
    return None


# =====================================================================================================================
# Rate limits
# =====================================================================================================================


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float, now: float):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def shortfall_s(self, cost: float) -> float:
        need = min(cost, self.capacity) - self.level
        return 0.0 if need <= 1e-9 else need / self.rate

    def reset_s(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


def format_duration(seconds: float) -> str:
    """Go-style, as OpenAI's ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes >= 1 else text


# =====================================================================================================================
# The server
# =====================================================================================================================


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    slow_s: float = 0.0
    #: Counted as this outcome for this request key once fully sent ("" : not counted).
    outcome: str = "ok"
    key: str = ""


_HANG = object()
_DROP = object()
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class UpstreamServer:
    """The asyncio server; runs on whatever loop calls ``start``."""

    def __init__(self, config: UpstreamConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or UpstreamConfig()
        self.host = host
        self.port = port
        self.counters = _Counters()
        self._rng = random.Random(self.config.seed)
        self._buckets: tuple[_Bucket | None, _Bucket | None] = (None, None)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._request_ids = 0
        self.configure(self.config)

    def configure(self, config: UpstreamConfig) -> None:
        """Apply a new configuration (the rate-limit buckets start full)."""
        self.config = config
        now = time.monotonic()
        self._buckets = (
            _Bucket(config.rpm, config.burst_s, now) if config.rpm else None,
            _Bucket(config.tpm, config.burst_s, now) if config.tpm else None,
        )
        self._rng = random.Random(config.seed)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- HTTP/1.1 ----------------------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                method, target, version = parts
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    body = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ValueError, ConnectionError):
                    return
                keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                with self.counters.lock:
                    self.counters.in_flight += 1
                    self.counters.max_in_flight = max(self.counters.max_in_flight, self.counters.in_flight)
                try:
                    reply = await self._dispatch(method, target.split("?", 1)[0], headers, body)
                    if reply is _HANG:
                        # Never answer: wait until the client gives up and closes (or the server stops).
                        with contextlib.suppress(ConnectionError):
                            await reader.read(1)
                        return
                    if reply is _DROP:
                        writer.transport.abort()
                        return
                    assert isinstance(reply, _Reply)
                    if not await self._write(writer, reply, keep_alive):
                        return
                finally:
                    with self.counters.lock:
                        self.counters.in_flight -= 1
                if not keep_alive:
                    return
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = int(headers.get("content-length", "0") or 0)
        return await reader.readexactly(length) if length else b""

    async def _write(self, writer: asyncio.StreamWriter, reply: _Reply, keep_alive: bool) -> bool:
        status_line = f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}\r\n"
        headers = [("content-type", "application/json"), ("content-length", str(len(reply.body))),
                   *reply.headers]
        if not keep_alive:
            headers.append(("connection", "close"))
        head = (status_line + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")
        key = reply.key
        try:
            if reply.slow_s > 0 and len(reply.body) > 1:
                writer.write(head)
                pieces = 5
                step = max(1, len(reply.body) // pieces)
                for start in range(0, len(reply.body), step):
                    writer.write(reply.body[start:start + step])
                    await writer.drain()
                    await asyncio.sleep(reply.slow_s / pieces)
            else:
                writer.write(head + reply.body)
                await writer.drain()
        except ConnectionError:
            if reply.outcome == "ok":
                self.counters.outcome(key, "aborted", self.config.max_events)
            return False
        if reply.outcome:
            self.counters.outcome(key, reply.outcome, self.config.max_events)
        return True

    # ---- behaviour ---------------------------------------------------------------------------------------------------
    def _json(self, status: int, obj: Any, headers: list[tuple[str, str]] | None = None, *, key: str = "",
              outcome: str = "") -> _Reply:
        self._request_ids += 1
        extra = [("x-request-id", f"req_sim{self._request_ids:012d}"), *(headers or [])]
        return _Reply(status, json.dumps(obj, separators=(",", ":")).encode(), extra, outcome=outcome, key=key)

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

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> object:
        c = self.config
        if path.startswith("/_sim/"):
            return self._control(method, path, raw)
        if path in ("/health", "/v1/models") and method == "GET":
            models = [{"id": c.model or "sim", "object": "model", "created": CREATED, "owned_by": "sim"}]
            return self._json(200, {"status": "ok"} if path == "/health" else {"object": "list", "data": models})
        with self.counters.lock:
            self.counters.requests += 1
        if path not in ENDPOINTS:
            return self._json(404, _error(f"Unknown path {path}", "invalid_request_error"), outcome="not_found")
        if method != "POST":
            return self._json(405, _error("Use POST", "invalid_request_error"), outcome="bad_method")
        if c.api_key is not None:
            token = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if token != c.api_key:
                with self.counters.lock:
                    self.counters.auth_ok = False
                shown = f" {token}" if c.echo_key_in_errors else ""
                return self._json(401, _error(f"Incorrect API key provided:{shown}.", "invalid_request_error",
                                              code="invalid_api_key"), outcome="unauthorized")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._json(400, _error("We could not parse the JSON body of your request.",
                                          "invalid_request_error"), outcome="bad_json")
        if not isinstance(body, dict):
            return self._json(400, _error("The body must be a JSON object.", "invalid_request_error"),
                              outcome="bad_json")
        key = request_key(body)
        problem = validate(path, body)
        if problem is not None:
            return self._json(400, problem, key=key, outcome="rejected")
        if c.model is not None and body.get("model") != c.model:
            return self._json(404, _error(f"The model `{body.get('model')}` does not exist.",
                                          "invalid_request_error", "model", "model_not_found"),
                              key=key, outcome="model_not_found")
        now = time.monotonic()
        if c.throttle_every_s > 0 and c.throttle_for_s > 0:
            phase = (now - self.counters.started) % c.throttle_every_s
            if phase >= c.throttle_every_s - c.throttle_for_s:
                left = c.throttle_every_s - phase
                return self._json(429, _error("The server is overloaded, please retry.", "server_error",
                                              code="overloaded"),
                                  [("retry-after", str(max(1, math.ceil(left)))),
                                   ("retry-after-ms", str(math.ceil(left * 1000)))], key=key, outcome="throttled")
        if c.overload_rate > 0 and self._rng.random() < c.overload_rate:
            ms = math.ceil(c.overload_retry_after_s * 1000)
            return self._json(429, _error("The server is overloaded, please retry.", "server_error",
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
            return self._json(429, _error(f"Rate limit reached for {which} per min. Please try again in "
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
            return _DROP
        if fault == "timeout":
            self.counters.outcome(key, "timeout", c.max_events)
            return _HANG
        delay = self._latency()
        if delay:
            await asyncio.sleep(delay)
        if fault == "error":
            status = self._rng.choice((500, 502, 503))
            kind = "server_error"
            message = {500: "The server had an error while processing your request.", 502: "Bad gateway.",
                       503: "The engine is currently overloaded, please try again later."}[status]
            return self._json(status, _error(message, kind), limit_headers, key=key, outcome=str(status))
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

    def _control(self, method: str, path: str, raw: bytes) -> _Reply:
        if path == "/_sim/stats":
            return _Reply(200, json.dumps(self.counters.snapshot().to_json()).encode(), outcome="")
        if path == "/_sim/reset" and method == "POST":
            with self.counters.lock:
                self.counters.reset()
            return _Reply(200, b"{}", outcome="")
        if path == "/_sim/config" and method == "POST":
            self.configure(self.config.replace(**json.loads(raw or b"{}")))
            return _Reply(200, json.dumps(dataclasses.asdict(self.config)).encode(), outcome="")
        return _Reply(404, b'{"error":"unknown control path"}', outcome="")


# =====================================================================================================================
# Running it: a context manager (thread or subprocess) and a CLI
# =====================================================================================================================


class Upstream:
    """``with Upstream(config) as up:`` a simulator on 127.0.0.1 at ``up.base_url`` (ends in ``/v1``).

    In a thread of this process by default; ``subprocess=True`` runs ``python -m freight.testing.upstream``.
    """

    def __init__(self, config: UpstreamConfig | None = None, *, port: int = 0, subprocess: bool = False):
        self.config = config or UpstreamConfig()
        self.port = port
        self.use_subprocess = subprocess
        self._server: UpstreamServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._proc: _subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def __enter__(self) -> Upstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.use_subprocess:
            cmd = [sys.executable, "-m", "freight.testing.upstream", "--port", str(self.port),
                   "--config-json", json.dumps(dataclasses.asdict(self.config))]
            self._proc = _subprocess.Popen(cmd, stdout=_subprocess.PIPE, stdin=_subprocess.DEVNULL)
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the upstream simulator did not start (exit {self._proc.wait()})")
            self.port = int(json.loads(line)["port"])
            return
        server = self._server = UpstreamServer(self.config, port=self.port)
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.start())
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="freight-upstream-sim", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the upstream simulator did not start")
        self.port = server.port

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except _subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._loop is not None and self._server is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    # ---- control ---------------------------------------------------------------------------------------------------
    def _call(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        with urlopen(request, timeout=30) as response:  # loopback only
            return json.loads(response.read())

    def stats(self) -> UpstreamStats:
        if self._server is not None:
            return self._server.counters.snapshot()
        return UpstreamStats.from_json(self._call("/_sim/stats"))

    def reset_stats(self) -> None:
        if self._server is not None:
            with self._server.counters.lock:
                self._server.counters.reset()
            return
        self._call("/_sim/reset", {})

    def configure(self, **changes: Any) -> None:
        """Change the behaviour while running (e.g. ``up.configure(error_rate=0)``)."""
        self.config = self.config.replace(**changes)
        if self._server is not None and self._loop is not None:
            server = self._server
            config = self.config

            async def apply() -> None:
                server.configure(config)

            asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)
            return
        self._call("/_sim/config", changes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m freight.testing.upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one; printed)")
    parser.add_argument("--config-json", default=None, help="an UpstreamConfig as JSON (flags below override)")
    for f in dataclasses.fields(UpstreamConfig):
        if f.type in ("int | None", "float", "int", "str", "bool", "str | None"):
            kind: Any = {"int | None": int, "int": int, "float": float, "str": str, "str | None": str}.get(str(f.type))
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":
                parser.add_argument(flag, dest=f.name, action="store_true", default=None)
            else:
                parser.add_argument(flag, dest=f.name, type=kind, default=None)
    args = parser.parse_args(argv)
    values: dict[str, Any] = json.loads(args.config_json) if args.config_json else {}
    for f in dataclasses.fields(UpstreamConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    config = UpstreamConfig(**values)

    async def serve() -> None:
        server = UpstreamServer(config, port=args.port)
        port = await server.start()
        print(json.dumps({"port": port, "base_url": f"http://127.0.0.1:{port}/v1"}), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
