"""``FileStore`` over named SQL (files.sql)."""

from __future__ import annotations

from collections.abc import Sequence

from freight.domain.files import File
from freight.ports.records import Page

from .base import Base
from .rows import file_from_row


class FilesMixin(Base):
    def insert_file(self, f: File, blob_key: str, idempotency_key: str | None = None) -> File:
        with self._db.write() as tx:
            key = {"project": f.project, "idempotency_key": idempotency_key}
            if idempotency_key is not None:
                row = tx.one("file_by_idempotency_key", key)
                if row is not None:
                    return file_from_row(row)
            if self._insert_file(tx, f, blob_key, idempotency_key) == 0:
                # Another process inserted under the same key since we looked: theirs is the file.
                row = tx.one("file_by_idempotency_key", key)
                assert row is not None
                return file_from_row(row)
        return f

    def find_file(self, project: str, idempotency_key: str) -> File | None:
        with self._db.read() as tx:
            row = tx.one("file_by_idempotency_key", {"project": project, "idempotency_key": idempotency_key})
        return file_from_row(row) if row else None

    def get_file(self, project: str, file_id: str) -> File | None:
        with self._db.read() as tx:
            row = tx.one("live_file", {"id": file_id, "project": project})
        return file_from_row(row) if row else None

    def file_blob_key(self, file_id: str) -> str | None:
        with self._db.read() as tx:
            row = tx.one("file_blob_key", {"id": file_id})
        return row["blob_key"] if row else None

    def list_files(self, project: str, *, purpose: str | None, after: str | None, limit: int, order: str) -> Page:
        with self._db.read() as tx:
            after_seq = None
            if after is not None:
                row = tx.one("file_seq", {"id": after, "project": project})
                if row is None:
                    return Page([], False)
                after_seq = row["seq"]
            rows = tx.all("list_files_asc" if order == "asc" else "list_files_desc",
                          {"project": project, "purpose": purpose, "after_seq": after_seq, "limit": limit + 1})
        return Page([file_from_row(r) for r in rows[:limit]], len(rows) > limit)

    def delete_file(self, project: str, file_id: str) -> bool:
        with self._db.write() as tx:
            return tx.run("delete_file", {"id": file_id, "project": project}) == 1

    def purgeable_files(self, now: float, limit: int = 100) -> list[tuple[str, str]]:
        with self._db.read() as tx:
            rows = tx.all("purgeable_files", {"now": now, "limit": limit})
        return [(row["id"], row["blob_key"]) for row in rows]

    def mark_purged(self, file_ids: Sequence[str]) -> None:
        with self._db.write() as tx:
            tx.many("mark_purged", [{"id": i} for i in file_ids])

    def blob_keys(self) -> set[str]:
        with self._db.read() as tx:
            return {row["blob_key"] for row in tx.all("blob_keys")}
