"""The Settings object every composition root is built from (freight/runtime.py)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from freight.domain.webhooks import WebhookPolicy
from freight.engine.settings import EngineSettings
from freight.intake.settings import IntakeSettings
from freight.ports import Quota
from freight.services.batches import WindowLimits
from freight.services.files import UploadLimits
from freight.services.message_batches import MessageBatchLimits
from freight.services.prices import PriceBook
from freight.wire.batch_input import InputLimits

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DEFAULT_CHAT_MODEL = "SmolLM2-135M-Instruct"
#: Per-project limits by default (0 in freight.toml: no limit).
DEFAULT_QUOTA = Quota(max_active_batches=100, max_queued_requests=1_000_000)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("freight", appauthor=False))


@dataclass(frozen=True)
class ProjectSettings:
    #: A batch of this project may spend at most this (None: no cap beyond the batch's own).
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class CacheSettings:
    """``[cache]``: the result cache (docs/cache.md). ``enabled = false`` turns it off everywhere."""

    enabled: bool = True
    #: How long an answer is reused.
    ttl_s: int = 7 * 24 * 3600
    #: The stored answers' bodies total at most this (the oldest go first); None: no cap.
    max_bytes: int | None = 1 << 30
    #: "project": each project reuses only its own answers; "global": every project shares them (a
    #: project can then tell that another sent the same request: docs/cache.md).
    scope: str = "project"


@dataclass
class Settings:
    """What freight.toml, the environment and the flags say (freight.config.load; each key's meaning,
    default and variable: freight.config.registry)."""

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_limits: InputLimits = field(default_factory=InputLimits)
    upload: UploadLimits = field(default_factory=UploadLimits)
    window: WindowLimits = field(default_factory=WindowLimits)
    engine: EngineSettings = field(default_factory=EngineSettings)
    quota: Quota = DEFAULT_QUOTA
    anthropic: MessageBatchLimits = field(default_factory=MessageBatchLimits)
    sqlite_synchronous: str = "FULL"
    database_url: str | None = None
    database_pool_size: int = 10
    config_path: Path | None = None
    blobs: str | None = None
    #: Each model's price (``price``, ``machine_cost_per_hour`` in its table, else the pinned table).
    prices: PriceBook | None = None
    projects: dict[str, ProjectSettings] = field(default_factory=dict)
    intake: dict[str, IntakeSettings] = field(default_factory=dict)
    cache: CacheSettings = field(default_factory=CacheSettings)
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)
    metrics_project_label: bool = False
    redis_url: str | None = None
    ray_address: str | None = None
    #: The ``[models."name"]`` and ``[projects."name"]`` tables as the file gives them, every key (prices,
    #: hours and weights included, which ``models`` and ``projects`` leave to other settings); what
    #: ``freight config`` shows.
    file_tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Each declared setting of the fixed sections: "section.key" -> (value, where it came from:
    #: "default", the config file, the variable's name or the flag); ``freight config`` shows them.
    given: dict[str, tuple[Any, str]] = field(default_factory=dict)

    def price_book(self) -> PriceBook:
        return self.prices if self.prices is not None else PriceBook.from_tables(self.model_tables())

    def model_tables(self) -> dict[str, dict[str, Any]]:
        """The configured models, or the bundled default when none are configured."""
        if self.models:
            return self.models
        tables: dict[str, dict[str, Any]] = {DEFAULT_EMBEDDING_MODEL: {"backend": "local-embeddings"}}
        if importlib.util.find_spec("llama_cpp") is not None:
            # The bundled chat model needs llama-cpp-python (a compiled extra that `make` installs).
            tables[DEFAULT_CHAT_MODEL] = {"backend": "llama-cpp"}
        return tables
