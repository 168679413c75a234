"""``SqlStore``: every store port over a ``Database`` (SQLite or PostgreSQL)."""

from __future__ import annotations

from .batches import BatchesMixin
from .cache import CacheMixin
from .db import Database
from .events import EventsMixin
from .files import FilesMixin
from .intake import IntakeMixin
from .keys import KeysMixin
from .lanes import LanesMixin
from .leases import LeasesMixin
from .message_batches import MessageBatchesMixin
from .queue import QueueMixin
from .scheduling import SchedulingMixin
from .stats import StatsMixin


class SqlStore(FilesMixin, BatchesMixin, QueueMixin, KeysMixin, MessageBatchesMixin, LanesMixin,
               LeasesMixin, EventsMixin, StatsMixin, SchedulingMixin, IntakeMixin, CacheMixin):
    out_of_process = False

    def __init__(self, db: Database):
        self._db = db

    def close(self) -> None:
        self._db.close()
