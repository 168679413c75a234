"""``MessageBatchStore`` over named SQL (message_batches.sql)."""

from __future__ import annotations

from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.files import File
from freight.domain.message_batches import EndedCounts, MessageBatch, ended_counts
from freight.domain.quota import Quota
from freight.ports.records import Page

from .base import Base
from .events import record_event
from .rows import batch_params, message_batch_from_row


class MessageBatchesMixin(Base):
    def insert_message_batch(
        self, f: File, blob_key: str, b: Batch, requests: int, quota: Quota | None = None
    ) -> None:
        with self._db.write() as tx:
            if quota is not None:
                self._check_quota(tx, b.project, quota, requests)
            self._insert_file(tx, f, blob_key)
            tx.run("insert_batch", batch_params(b, None))
            tx.run("insert_message_batch", {"batch_id": b.id, "project": b.project, "requests": requests})
            self._hint_work(tx)
            record_event(tx, b.id, None, str(b.status), b.created_at)

    def is_message_batch(self, batch_id: str) -> bool:
        with self._db.read() as tx:
            return tx.one("is_message_batch", {"batch_id": batch_id}) is not None

    def get_message_batch(self, project: str, batch_id: str) -> MessageBatch | None:
        with self._db.read() as tx:
            row = tx.one("message_batch", {"batch_id": batch_id, "project": project})
        return message_batch_from_row(row) if row else None

    def list_message_batches(self, project: str, *, after: str | None, before: str | None, limit: int) -> Page:
        with self._db.read() as tx:
            cursor = after if after is not None else before
            seq = None
            if cursor is not None:
                row = tx.one("message_batch_seq", {"batch_id": cursor, "project": project})
                if row is None:
                    return Page([], False)
                seq = row["seq"]
            if before is not None and after is None:
                rows = tx.all("list_message_batches_newer", {"project": project, "seq": seq, "limit": limit + 1})
                return Page([message_batch_from_row(r) for r in reversed(rows[:limit])], len(rows) > limit)
            rows = tx.all("list_message_batches", {"project": project, "seq": seq, "limit": limit + 1})
        return Page([message_batch_from_row(r) for r in rows[:limit]], len(rows) > limit)

    def settle_message_batch(self, batch_id: str) -> EndedCounts | None:
        with self._db.write() as tx:
            row = tx.one("message_batch_state", {"batch_id": batch_id})
            if row is None or BatchStatus(row["status"]) not in TERMINAL:
                return None
            if row["succeeded"] is not None:
                return EndedCounts(row["succeeded"], row["errored"], row["canceled"], row["expired"])
            groups = tx.all("result_groups", {"batch_id": batch_id})
            ended = ended_counts((g["status_code"], g["error_code"], int(g["n"])) for g in groups)
            tx.run("settle_message_batch", {"batch_id": batch_id, "succeeded": ended.succeeded,
                                            "errored": ended.errored, "canceled": ended.canceled,
                                            "expired": ended.expired})
        return ended

    def delete_message_batch(self, project: str, batch_id: str) -> bool:
        with self._db.write() as tx:
            row = tx.one("message_batch_files", {"batch_id": batch_id, "project": project})
            if row is None or BatchStatus(row["status"]) not in TERMINAL:
                return False
            tx.run("delete_requests", {"batch_id": batch_id})
            files = [row[k] for k in ("input_file_id", "output_file_id", "error_file_id") if row[k]]
            tx.many("delete_file_of_batch", [{"id": f} for f in files])
            # The message_batches row stays: its seq is the deleted batch's place in the list, so a client
            # paging with it as ``after_id``/``before_id`` (deleting each page's batches as it goes, as
            # ``for b in client.messages.batches.list(): client.messages.batches.delete(b.id)`` does) gets the
            # next page instead of an empty one. Every read joins batches, so the batch is gone everywhere else.
            tx.run("delete_batch", {"id": batch_id})
        return True
