"""Any OpenAI-compatible HTTP endpoint as a backend (vLLM, SGLang, llama.cpp server, Ollama, a provider).

Configured as ``[models."name"]`` with ``backend = "openai"`` (every key: docs/remote-models.md).

How a request goes
------------------
``execute`` gets a chunk of claimed requests and sends them concurrently (at most ``max_concurrency``
tasks per call). Each request, in order of arrival (one FIFO queue per upstream):

1. waits until fewer requests are in flight than the upstream's AIMD window allows, stragglers (in
   flight for over max(1 s, 4x the mean latency): probably hung) not counted, and fewer than
   ``max_concurrency`` in all (after an overload: until the probe, a single request, is answered
   without overload or straggles);
2. waits until the ``RateLimiter`` admits its estimated cost (requests and tokens per minute, the shared
   cool-down after an overload, what the upstream's ``x-ratelimit-*`` headers say is left);
3. is sent with ``model`` replaced by ``upstream_model``, under an overall deadline of ``timeout_s``;
4. its response feeds the limiter (headers, ``Retry-After``/``retry-after-ms``, the real ``usage``
   replacing the estimate) and AIMD (overload: decrease; success: increase), and becomes the result.

An overload is a 429, a 503 with ``Retry-After``, or a 503 without one when 10 of the last 20 answers
were such 503s (``OverloadShare``). Outcomes: a 2xx whose body is JSON with the endpoint's fields is a
success (``Result`` with the upstream's status, body and ``x-request-id``); a 5xx other than 503, a lost
connection or a broken 2xx body is sent again at once (ahead of the queue) up to ``RETRIES_AT_ONCE``
times; then 408/425/429/5xx are ``Result``s the engine retries with backoff; other 4xx are final (the
error file gets the upstream's own body); no answer, a timeout, a body that is not JSON or lacks the
endpoint's fields are ``Failure``s (retried by the engine).

Token estimate (before sending, ``freight.wire.token_estimate``): prompt tokens from the characters of
the prompt (``chars / 4``, scaled by the ratio of real to estimated prompt tokens observed on this
upstream, plus 4 per chat message and 3 per request; token-id inputs count exactly; 765 per image),
plus the requested output (``max_completion_tokens``/``max_tokens``/``max_output_tokens`` times ``n``;
16 for legacy completions without one) or, when none is given, the running mean of the output
observed on this endpoint.

Modules: ``backend`` (the backend), ``upstream`` (the shared state of one upstream and its registry),
``checks`` (URLs, the fields a 2xx body needs).

Sharing
-------
Everything about one upstream lives in one ``UpstreamState``: the httpx connection pools (one TLS
context, pools made as they fill), the limiter,
AIMD, the FIFO queue and the running means. Backends share it when they have the same ``base_url``
and the same API key (whichever environment variable it comes from), so several freight model names
pointing at one endpoint share its limits. The module-level registry holds it from the first
``start()`` to the last ``close()``; configured limits combine to the smallest.

Secrets
-------
The API key is read once, at construction, from the environment variable named by ``api_key_env``
(``freight.domain.secrets.Secret``: surrounding whitespace and a trailing newline removed, control
characters refused); it is only ever put in the ``Authorization`` header. It is never logged, never
part of a ``repr``, a ``Failure`` message, a request id or a stored body: what the upstream sends is
redacted as parsed JSON (escapes undone) and again as the final bytes, in any JSON-escaped form
(``freight.wire.redaction``); an ``x-request-id`` that quotes it is replaced by one of freight's.
"""

from freight.backends.openai_http.backend import MAX_MESSAGE_CHARS, OpenAIHTTPBackend
from freight.backends.openai_http.checks import (
    ENDPOINTS,
    endpoint_url,
    missing_fields,
    normalize_base_url,
    redact_url,
)
from freight.backends.openai_http.upstream import UpstreamCounters, UpstreamState, shared_states
from freight.wire.token_estimate import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    prompt_parts,
    requested_output,
    usage_tokens,
)

__all__ = [
    "CHAT", "COMPLETIONS", "EMBEDDINGS", "ENDPOINTS", "MAX_MESSAGE_CHARS", "RESPONSES",
    "OpenAIHTTPBackend", "UpstreamCounters", "UpstreamState", "endpoint_url", "missing_fields",
    "normalize_base_url", "prompt_parts", "redact_url", "requested_output", "shared_states", "usage_tokens",
]
