"""One request of a batch (one input line) and what became of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from freight.domain.records import quick_init


class RequestState(enum.IntEnum):
    #: Waiting to be claimed (possibly not before a backoff deadline).
    PENDING = 0
    #: Claimed by a worker under a lease and an attempt id.
    RUNNING = 1
    #: Has its one final result.
    DONE = 2


class Outcome(enum.IntEnum):
    #: A 2xx response: a line of the output file.
    SUCCEEDED = 1
    #: An HTTP error from the model side, or no response at all: a line of the error file.
    FAILED = 2


#: Why a request never produced a response (the ``error.code`` of its error line).
BATCH_EXPIRED = "batch_expired"
BATCH_CANCELLED = "batch_cancelled"
REQUEST_TIMEOUT = "request_timeout"
ATTEMPTS_EXHAUSTED = "attempts_exhausted"
WORKER_LOST = "worker_lost"
#: The model could not be loaded (in process, or by any Ray replica): a transient failure, so each request
#: ends with it as its error line once its attempts run out.
MODEL_UNAVAILABLE = "model_unavailable"
#: The answer failed the JSON-schema check its request (or batch) asked for, on every try.
OUTPUT_INVALID = "output_invalid"

NEVER_RAN_MESSAGES = {
    BATCH_EXPIRED: "This request could not be executed before the completion window expired.",
    BATCH_CANCELLED: "This request was not executed because the batch was cancelled.",
}


@quick_init
@dataclass(frozen=True)
class ClaimedRequest:
    """A request a worker holds: only ``attempt_id`` may store its result."""

    batch_id: str
    idx: int
    custom_id: str
    body: bytes
    attempt_id: str
    attempts: int


@quick_init
@dataclass(frozen=True)
class Result:
    """The final result of one request.

    Either a response from the model side (``status_code`` and ``body``: 2xx goes to the output
    file, anything else to the error file with ``error: null``), or no response at all
    (``error_code``/``error_message``: the error file with ``response: null``).
    """

    status_code: int | None = None
    body: bytes | None = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    #: Answers that failed their JSON-schema check on the way to this result (tries included).
    invalid_outputs: int = 0
    #: Answered from the result cache: its tokens were spent when it was first run, not now.
    cached: bool = False

    @property
    def outcome(self) -> Outcome:
        if self.status_code is not None and 200 <= self.status_code < 300:
            return Outcome.SUCCEEDED
        return Outcome.FAILED

    @classmethod
    def never_ran(cls, code: str, message: str) -> Result:
        return cls(error_code=code, error_message=message)


@quick_init
@dataclass(frozen=True)
class Failure:
    """No response at all (connection error, timeout, a crashed model call): always retried.

    When attempts run out it becomes an error line with ``response: null`` and this code.
    """

    code: str
    message: str
