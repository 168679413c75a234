"""Anthropic Message Batches (freight/services/message_batches.py): a view of freight batches."""

from __future__ import annotations

from typing import Protocol

from freight.domain.batches import Batch
from freight.domain.files import File
from freight.domain.message_batches import EndedCounts, MessageBatch
from freight.domain.quota import Quota
from freight.ports.records import Page


class MessageBatchStore(Protocol):
    def insert_message_batch(
        self, f: File, blob_key: str, b: Batch, requests: int, quota: Quota | None = None
    ) -> None:
        """Record a Message Batch's input file, its batch and its Message Batch row in one transaction
        (with the project's ``quota`` checked in it, as ``insert_batch`` does)."""
        ...

    def is_message_batch(self, batch_id: str) -> bool: ...
    def get_message_batch(self, project: str, batch_id: str) -> MessageBatch | None: ...
    def list_message_batches(
        self, project: str, *, after: str | None, before: str | None, limit: int
    ) -> Page:
        """Message Batches, newest first: older than ``after``, or the ``limit`` just newer than ``before``."""
        ...

    def settle_message_batch(self, batch_id: str) -> EndedCounts | None:
        """Count a terminal batch's results by kind (once; kept). None while it is not terminal."""
        ...

    def delete_message_batch(self, project: str, batch_id: str) -> bool:
        """Delete a terminal Message Batch: its requests, batch row and files. False if none or not ended."""
        ...
