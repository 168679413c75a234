"""``IntakeStore`` over named SQL (intake.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from freight.ports.intake import IntakeMessage

from .base import Base
from .db import Row


def _message(row: Row) -> IntakeMessage:
    return IntakeMessage(
        source=row["source"], message_id=row["message_id"], custom_id=row["custom_id"], url=row["url"],
        body=row["body"], reply_to=row["reply_to"], correlation_id=row["correlation_id"],
        received_at=row["received_at"], deadline=row["deadline"], result=row["result"],
        flush_id=row["flush_id"], batch_id=row["batch_id"], delivered=bool(row["delivered"]), seq=row["seq"])


def _params(message: IntakeMessage) -> dict[str, Any]:
    params: dict[str, Any] = asdict(message)
    params.pop("seq")
    params["delivered"] = int(message.delivered)
    return params


class IntakeMixin(Base):
    def add_intake(self, message: IntakeMessage) -> bool:
        return self.add_intakes([message]) == 1

    def add_intakes(self, messages: Sequence[IntakeMessage]) -> int:
        if not messages:
            return 0
        with self._db.write() as tx:
            return sum(tx.each("insert_intake", [_params(m) for m in messages]))

    def intake_pending(self, source: str) -> list[IntakeMessage]:
        with self._db.read() as tx:
            return [_message(r) for r in tx.all("intake_pending", {"source": source})]

    def claim_intake(self, source: str, flush_id: str, limit: int) -> int:
        with self._db.write() as tx:
            return tx.run("claim_intake", {"source": source, "flush_id": flush_id, "limit": limit})

    def open_flushes(self, source: str) -> list[str]:
        with self._db.read() as tx:
            return [r["flush_id"] for r in tx.all("open_intake_flushes", {"source": source})]

    def intake_flush(self, flush_id: str) -> list[IntakeMessage]:
        with self._db.read() as tx:
            return [_message(r) for r in tx.all("intake_flush", {"flush_id": flush_id})]

    def set_intake_batch(self, flush_id: str, seqs: Sequence[int], batch_id: str) -> int:
        with self._db.write() as tx:
            return tx.many("set_intake_batch", [{"flush_id": flush_id, "seq": seq, "batch_id": batch_id}
                                                for seq in seqs])

    def set_intake_results(self, source: str, results: Sequence[tuple[str, str]]) -> int:
        with self._db.write() as tx:
            return tx.many("set_intake_result", [{"source": source, "message_id": m, "result": line}
                                                 for m, line in results])

    def intake_undelivered(self, source: str, limit: int) -> list[IntakeMessage]:
        with self._db.read() as tx:
            return [_message(r) for r in tx.all("intake_undelivered", {"source": source, "limit": limit})]

    def mark_intake_delivered(self, source: str, message_ids: Sequence[str]) -> int:
        with self._db.write() as tx:
            return tx.many("mark_intake_delivered", [{"source": source, "message_id": m} for m in message_ids])

    def get_intake(self, source: str, message_id: str) -> IntakeMessage | None:
        with self._db.read() as tx:
            row = tx.one("intake_message", {"source": source, "message_id": message_id})
        return _message(row) if row is not None else None
