"""``StatsStore``: what metrics read from the store at scrape time (so that every process serving
``/metrics`` reports the same totals, whichever process did the work)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Spend:
    """What the cost of one model's batches (of one project) is computed from."""

    input_tokens: int = 0
    output_tokens: int = 0
    #: Seconds that batches which stopped running ran (from ``in_progress_at`` to their end).
    busy_s: int = 0
    #: Batches running now, and the sum of their ``in_progress_at`` (so busy seconds = n·now − sum).
    running: int = 0
    running_since: int = 0


@dataclass
class StoreStats:
    #: (project or "", status) -> batches
    batches: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (project or "", model, endpoint, outcome "completed"/"failed") -> finished requests
    finished: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    #: (project or "", model, kind "input"/"output") -> tokens
    tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: (model, state "queued"/"running") -> requests of active batches
    open_requests: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (status, seconds from creation to the end) -> ended batches
    batch_durations: dict[tuple[str, int], int] = field(default_factory=dict)
    #: (project or "", model) -> what its batches' cost is computed from
    spend: dict[tuple[str, str], Spend] = field(default_factory=dict)


class StatsStore(Protocol):
    def stats(self, by_project: bool) -> StoreStats:
        """Totals over every batch (per project only when ``by_project``; else the project is "")."""
        ...
