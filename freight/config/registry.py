"""Every setting freight reads, declared once: its place in freight.toml, type, default, bounds,
environment variable, command-line flag and help.

``freight.config.load`` reads the file, the environment and the flags through these declarations, so
each setting is checked the same way wherever it comes from (an explicit 0 is a value, never "use the
default"); docs/configuration.md's reference tables are generated from them
(``python -m freight.config.docs``) and ``make lint`` checks that the page is up to date.
Defaults are taken from the dataclasses that use them, so a default is written in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from freight.config.settings import DEFAULT_QUOTA, CacheSettings, Settings
from freight.domain.cache_key import SCOPES
from freight.domain.intake import FlushPolicy
from freight.domain.webhooks import WebhookPolicy
from freight.engine.settings import EngineSettings, SchedulingSettings
from freight.intake.settings import KINDS as INTAKE_KINDS
from freight.intake.settings import IntakeSettings
from freight.services.batches import WindowLimits
from freight.services.files import UploadLimits
from freight.services.message_batches import MessageBatchLimits
from freight.wire.batch_input import InputLimits

#: str, int, float (an int is taken), bool, duration (seconds, or "90s", "30m", "12h", "7d"),
#: path, choice (one of ``choices``), hours (a list of "HH:MM-HH:MM" windows; in the environment,
#: comma-separated), table, list, any (checked by the code that reads it: ``shown_type`` says what).
Kind = Literal["str", "int", "float", "bool", "duration", "path", "choice", "hours", "table", "list", "any"]

#: Sections of freight.toml whose keys are declared here, in the order the docs show them ("name.*":
#: one table per name, like ``[projects."research"]``). ``[models."name"]`` tables are each checked
#: by the backend they name (docs/configuration.md#backends).
SECTIONS = ("server", "limits", "engine", "scheduling", "projects.*", "anthropic", "webhooks", "metrics",
            "cache", "ray", "intake.*")
OTHER_SECTIONS = ("models",)


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    kind: Kind
    #: None: unset unless given (the help says what happens then).
    default: Any
    help: str
    #: Its environment variable; "" for none. Unset: FREIGHT_<SECTION>_<KEY>.
    env: str | None = None
    flag: str | None = None
    #: Bounds, checked after parsing (durations in seconds): at least ``min``, more than ``above``,
    #: at most ``max``.
    min: float | None = None
    above: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    #: What 0 means for a number that may be turned off ("no limit"): 0 then reads as None.
    zero: str | None = None
    #: A value for the docs' example where the default is None.
    example: Any = None
    #: False: the variable is another tool's, read only when freight.toml does not give the key.
    env_over_file: bool = True
    #: The docs' words for the default where it depends on something ("all cores"), and for the type
    #: of an ``any``.
    shown_default: str | None = None
    shown_type: str | None = None
    #: For a URL: the schemes it may have (``redis`` for ``redis://…``); ``paths``: a plain path too.
    schemes: tuple[str, ...] = ()
    paths: bool = False
    #: A model table's key that must be given (``check_models``).
    required: bool = False

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env_var(self) -> str | None:
        if self.env is not None:
            return self.env or None
        if self.section.endswith(".*"):
            return None
        return f"FREIGHT_{self.section}_{self.key}".upper()


_IL, _UL, _WL = InputLimits(), UploadLimits(), WindowLimits()
_ES, _SS = EngineSettings(), SchedulingSettings()
_AL, _WH, _CS = MessageBatchLimits(), WebhookPolicy(), CacheSettings()
_IN, _FP = IntakeSettings(name="", kind=""), FlushPolicy()

SETTINGS: tuple[Setting, ...] = (
    # [server]
    Setting("server", "host", "str", Settings.host, "The address `freight serve` listens on.",
            env="FREIGHT_HOST", flag="--host"),
    Setting("server", "port", "int", Settings.port, "The port `freight serve` listens on.",
            env="FREIGHT_PORT", flag="--port", min=0, max=65535),
    Setting("server", "data_dir", "path", None, "Where freight keeps its SQLite database and, without `blobs`, "
            "its files (default: the platform's user data directory; `freight run`: its `run` subdirectory).",
            env="FREIGHT_DATA_DIR", flag="--data-dir", example="/var/lib/freight"),
    Setting("server", "public_url", "str", None, "The URL clients reach this server at, when a proxy is in front "
            "(a Message Batch's `results_url` starts with it); default: the URL each request came to.",
            env="FREIGHT_PUBLIC_URL", example="https://batch.example.com"),
    Setting("server", "blobs", "str", None, "Where file bytes live: a directory every process shares, or "
            "`s3://bucket/prefix` (docs/deployment.md); default `DATA_DIR/blobs`.",
            env="FREIGHT_BLOBS", flag="--blobs", example="s3://bucket/prefix", schemes=("s3",), paths=True),
    Setting("server", "sqlite_synchronous", "choice", Settings.sqlite_synchronous,
            "SQLite's durability: FULL survives power loss, NORMAL a process crash only.",
            choices=("FULL", "NORMAL", "EXTRA")),
    Setting("server", "database_url", "str", None, "PostgreSQL shared by every freight process (run "
            "`freight migrate` first); default: SQLite in the data dir.",
            env="FREIGHT_DATABASE_URL", flag="--database-url", example="postgresql://freight@db:5432/freight"),
    Setting("server", "database_pool_size", "int", Settings.database_pool_size,
            "Connections each process keeps to PostgreSQL at most.",
            min=1),
    Setting("server", "redis_url", "str", None, "Redis where every process shares remote upstreams' rpm/tpm "
            "limits; default: each process keeps to the limits alone.",
            env="FREIGHT_REDIS_URL", flag="--redis-url", example="redis://127.0.0.1:6379/0",
            schemes=("redis", "rediss", "unix")),
    # [limits]
    Setting("limits", "max_lines", "int", _IL.max_lines, "Requests per batch file.", min=1),
    Setting("limits", "max_input_bytes", "int", _IL.max_bytes, "Bytes per batch file.", min=1),
    Setting("limits", "max_line_bytes", "int", _IL.max_line_bytes, "Bytes per line of a batch file.", min=1),
    Setting("limits", "max_custom_id_chars", "int", _IL.max_custom_id_chars, "Characters per `custom_id`.",
            min=1),
    Setting("limits", "max_reported_errors", "int", _IL.max_reported_errors,
            "Entries in a batch's `errors.data` when its file fails validation.", min=1),
    Setting("limits", "max_upload_bytes", "int", _UL.max_upload_bytes, "Bytes per uploaded file.", min=1),
    Setting("limits", "completion_window_min", "duration", _WL.min_s, "The shortest `completion_window` accepted.",
            min=1),
    Setting("limits", "completion_window_max", "duration", _WL.max_s, "The longest `completion_window` accepted.",
            min=1),
    Setting("limits", "max_active_batches_per_project", "int", DEFAULT_QUOTA.max_active_batches,
            "Batches a project may have running; over it, 429 `too_many_active_batches`.", min=0, zero="no limit"),
    Setting("limits", "max_queued_requests_per_project", "int",
            DEFAULT_QUOTA.max_queued_requests, "Requests a project may have waiting; "
            "over it, 429 `too_many_queued_requests`.", min=0, zero="no limit"),
    # [engine]
    Setting("engine", "max_attempts", "int", _ES.retry.max_attempts, "Tries per request (transient failures "
            "only are tried again).", min=1),
    Setting("engine", "retry_base_delay_s", "float", _ES.retry.base_delay_s, "The first wait before a request is "
            "tried again, doubling up to `retry_max_delay_s`.", min=0),
    Setting("engine", "retry_max_delay_s", "float", _ES.retry.max_delay_s, "The longest wait between tries.",
            min=0),
    Setting("engine", "lease_s", "float", _ES.lease_s, "A claim's lease, renewed while its request runs; a "
            "worker that dies gives its requests back after at most this.", above=0),
    Setting("engine", "poll_interval_s", "float", _ES.poll_interval_s, "The longest nap when nothing wakes the "
            "engine.", above=0),
    Setting("engine", "drain_timeout_s", "float", _ES.drain_timeout_s, "Cancel and expiry: how long requests "
            "already running may finish.", min=0),
    Setting("engine", "step_lease_s", "float", _ES.step_lease_s, "Several processes: the batch steps move to "
            "another process this long after their holder dies.", above=0),
    Setting("engine", "orphan_sweep_interval_s", "float", _ES.orphan_sweep_interval_s, "How often the batch-steps "
            "holder removes file bytes no file refers to.", above=0),
    Setting("engine", "orphan_blob_age_s", "float", _ES.orphan_blob_age_s, "... once they are at least this old.",
            min=0),
    # [scheduling]
    Setting("scheduling", "margin", "float", _SS.margin, "The deadline ramp: a batch aims to finish by this "
            "fraction of its window (docs/scheduling.md).", above=0, max=1),
    Setting("scheduling", "usage_window", "duration", _SS.usage_window_s, "Model time used over this long counts "
            "towards a project's fair share.", min=1),
    Setting("scheduling", "off_peak", "hours", None, "The off-peak hours: a batch created with "
            "`schedule: \"off_peak\"` waits for them (docs/scheduling.md).", example=["22:00-06:00"]),
    Setting("scheduling", "off_peak_timezone", "str", None, "The time zone of `off_peak` (an IANA name; default "
            "UTC).", example="Europe/Paris"),
    # [projects."name"]
    Setting("projects.*", "weight", "float", 1.0, "The project's share of model time against other projects.",
            above=0),
    Setting("projects.*", "max_cost_usd", "float", None, "Each batch of the project may spend at most this "
            "(docs/cost.md).", example=25.0, above=0),
    # [anthropic]
    Setting("anthropic", "batch_window", "duration", 24 * 3600, "How long a Message Batch may run before its "
            "unrun requests expire.", min=1),
    Setting("anthropic", "max_batch_requests", "int", _AL.max_requests, "Requests per Message Batch.", min=1),
    Setting("anthropic", "max_batch_bytes", "int", _AL.max_bytes, "Bytes per create body.", min=1),
    Setting("anthropic", "max_request_bytes", "int", _AL.max_request_bytes, "Bytes per request.", min=1),
    # [webhooks]
    Setting("webhooks", "retry_for", "duration", int(_WH.retry_for_s), "Keep trying a delivery this long after "
            "its event.", min=1),
    Setting("webhooks", "retry_base_delay_s", "float", _WH.base_delay_s, "The first wait after a failed attempt, "
            "doubling up to `retry_max_delay_s`.", above=0),
    Setting("webhooks", "retry_max_delay_s", "float", _WH.max_delay_s, "The longest wait between attempts.",
            above=0),
    Setting("webhooks", "timeout_s", "float", _WH.timeout_s, "How long one attempt may take, as a whole: "
            "connecting, sending, and the whole answer.", above=0),
    Setting("webhooks", "poll_interval_s", "float", _WH.poll_interval_s, "How often the deliverer looks for new "
            "events.", above=0),
    Setting("webhooks", "allow_http", "bool", _WH.allow_http, "Plain http to hosts other than loopback."),
    # [metrics]
    Setting("metrics", "project_label", "bool", Settings.metrics_project_label,
            "Label per-project series of `GET /metrics` with the project (off: bounded cardinality)."),
    # [cache]
    Setting("cache", "enabled", "bool", _CS.enabled, "The result cache (docs/cache.md); off: every request runs."),
    Setting("cache", "ttl", "duration", _CS.ttl_s, "How long an answer is reused.", min=1),
    Setting("cache", "max_bytes", "int", _CS.max_bytes, "The stored answers total at most this; the oldest go first.",
            min=0, zero="no cap"),
    Setting("cache", "scope", "choice", _CS.scope, "`project`: each project reuses its own answers; `global`: "
            "all projects share them.", choices=tuple(SCOPES)),
    # [ray]
    Setting("ray", "address", "str", None, "The Ray cluster of models with `placement = \"ray\"`: `auto`, "
            "`local`, `ray://head:10001` or `host:port` (docs/ray.md); else Ray's own `RAY_ADDRESS`; else `auto`.",
            env="RAY_ADDRESS", example="ray://head:10001", env_over_file=False),
    # [intake."name"]
    Setting("intake.*", "kind", "choice", None, "Where requests arrive: `amqp` (a queue), `redis` (a stream) or "
            "`http` (`POST /v1/freight/intake/NAME`); required.", choices=INTAKE_KINDS, example="redis"),
    Setting("intake.*", "url", "str", None, "amqp, redis: the broker (default `amqp://guest:guest@127.0.0.1:5672/`, "
            "`redis://127.0.0.1:6379`).", example="redis://127.0.0.1:6379/0"),
    Setting("intake.*", "queue", "str", None, "amqp: the queue read (declared durable); required.",
            example="orders"),
    Setting("intake.*", "stream", "str", None, "redis: the stream read; required (and `queue` not set).",
            example="orders"),
    Setting("intake.*", "group", "str", _IN.group, "redis: the consumer group."),
    Setting("intake.*", "consumer", "str", None, "redis: this process's name in the group "
            "(default `freight-<hostname>`)."),
    Setting("intake.*", "model", "str", None, "The model of messages whose body names none."),
    Setting("intake.*", "endpoint", "str", _IN.endpoint, "The endpoint of messages that name no `url`; one "
            "that batches take (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses`, "
            "`/v1/messages`)."),
    Setting("intake.*", "flush_size", "int", _FP.flush_size, "A batch is made once this many messages wait; at "
            "most `[limits] max_lines`.", min=1),
    Setting("intake.*", "flush_age_s", "float", _FP.flush_age_s, "... or once the oldest has waited this long.",
            min=0),
    Setting("intake.*", "deadline_margin_s", "float", _FP.deadline_margin_s, "... or this long before the earliest "
            "message's deadline.", min=0),
    Setting("intake.*", "results_stream", "str", None, "amqp, redis: where results go for messages that "
            "name no `reply_to` (a queue; redis: a stream, default `<stream>:results`)."),
    Setting("intake.*", "project", "str", _IN.project, "The project of the batches it makes."),
    Setting("intake.*", "completion_window", "str", _IN.completion_window, "The completion window of the "
            "batches it makes."),
    Setting("intake.*", "claim_idle_s", "float", _IN.claim_idle_s, "redis: another consumer's unacknowledged "
            "entries idle this long are taken over.", above=0),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class EnvOnly:
    """A variable read outside freight.toml (the client commands, logging, the S3 client)."""

    name: str
    help: str

    @property
    def names(self) -> list[str]:
        """The variables (``name`` may list several, comma-separated)."""
        return [n.strip() for n in self.name.split(",")]


ENV_ONLY: tuple[EnvOnly, ...] = (
    EnvOnly("FREIGHT_CONFIG", "The freight.toml to read (flag `--config`; default `./freight.toml` if present)."),
    EnvOnly("FREIGHT_URL", "The server the client commands talk to (flag `--url`; default "
            "`http://127.0.0.1:8080`)."),
    EnvOnly("FREIGHT_API_KEY", "The API key the client commands send (flag `--api-key`)."),
    EnvOnly("FREIGHT_LOG_FORMAT", "`text` or `json` (flag `--log-format`)."),
    EnvOnly("FREIGHT_BLOBS_ALLOW_HTTP", "`1`: an S3 endpoint over plain http is allowed (docs/deployment.md)."),
    EnvOnly("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL",
            "The S3 credentials and endpoint, as the AWS SDKs read them."),
)


def known_variables() -> list[str]:
    """Every variable freight reads for its settings, and those it reads elsewhere."""
    return [s.env_var for s in SETTINGS if s.env_var] + [n for e in ENV_ONLY for n in e.names]


def section_settings(section: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.section == section)
