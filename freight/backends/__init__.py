"""Backends: one module per way of executing a request, all behind ``freight.ports.Backend``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from freight.domain.errors import ConfigError
from freight.ports import Backend, BatchLane

if TYPE_CHECKING:
    from freight.backends.result_cache import CacheSetup

KINDS = ("local-embeddings", "llama-cpp", "openai", "scripted", "vllm")


def build_backend(name: str, table: dict[str, Any], redis_url: str | None = None, *, ray_address: str | None = None,
                  queue_depth: Callable[[str], int] | None = None, runs_here: bool = True) -> Backend:
    """The backend for one ``[models."name"]`` table of freight.toml. ``redis_url``: remote upstreams'
    rate limits are shared there by every process (freight/backends/shared_limit.py). A local model with
    ``placement = "ray"`` runs on Ray actors (freight/backends/ray/) at ``ray_address``, scaled by
    ``queue_depth(model)``. ``runs_here=False``: the backend only checks options in this process (its model
    runs on Ray actors), so an engine it imports at load time (vLLM) need not be installed here."""
    from freight.backends.ray.placement import PLACEMENT_KEYS, parse_placement

    placement = parse_placement(name, table)
    if placement is not None:
        from freight.backends.ray.backend import RayBackend

        local_table = {k: v for k, v in table.items() if k not in PLACEMENT_KEYS}
        local = build_backend(name, local_table, runs_here=False)
        options = {k: v for k, v in local_table.items() if k not in ("backend", "cache")}
        return RayBackend(table["backend"], name, options, local, placement, ray_address, queue_depth)
    options = {k: v for k, v in table.items() if k not in ("backend", "cache", "placement")}
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
        if kind == "vllm":
            from freight.backends.vllm import VllmBackend, vllm_missing

            # Said at startup, not at the first request's model load (a replica on Ray says it when it loads).
            missing = vllm_missing(name) if runs_here else None
            if missing is not None:
                raise ConfigError(missing, param="backend")
            return VllmBackend(model_id=name, **options)
        if kind == "scripted":
            from freight.backends.scripted import ScriptedBackend

            return ScriptedBackend(model_id=name, **options)
    except TypeError as exc:
        raise ConfigError(f"[models.\"{name}\"]: {exc}") from None
    raise ConfigError(f"[models.\"{name}\"]: unknown backend {kind!r} (known: {', '.join(KINDS + LANE_KINDS)})")


def build_backends(tables: dict[str, dict[str, Any]], cache: CacheSetup | None = None,
                   redis_url: str | None = None, *, ray_address: str | None = None,
                   queue_depth: Callable[[str], int] | None = None) -> list[Backend]:
    """Every configured backend; chat models also serve /v1/messages (freight.backends.messages_adapter);
    answers are checked against the schema their request asks for (freight.backends.output_check);
    with ``cache``, answers are reused (freight.backends.result_cache) unless the table says
    ``cache = false``; a model that cannot load ends its requests (freight.backends.start_guard).
    ``ray_address``/``queue_depth``: for models placed on Ray (``build_backend``).
    Models on a batch lane (``LANE_KINDS``) are not backends: see ``build_lanes``."""
    from freight.backends.messages_adapter import MessagesAdapter
    from freight.backends.output_check import OutputCheck
    from freight.backends.result_cache import CachedBackend, model_identity
    from freight.backends.start_guard import StartGuard

    out: list[Backend] = []
    for name, table in tables.items():
        if table.get("backend") in LANE_KINDS:
            continue
        # The scripted test backend's answers count its calls: reused only when its table asks for it.
        use_cache = table.get("cache", table.get("backend") != "scripted")
        if not isinstance(use_cache, bool):
            raise ConfigError(f"[models.\"{name}\"].cache must be true or false, got {use_cache!r}")
        # Outputs are checked outside the Messages adapter: a /v1/messages answer is checked as a Message;
        # the cache is outermost, so that it stores only checked answers.
        backend: Backend = OutputCheck(MessagesAdapter(StartGuard(build_backend(
            name, table, redis_url, ray_address=ray_address, queue_depth=queue_depth))))
        if cache is not None and use_cache:
            backend = CachedBackend(backend, cache, functools.partial(model_identity, name, table))
        out.append(backend)
    return out


#: Models forwarded to a provider's own batch API (freight/backends/provider_batches.py).
LANE_KINDS = ("openai-batch", "anthropic-batch")


def build_lanes(tables: dict[str, dict[str, Any]]) -> list[BatchLane]:
    """The batch lanes of the ``[models."name"]`` tables whose backend is one of ``LANE_KINDS``."""
    lanes: list[BatchLane] = []
    for name, table in tables.items():
        kind = table.get("backend")
        if kind not in LANE_KINDS:
            continue
        from freight.backends.provider_batches import AnthropicBatchLane, OpenAIBatchLane  # (only with a lane)

        options = {k: v for k, v in table.items() if k != "backend"}
        try:
            lanes.append(OpenAIBatchLane(name, **options) if kind == "openai-batch"
                         else AnthropicBatchLane(name, **options))
        except TypeError as exc:
            raise ConfigError(f"[models.\"{name}\"]: {exc}") from None
    return lanes
