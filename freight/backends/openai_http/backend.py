"""The ``openai`` backend: one freight model name served by an OpenAI-compatible HTTP endpoint."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from freight.backends.openai_http.checks import (
    ENDPOINTS,
    endpoint_url,
    missing_fields,
    normalize_base_url,
    redact_url,
)
from freight.backends.openai_http.upstream import REGISTRY, REGISTRY_LOCK, UpstreamState
from freight.domain.errors import ConfigError
from freight.domain.ids import new_request_id, upstream_request_id
from freight.domain.ratelimit import Reservation
from freight.domain.requests import Failure, Result
from freight.domain.secrets import Secret
from freight.ports import WITHDRAWN, ModelInfo, Withdrawn, current_withdrawal
from freight.wire import jsonx
from freight.wire.openai import error_envelope
from freight.wire.redaction import NOT_JSON, redact_body
from freight.wire.token_estimate import usage_tokens

#: Longest upstream text kept in a message (bodies that are not JSON).
MAX_MESSAGE_CHARS = 2000
#: A request whose answer is a server error (5xx but 503), a broken body or a lost connection is sent
#: again at once, this many times, before the engine gets the failure back: the retry goes ahead of the
#: queue (it was at its head) and takes its share of the budget, instead of waiting for the engine's
#: backoff, a new claim and the queue. Timeouts and overloads (429, 503) go back to the engine.
RETRIES_AT_ONCE = 2


def retry_at_once(outcome: Result | Failure) -> bool:
    if isinstance(outcome, Failure):
        return outcome.code != "timeout"
    status = outcome.status_code or 0
    return status >= 500 and status != 503


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
        initial_concurrency: int = 8,
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
                            ("initial_concurrency", initial_concurrency), ("chunk_size", chunk_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{where}: {name} must be a positive integer")
        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or timeout_s <= 0:
            raise ConfigError(f"{where}: timeout_s must be a positive number of seconds")
        self.model_id = model_id
        self.base_url = normalize_base_url(base_url, where)
        self.api_key_env = api_key_env
        self._secret = Secret.from_env(api_key_env, os.environ if env is None else env, where)
        self.upstream_model = upstream_model or model_id
        self.rpm = rpm
        self.tpm = tpm
        self.max_in_flight = max_concurrency
        #: The AIMD window's first value (slow start doubles it per round trip up to ``max_concurrency``).
        self.initial_in_flight = min(initial_concurrency, max_concurrency)
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        #: Backend protocol: how many ``execute`` calls the engine runs at once. Enough chunks to keep
        #: ``max_concurrency`` requests in flight, plus two being claimed or finishing.
        self.max_concurrency = math.ceil(max_concurrency / chunk_size) + 2
        chosen = frozenset(endpoints) if endpoints is not None else ENDPOINTS
        if not chosen or not chosen <= ENDPOINTS:
            raise ConfigError(f"{where}: endpoints must be among {', '.join(sorted(ENDPOINTS))}")
        self.endpoints = chosen
        #: Set by the composition root with ``--redis-url``: freight.backends.shared_limit.SharedLimits.
        self.shared_limits: Any = None
        self._state: UpstreamState | None = None

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
            with REGISTRY_LOCK:  # started before on another (now gone) event loop: let that state go
                self._state.refs -= 1
            self._state = None
        key = (self.base_url, self._secret.fingerprint())
        with REGISTRY_LOCK:
            state = REGISTRY.get(key)
            if state is None or state.loop_ref() is not loop:
                state = UpstreamState(key, self.base_url, self._secret, self.max_in_flight, self.timeout_s, loop,
                                      initial_in_flight=self.initial_in_flight)
                REGISTRY[key] = state
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
        with REGISTRY_LOCK:
            state.refs -= 1
            last = state.refs <= 0
            if last and REGISTRY.get(state.key) is state:
                del REGISTRY[state.key]
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
        for attempt in range(RETRIES_AT_ONCE + 1):
            outcome = await self._attempt(state, endpoint, payload, content, first=attempt > 0)
            if attempt == RETRIES_AT_ONCE or not retry_at_once(outcome):
                break
            state.counters.retried_at_once += 1
        return outcome

    async def _attempt(self, state: UpstreamState, endpoint: str, payload: dict[str, Any], content: bytes,
                       first: bool) -> Result | Failure:
        prompt_estimate, estimate = state.estimate(endpoint, payload)
        withdrawal, admission = current_withdrawal.get(), state.admit(estimate, first=first)
        try:  # waiting for admission: a cancelled or expired batch's request ends here, never sent
            reservation, in_flight, ticket = await (withdrawal.before(admission) if withdrawal else admission)
        except Withdrawn:
            return withdrawal.failure() if withdrawal else Failure(WITHDRAWN, "withdrawn")
        state.counters.sent += 1
        try:
            sent = await self._send(state, endpoint, content, ticket)
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
            state.release(ticket)
        return self._outcome(state, endpoint, payload, prompt_estimate, reservation, in_flight, sent)

    async def _send(self, state: UpstreamState, endpoint: str, content: bytes, ticket: int) -> _Sent:
        index = state.pick_client()
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await state.clients[index].post(endpoint_url(self.base_url, endpoint), content=content,
                                                           headers={"Content-Type": "application/json"})
        finally:
            state.client_load[index] -= 1
        state.answered(response)
        if 200 <= response.status_code < 300:
            state.latency.add(time.monotonic() - state.sent_at.get(ticket, time.monotonic()))
        return _Sent(response.status_code, response.content, response.headers.get("x-request-id"))

    def _outcome(self, state: UpstreamState, endpoint: str, payload: Mapping[str, Any], prompt_estimate: int,
                 reservation: Reservation, in_flight: int, sent: _Sent) -> Result | Failure:
        now = time.monotonic()
        # Redacted as parsed values (escapes undone) and as the final bytes: what is stored is safe.
        raw, data = redact_body(self._secret, sent.raw)
        request_id = self._request_id(sent.request_id)
        if 200 <= sent.status < 300:
            if data is NOT_JSON:
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
            prompt, output = usage or (0, 0)
            return Result(status_code=sent.status, body=raw, request_id=request_id, input_tokens=prompt,
                          output_tokens=output)
        state.limiter.settle(reservation, None, now)
        if sent.status >= 500 or sent.status in (408, 425, 429):
            state.counters.server_errors += 1
        else:
            state.counters.refused += 1
        body = raw if data is not NOT_JSON else self._wrapped_error(sent.status, raw)
        return Result(status_code=sent.status, body=body, request_id=request_id)

    def _request_id(self, value: str | None) -> str:
        """The upstream's ``x-request-id`` if it is a plain short token that does not quote the key."""
        if value and self._secret.scrub(value) != value:
            return new_request_id()
        return upstream_request_id(value)

    def _wrapped_error(self, status: int, raw: bytes) -> bytes:
        """An error body that is not JSON (already scrubbed) wrapped in an OpenAI error, as one line."""
        text = raw.decode("utf-8", errors="replace").strip()[:MAX_MESSAGE_CHARS]
        message = f"The upstream answered HTTP {status}" + (f": {text}" if text else ".")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return self._secret.scrub_bytes(jsonx.dumps(error_envelope(message, kind, code=f"upstream_{status}")))
