"""``kind = "http"``: producers that speak only HTTP. ``POST /v1/freight/intake/{name}`` keeps one request
and answers a ticket; ``GET /v1/freight/intake/{name}/{ticket_id}`` answers its status and result
(freight/api/intake.py). Nothing to consume or publish: the ticket is where the result is read."""

from __future__ import annotations

import asyncio

from freight.intake.core import Intake
from freight.ports import IntakeMessage


class HttpSource:
    async def consume(self, intake: Intake, stop: asyncio.Event) -> None:
        await stop.wait()

    async def publish(self, message: IntakeMessage, line: bytes) -> None:
        """The result is read from the ticket: it is recorded as delivered once it is ready."""

    async def close(self) -> None:
        pass
