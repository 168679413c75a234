"""Status changes as compare-and-set: the store reads a batch's status and timestamps, these
functions say what to write, and the store writes it only where the status is still the one read.

The timestamps are a dict keyed by ``TIMESTAMP_FIELD``'s column names (every one present).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from freight.domain.batches import TIMESTAMP_FIELD, BatchStatus

STAMP_FIELDS: tuple[str, ...] = tuple(TIMESTAMP_FIELD.values())


@dataclass(frozen=True)
class StatusChange:
    #: Write only where the status is still this one.
    expected: BatchStatus
    new: BatchStatus
    #: Every ``*_at`` column, with the one of ``new`` set (when the status changes).
    stamps: dict[str, int | None]


def change_status(
    current: BatchStatus, stamps: Mapping[str, int | None], expected: Collection[BatchStatus], new: BatchStatus,
    at: int,
) -> StatusChange | None:
    """``current`` → ``new`` when ``current`` is one of ``expected`` (None otherwise)."""
    if current not in expected:
        return None
    out = {k: stamps.get(k) for k in STAMP_FIELDS}
    field = TIMESTAMP_FIELD.get(new)
    if field is not None:
        out[field] = at
    return StatusChange(expected=current, new=new, stamps=out)


def after_validation(current: BatchStatus, stamps: Mapping[str, int | None], at: int) -> StatusChange | None:
    """The input is valid and persisted: validating → in_progress. A batch cancelled while it was
    validating stays cancelling (its requests will each get a ``batch_cancelled`` line)."""
    if current is BatchStatus.CANCELLING:
        return _unchanged(current, stamps)
    return change_status(current, stamps, {BatchStatus.VALIDATING}, BatchStatus.IN_PROGRESS, at)


def after_failed_validation(current: BatchStatus, stamps: Mapping[str, int | None], at: int) -> StatusChange | None:
    """The input is invalid: validating → failed. A cancelling batch keeps its status."""
    if current is BatchStatus.CANCELLING:
        return _unchanged(current, stamps)
    return change_status(current, stamps, {BatchStatus.VALIDATING}, BatchStatus.FAILED, at)


def _unchanged(current: BatchStatus, stamps: Mapping[str, int | None]) -> StatusChange:
    return StatusChange(current, current, {k: stamps.get(k) for k in STAMP_FIELDS})
