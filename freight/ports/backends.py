"""Ways of executing requests: a ``Backend`` (a local model, an HTTP endpoint) or a provider's ``BatchLane``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from freight.domain.lanes import LaneLimits, LaneOutcome, UpstreamProgress
from freight.domain.requests import Failure, Result


@dataclass(frozen=True)
class ModelInfo:
    id: str
    endpoints: frozenset[str]
    owned_by: str = "freight"


class Backend(Protocol):
    """Executes requests for the models it serves.

    ``execute`` gets the parsed bodies of requests claimed together (all for one model and
    endpoint) and returns one ``Result`` (a response: 2xx succeeded, 4xx refused, 429/5xx
    retried) or ``Failure`` (no response: retried) per request, in order. A backend where requests
    wait before they start should watch ``current_withdrawal.get()`` (see ``freight.ports.withdrawal``).
    """

    def models(self) -> Sequence[ModelInfo]: ...

    #: How many requests the engine claims for one ``execute`` call.
    chunk_size: int
    #: How many ``execute`` calls may run at once.
    max_concurrency: int

    async def start(self) -> None: ...
    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]: ...
    async def close(self) -> None: ...


class BatchLane(Protocol):
    """A provider's own batch API (OpenAI Files + Batches, Anthropic Message Batches) for some models.

    Not a ``Backend``: a lane takes whole sets of requests and answers hours later, so the engine's
    ``LaneRunner`` (freight/engine/lanes.py) drives it, one durable step at a time. A lane holds no
    state of its own beyond a connection pool; every id it returns is recorded by the runner before
    the next call. Requests come as freight's own batch lines (``{"custom_id", "method", "url",
    "body"}``) whose ``custom_id`` is the upstream key (freight.domain.lanes.upstream_key); outcomes
    are returned by that key. Errors (connection, 5xx, 429) are raised and retried by the runner;
    ``LaneRefused`` where asking again cannot help (a 4xx on upload or create; 401/403/404/410 on a poll
    or a download), and the sub's requests then fail with ``upstream_refused``.
    """

    limits: LaneLimits
    #: First and longest interval between two polls of one upstream batch (the runner backs off).
    poll_interval_s: float
    max_poll_interval_s: float
    #: How many times a request may be submitted upstream (resubmission of expired/retryable ones).
    max_rounds: int
    #: After a cancel (or freight's window running out): how long to wait for upstream batches to end.
    cancel_timeout_s: float

    def models(self) -> Sequence[ModelInfo]: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def upload(self, sub_id: str, endpoint: str, lines: IO[bytes]) -> str | None:
        """Put the requests upstream if the protocol has a separate step for it (OpenAI: a file;
        returns its id); None when the create carries them (Anthropic)."""
        ...

    async def find_upload(self, sub_id: str) -> str | None:
        """After a crash during ``upload``: the upload that did arrive, if any."""
        ...

    async def create(self, sub_id: str, endpoint: str, upload_id: str | None, lines: IO[bytes]) -> str:
        """Create the upstream batch; its id. ``LaneRefused`` when the upstream will never take it."""
        ...

    async def find_created(self, sub_id: str, upload_id: str | None, sent_at: float, requests: int) -> str | None:
        """After a crash during ``create``: the upstream batch that was created, if any."""
        ...

    async def poll(self, upstream_id: str) -> UpstreamProgress: ...
    async def outcomes(self, upstream_id: str) -> list[LaneOutcome]:
        """Every line the ended upstream batch has for its requests (some may be missing)."""
        ...

    async def cancel(self, upstream_id: str) -> None: ...
