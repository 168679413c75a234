"""``SchedulingStore``: what the scheduler (freight/domain/scheduling.py) keeps in the store."""

from __future__ import annotations

from typing import Protocol

from freight.domain.batches import Batch


class SchedulingStore(Protocol):
    def set_priority(self, project: str, batch_id: str, priority: int) -> Batch | None:
        """Set an active batch's priority; the batch as it is now (None: no such batch in the project)."""
        ...

    def pause_batch(self, project: str, batch_id: str, at: int) -> Batch | None:
        """Pause an active batch (its first ``paused_at`` kept); the batch as it is now."""
        ...

    def resume_batch(self, project: str, batch_id: str) -> Batch | None:
        """Clear an active batch's ``paused_at``; the batch as it is now."""
        ...

    def add_usage(self, project: str, bucket: int, seconds: float, forget_before: int) -> None:
        """Add model time used to a project's bucket, and drop buckets older than ``forget_before``."""
        ...

    def usage_since(self, bucket: int) -> dict[str, float]:
        """Model time used per project in buckets from ``bucket`` on."""
        ...
