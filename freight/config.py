"""Settings: one object built at start-up from freight.toml, FREIGHT_* variables and flags.

Precedence: command-line flag > environment variable > freight.toml > default. Nothing deeper
in the code reads the environment; secrets are read from variables named in the config
(``api_key_env``), never written in the file.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from freight.domain import windows
from freight.domain.cache_key import SCOPES
from freight.domain.durations import parse_duration_s
from freight.domain.errors import ConfigError
from freight.domain.retry import RetryPolicy
from freight.domain.webhooks import WebhookPolicy
from freight.domain.windows import Calendar
from freight.engine.settings import EngineSettings, SchedulingSettings
from freight.intake.settings import IntakeSettings, intake_settings
from freight.ports import Quota
from freight.services.batches import WindowLimits
from freight.services.files import UploadLimits
from freight.services.message_batches import MessageBatchLimits
from freight.services.prices import PriceBook, backend_options
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
    #: How long an answer is reused (``ttl``, a duration: "7d", "12h", or seconds).
    ttl_s: int = 7 * 24 * 3600
    #: The stored answers' bodies total at most this (the oldest go first); None: no cap.
    max_bytes: int | None = 1 << 30
    #: "project": each project reuses only its own answers; "global": every project shares them (a
    #: project can then tell that another sent the same request: docs/cache.md).
    scope: str = "project"


@dataclass
class Settings:
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
    #: ``[anthropic]``: the Message Batches API's limits and batch window.
    anthropic: MessageBatchLimits = field(default_factory=MessageBatchLimits)
    sqlite_synchronous: str = "FULL"
    #: PostgreSQL shared by every process (``--database-url``); None: SQLite in the data dir.
    database_url: str | None = None
    #: Connections each process keeps to PostgreSQL at most.
    database_pool_size: int = 10
    config_path: Path | None = None
    #: Where file bytes live: None (DATA_DIR/blobs), a directory, or ``s3://bucket/prefix``.
    blobs: str | None = None
    #: Each model's price (``price``, ``machine_cost_per_hour`` in its table, else the pinned table).
    prices: PriceBook | None = None
    #: ``[projects."name"]``: per-project settings (``max_cost_usd``: each batch's spending cap).
    projects: dict[str, ProjectSettings] = field(default_factory=dict)
    #: ``[intake."name"]``: queue intake sources (docs/intake.md).
    intake: dict[str, IntakeSettings] = field(default_factory=dict)
    cache: CacheSettings = field(default_factory=CacheSettings)
    #: ``[webhooks]``: deliveries' retries, timeout and whether plain http may leave the machine.
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)
    #: ``[metrics] project_label``: label per-project series with the project (off: bounded cardinality).
    metrics_project_label: bool = False
    #: Redis shared by every process for remote upstreams' rate limits (``--redis-url``); None: per process.
    redis_url: str | None = None
    #: ``[ray] address``, else ``RAY_ADDRESS``: the Ray cluster of models with ``placement = "ray"``
    #: ("auto", "local", "ray://head:10001", "host:port"); None: "auto".
    ray_address: str | None = None

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


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _take(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _duration(value: Any, where: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return parse_duration_s(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def find_config(explicit: Path | None, env: dict[str, str]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return explicit
    if env.get("FREIGHT_CONFIG"):
        return find_config(Path(env["FREIGHT_CONFIG"]), {})
    local = Path("freight.toml")
    return local if local.is_file() else None


def load_settings(
    config: Path | None = None,
    *,
    data_dir: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    blobs: str | None = None,
    env: dict[str, str] | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> Settings:
    env = dict(os.environ) if env is None else env
    path = find_config(config, env)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    unknown = set(data) - {"server", "limits", "engine", "models", "anthropic", "projects", "scheduling", "webhooks",
                           "metrics", "intake", "cache", "ray"}
    if unknown:
        raise ConfigError(f"unknown section(s) in {path}: {', '.join(sorted(unknown))}")
    server, limits, engine = _section(data, "server"), _section(data, "limits"), _section(data, "engine")
    models = _section(data, "models")
    for name, table in models.items():
        if not isinstance(table, dict) or "backend" not in table:
            raise ConfigError(f"[models.\"{name}\"] needs a 'backend' key")

    settings = Settings(config_path=path)
    settings.models = {str(k): backend_options(v) for k, v in models.items()}
    if models:
        settings.prices = PriceBook.from_tables({str(k): dict(v) for k, v in models.items()})
    settings.projects = _projects(_section(data, "projects"))
    try:
        settings.intake = intake_settings(_section(data, "intake"))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if server.get("data_dir"):
        settings.data_dir = Path(str(server["data_dir"])).expanduser()
    if env.get("FREIGHT_DATA_DIR"):
        settings.data_dir = Path(env["FREIGHT_DATA_DIR"]).expanduser()
    if data_dir is not None:
        settings.data_dir = data_dir
    settings.host = host or env.get("FREIGHT_HOST") or _take(server, "host", str, "server") or settings.host
    port_value = port or env.get("FREIGHT_PORT") or _take(server, "port", int, "server") or settings.port
    try:
        settings.port = int(port_value)
    except ValueError:
        raise ConfigError(f"port must be a number, got {port_value!r}") from None
    settings.blobs = blobs or env.get("FREIGHT_BLOBS") or _take(server, "blobs", str, "server") or None
    settings.public_url = env.get("FREIGHT_PUBLIC_URL") or _take(server, "public_url", str, "server")
    settings.sqlite_synchronous = _take(server, "sqlite_synchronous", str, "server") or "FULL"
    settings.database_url = (database_url or env.get("FREIGHT_DATABASE_URL")
                             or _take(server, "database_url", str, "server"))
    settings.redis_url = redis_url or env.get("FREIGHT_REDIS_URL") or _take(server, "redis_url", str, "server") or None
    pool_size = _take(server, "database_pool_size", int, "server")
    settings.database_pool_size = settings.database_pool_size if pool_size is None else pool_size
    if settings.database_pool_size < 1:
        raise ConfigError("server.database_pool_size must be at least 1")

    il = InputLimits()
    settings.input_limits = InputLimits(
        max_lines=_take(limits, "max_lines", int, "limits") or il.max_lines,
        max_bytes=_take(limits, "max_input_bytes", int, "limits") or il.max_bytes,
        max_line_bytes=_take(limits, "max_line_bytes", int, "limits") or il.max_line_bytes,
        max_custom_id_chars=_take(limits, "max_custom_id_chars", int, "limits") or il.max_custom_id_chars,
        max_reported_errors=_take(limits, "max_reported_errors", int, "limits") or il.max_reported_errors,
    )
    settings.upload = UploadLimits(
        max_upload_bytes=_take(limits, "max_upload_bytes", int, "limits") or UploadLimits().max_upload_bytes,
        input=settings.input_limits,
    )
    def quota_limit(key: str, default: int | None) -> int | None:
        value = _take(limits, key, int, "limits")
        if value is None:
            return default
        if value < 0:
            raise ConfigError(f"limits.{key} must be 0 (no limit) or more, got {value}")
        return value or None

    settings.quota = Quota(
        max_active_batches=quota_limit("max_active_batches_per_project", DEFAULT_QUOTA.max_active_batches),
        max_queued_requests=quota_limit("max_queued_requests_per_project", DEFAULT_QUOTA.max_queued_requests),
    )
    wl = WindowLimits()
    settings.window = WindowLimits(
        min_s=_duration(limits["completion_window_min"], "limits.completion_window_min")
        if "completion_window_min" in limits else wl.min_s,
        max_s=_duration(limits["completion_window_max"], "limits.completion_window_max")
        if "completion_window_max" in limits else wl.max_s,
    )
    es = EngineSettings()
    rp = RetryPolicy()
    try:
        retry = RetryPolicy(
            max_attempts=_take(engine, "max_attempts", int, "engine") or rp.max_attempts,
            base_delay_s=float(_take(engine, "retry_base_delay_s", (int, float), "engine") or rp.base_delay_s),
            max_delay_s=float(_take(engine, "retry_max_delay_s", (int, float), "engine") or rp.max_delay_s),
        )
    except ValueError as exc:
        raise ConfigError(f"[engine]: {exc}") from None
    settings.engine = EngineSettings(
        lease_s=float(_take(engine, "lease_s", (int, float), "engine") or es.lease_s),
        poll_interval_s=float(_take(engine, "poll_interval_s", (int, float), "engine") or es.poll_interval_s),
        drain_timeout_s=float(_take(engine, "drain_timeout_s", (int, float), "engine") or es.drain_timeout_s),
        step_lease_s=float(_take(engine, "step_lease_s", (int, float), "engine") or es.step_lease_s),
        orphan_sweep_interval_s=float(_take(engine, "orphan_sweep_interval_s", (int, float), "engine")
                                      or es.orphan_sweep_interval_s),
        orphan_blob_age_s=float(_take(engine, "orphan_blob_age_s", (int, float), "engine") or es.orphan_blob_age_s),
        retry=retry,
        input_limits=settings.input_limits,
        scheduling=_scheduling(_section(data, "scheduling"), _section(data, "projects"), models),
    )
    settings.anthropic = _anthropic_limits(_section(data, "anthropic"))
    settings.webhooks = _webhook_policy(_section(data, "webhooks"))
    metrics = _section(data, "metrics")
    if set(metrics) - {"project_label"}:
        raise ConfigError(f"unknown key(s) in [metrics]: {', '.join(sorted(set(metrics) - {'project_label'}))}")
    settings.metrics_project_label = bool(_take(metrics, "project_label", bool, "metrics"))
    settings.cache = _cache_settings(_section(data, "cache"))
    settings.ray_address = _ray_address(_section(data, "ray"), env)
    return settings


def _ray_address(table: dict[str, Any], env: dict[str, str]) -> str | None:
    """``[ray] address``, else ``RAY_ADDRESS`` (checked: see freight.backends.ray.placement.check_address)."""
    from freight.backends.ray.placement import check_address

    if set(table) - {"address"}:
        raise ConfigError(f"unknown key(s) in [ray]: {', '.join(sorted(set(table) - {'address'}))}")
    if "address" in table:
        return check_address(table["address"])
    return check_address(env["RAY_ADDRESS"]) if env.get("RAY_ADDRESS") else None


def _cache_settings(table: dict[str, Any]) -> CacheSettings:
    """``[cache]``: ``enabled`` (true), ``ttl`` (seconds, or "30m", "12h", "7d"), ``max_bytes`` (0: no cap),
    ``scope`` ("project" or "global")."""
    unknown = set(table) - {"enabled", "ttl", "max_bytes", "scope"}
    if unknown:
        raise ConfigError(f"unknown key(s) in [cache]: {', '.join(sorted(unknown))}")
    d = CacheSettings()
    enabled = _take(table, "enabled", bool, "cache")
    ttl_s = _duration(table["ttl"], "cache.ttl") if "ttl" in table else d.ttl_s
    if ttl_s <= 0:
        raise ConfigError(f"cache.ttl must be more than 0, got {table.get('ttl')!r}")
    max_bytes = _take(table, "max_bytes", int, "cache")
    if max_bytes is not None and max_bytes < 0:
        raise ConfigError(f"cache.max_bytes must be 0 (no cap) or more, got {max_bytes}")
    scope = table.get("scope", d.scope)
    if scope not in SCOPES:
        raise ConfigError(f"cache.scope must be one of {', '.join(repr(s) for s in SCOPES)}, got {scope!r}")
    return CacheSettings(enabled=d.enabled if enabled is None else enabled, ttl_s=ttl_s,
                         max_bytes=d.max_bytes if max_bytes is None else (max_bytes or None), scope=str(scope))


def _projects(table: dict[str, Any]) -> dict[str, ProjectSettings]:
    """``[projects."name"]``: ``max_cost_usd`` (dollars, more than 0); ``weight`` is read by ``_scheduling``."""
    projects = {}
    for name, value in table.items():
        where = f'[projects."{name}"]'
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(value) - {"max_cost_usd", "weight"}  # weight: the fair share (_scheduling)
        if unknown:
            raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
        cap = value.get("max_cost_usd")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0):
            raise ConfigError(f"{where}.max_cost_usd must be a number more than 0, got {cap!r}")
        projects[str(name)] = ProjectSettings(max_cost_usd=None if cap is None else float(cap))
    return projects
def _webhook_policy(table: dict[str, Any]) -> WebhookPolicy:
    """``[webhooks]``: retry_for ("3d"), retry_base_delay_s, retry_max_delay_s, timeout_s, poll_interval_s,
    allow_http."""
    keys = {"retry_for", "retry_base_delay_s", "retry_max_delay_s", "timeout_s", "poll_interval_s", "allow_http"}
    if set(table) - keys:
        raise ConfigError(f"unknown key(s) in [webhooks]: {', '.join(sorted(set(table) - keys))}")
    d = WebhookPolicy()

    def number(key: str, default: float) -> float:
        value = _take(table, key, (int, float), "webhooks")
        if value is not None and value <= 0:
            raise ConfigError(f"webhooks.{key} must be more than 0")
        return default if value is None else float(value)

    return WebhookPolicy(
        retry_for_s=float(_duration(table["retry_for"], "webhooks.retry_for")) if "retry_for" in table
        else d.retry_for_s,
        base_delay_s=number("retry_base_delay_s", d.base_delay_s),
        max_delay_s=number("retry_max_delay_s", d.max_delay_s),
        timeout_s=number("timeout_s", d.timeout_s),
        poll_interval_s=number("poll_interval_s", d.poll_interval_s),
        allow_http=bool(_take(table, "allow_http", bool, "webhooks")),
    )


def _anthropic_limits(table: dict[str, Any]) -> MessageBatchLimits:
    """``[anthropic]``: batch_window ("24h"), max_batch_requests, max_batch_bytes, max_request_bytes."""
    unknown = set(table) - {"batch_window", "max_batch_requests", "max_batch_bytes", "max_request_bytes"}
    if unknown:
        raise ConfigError(f"unknown key(s) in [anthropic]: {', '.join(sorted(unknown))}")
    d = MessageBatchLimits()
    window = table.get("batch_window", d.batch_window)
    if _duration(window, "anthropic.batch_window") < 1:
        raise ConfigError("anthropic.batch_window must be at least 1s")
    return MessageBatchLimits(
        max_requests=_take(table, "max_batch_requests", int, "anthropic") or d.max_requests,
        max_bytes=_take(table, "max_batch_bytes", int, "anthropic") or d.max_bytes,
        max_request_bytes=_take(table, "max_request_bytes", int, "anthropic") or d.max_request_bytes,
        batch_window=str(window) if not isinstance(window, int) else f"{window}s",
    )


def _calendar(table: dict[str, Any], models: dict[str, Any]) -> Calendar:
    """``[scheduling] off_peak`` (with ``off_peak_timezone``) and each model's ``windows`` (``timezone``)."""
    try:
        off_peak: windows.Hours | None = None
        if "off_peak" in table:
            off_peak = windows.hours(table["off_peak"], table.get("off_peak_timezone"), "scheduling.off_peak")
            if off_peak.always:
                raise ValueError("scheduling.off_peak must name at least one window, like [\"00:00-06:00\"]")
        elif "off_peak_timezone" in table:
            raise ValueError("scheduling.off_peak_timezone only counts with scheduling.off_peak")
        hours: dict[str, windows.Hours] = {}
        for name, model in models.items():
            where = f'models."{name}".windows'
            if "windows" in model:
                hours[str(name)] = windows.hours(model["windows"], model.get("timezone"), where)
            elif "timezone" in model and "price_windows" not in model:
                raise ValueError(f'models."{name}".timezone only counts with windows or price_windows')
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Calendar(hours, off_peak)


def _scheduling(table: dict[str, Any], projects: dict[str, Any], models: dict[str, Any]) -> SchedulingSettings:
    """``[scheduling]``: margin (0 < m <= 1), usage_window ("1h"), off_peak (windows) and off_peak_timezone;
    ``[projects."name"]``: weight (> 0); each model's windows and timezone."""
    unknown = set(table) - {"margin", "usage_window", "off_peak", "off_peak_timezone"}
    if unknown:
        raise ConfigError(f"unknown key(s) in [scheduling]: {', '.join(sorted(unknown))}")
    d = SchedulingSettings()
    margin = float(_take(table, "margin", (int, float), "scheduling") or d.margin)
    if not 0 < margin <= 1:
        raise ConfigError(f"scheduling.margin must be more than 0 and at most 1, got {margin}")
    window = _duration(table["usage_window"], "scheduling.usage_window") if "usage_window" in table else None
    weights: dict[str, float] = {}
    for name, project in projects.items():
        if not isinstance(project, dict):
            raise ConfigError(f'[projects."{name}"] must be a table')
        unknown = set(project) - {"weight", "max_cost_usd"}  # max_cost_usd: read by _projects
        if unknown:
            raise ConfigError(f'unknown key(s) in [projects."{name}"]: {", ".join(sorted(unknown))}')
        weight = _take(project, "weight", (int, float), f'projects."{name}"')
        if weight is not None:
            if weight <= 0:
                raise ConfigError(f'projects."{name}".weight must be more than 0, got {weight}')
            weights[str(name)] = float(weight)
    return SchedulingSettings(weights=weights, margin=margin, usage_window_s=window or d.usage_window_s,
                              calendar=_calendar(table, models))
