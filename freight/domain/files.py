"""File objects (OpenAI's FileObject) as freight keeps them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
ALL_PURPOSES = UPLOAD_PURPOSES | {"batch_output", "fine-tune-results", "assistants_output"}

#: OpenAI's bounds for ``expires_after[seconds]``.
MIN_EXPIRES_AFTER_S = 3600
MAX_EXPIRES_AFTER_S = 2_592_000
#: Batch input files expire after 30 days by default.
BATCH_FILE_DEFAULT_EXPIRY_S = 2_592_000


class FileStatus(enum.StrEnum):
    UPLOADED = "uploaded"
    PROCESSED = "processed"
    ERROR = "error"


@dataclass
class File:
    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    status: FileStatus = FileStatus.PROCESSED
    expires_at: int | None = None
    status_details: str | None = None
    #: Request lines of a batch input file (counted at upload; None for other files).
    lines: int | None = None


class FileRowState(enum.IntEnum):
    """What a store keeps of a file (the ``deleted`` column)."""

    #: Listed and readable.
    LIVE = 0
    #: Deleted by its owner; its bytes are still there until purged (a running batch may read them).
    DELETED = 1
    #: Its bytes are gone; the row stays as a tombstone so that its id is never reused.
    PURGED = 2
