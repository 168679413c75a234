"""Partial results: the lines of a batch's finished requests, while it runs (and after).

``GET /v1/batches/{batch_id}/partial?after=N&limit=L`` answers the output and error lines (the same
lines as the files) of finished requests whose input position (0-based line index among the valid
requests) is greater than ``N``, in input order, at most ``L`` of them. Requests finish out of order,
so the answer also says up to where every request has finished (``complete_through``): resume with
``after=complete_through`` and drop the lines already seen by ``custom_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from freight.domain import ids
from freight.domain.batches import Batch
from freight.domain.requests import Result
from freight.ports import Store
from freight.wire.batch_output import result_line

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class PartialPage:
    body: bytes
    lines: int
    #: The input index of the last line in ``body`` (None: no line).
    last_index: int | None
    #: Every request up to this input index has finished (``after`` when the next one has not).
    complete_through: int
    has_more: bool


def _line(batch_id: str, idx: int, custom_id: str, result: Result) -> bytes:
    line_id = ids.batch_request_id(batch_id, idx)
    try:
        return result_line(line_id, custom_id, result)
    except (TypeError, ValueError) as exc:
        return result_line(line_id, custom_id, Result.never_ran(
            "internal_error", f"This request's result could not be written as a line: {exc}."))


def partial(store: Store, batch: Batch, after: int, limit: int) -> PartialPage:
    chunk = store.results(batch.id, after, limit + 1)
    has_more = len(chunk) > limit
    chunk = chunk[:limit]
    expected = after + 1
    for stored in chunk:
        if stored.idx != expected:
            break
        expected += 1
    body = b"".join(_line(batch.id, s.idx, s.custom_id, s.result) for s in chunk)
    return PartialPage(body=body, lines=len(chunk), last_index=chunk[-1].idx if chunk else None,
                       complete_through=expected - 1, has_more=has_more)
