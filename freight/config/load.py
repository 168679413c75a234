"""``load_settings``: one Settings built at start-up from freight.toml, FREIGHT_* variables and flags.

Each declared key is read through freight.config.read (bounds, types, precedence: flag > environment
variable > freight.toml > default); this module turns the values into the objects the code uses. Nothing
deeper in the code reads the environment for a setting; secrets are read from variables named in the
config (``api_key_env``), never written in the file.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any

from freight.config.models import check_models
from freight.config.read import Resolved, misspelt_variables, resolve
from freight.config.settings import CacheSettings, ProjectSettings, Settings, default_data_dir
from freight.domain import windows
from freight.domain.errors import ConfigError
from freight.domain.retry import RetryPolicy
from freight.domain.webhooks import WebhookPolicy
from freight.domain.windows import Calendar
from freight.engine.settings import EngineSettings, SchedulingSettings
from freight.intake.settings import intake_settings
from freight.ports import Quota
from freight.services.batches import WindowLimits
from freight.services.files import UploadLimits
from freight.services.message_batches import MessageBatchLimits
from freight.services.prices import PriceBook, backend_options
from freight.wire.batch_input import InputLimits

log = logging.getLogger("freight.config")


def find_config(explicit: Path | None, env: dict[str, str]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return explicit
    if env.get("FREIGHT_CONFIG"):
        return find_config(Path(env["FREIGHT_CONFIG"]), {})
    local = Path("freight.toml")
    return local if local.is_file() else None


def read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


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
    default_dir: Path | None = None,
) -> Settings:
    """The keyword arguments are the command-line flags (None: not given); ``default_dir``: the data dir
    when none is configured (else the platform's user data directory)."""
    env = dict(os.environ) if env is None else env
    path = find_config(config, env)
    data = read_config(path)
    flags = {"server.data_dir": data_dir, "server.host": host, "server.port": port, "server.blobs": blobs,
             "server.database_url": database_url, "server.redis_url": redis_url}
    r = resolve(data, env, flags, path)
    for name in misspelt_variables(env):
        log.warning("ignored the environment variable %s", name)
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError("[models] must be a table")
    check_models(models, str(path) if path is not None else "freight.toml")

    input_limits = InputLimits(max_lines=r["limits.max_lines"], max_bytes=r["limits.max_input_bytes"],
                               max_line_bytes=r["limits.max_line_bytes"],
                               max_custom_id_chars=r["limits.max_custom_id_chars"],
                               max_reported_errors=r["limits.max_reported_errors"])
    window = WindowLimits(min_s=r["limits.completion_window_min"], max_s=r["limits.completion_window_max"])
    if window.min_s > window.max_s:
        raise ConfigError(f"limits.completion_window_min ({window.min_s}s) is more than "
                          f"limits.completion_window_max ({window.max_s}s)")
    try:
        retry = RetryPolicy(max_attempts=r["engine.max_attempts"], base_delay_s=r["engine.retry_base_delay_s"],
                            max_delay_s=r["engine.retry_max_delay_s"])
    except ValueError as exc:
        raise ConfigError(f"[engine]: retry_base_delay_s must be at most retry_max_delay_s ({exc})") from None
    engine = EngineSettings(
        lease_s=r["engine.lease_s"], poll_interval_s=r["engine.poll_interval_s"],
        drain_timeout_s=r["engine.drain_timeout_s"], step_lease_s=r["engine.step_lease_s"],
        orphan_sweep_interval_s=r["engine.orphan_sweep_interval_s"],
        orphan_blob_age_s=r["engine.orphan_blob_age_s"], retry=retry, input_limits=input_limits,
        scheduling=_scheduling(r, models))
    try:
        webhooks = WebhookPolicy(retry_for_s=float(r["webhooks.retry_for"]),
                                 base_delay_s=r["webhooks.retry_base_delay_s"],
                                 max_delay_s=r["webhooks.retry_max_delay_s"], timeout_s=r["webhooks.timeout_s"],
                                 poll_interval_s=r["webhooks.poll_interval_s"], allow_http=r["webhooks.allow_http"])
    except ValueError as exc:
        raise ConfigError(f"[webhooks]: {exc}") from None
    try:
        intake_sources = intake_settings(r.named["intake"], window.min_s, window.max_s, input_limits.max_lines)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    data_dir_value = r["server.data_dir"] or default_dir or default_data_dir()
    r.values["server.data_dir"] = data_dir_value  # the default shown as what it is
    return Settings(
        data_dir=data_dir_value,
        host=r["server.host"], port=r["server.port"], public_url=r["server.public_url"],
        models={str(k): backend_options(v) for k, v in models.items()},
        file_tables={"models": {str(k): dict(v) for k, v in models.items()},
                     "projects": {str(k): dict(p) for k, p in r.named["projects"].items()},
                     "intake": {str(k): dict(t) for k, t in r.named["intake"].items()}},
        prices=PriceBook.from_tables({str(k): dict(v) for k, v in models.items()}) if models else None,
        input_limits=input_limits,
        upload=UploadLimits(max_upload_bytes=r["limits.max_upload_bytes"], input=input_limits),
        window=window, engine=engine,
        quota=Quota(max_active_batches=r["limits.max_active_batches_per_project"],
                    max_queued_requests=r["limits.max_queued_requests_per_project"]),
        anthropic=MessageBatchLimits(max_requests=r["anthropic.max_batch_requests"],
                                     max_bytes=r["anthropic.max_batch_bytes"],
                                     max_request_bytes=r["anthropic.max_request_bytes"],
                                     batch_window=duration_text(r["anthropic.batch_window"])),
        sqlite_synchronous=r["server.sqlite_synchronous"], database_url=r["server.database_url"],
        database_pool_size=r["server.database_pool_size"], config_path=path, blobs=r["server.blobs"],
        projects={name: ProjectSettings(max_cost_usd=p.get("max_cost_usd")) for name, p in r.named["projects"].items()},
        intake=intake_sources,
        cache=CacheSettings(enabled=r["cache.enabled"], ttl_s=r["cache.ttl"], max_bytes=r["cache.max_bytes"],
                            scope=r["cache.scope"]),
        webhooks=webhooks,
        metrics_project_label=r["metrics.project_label"],
        redis_url=r["server.redis_url"],
        ray_address=_ray_address(r["ray.address"]),
        given={name: (value, r.sources[name]) for name, value in r.values.items()},
    )


def duration_text(seconds: int) -> str:
    """Seconds as freight writes a duration: "30d", "24h", "90m", "45s"."""
    if seconds > 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ray_address(address: str | None) -> str | None:
    from freight.backends.ray.placement import check_address

    return check_address(address)


def _scheduling(r: Resolved, models: dict[str, Any]) -> SchedulingSettings:
    """``[scheduling]``, each ``[projects."name"] weight``, and each model's ``windows`` and ``timezone``."""
    weights = {name: float(p["weight"]) for name, p in r.named["projects"].items()
               if "weight" in p}
    try:
        off_peak: windows.Hours | None = None
        if r["scheduling.off_peak"] is not None:
            off_peak = windows.hours(r["scheduling.off_peak"], r["scheduling.off_peak_timezone"],
                                     "scheduling.off_peak")
            if off_peak.always:
                raise ValueError("scheduling.off_peak must name at least one window, like [\"00:00-06:00\"]")
        elif r["scheduling.off_peak_timezone"] is not None:
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
    return SchedulingSettings(weights=weights, margin=r["scheduling.margin"],
                              usage_window_s=r["scheduling.usage_window"], calendar=Calendar(hours, off_peak))
