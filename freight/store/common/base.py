"""What every port mixin shares: the database, and the writes more than one port makes."""

from __future__ import annotations

from freight.domain.claims import Tally
from freight.domain.files import File
from freight.domain.quota import ActiveBatch, Quota, check_quota, queued_requests

from .db import Database, Tx
from .rows import file_params


class Base:
    _db: Database
    #: Whether writes that make work for other processes tell them (``notify_work``).
    _hints: bool = False

    def _hint_work(self, tx: Tx) -> None:
        """Sent when the transaction commits; only a hint (PostgreSQL NOTIFY)."""
        if self._hints:
            tx.run("notify_work")

    @staticmethod
    def _add_counts(tx: Tx, batch_id: str, tally: Tally) -> None:
        if tally:
            tx.run("add_counts", {"id": batch_id, "completed": tally.completed, "failed": tally.failed,
                                  "input_tokens": tally.input_tokens, "output_tokens": tally.output_tokens,
                                  "invalid_outputs": tally.invalid_outputs, "cached": tally.cached,
                                  "saved_input_tokens": tally.saved_input_tokens,
                                  "saved_output_tokens": tally.saved_output_tokens})

    @staticmethod
    def _check_quota(tx: Tx, project: str, quota: Quota, requests: int) -> None:
        """In the inserting transaction: concurrent inserts of one project are serialised first."""
        tx.run("lock_project", {"project": project})
        active = [ActiveBatch(r["total"], r["completed"], r["failed"], r["lines"])
                  for r in tx.all("project_active_batches", {"project": project})]
        check_quota(quota, len(active), queued_requests(active), requests)

    @staticmethod
    def _insert_file(tx: Tx, f: File, blob_key: str, idempotency_key: str | None = None) -> int:
        return tx.run("insert_file", file_params(f, blob_key, idempotency_key))
