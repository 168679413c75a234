"""Backends: one module per way of executing a request, all behind ``freight.ports.Backend``."""

from __future__ import annotations

from typing import Any

from freight.domain.errors import ConfigError
from freight.ports import Backend, BatchLane

KINDS = ("local-embeddings", "llama-cpp", "openai", "scripted")


def build_backend(name: str, table: dict[str, Any], redis_url: str | None = None) -> Backend:
    """The backend for one ``[models."name"]`` table of freight.toml. ``redis_url``: remote upstreams'
    rate limits are shared there by every process (freight/backends/shared_limit.py)."""
    options = {k: v for k, v in table.items() if k != "backend"}
    kind = table["backend"]
    try:
        if kind == "local-embeddings":
            from freight.backends.local_embeddings import LocalEmbeddingBackend

            return LocalEmbeddingBackend(model_id=name, **options)
        if kind == "llama-cpp":
            from freight.backends.llama_cpp import LlamaCppBackend

            return LlamaCppBackend(model_id=name, **options)
        if kind == "openai":
            from freight.backends.openai_http import OpenAIHTTPBackend

            remote = OpenAIHTTPBackend(model_id=name, **options)
            if redis_url is not None:
                from freight.backends.shared_limit import SharedLimits

                remote.shared_limits = SharedLimits(redis_url)
            return remote
        if kind == "scripted":
            from freight.backends.scripted import ScriptedBackend

            return ScriptedBackend(model_id=name, **options)
    except TypeError as exc:
        raise ConfigError(f"[models.\"{name}\"]: {exc}") from None
    raise ConfigError(f"[models.\"{name}\"]: unknown backend {kind!r} (known: {', '.join(KINDS + LANE_KINDS)})")


def build_backends(tables: dict[str, dict[str, Any]], redis_url: str | None = None) -> list[Backend]:
    """Every configured backend; chat models also serve /v1/messages (freight.backends.messages_adapter);
    answers are checked against the schema their request asks for (freight.backends.output_check).
    Models on a batch lane (``LANE_KINDS``) are not backends: see ``build_lanes``."""
    from freight.backends.messages_adapter import MessagesAdapter
    from freight.backends.output_check import OutputCheck

    # Outputs are checked outside the Messages adapter: a /v1/messages answer is checked as a Message.
    return [OutputCheck(MessagesAdapter(build_backend(name, table, redis_url))) for name, table in tables.items()
            if table.get("backend") not in LANE_KINDS]


#: Models forwarded to a provider's own batch API (freight/backends/provider_batches.py).
LANE_KINDS = ("openai-batch", "anthropic-batch")


def build_lanes(tables: dict[str, dict[str, Any]]) -> list[BatchLane]:
    """The batch lanes of the ``[models."name"]`` tables whose backend is one of ``LANE_KINDS``."""
    from freight.backends.provider_batches import AnthropicBatchLane, OpenAIBatchLane

    lanes: list[BatchLane] = []
    for name, table in tables.items():
        kind = table.get("backend")
        if kind not in LANE_KINDS:
            continue
        options = {k: v for k, v in table.items() if k != "backend"}
        try:
            lanes.append(OpenAIBatchLane(name, **options) if kind == "openai-batch"
                         else AnthropicBatchLane(name, **options))
        except TypeError as exc:
            raise ConfigError(f"[models.\"{name}\"]: {exc}") from None
    return lanes
