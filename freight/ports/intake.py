"""Queue intake's durable state: every message taken from a source, until its result is delivered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class IntakeMessage:
    """One message from an intake source (``[intake."name"]``), deduplicated on ``message_id``.

    ``body``: the request body (JSON text), None for a rejected message, whose error line is ``result``.
    ``flush_id``: the flush it was taken into; ``batch_id``: the batch that flush made for its url and model.
    """

    source: str
    message_id: str
    custom_id: str
    url: str
    body: str | None
    reply_to: str | None
    correlation_id: str | None
    received_at: float
    deadline: float | None = None
    result: str | None = None
    flush_id: str | None = None
    batch_id: str | None = None
    delivered: bool = False
    seq: int = 0


class IntakeStore(Protocol):
    def add_intake(self, message: IntakeMessage) -> bool:
        """Keep a message durably; False if this source already has one with its id (a redelivery)."""
        ...

    def add_intakes(self, messages: Sequence[IntakeMessage]) -> int:
        """``add_intake`` for many, in one transaction; how many were new."""
        ...

    def intake_pending(self, source: str) -> list[IntakeMessage]:
        """Messages not yet taken into a flush (rejected ones excluded), oldest first."""
        ...

    def claim_intake(self, source: str, flush_id: str, limit: int) -> int:
        """Take up to ``limit`` pending messages into flush ``flush_id`` (compare-and-set: each once)."""
        ...

    def open_flushes(self, source: str) -> list[str]:
        """Flushes some of whose messages have no batch yet (a crash between claim and batch)."""
        ...

    def intake_flush(self, flush_id: str) -> list[IntakeMessage]: ...
    def set_intake_batch(self, flush_id: str, seqs: Sequence[int], batch_id: str) -> int:
        """Record the batch made of these messages (by ``seq``) of a flush (compare-and-set: only a message
        with neither a batch nor a result); how many were set."""
        ...
    def set_intake_results(self, source: str, results: Sequence[tuple[str, str]]) -> int:
        """Give messages of a flush that can never become a batch their error lines, ``(message_id, line)``
        each (compare-and-set: only a message with neither a batch nor a result); how many were set."""
        ...

    def intake_undelivered(self, source: str, limit: int) -> list[IntakeMessage]:
        """Messages whose result may be ready (rejected, or in a batch) and is not yet delivered."""
        ...

    def mark_intake_delivered(self, source: str, message_ids: Sequence[str]) -> int: ...
    def get_intake(self, source: str, message_id: str) -> IntakeMessage | None: ...
