"""Any OpenAI-compatible HTTP endpoint as a backend (vLLM, SGLang, llama.cpp server, Ollama, a provider).

Configured as ``[models."name"]`` with ``backend = "openai"`` (every key: docs/remote-models.md).

How a request goes
------------------
``execute`` gets a chunk of claimed requests and sends them concurrently (at most ``max_concurrency``
tasks per call). Each request, in order of arrival (one FIFO queue per upstream):

1. waits until fewer requests are in flight than the upstream's AIMD window allows (after a 429/503:
   until none is, and stays at one until a request is answered without overload: a probe);
2. waits until the ``RateLimiter`` admits its estimated cost (requests and tokens per minute, the shared
   cool-down after a 429/503, what the upstream's ``x-ratelimit-*`` headers say is left);
3. is sent with ``model`` replaced by ``upstream_model``, under an overall deadline of ``timeout_s``;
4. its response feeds the limiter (headers, ``Retry-After``/``retry-after-ms``, the real ``usage``
   replacing the estimate) and AIMD (429/503: decrease; success: increase), and becomes the result.

Outcomes: a 2xx whose body is JSON with the endpoint's fields is a success (``Result`` with the
upstream's status, body and ``x-request-id``); 408/425/429/5xx are ``Result``s the engine retries with
backoff; other 4xx are final (the error file gets the upstream's own body); no answer, a timeout, a
body that is not JSON or lacks the endpoint's fields are ``Failure``s (retried).

Token estimate (before sending): prompt tokens from the characters of the prompt (``chars / 4``,
scaled by the ratio of real to estimated prompt tokens observed on this upstream, plus 4 per chat
message and 3 per request; token-id inputs count exactly; 765 per image), plus the requested output
(``max_completion_tokens``/``max_tokens``/``max_output_tokens`` times ``n``; 16 for legacy completions
without one) or, when none is given, the running mean of the output observed on this endpoint.

Sharing
-------
Everything about one upstream lives in one ``UpstreamState``: the httpx connection pool, the limiter,
AIMD, the FIFO queue and the running means. Backends share it when they have the same ``base_url``
and the same API key (whichever environment variable it comes from), so several freight model names
pointing at one endpoint share its limits. The module-level registry holds it from the first
``start()`` to the last ``close()``; configured limits combine to the smallest.

Secrets
-------
The API key is read once, at construction, from the environment variable named by ``api_key_env``; it
is only ever put in the ``Authorization`` header. It is never logged, never part of a ``repr``, a
``Failure`` message or a stored body (anything from the upstream that quotes it has it replaced by
``***``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from freight.domain.errors import ConfigError
from freight.domain.ids import new_request_id
from freight.domain.ratelimit import AIMD, RateLimiter, Reservation, parse_duration_s, parse_retry_after_s
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo
from freight.wire import jsonx
from freight.wire.openai import error_envelope

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
ENDPOINTS = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES})

#: Characters per token of the fallback estimate (OpenAI's rule of thumb for English).
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3
TOKENS_PER_IMAGE = 765
#: Output estimate per choice before any response was seen, when the request gives no maximum.
DEFAULT_OUTPUT_TOKENS = 256
#: Legacy completions' own default ``max_tokens``.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: Weight of a new observation in the running means.
EMA_ALPHA = 0.05
#: Statuses that make the whole upstream cool down and cut its concurrency.
OVERLOAD_STATUSES = frozenset({429, 503})
#: Connections per httpx pool (an upstream gets ceil(max_concurrency / this) pools).
SHARD_CONNECTIONS = 8
#: Longest upstream text kept in a message (bodies that are not JSON).
MAX_MESSAGE_CHARS = 2000


# =====================================================================================================================
# Token estimates
# =====================================================================================================================


def _count_chars(obj: Any, depth: int = 0) -> tuple[int, int, int]:
    """(characters of text, exact tokens of token-id lists, images) anywhere in a prompt structure."""
    if depth > 32:
        return 0, 0, 0
    if isinstance(obj, str):
        return len(obj), 0, 0
    if isinstance(obj, list):
        if obj and all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
            return 0, len(obj), 0
        chars = tokens = images = 0
        for item in obj:
            c, t, i = _count_chars(item, depth + 1)
            chars, tokens, images = chars + c, tokens + t, images + i
        return chars, tokens, images
    if isinstance(obj, dict):
        kind = obj.get("type")
        if kind in ("image_url", "input_image", "image"):
            return 0, 0, 1
        chars = tokens = images = 0
        for key, value in obj.items():
            if key in ("type", "role", "detail"):
                continue
            c, t, i = _count_chars(value, depth + 1)
            chars, tokens, images = chars + c, tokens + t, images + i
        return chars, tokens, images
    return 0, 0, 0


def prompt_parts(endpoint: str, body: Mapping[str, Any]) -> tuple[int, int]:
    """(characters to estimate from, tokens known exactly: token ids, per-message overheads, images)."""
    fields: tuple[str, ...]
    overhead = TOKENS_PER_REQUEST
    if endpoint == CHAT:
        fields = ("messages", "tools", "functions", "response_format")
        messages = body.get("messages")
        if isinstance(messages, list):
            overhead += TOKENS_PER_MESSAGE * len(messages)
    elif endpoint == COMPLETIONS:
        fields = ("prompt", "suffix")
    elif endpoint == EMBEDDINGS:
        fields = ("input",)
        overhead = 0
    else:
        fields = ("input", "instructions", "tools", "text")
    chars = exact = images = 0
    for name in fields:
        c, t, i = _count_chars(body.get(name))
        chars, exact, images = chars + c, exact + t, images + i
    return chars, exact + overhead + TOKENS_PER_IMAGE * images


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def requested_output(endpoint: str, body: Mapping[str, Any]) -> int | None:
    """The most output tokens the request may produce, when it says (None: it does not)."""
    n = _positive_int(body.get("n")) or 1
    if endpoint == CHAT:
        cap = _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
    elif endpoint == COMPLETIONS:
        cap = _positive_int(body.get("max_tokens")) or COMPLETIONS_DEFAULT_MAX_TOKENS
        prompts = body.get("prompt")
        if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int):
            n *= len(prompts)
        n = max(n, _positive_int(body.get("best_of")) or 1)  # best_of choices are generated (and billed)
    elif endpoint == RESPONSES:
        cap = _positive_int(body.get("max_output_tokens"))
    else:
        return 0
    return None if cap is None else cap * n


def usage_tokens(endpoint: str, usage: Any) -> tuple[int, int] | None:
    """(input, output) tokens of a response's ``usage``, None when it has none."""
    if not isinstance(usage, dict):
        return None

    def get(*names: str) -> int | None:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    prompt = get("prompt_tokens", "input_tokens")
    output = get("completion_tokens", "output_tokens")
    total = get("total_tokens")
    if prompt is None and total is None:
        return None
    if prompt is None:
        prompt = max(0, (total or 0) - (output or 0))
    if output is None:
        output = max(0, (total or prompt) - prompt) if endpoint != EMBEDDINGS else 0
    return prompt, output


# =====================================================================================================================
# Response checks
# =====================================================================================================================


def missing_fields(endpoint: str, body: Any) -> str | None:
    """What a 2xx body lacks for its endpoint (None: it has what a client needs)."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if endpoint in (CHAT, COMPLETIONS):
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            return "no 'choices'"
        for choice in choices:
            if not isinstance(choice, dict):
                return "a choice is not an object"
            if endpoint == CHAT and not isinstance(choice.get("message"), dict):
                return "a choice has no 'message'"
            if endpoint == COMPLETIONS and not isinstance(choice.get("text"), str):
                return "a choice has no 'text'"
        return None
    if endpoint == EMBEDDINGS:
        data = body.get("data")
        if not isinstance(data, list) or not data:
            return "no 'data'"
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("embedding"), list | str):
                return "an item of 'data' has no 'embedding'"
        return None
    if endpoint == RESPONSES:
        if not isinstance(body.get("output"), list):
            return "no 'output'"
        return None
    return None


def redact_url(url: str) -> str:
    """The URL without user:password@ (for logs and reprs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def normalize_base_url(base_url: str) -> str:
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base_url must be an http(s) URL, got {redact_url(base_url)!r}")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def endpoint_url(base_url: str, endpoint: str) -> str:
    """As the OpenAI SDK does: ``base_url`` includes ``/v1``; the endpoint's ``/v1`` is dropped."""
    return base_url + endpoint.removeprefix("/v1")


# =====================================================================================================================
# Shared state of one upstream
# =====================================================================================================================


class _Secret:
    """A string that never shows itself in a repr, str or format."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def fingerprint(self) -> str | None:
        return None if self._value is None else hashlib.sha256(self._value.encode()).hexdigest()[:16]

    def scrub(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value and self._value in text else text

    def scrub_bytes(self, data: bytes) -> bytes:
        if not self._value:
            return data
        secret = self._value.encode()
        return data.replace(secret, b"***") if secret in data else data

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"

    __str__ = __repr__


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

    def __init__(self, key: tuple[str, str | None], base_url: str, secret: _Secret, max_in_flight: int,
                 timeout_s: float, loop: asyncio.AbstractEventLoop):
        self.key = key
        self.base_url = base_url
        self._secret = secret
        self.limiter = RateLimiter()
        #: The budget every process shares (freight.backends.shared_limit; None: this process's limiter alone).
        self.shared: Any = None
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
            n = _positive_int(body.get("n")) or 1
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
            n = _positive_int(body.get("n")) or 1
            mean = self.output_means.setdefault(endpoint, _Mean(float(DEFAULT_OUTPUT_TOKENS)))
            mean.add(output / n)

    # ---- admission -------------------------------------------------------------------------------------------------
    async def admit(self, tokens: int) -> tuple[Reservation, int]:
        """Wait for a slot and the budget; returns the reservation and the in-flight count with this one."""
        async with self.queue:
            shared = self.shared
            while True:
                if self.in_flight >= (1 if self.probing else self.aimd.window):
                    self.slot_freed.clear()
                    await self.slot_freed.wait()
                    continue
                if shared is not None:  # the fleet's budget first (once), then this process's
                    await shared.admit(self.limiter.rpm, self.limiter.tpm, tokens)
                    shared = None
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
        if self.shared is not None:
            await self.shared.aclose()
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
        h = response.headers

        def number(name: str) -> float | None:
            value = h.get(name)
            if value is None:
                return None
            try:
                x = float(value)
            except ValueError:
                return None
            return x if math.isfinite(x) else None

        if not any(name.startswith("x-ratelimit-") for name in h):
            return
        self.limiter.observe_headers(
            number("x-ratelimit-remaining-requests"), number("x-ratelimit-remaining-tokens"),
            parse_duration_s(h.get("x-ratelimit-reset-requests")), parse_duration_s(h.get("x-ratelimit-reset-tokens")),
            time.monotonic(),
            limit_requests=number("x-ratelimit-limit-requests"), limit_tokens=number("x-ratelimit-limit-tokens"),
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


_REGISTRY: dict[tuple[str, str | None], UpstreamState] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_states() -> list[UpstreamState]:
    """The upstreams in use in this process (for tests and diagnostics)."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())


# =====================================================================================================================
# The backend
# =====================================================================================================================


@dataclass
class _Sent:
    status: int
    raw: bytes
    request_id: str | None
    data: Any = field(default=None)


class OpenAIHTTPBackend:
    """One freight model name served by an OpenAI-compatible HTTP endpoint."""

    def __init__(
        self,
        model_id: str,
        base_url: str,
        api_key_env: str | None = None,
        upstream_model: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int = 256,
        timeout_s: float = 600,
        chunk_size: int = 16,
        endpoints: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        api_key: object = None,
    ):
        where = f'[models."{model_id}"]'
        if api_key is not None:
            raise ConfigError(f"{where}: put the key in an environment variable and name it in api_key_env; "
                              "secrets are never read from the config file")
        for name, value in (("rpm", rpm), ("tpm", tpm), ("max_concurrency", max_concurrency),
                            ("chunk_size", chunk_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{where}: {name} must be a positive integer")
        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or timeout_s <= 0:
            raise ConfigError(f"{where}: timeout_s must be a positive number of seconds")
        self.model_id = model_id
        self.base_url = normalize_base_url(base_url)
        self.api_key_env = api_key_env
        if api_key_env is not None:
            secret = (os.environ if env is None else env).get(api_key_env)
            if not secret:
                raise ConfigError(f"{where}: the environment variable {api_key_env} (api_key_env) is not set")
            self._secret = _Secret(secret)
        else:
            self._secret = _Secret(None)
        self.upstream_model = upstream_model or model_id
        self.rpm = rpm
        self.tpm = tpm
        self.max_in_flight = max_concurrency
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        #: Backend protocol: how many ``execute`` calls the engine runs at once. Enough chunks to keep
        #: ``max_concurrency`` requests in flight, plus two being claimed or finishing.
        self.max_concurrency = math.ceil(max_concurrency / chunk_size) + 2
        chosen = frozenset(endpoints) if endpoints is not None else ENDPOINTS
        if not chosen or not chosen <= ENDPOINTS:
            raise ConfigError(f"{where}: endpoints must be among {', '.join(sorted(ENDPOINTS))}")
        self.endpoints = chosen
        self._state: UpstreamState | None = None
        #: Set by the composition root with ``--redis-url``: freight.backends.shared_limit.SharedLimits.
        self.shared_limits: Any = None

    def __repr__(self) -> str:
        return (f"OpenAIHTTPBackend(model_id={self.model_id!r}, base_url={redact_url(self.base_url)!r}, "
                f"api_key_env={self.api_key_env!r}, api_key={self._secret!r}, "
                f"upstream_model={self.upstream_model!r}, rpm={self.rpm}, tpm={self.tpm})")

    @property
    def state(self) -> UpstreamState | None:
        """The shared upstream state while started."""
        return self._state

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=self.endpoints)]

    # ---- lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._state is not None:
            if self._state.loop_ref() is loop:
                return
            with _REGISTRY_LOCK:  # started before on another (now gone) event loop: let that state go
                self._state.refs -= 1
            self._state = None
        key = (self.base_url, self._secret.fingerprint())
        with _REGISTRY_LOCK:
            state = _REGISTRY.get(key)
            if state is None or state.loop_ref() is not loop:
                state = UpstreamState(key, self.base_url, self._secret, self.max_in_flight, self.timeout_s, loop)
                _REGISTRY[key] = state
            state.refs += 1
            state.limiter.configure(self.rpm, self.tpm)
            if state.shared is None and self.shared_limits is not None:
                state.shared = self.shared_limits.bind(self.base_url, key[1])
            if self.max_in_flight < state.max_in_flight:
                state.max_in_flight = self.max_in_flight
                state.aimd.set_maximum(self.max_in_flight)
        self._state = state

    async def close(self) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        with _REGISTRY_LOCK:
            state.refs -= 1
            last = state.refs <= 0
            if last and _REGISTRY.get(state.key) is state:
                del _REGISTRY[state.key]
        if last:
            await state.aclose()

    # ---- execution -------------------------------------------------------------------------------------------------
    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        await self.start()
        state = self._state
        assert state is not None
        results: list[Result | Failure | None] = [None] * len(bodies)
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                i = next_index
                next_index += 1
                results[i] = await self._one(state, endpoint, bodies[i])

        workers = min(len(bodies), self.max_in_flight)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return [r if r is not None else Failure("internal_error", "no result") for r in results]

    async def _one(self, state: UpstreamState, endpoint: str, body: dict[str, Any]) -> Result | Failure:
        if endpoint not in self.endpoints:
            message = f"The model {self.model_id!r} does not support {endpoint}."
            return Result(status_code=400, body=jsonx.dumps(error_envelope(message, "invalid_request_error")),
                          request_id=new_request_id())
        payload = dict(body)
        payload["model"] = self.upstream_model
        try:
            content = jsonx.dumps(payload)
        except TypeError as exc:
            return Result(status_code=400, request_id=new_request_id(),
                          body=jsonx.dumps(error_envelope(f"The body cannot be encoded: {exc}",
                                                          "invalid_request_error")))
        prompt_estimate, estimate = state.estimate(endpoint, payload)
        reservation, in_flight = await state.admit(estimate)
        state.counters.sent += 1
        try:
            sent = await self._send(state, endpoint, content)
        except TimeoutError:
            state.end_probe()
            state.limiter.settle(reservation, None, time.monotonic())
            state.counters.failures += 1
            return Failure("timeout", f"The upstream did not answer within {self.timeout_s:g} s.")
        except httpx.HTTPError as exc:
            state.end_probe()
            state.limiter.settle(reservation, None, time.monotonic())
            state.counters.failures += 1
            code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
            detail = self._secret.scrub(str(exc))[:MAX_MESSAGE_CHARS] or "no details"
            return Failure(code, f"Could not reach the upstream ({type(exc).__name__}: {detail}).")
        finally:
            state.release()
        return self._outcome(state, endpoint, payload, prompt_estimate, reservation, in_flight, sent)

    async def _send(self, state: UpstreamState, endpoint: str, content: bytes) -> _Sent:
        index = state.pick_client()
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await state.clients[index].post(endpoint_url(self.base_url, endpoint), content=content,
                                                           headers={"Content-Type": "application/json"})
        finally:
            state.client_load[index] -= 1
        state.feedback(response)
        if response.status_code in OVERLOAD_STATUSES:
            state.overloaded(response)
        else:
            state.end_probe()
        return _Sent(response.status_code, response.content, response.headers.get("x-request-id"))

    def _outcome(self, state: UpstreamState, endpoint: str, payload: Mapping[str, Any], prompt_estimate: int,
                 reservation: Reservation, in_flight: int, sent: _Sent) -> Result | Failure:
        now = time.monotonic()
        raw = self._secret.scrub_bytes(sent.raw)
        request_id = sent.request_id or new_request_id()
        if 200 <= sent.status < 300:
            try:
                data = jsonx.loads(raw)
            except jsonx.JSONDecodeError:
                state.limiter.settle(reservation, None, now)
                state.counters.failures += 1
                return Failure("invalid_response", f"The upstream answered {sent.status} with a body that is not "
                                                   f"JSON ({len(raw)} bytes).")
            problem = missing_fields(endpoint, data)
            if problem is not None:
                state.limiter.settle(reservation, None, now)
                state.counters.failures += 1
                return Failure("invalid_response", f"The upstream answered {sent.status} with a body that is not a "
                                                   f"{endpoint} response: {problem}.")
            usage = usage_tokens(endpoint, data.get("usage"))
            state.limiter.settle(reservation, sum(usage) if usage else None, now)
            if usage and state.shared is not None:
                state.shared.settle_soon(state.limiter.tpm, sum(usage) - reservation.tokens)
            if usage:
                state.learn(endpoint, payload, prompt_estimate, usage)
            state.aimd.on_success(in_flight, now)
            state.counters.succeeded += 1
            body = raw if b"\n" not in raw and b"\r" not in raw else jsonx.dumps(data)
            prompt, output = usage or (0, 0)
            return Result(status_code=sent.status, body=body, request_id=request_id, input_tokens=prompt,
                          output_tokens=output)
        state.limiter.settle(reservation, None, now)
        if sent.status >= 500 or sent.status in (408, 425, 429):
            state.counters.server_errors += 1
        else:
            state.counters.refused += 1
        return Result(status_code=sent.status, body=self._error_body(sent.status, raw), request_id=request_id)

    def _error_body(self, status: int, raw: bytes) -> bytes:
        """The upstream's error body as one line of JSON (wrapped in an OpenAI error if it is not JSON)."""
        try:
            data = jsonx.loads(raw) if raw.strip() else None
        except jsonx.JSONDecodeError:
            data = None
        if data is not None:
            return raw if b"\n" not in raw and b"\r" not in raw else jsonx.dumps(data)
        text = raw.decode("utf-8", errors="replace").strip()[:MAX_MESSAGE_CHARS]
        message = f"The upstream answered HTTP {status}" + (f": {text}" if text else ".")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return jsonx.dumps(error_envelope(message, kind, code=f"upstream_{status}"))
