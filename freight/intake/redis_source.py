"""``kind = "redis"``: a Redis Stream read by a consumer group (redis-py's asyncio client).

Each entry is one request: fields ``body`` (JSON text), optional ``custom_id``, ``url``, ``deadline``,
``reply_to`` (the stream its result goes to; else ``results_stream``, else ``<stream>:results``) and
``id`` (the dedupe key; else the entry's id). An entry is acknowledged (XACK) once it is in the store.
On start the consumer first reads its own unacknowledged entries; entries another consumer left
unacknowledged for ``claim_idle_s`` are taken over (XAUTOCLAIM).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from freight.intake.core import Incoming, Intake, fields_text
from freight.intake.runner import Undeliverable
from freight.intake.settings import IntakeSettings
from freight.ports import IntakeMessage

BATCH = 100
BLOCK_MS = 200


class RedisSource:
    def __init__(self, settings: IntakeSettings):
        self.settings = settings
        self.stream = settings.queue
        self.group = settings.group
        self.consumer = settings.consumer or f"freight-{socket.gethostname()}"
        self.results = settings.results_stream or f"{self.stream}:results"
        self.redis: Any = aioredis.from_url(settings.url or "redis://127.0.0.1:6379")

    async def _take(self, intake: Intake, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        acks, incoming = [], []
        for entry_id, fields in entries:
            acks.append(entry_id)
            if not fields:  # deleted from the stream while pending
                continue
            text = fields_text(fields)
            reply_to = text.pop("reply_to", None)
            incoming.append(Incoming(str(text.get("id") or entry_id.decode()), text,
                                     str(reply_to) if reply_to else None))
        await asyncio.to_thread(intake.accept_many, incoming)
        if acks:
            await self.redis.xack(self.stream, self.group, *acks)

    async def consume(self, intake: Intake, stop: asyncio.Event) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # This consumer's own entries left unacknowledged by a previous run.
        while not stop.is_set():
            got = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=BATCH)
            entries = got[0][1] if got else []
            if not entries:
                break
            await self._take(intake, entries)
        last_claim = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if loop.time() - last_claim >= min(self.settings.claim_idle_s, 5.0):
                last_claim = loop.time()
                claimed = await self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                                      int(self.settings.claim_idle_s * 1000), count=BATCH)
                await self._take(intake, claimed[1])
            got = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=BATCH,
                                              block=BLOCK_MS)
            if got:
                await self._take(intake, got[0][1])

    async def publish(self, message: IntakeMessage, line: bytes) -> None:
        fields = {"id": message.message_id, "custom_id": message.custom_id, "result": line}
        try:
            await self.redis.xadd(message.reply_to or self.results, fields)
        except ResponseError as exc:  # (WRONGTYPE: the key is not a stream) Redis refused this result
            raise Undeliverable(str(exc)) from exc

    async def close(self) -> None:
        await self.redis.aclose()
