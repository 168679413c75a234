"""Files' metadata (the bytes are a ``BlobStore``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from freight.domain.files import File
from freight.ports.records import Page


class FileStore(Protocol):
    def insert_file(self, f: File, blob_key: str, idempotency_key: str | None = None) -> File:
        """Insert, or return the file already created under the same idempotency key (then the
        caller's ``blob_key`` is not referenced and its bytes may be deleted)."""
        ...

    def find_file(self, project: str, idempotency_key: str) -> File | None:
        """The file created under this key, even if it was deleted since (a retry must not re-create it)."""
        ...

    def get_file(self, project: str, file_id: str) -> File | None: ...
    def file_blob_key(self, file_id: str) -> str | None:
        """The blob of a file whose bytes still exist (deleted ones too, until purged)."""
        ...

    def list_files(self, project: str, *, purpose: str | None, after: str | None, limit: int, order: str) -> Page:
        """Live files in upload order (``order`` "asc" or "desc"), after the file ``after``."""
        ...

    def delete_file(self, project: str, file_id: str) -> bool: ...
    def purgeable_files(self, now: float, limit: int = 100) -> list[tuple[str, str]]:
        """(file id, blob key) of files deleted or expired that no active batch still reads."""
        ...

    def mark_purged(self, file_ids: Sequence[str]) -> None:
        """The bytes are gone: each file stays as a tombstone so its id is never reused."""
        ...

    def blob_keys(self) -> set[str]:
        """Every blob key a file row still refers to."""
        ...
