"""``[intake."name"]`` tables: one source each, feeding one model and endpoint (or the message's own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from freight.domain.durations import parse_duration_s
from freight.domain.intake import FlushPolicy
from freight.services.batches import BATCH_ENDPOINTS

KINDS = ("redis", "amqp", "http")
_KEYS = {"kind", "url", "queue", "stream", "group", "consumer", "model", "endpoint", "flush_size", "flush_age_s",
         "deadline_margin_s", "results_stream", "project", "completion_window", "claim_idle_s"}


@dataclass(frozen=True)
class IntakeSettings:
    name: str
    kind: str
    url: str | None = None
    #: AMQP: the queue; Redis: the stream.
    queue: str = ""
    group: str = "freight"
    consumer: str | None = None
    model: str | None = None
    endpoint: str = "/v1/chat/completions"
    policy: FlushPolicy = field(default_factory=FlushPolicy)
    #: Where results go when a message names no ``reply_to`` (Redis: a stream; AMQP: a queue).
    results_stream: str | None = None
    project: str = "default"
    completion_window: str = "24h"
    #: Redis: another consumer's unacknowledged entries idle this long are taken over.
    claim_idle_s: float = 30.0

    def as_table(self) -> dict[str, Any]:
        """The settings as ``[intake."name"]`` keys, defaults filled in (``freight config`` shows them)."""
        return {"kind": self.kind, "url": self.url, "stream" if self.kind == "redis" else "queue": self.queue or None,
                "group": self.group, "consumer": self.consumer, "model": self.model, "endpoint": self.endpoint,
                "flush_size": self.policy.flush_size, "flush_age_s": self.policy.flush_age_s,
                "deadline_margin_s": self.policy.deadline_margin_s, "results_stream": self.results_stream,
                "project": self.project, "completion_window": self.completion_window,
                "claim_idle_s": self.claim_idle_s}


def intake_settings(tables: dict[str, Any], window_min_s: int = 1, window_max_s: int = 30 * 86400,
                    max_lines: int = 50_000) -> dict[str, IntakeSettings]:
    """Parse the ``[intake]`` section; ValueError names the table and key at fault. Refused, since every
    flush would fail: a ``completion_window`` no batch may take (``limits.completion_window_min``..``max``),
    a ``flush_size`` over the lines a batch may hold (``limits.max_lines``), an ``endpoint`` freight does
    not serve. Both ``stream`` and ``queue`` is refused too (one of them would be ignored)."""
    out: dict[str, IntakeSettings] = {}
    for name, table in tables.items():
        where = f'[intake."{name}"]'
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(table) - _KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        kind = table.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if "queue" in table and "stream" in table:
            own = "stream" if kind == "redis" else "queue"
            raise ValueError(f"{where}: set {own!r} only, not both 'stream' and 'queue' (a {kind} intake reads "
                             f"its {own!r}; the other would be ignored)")
        queue = table.get("queue") or table.get("stream") or ""
        if kind != "http" and (not isinstance(queue, str) or not queue):
            raise ValueError(f"{where}: needs a {'stream' if kind == 'redis' else 'queue'}")
        try:
            policy = FlushPolicy(flush_size=int(table.get("flush_size", 100)),
                                 flush_age_s=float(table.get("flush_age_s", 5.0)),
                                 deadline_margin_s=float(table.get("deadline_margin_s", 30.0)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        if policy.flush_size > max_lines:
            raise ValueError(f"{where} flush_size {policy.flush_size} is more than limits.max_lines ({max_lines}): "
                             "every full flush would make a batch over the limit, and fail")
        endpoint = table.get("endpoint", "/v1/chat/completions")
        if endpoint not in BATCH_ENDPOINTS:
            raise ValueError(f"{where}: endpoint must be one of {', '.join(BATCH_ENDPOINTS)}, got {endpoint!r}")
        window = table.get("completion_window", "24h")
        try:  # (a window no batch can take would fail every flush of the intake, for ever)
            seconds = parse_duration_s(window if isinstance(window, str) else "")
        except ValueError:
            raise ValueError(f"{where}: completion_window must be a duration like \"24h\", got {window!r}") from None
        if not window_min_s <= seconds <= window_max_s:
            raise ValueError(f"{where} completion_window {window!r} is outside limits.completion_window_min..max "
                             f"({window_min_s}s..{window_max_s}s): every batch it made would be refused")
        out[str(name)] = IntakeSettings(
            name=str(name), kind=kind, url=table.get("url"), queue=str(queue), group=str(table.get("group", "freight")),
            consumer=table.get("consumer"), model=table.get("model"),
            endpoint=str(table.get("endpoint", "/v1/chat/completions")), policy=policy,
            results_stream=table.get("results_stream"), project=str(table.get("project", "default")),
            completion_window=str(table.get("completion_window", "24h")),
            claim_idle_s=float(table.get("claim_idle_s", 30.0)))
    return out
