"""Anthropic Message Batches as a view of freight batches (shared/reference/batch-apis.md §4).

A Message Batch *is* a freight batch with endpoint ``/v1/messages``: ``msgbatch_<hex>`` and
``batch_<hex>`` name the same batch, so it is run, retried, fenced, expired and cancelled by the
same engine. What differs is only how it is shown:

- ``processing_status``: ``in_progress`` until the batch is terminal (``ended``), ``canceling``
  while a cancel drains;
- ``request_counts``: every request is ``processing`` until the batch has ended, then each is in
  exactly one of succeeded / errored / canceled / expired, so the five always sum to the total.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from freight.domain.batches import Batch, BatchStatus
from freight.domain.requests import BATCH_CANCELLED, BATCH_EXPIRED

MESSAGE_BATCH_PREFIX = "msgbatch_"
MESSAGE_BATCH_ID_RE = re.compile(r"^msgbatch_([a-f0-9]{24})$")
MESSAGE_ID_PREFIX = "msg_"
#: The endpoint every Message Batch runs on.
MESSAGES_ENDPOINT = "/v1/messages"
#: Anthropic's rule for custom_id (checked synchronously at create).
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ProcessingStatus:
    IN_PROGRESS = "in_progress"
    CANCELING = "canceling"
    ENDED = "ended"


def message_batch_id(batch_id: str) -> str:
    """``batch_<hex>`` -> ``msgbatch_<hex>``."""
    return MESSAGE_BATCH_PREFIX + batch_id.removeprefix("batch_")


def batch_id_of(message_batch_id: str) -> str | None:
    """``msgbatch_<hex>`` -> ``batch_<hex>``; None for anything that is not a Message Batch id."""
    match = MESSAGE_BATCH_ID_RE.match(message_batch_id)
    return "batch_" + match.group(1) if match else None


def processing_status(status: BatchStatus) -> str:
    if status is BatchStatus.CANCELLING:
        return ProcessingStatus.CANCELING
    if status in (BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED, BatchStatus.FAILED):
        return ProcessingStatus.ENDED
    return ProcessingStatus.IN_PROGRESS


@dataclass(frozen=True)
class EndedCounts:
    """How the requests of an ended batch came out (fixed once the batch has ended)."""

    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


@dataclass(frozen=True)
class MessageBatchCounts:
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired


@dataclass(frozen=True)
class MessageBatch:
    """A freight batch seen through the Anthropic API."""

    batch: Batch
    #: The number of requests accepted at create.
    requests: int
    #: Set once the batch has ended.
    ended: EndedCounts | None = None

    @property
    def id(self) -> str:
        return message_batch_id(self.batch.id)

    @property
    def processing_status(self) -> str:
        return processing_status(self.batch.status)

    @property
    def ended_at(self) -> int | None:
        b = self.batch
        return b.completed_at or b.expired_at or b.cancelled_at or b.failed_at

    @property
    def counts(self) -> MessageBatchCounts:
        if self.processing_status != ProcessingStatus.ENDED or self.ended is None:
            return MessageBatchCounts(processing=self.requests)
        e = self.ended
        # A request without a stored result (only possible if validation itself failed) is errored,
        # so that the five counts always sum to the number of requests.
        errored = max(0, self.requests - e.succeeded - e.canceled - e.expired)
        return MessageBatchCounts(succeeded=e.succeeded, errored=errored, canceled=e.canceled, expired=e.expired)


def ended_counts(groups: Iterable[tuple[int | None, str | None, int]]) -> EndedCounts:
    """How an ended batch's requests came out, from (status code, error code, how many) groups of
    its stored results: a 2xx succeeded; no response with ``batch_cancelled`` / ``batch_expired``
    was canceled / expired; anything else errored."""
    succeeded = errored = canceled = expired = 0
    for status_code, error_code, n in groups:
        if status_code is not None and 200 <= status_code < 300:
            succeeded += n
        elif status_code is None and error_code == BATCH_CANCELLED:
            canceled += n
        elif status_code is None and error_code == BATCH_EXPIRED:
            expired += n
        else:
            errored += n
    return EndedCounts(succeeded=succeeded, errored=errored, canceled=canceled, expired=expired)
