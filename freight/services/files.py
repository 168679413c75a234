"""Files: accept an upload, look files up, list, delete and read them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import IO

from freight.domain import ids
from freight.domain.clock import Clock
from freight.domain.errors import InsufficientStorage, InvalidInput, NotFound, PayloadTooLarge
from freight.domain.files import (
    BATCH_FILE_DEFAULT_EXPIRY_S,
    MAX_EXPIRES_AFTER_S,
    MIN_EXPIRES_AFTER_S,
    UPLOAD_PURPOSES,
    File,
    FileStatus,
)
from freight.domain.nesting import MAX_JSON_NESTING
from freight.ports import BlobStore, BlobWriter, Page, Store
from freight.wire import jsonx
from freight.wire.batch_input import InputLimits, iter_lines
from freight.wire.json_stream import nests_deeper_than

log = logging.getLogger("freight.files")

#: How many bad lines an upload error lists before it stops counting them one by one.
MAX_LISTED_UPLOAD_PROBLEMS = 20


def purge_files(store: Store, blobs: BlobStore, now: float) -> int:
    """Remove the bytes of deleted and expired files that no active batch reads any more.

    The bytes go first, then the row is marked: on a full disk removing bytes is what makes room
    for that write, and a purge cut short in between is simply done again.
    """
    purged = 0
    while batch := store.purgeable_files(now):
        for _, key in batch:
            blobs.delete(key)
        store.mark_purged([file_id for file_id, _ in batch])
        purged += len(batch)
    blobs.restore_reserve()
    return purged


def sweep_orphan_blobs(store: Store, blobs: BlobStore, older_than: float | None = None) -> int:
    """Remove blobs no file refers to (finalizing or uploading when a process died).

    Without ``older_than``, only safe while no upload or finalize is in flight: call it before the
    engine and the API start, with the data dir's lock held. With it (a unix time), only blobs last
    written before then go: what a fleet's batch-steps holder runs now and then, with a margin far
    longer than any upload or finalize takes (``EngineSettings.orphan_blob_age_s``). The blobs are
    listed before the files are read, so that a blob whose file row commits in between is kept.
    """
    candidates = blobs.keys(older_than)
    referenced = store.blob_keys()
    orphans = [key for key in candidates if key not in referenced]
    for key in orphans:
        blobs.delete(key)
    return len(orphans)


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int = 512 * 1024 * 1024
    input: InputLimits = field(default_factory=InputLimits)


class FileService:
    def __init__(self, store: Store, blobs: BlobStore, clock: Clock, limits: UploadLimits | None = None):
        self.store = store
        self.blobs = blobs
        self.clock = clock
        self.limits = limits or UploadLimits()

    # ---- upload ------------------------------------------------------------------------
    def check_purpose(self, purpose: object) -> str:
        if purpose is None or purpose == "":
            raise InvalidInput("Missing required parameter: 'purpose'.", param="purpose",
                               code="missing_required_parameter")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            allowed = ", ".join(f"'{p}'" for p in sorted(UPLOAD_PURPOSES))
            raise InvalidInput(f"Invalid value: {purpose!r}. Supported values are: {allowed}.", param="purpose",
                               code="invalid_value")
        return purpose

    def max_bytes_for(self, purpose: str) -> int:
        if purpose == "batch":
            return min(self.limits.max_upload_bytes, self.limits.input.max_bytes)
        return self.limits.max_upload_bytes

    def new_upload(self) -> tuple[str, BlobWriter]:
        file_id = ids.new_file_id()
        return file_id, self.blobs.writer(file_id)

    def finish_upload(
        self,
        project: str,
        file_id: str,
        writer: BlobWriter,
        *,
        filename: str,
        purpose: str,
        expires_after_s: int | None,
        idempotency_key: str | None = None,
    ) -> File:
        """Commit an upload that was streamed into ``writer``; checks a batch file is JSONL.

        With an ``idempotency_key`` already used by this project, the file made then is returned
        and these bytes are dropped.
        """
        try:
            if writer.size > self.max_bytes_for(purpose):
                raise PayloadTooLarge(
                    f"The file is larger than the {self.max_bytes_for(purpose)} byte limit for purpose '{purpose}'.",
                    param="file", code="file_too_large")
            if expires_after_s is not None and not MIN_EXPIRES_AFTER_S <= expires_after_s <= MAX_EXPIRES_AFTER_S:
                raise InvalidInput(
                    f"expires_after[seconds] must be between {MIN_EXPIRES_AFTER_S} and {MAX_EXPIRES_AFTER_S}.",
                    param="expires_after.seconds", code="invalid_value")
            size = writer.commit()
        except BaseException:
            writer.abort()
            raise
        lines = None
        try:
            if purpose == "batch":
                lines = self._check_jsonl(file_id, size)
        except BaseException:
            self.blobs.delete(file_id)
            raise
        now = int(self.clock.now())
        if expires_after_s is None and purpose == "batch":
            expires_after_s = BATCH_FILE_DEFAULT_EXPIRY_S
        f = File(
            id=file_id,
            project=project,
            filename=filename or "upload.jsonl",
            purpose=purpose,
            bytes=size,
            created_at=now,
            status=FileStatus.PROCESSED,
            expires_at=now + expires_after_s if expires_after_s is not None else None,
            lines=lines,
        )
        try:
            stored = self.store.insert_file(f, file_id, idempotency_key)
        except BaseException:
            self.blobs.delete(file_id)
            raise
        if stored.id != f.id:
            self.blobs.delete(file_id)  # the same upload was accepted before: keep that one
        return stored

    def find(self, project: str, idempotency_key: str) -> File | None:
        """The file this project uploaded with this idempotency key, if any."""
        return self.store.find_file(project, idempotency_key)

    def _check_jsonl(self, blob_key: str, size: int) -> int:
        """OpenAI refuses a batch file that is not JSONL at upload; the rest is checked per batch.

        Returns the number of request (non-blank) lines.
        """
        limits = self.limits.input
        problems: list[str] = []
        count = 0
        lines = 0
        with self.blobs.open(blob_key) as fh:
            for raw in iter_lines(fh, limits.max_line_bytes):
                problem = None
                if raw.data is None:
                    problem = f"line {raw.line}: {raw.length} bytes, over the {limits.max_line_bytes} byte line limit"
                elif not raw.data.strip():
                    continue
                else:
                    lines += 1
                    try:
                        obj = jsonx.loads(raw.data)
                    except jsonx.JSONDecodeError as exc:
                        problem = f"line {raw.line}: not valid JSON: {jsonx.reason(exc)}"
                    else:
                        if not isinstance(obj, dict):
                            problem = f"line {raw.line}: not a JSON object"
                    if nests_deeper_than(raw.data, MAX_JSON_NESTING):
                        problem = f"line {raw.line}: nests more than {MAX_JSON_NESTING} levels deep"
                if problem is not None:
                    count += 1
                    if len(problems) < MAX_LISTED_UPLOAD_PROBLEMS:
                        problems.append(problem)
        if count:
            more = f" (and {count - len(problems)} more)" if count > len(problems) else ""
            raise InvalidInput(
                "Invalid file format for Batch API. Must be .jsonl, one JSON object per line: "
                + "; ".join(problems) + more + ".",
                param="file", code="invalid_file_format")
        if lines == 0:
            raise InvalidInput(
                "The file is empty. A batch input file needs at least one request line.",
                param="file", code="empty_file")
        if lines > limits.max_lines:
            raise InvalidInput(
                f"The file has {lines} lines; a batch input file may have at most {limits.max_lines}.",
                param="file", code="too_many_tasks")
        return lines

    # ---- reads -------------------------------------------------------------------------
    def get(self, project: str, file_id: str) -> File:
        f = self.store.get_file(project, file_id) if ids.is_file_id(file_id) else None
        if f is None:
            raise NotFound(f"No such File object: {file_id}", param="id", code=None)
        return f

    def list(self, project: str, *, purpose: str | None, after: str | None, limit: int, order: str) -> Page:
        return self.store.list_files(project, purpose=purpose, after=after, limit=limit, order=order)

    def delete(self, project: str, file_id: str) -> None:
        """Delete a file; its bytes go at once unless a batch still reads it (then when that batch ends).

        Deleting is how a user frees space, so it must work on a full disk: if the store cannot
        write for lack of space, the disk space held in reserve is given back and the write tried
        again.
        """
        f = self.get(project, file_id)
        try:
            deleted = self.store.delete_file(project, f.id)
        except InsufficientStorage:
            if not self.blobs.release_reserve():
                raise
            log.warning("the disk is full: released the space held in reserve to delete file %s", f.id,
                        extra={"event": "reserve_released", "file_id": f.id, "project": project})
            deleted = self.store.delete_file(project, f.id)
        if not deleted:
            raise NotFound(f"No such File object: {file_id}", param="id")
        # The bytes stay while an active batch reads them (one may still be validating this file);
        # the engine purges them when that batch ends. The delete itself is done: a purge that
        # fails here is left to the engine's housekeeping.
        try:
            purge_files(self.store, self.blobs, self.clock.now())
        except Exception:
            log.warning("removing the bytes of deleted file %s failed; housekeeping will retry", f.id,
                        exc_info=True, extra={"event": "purge_failed", "file_id": f.id})

    def open_content(self, project: str, file_id: str) -> tuple[File, IO[bytes]]:
        f = self.get(project, file_id)
        key = self.store.file_blob_key(f.id)
        if key is None:
            raise NotFound(f"No such File object: {file_id}", param="id")
        return f, self.blobs.open(key)
