"""The engine's settings (``[engine]`` in freight.toml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from freight.domain import scheduling
from freight.domain.retry import RetryPolicy
from freight.domain.windows import Calendar
from freight.wire.batch_input import InputLimits


@dataclass(frozen=True)
class SchedulingSettings:
    """``[scheduling]`` and each ``[projects."name"] weight`` in freight.toml."""

    weights: dict[str, float] = field(default_factory=dict)
    margin: float = scheduling.DEFAULT_MARGIN
    usage_window_s: int = scheduling.DEFAULT_USAGE_WINDOW_S
    #: The measured seconds a request takes before any chunk of this model has finished.
    initial_seconds_per_request: float = 1.0
    #: Each model's hours and the off-peak hours (freight/domain/windows.py): when work may run.
    calendar: Calendar = field(default_factory=Calendar)

    def policy(self) -> scheduling.Policy:
        return scheduling.Policy(self.weights, margin=self.margin)


@dataclass(frozen=True)
class EngineSettings:
    #: How long a claim is valid without renewal (renewed every third of it while running).
    lease_s: float = 120.0
    #: Longest sleep between two looks at the store when nothing wakes the engine.
    poll_interval_s: float = 0.2
    #: How long cancel and expiry wait for in-flight requests before abandoning them.
    drain_timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    input_limits: InputLimits = field(default_factory=InputLimits)
    #: How often deleted and expired files have their bytes removed.
    housekeeping_interval_s: float = 60.0
    #: How often the batch-steps holder removes blobs no file refers to (left by a process that died
    #: uploading or finalizing while others ran, so the start-up sweep could not run), and how old such
    #: a blob must be to go: far longer than any upload or finalize.
    orphan_sweep_interval_s: float = 3600.0
    orphan_blob_age_s: float = 86400.0
    #: Storing a chunk's results is retried this many times (a locked or full store), with a backoff
    #: from ``store_retry_base_s`` doubling up to ``store_retry_max_s``, before the results are given
    #: up (the requests then run again once their lease expires).
    store_retry_attempts: int = 8
    store_retry_base_s: float = 0.05
    store_retry_max_s: float = 2.0
    #: A batch step (validate, finalize, close) that failed is tried again after a backoff that
    #: doubles from ``poll_interval_s`` up to this.
    step_retry_max_s: float = 30.0
    #: Validation failing this often in a row (once past the window: the next) is given up (domain/steps.py).
    step_max_tries: int = 10
    step_tries_past_window: int = 3
    #: How long the ``batch-steps`` lease (see ``StepLeases``) outlives its holder's last renewal: a
    #: process that dies holding it delays the batch steps by at most this.
    step_lease_s: float = 15.0
    scheduling: SchedulingSettings = field(default_factory=SchedulingSettings)
    #: Claims and a chunk's results are stored on the event loop's own thread instead of a worker
    #: thread's. Only for a store in this process (SQLite) that no other process uses (``freight run``,
    #: set by the composition root): there a thread adds only hand-offs and contention for the
    #: interpreter's lock, and the call cannot wait on another process's write lock. A call blocks the
    #: loop for its few milliseconds; the batch steps (ingest, finalize) still run on threads.
    #: 100,000 requests: the run phase 72-83 -> 64-65 us per request, the whole run +4-13%.
    inline_chunk_calls: bool = False
