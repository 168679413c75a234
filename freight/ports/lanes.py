"""What batch lanes (freight/engine/lanes.py) record: every upstream batch ("sub") and its requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from freight.domain.lanes import LaneSub
from freight.domain.requests import Result


class LaneStore(Protocol):
    def lane_unassigned(self, batch_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes, int]]:
        """Pending requests of a batch that no live sub holds, in input order after ``after_idx``:
        (idx, body, how many subs held it before)."""
        ...

    def lane_plan(self, sub: LaneSub, idxs: Sequence[int]) -> None:
        """Record a planned sub and the requests it holds, in one transaction."""
        ...

    def lane_subs(self, batch_id: str, live_only: bool = True) -> list[LaneSub]: ...
    def lane_bodies(self, sub_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes]]:
        """The requests of a sub, in input order."""
        ...

    def lane_items(self, sub_id: str) -> list[int]:
        """The request indexes a sub holds, in input order."""
        ...

    def lane_update(self, sub_id: str, **fields: Any) -> None:
        """Set columns of a sub (state, upload_id, upstream_id, create_sent_at, upstream_status,
        completed, failed, cancel_sent)."""
        ...

    def lane_finish(self, sub_id: str, batch_id: str, results: Sequence[tuple[int, Result]]) -> int:
        """Store these results (each only if its request has none yet) and mark the sub done, in one
        transaction. Requests of the sub without a result here go back to the pool. Returns how many
        results were stored."""
        ...

    def lane_progress(self, batch_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per batch: (completed, failed) that live subs' upstream batches report, not yet downloaded."""
        ...
