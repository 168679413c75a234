"""Batch lanes: handing a freight batch on to a provider's own batch API, as data.

A freight batch on a lane model is split into **subs**: each sub is one upstream batch (within the
provider's limits on requests and bytes). A sub goes through::

    planned ──► uploading ──► uploaded ──► creating ──► running ──► done
      (its requests       (OpenAI: the      (create sent;      (upstream id    (results stored, or
       are chosen)         file is sent)     id not known yet)  known; polled)  handed back for a
                                                                                  new round)

Every step is recorded before the next starts, so after a crash each sub is picked up where it
stood: an upload that may have happened is looked for (by its file name) before uploading again,
and a create that may have happened is looked for (by its input file, or by its time and size)
before creating again. No sub is ever created twice upstream, and none is left behind.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from freight.domain.requests import Result


class LaneRefused(Exception):
    """The upstream refused a sub for good (a 4xx on upload or create): its requests fail with this message."""


class SubState(enum.StrEnum):
    #: Its requests are chosen (``lane_items``); nothing sent yet.
    PLANNED = "planned"
    #: The upload may have been sent: look for it before sending it again.
    UPLOADING = "uploading"
    #: The upstream holds its requests (OpenAI: ``upload_id`` is the input file).
    UPLOADED = "uploaded"
    #: The create may have been sent: look for the upstream batch before creating again.
    CREATING = "creating"
    #: ``upstream_id`` is known; polled until the upstream batch ends.
    RUNNING = "running"
    #: Its outcomes are stored (or its requests handed back for another round).
    DONE = "done"


LIVE_STATES = frozenset(set(SubState) - {SubState.DONE})
#: A sub in these states has started nothing upstream (no batch created there, so nothing billed): a
#: paused freight batch holds them where they are, as a paused batch starts no new request.
HELD_WHILE_PAUSED = frozenset({SubState.PLANNED, SubState.UPLOADED})


def may_step(state: SubState, *, paused: bool, closing: bool) -> bool:
    """Whether a sub of a batch takes its next step now. A cancel or expiry (``closing``) always moves
    it on (to wind it down); a pause holds what has not started upstream; the rest goes on (running
    upstream batches finish, a create or upload that may have been sent is looked for)."""
    return closing or not (paused and state in HELD_WHILE_PAUSED)
SUB_PREFIX = "sub_"


@dataclass(frozen=True)
class LaneSub:
    id: str
    batch_id: str
    round: int
    state: SubState
    requests: int
    bytes: int
    created_at: float
    upload_id: str | None = None
    upstream_id: str | None = None
    create_sent_at: float | None = None
    #: The upstream's own status at the last poll, and its progress.
    upstream_status: str | None = None
    completed: int = 0
    failed: int = 0
    #: freight asked the upstream to cancel (freight's batch was cancelled or ran out of time).
    cancel_sent: bool = False


def upstream_key(sub_id: str, idx: int) -> str:
    """The custom_id a request carries upstream: ``<sub id>-<idx>`` (fits Anthropic's ``[a-zA-Z0-9_-]{1,64}``)."""
    return f"{sub_id}-{idx}"


def parse_upstream_key(sub_id: str, key: object) -> int | None:
    """The request index of an upstream line of this sub; None for a line that is not one of ours."""
    if not isinstance(key, str) or not key.startswith(sub_id + "-"):
        return None
    tail = key[len(sub_id) + 1 :]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class LaneLimits:
    """What one upstream batch may hold (the provider's limits, or smaller)."""

    max_requests: int
    max_bytes: int


@dataclass(frozen=True)
class UpstreamProgress:
    """One poll of an upstream batch."""

    #: The upstream's own status word (``in_progress``, ``completed``, ``ended``, …).
    status: str
    #: True once the upstream batch is terminal and its results can be read.
    ended: bool
    completed: int = 0
    failed: int = 0
    #: The upstream refused the batch as a whole (OpenAI ``failed``): why.
    failure: str | None = None


class OutcomeKind(enum.Enum):
    #: A final result for freight's output or error file.
    FINAL = "final"
    #: It ran and failed in a way worth trying again (429, 5xx, overloaded, a timeout).
    RETRY = "retry"
    #: It did not run (the upstream batch expired or was cancelled first): submit it again.
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class LaneOutcome:
    """What became of one request of an upstream batch (by its upstream custom_id)."""

    key: str
    kind: OutcomeKind
    #: The upstream's response (or error) as freight will store it; None for NOT_RUN.
    result: Result | None = None
