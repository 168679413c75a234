"""``SchedulingStore`` over named SQL (scheduling.sql): priority, pause, and model time used per project."""

from __future__ import annotations

from freight.domain.batches import Batch

from .base import Base
from .rows import batch_from_row


class SchedulingMixin(Base):
    #: The last ``forget_before`` this process dropped buckets for (see ``add_usage``).
    _usage_forgotten_before: int | None = None

    def _change_batch(self, query: str, project: str, batch_id: str, **params: object) -> Batch | None:
        with self._db.write() as tx:
            if tx.run(query, {"id": batch_id, "project": project, **params}) == 1:
                self._hint_work(tx)
            row = tx.one("batch_in_project", {"id": batch_id, "project": project})
        return batch_from_row(row) if row else None

    def set_priority(self, project: str, batch_id: str, priority: int) -> Batch | None:
        return self._change_batch("set_priority", project, batch_id, priority=priority)

    def pause_batch(self, project: str, batch_id: str, at: int) -> Batch | None:
        return self._change_batch("pause_batch", project, batch_id, at=at)

    def resume_batch(self, project: str, batch_id: str) -> Batch | None:
        return self._change_batch("resume_batch", project, batch_id)

    def add_usage(self, project: str, bucket: int, seconds: float, forget_before: int) -> None:
        # Buckets older than ``forget_before`` are dropped once per new ``forget_before`` in this process
        # (it moves once a bucket, a minute), not at every chunk.
        forget = forget_before != self._usage_forgotten_before
        with self._db.write(durable=False) as tx:  # model time used: a figure for fair shares
            tx.run("add_usage", {"project": project, "bucket": bucket, "seconds": seconds})
            if forget:
                tx.run("forget_usage", {"before": forget_before})
        if forget:
            self._usage_forgotten_before = forget_before

    def usage_since(self, bucket: int) -> dict[str, float]:
        with self._db.read() as tx:
            return {row["project"]: float(row["seconds"]) for row in tx.all("usage_since", {"since": bucket})}
