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

from freight.testing.upstream.behaviour import UpstreamServer
from freight.testing.upstream.bodies import (
    CHAT,
    COMPLETIONS,
    CREATED,
    EMBEDDINGS,
    ENDPOINTS,
    RESPONSES,
    build_response,
    completion_tokens,
    count_prompt_tokens,
    count_text_tokens,
    format_duration,
    request_key,
    validate,
)
from freight.testing.upstream.config import UpstreamConfig, UpstreamStats
from freight.testing.upstream.run import Upstream, main

__all__ = [
    "CHAT", "COMPLETIONS", "CREATED", "EMBEDDINGS", "ENDPOINTS", "RESPONSES", "Upstream", "UpstreamConfig",
    "UpstreamServer", "UpstreamStats", "build_response", "completion_tokens", "count_prompt_tokens",
    "count_text_tokens", "format_duration", "main", "request_key", "validate",
]
