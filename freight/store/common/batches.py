"""``BatchStore`` over named SQL (batches.sql): status changes are compare-and-set of what
freight.domain.status_changes computes."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from freight.domain.batches import Batch, BatchError, BatchStatus
from freight.domain.claims import Tally
from freight.domain.errors import StoreError
from freight.domain.files import File
from freight.domain.quota import Quota
from freight.domain.requests import Result
from freight.domain.status_changes import StatusChange, after_failed_validation, after_validation, change_status
from freight.ports.records import NewRequest, Page, StoredResult
from freight.wire import jsonx

from .base import Base
from .db import Tx
from .events import record_event
from .rows import batch_from_row, batch_params, result_params, stamps_of, stored_results

#: A batch of at least this many requests refreshes the planner's statistics before it starts.
REFRESH_STATS_AT = 5000


def _cas(tx: Tx, query: str, batch_id: str, change: StatusChange, at: int, **extra: object) -> bool:
    """The compare-and-set, and with it (same transaction) the event of a status that changed."""
    params = {"id": batch_id, "expected": str(change.expected), "status": str(change.new), **change.stamps, **extra}
    if tx.run(query, params) != 1:
        return False
    if change.new is not change.expected:
        record_event(tx, batch_id, str(change.expected), str(change.new), at)
    return True


class BatchesMixin(Base):
    def insert_batch(
        self, b: Batch, idempotency_key: str | None, quota: Quota | None = None, requests: int = 0
    ) -> Batch:
        key = {"project": b.project, "idempotency_key": idempotency_key}
        with self._db.write() as tx:
            if idempotency_key is not None:
                row = tx.one("batch_by_idempotency_key", key)
                if row is not None:
                    return batch_from_row(row)
            if quota is not None:
                self._check_quota(tx, b.project, quota, requests)
            if tx.run("insert_batch", batch_params(b, idempotency_key)) == 0:
                row = tx.one("batch_by_idempotency_key", key)  # inserted by another process meanwhile
                assert row is not None
                return batch_from_row(row)
            self._hint_work(tx)
            record_event(tx, b.id, None, str(b.status), b.created_at)
        return b

    def get_batch(self, project: str | None, batch_id: str) -> Batch | None:
        with self._db.read() as tx:
            if project is None:
                row = tx.one("batch", {"id": batch_id})
            else:
                row = tx.one("batch_in_project", {"id": batch_id, "project": project})
        return batch_from_row(row) if row else None

    def find_batch(self, project: str, idempotency_key: str) -> Batch | None:
        with self._db.read() as tx:
            row = tx.one("batch_by_idempotency_key", {"project": project, "idempotency_key": idempotency_key})
        return batch_from_row(row) if row else None

    def list_batches(self, project: str, *, after: str | None, limit: int) -> Page:
        with self._db.read() as tx:
            after_seq = None
            if after is not None:
                row = tx.one("batch_seq", {"id": after, "project": project})
                if row is None:
                    return Page([], False)
                after_seq = row["seq"]
            rows = tx.all("list_batches", {"project": project, "after_seq": after_seq, "limit": limit + 1})
        return Page([batch_from_row(r) for r in rows[:limit]], len(rows) > limit)

    def active_batches(self) -> list[Batch]:
        with self._db.read() as tx:
            return [batch_from_row(r) for r in tx.all("active_batches")]

    def set_status(self, batch_id: str, expected: Sequence[BatchStatus], new: BatchStatus, at: int) -> Batch | None:
        with self._db.write() as tx:
            row = tx.one("batch", {"id": batch_id})
            if row is None:
                return None
            change = change_status(BatchStatus(row["status"]), stamps_of(row), expected, new, at)
            if change is None or not _cas(tx, "set_status", batch_id, change, at):
                return None
            self._hint_work(tx)
            row = tx.one("batch", {"id": batch_id})
        assert row is not None  # moved by this transaction
        if new is BatchStatus.FINALIZING and row["total"] >= REFRESH_STATS_AT:
            # The planner last saw every request of this batch pending (start_batch): on those figures
            # PostgreSQL read each page of results by scanning and sorting the whole table (20 ms a page of
            # 5,000 at 100,000 requests, growing with the table) instead of walking the primary key.
            with contextlib.suppress(StoreError), self._db.write() as tx:
                tx.run("refresh_stats")
        return batch_from_row(row)

    # ---- ingest ------------------------------------------------------------------------
    def _unstarted(self, tx: Any, batch_id: str) -> Any:
        """The batch's row, locked, while no ingest has started it (else None): a stale ingest (its
        process lost the batch-steps lease) must not clear the requests of a batch another one started."""
        tx.one("lock_batch", {"id": batch_id})
        row = tx.one("batch", {"id": batch_id})
        if row is None or row["in_progress_at"] is not None or row["total"]:
            return None  # started (a batch cancelled while validating starts with its total, still cancelling)
        return row if BatchStatus(row["status"]) in (BatchStatus.VALIDATING, BatchStatus.CANCELLING) else None

    def clear_requests(self, batch_id: str) -> bool:
        with self._db.write() as tx:
            if self._unstarted(tx, batch_id) is None:
                return False
            tx.run("delete_requests", {"batch_id": batch_id})
            return True

    def insert_requests(self, batch_id: str, rows: Sequence[NewRequest]) -> None:
        with self._db.write() as tx:
            tx.bulk("insert_requests", {"batch_id": [batch_id] * len(rows), "idx": [r.idx for r in rows],
                                        "line": [r.line for r in rows], "custom_id": [r.custom_id for r in rows],
                                        "body": [r.body for r in rows]})

    def insert_finished_requests(self, batch_id: str, rows: Sequence[tuple[NewRequest, Result]]) -> None:
        with self._db.write() as tx:
            tx.many("insert_finished_request", [
                {"batch_id": batch_id, "idx": q.idx, "line": q.line, "custom_id": q.custom_id, "body": q.body,
                 **result_params(r)} for q, r in rows])
            self._add_counts(tx, batch_id, Tally.of((r for _, r in rows), tokens=False))

    def restart_ingest(self, batch_id: str) -> bool:
        with self._db.write() as tx:
            row = self._unstarted(tx, batch_id)
            if row is None:
                return False
            tx.run("delete_requests", {"batch_id": batch_id})
            tx.run("reset_counts", {"id": batch_id, "expected": row["status"]})
            return True

    def start_batch(self, batch_id: str, total: int, model: str | None, at: int) -> bool:
        if total >= REFRESH_STATS_AT:
            # A big batch just arrived: let the planner know before its requests are claimed
            # (PostgreSQL's planner, on stale counts, sorted every open request at each claim).
            with contextlib.suppress(StoreError), self._db.write() as tx:
                tx.run("refresh_stats")
        with self._db.write() as tx:
            tx.one("lock_batch", {"id": batch_id})
            stored = tx.one("count_batch_requests", {"batch_id": batch_id})
            if stored is None or int(stored["n"]) != total:
                return False  # another ingest of this batch cleared or wrote rows meanwhile: not ours to start
            row = tx.one("batch", {"id": batch_id})
            change = after_validation(BatchStatus(row["status"]), stamps_of(row), at) if row else None
            if change is None or not _cas(tx, "start_batch", batch_id, change, at, total=total, model=model):
                return False
            self._hint_work(tx)
            return True

    def fail_validation(self, batch_id: str, errors: Sequence[BatchError], at: int) -> bool:
        data = jsonx.dumps([{"code": e.code, "message": e.message, "param": e.param, "line": e.line} for e in errors])
        with self._db.write() as tx:
            row = tx.one("batch", {"id": batch_id})
            change = after_failed_validation(BatchStatus(row["status"]), stamps_of(row), at) if row else None
            if change is None or not _cas(tx, "fail_validation", batch_id, change, at, errors=data.decode()):
                return False
            tx.run("delete_requests", {"batch_id": batch_id})
            return True

    # ---- the end -----------------------------------------------------------------------
    def results(self, batch_id: str, after_idx: int, limit: int) -> list[StoredResult]:
        with self._db.read() as tx:
            rows = tx.tuples("results", {"batch_id": batch_id, "after_idx": after_idx, "limit": limit})
        return stored_results(rows)

    def failed_results(self, batch_id: str, after_idx: int, limit: int) -> list[StoredResult]:
        with self._db.read() as tx:
            rows = tx.tuples("failed_results", {"batch_id": batch_id, "after_idx": after_idx, "limit": limit})
        return stored_results(rows)

    def finish_batch(
        self,
        batch_id: str,
        expected: Sequence[BatchStatus],
        new: BatchStatus,
        at: int,
        output_file: tuple[File, str] | None,
        error_file: tuple[File, str] | None,
    ) -> bool:
        with self._db.write() as tx:
            if tx.one("any_open_request", {"batch_id": batch_id}) is not None:
                return False  # a request without its line: the files would lose it
            row = tx.one("batch", {"id": batch_id})
            change = change_status(BatchStatus(row["status"]), stamps_of(row), expected, new, at) if row else None
            if change is None or not _cas(tx, "finish_batch", batch_id, change, at,
                                          output_file_id=output_file[0].id if output_file else None,
                                          error_file_id=error_file[0].id if error_file else None):
                return False
            for pair in (output_file, error_file):
                if pair is not None:
                    self._insert_file(tx, pair[0], pair[1])
        return True
