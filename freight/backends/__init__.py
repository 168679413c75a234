"""Backends: one module per way of executing a request, all behind ``freight.ports.Backend``."""

from __future__ import annotations

from typing import Any

from freight.domain.errors import ConfigError
from freight.ports import Backend

KINDS = ("local-embeddings", "scripted")


def build_backend(name: str, table: dict[str, Any]) -> Backend:
    """The backend for one ``[models."name"]`` table of freight.toml."""
    options = {k: v for k, v in table.items() if k != "backend"}
    kind = table["backend"]
    try:
        if kind == "local-embeddings":
            from freight.backends.local_embeddings import LocalEmbeddingBackend

            return LocalEmbeddingBackend(model_id=name, **options)
        if kind == "scripted":
            from freight.backends.scripted import ScriptedBackend

            return ScriptedBackend(model_id=name, **options)
    except TypeError as exc:
        raise ConfigError(f"[models.\"{name}\"]: {exc}") from None
    raise ConfigError(f"[models.\"{name}\"]: unknown backend {kind!r} (known: {', '.join(KINDS)})")


def build_backends(tables: dict[str, dict[str, Any]]) -> list[Backend]:
    return [build_backend(name, table) for name, table in tables.items()]
