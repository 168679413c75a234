"""``FreightBatchTrigger``: waits for a freight batch to end, in Airflow's triggerer.

It polls ``GET /v1/batches/{id}`` with :class:`freight.client.AsyncClient` (so many batches can be
waited on by one triggerer event loop, and no worker slot is held) and fires one
``TriggerEvent`` when the batch is ``completed``, ``failed``, ``expired`` or ``cancelled``, or when
freight answers that the batch cannot be read (a 4xx: a wrong id or key); a connection error or a 5xx
is retried on the next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent

from freight.client import TERMINAL, AsyncClient, FreightError


class FreightBatchTrigger(BaseTrigger):  # type: ignore[misc]  # Airflow is untyped where it is not installed
    def __init__(self, batch_id: str, freight_url: str | None = None, api_key: str | None = None,
                 poll_interval_s: float = 5.0):
        super().__init__()
        self.batch_id = batch_id
        self.freight_url = freight_url
        self.api_key = api_key
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"batch_id": self.batch_id, "freight_url": self.freight_url, "api_key": self.api_key,
                 "poll_interval_s": self.poll_interval_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        polls = 0
        async with AsyncClient(self.freight_url, self.api_key) as client:
            while True:
                polls += 1
                try:
                    batch = await client.retrieve(self.batch_id)
                except FreightError as exc:
                    if exc.status < 500:
                        yield TriggerEvent({"status": "error", "batch_id": self.batch_id, "message": str(exc),
                                            "polls": polls})
                        return
                    self.log.warning("freight batch %s: %s; polling again", self.batch_id, exc)
                except httpx.HTTPError as exc:
                    self.log.warning("freight batch %s: %s; polling again", self.batch_id, exc)
                else:
                    if batch["status"] in TERMINAL:
                        yield TriggerEvent({"status": "ended", "batch": batch, "polls": polls})
                        return
                    self.log.info("freight batch %s is %s", self.batch_id, batch["status"])
                await asyncio.sleep(self.poll_interval_s)
