"""``SqlStore``: every store port over a ``Database`` (SQLite or PostgreSQL)."""

from __future__ import annotations

from .batches import BatchesMixin
from .cache import CacheMixin
from .db import Database
from .files import FilesMixin
from .keys import KeysMixin
from .lanes import LanesMixin
from .leases import LeasesMixin
from .message_batches import MessageBatchesMixin
from .queue import QueueMixin


class SqlStore(FilesMixin, BatchesMixin, QueueMixin, KeysMixin, MessageBatchesMixin, LanesMixin,
               LeasesMixin, CacheMixin):
    def __init__(self, db: Database):
        self._db = db

    def close(self) -> None:
        self._db.close()
