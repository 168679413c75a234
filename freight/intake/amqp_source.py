"""``kind = "amqp"``: a RabbitMQ queue (aio-pika).

Each message's body is one request as JSON: ``body``, optional ``custom_id``, ``url``, ``deadline``.
Its dedupe key is the message's ``message_id`` (else its ``correlation_id``, else a digest of its
bytes and its ``reply_to``). It is acknowledged once it is in the store; its result is published to its
``reply_to`` (else, or when no such queue exists, the ``results_stream`` queue) with its ``correlation_id``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from freight.intake.core import Incoming, Intake, message_id_of
from freight.intake.runner import Undeliverable
from freight.intake.settings import IntakeSettings
from freight.ports import IntakeMessage

log = logging.getLogger("freight.intake")


class AmqpSource:
    def __init__(self, settings: IntakeSettings):
        self.settings = settings
        self._connection: Any = None
        self._channel: Any = None
        self._lock = asyncio.Lock()

    async def _open(self) -> Any:
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                if self._connection is None or self._connection.is_closed:
                    self._connection = await aio_pika.connect_robust(
                        self.settings.url or "amqp://guest:guest@127.0.0.1:5672/")
                self._channel = await self._connection.channel()
                await self._channel.set_qos(prefetch_count=max(2 * self.settings.policy.flush_size, 100))
            return self._channel

    async def consume(self, intake: Intake, stop: asyncio.Event) -> None:
        channel = await self._open()
        queue = await channel.declare_queue(self.settings.queue, durable=True)
        waiting: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await waiting.put(message)

        tag = await queue.consume(on_message)
        try:
            while not stop.is_set():
                try:
                    first = await asyncio.wait_for(waiting.get(), 0.2)
                except TimeoutError:
                    continue
                messages = [first]
                while not waiting.empty() and len(messages) < 500:
                    messages.append(waiting.get_nowait())
                await self._keep(intake, messages)
        finally:
            try:
                await queue.cancel(tag)
            except Exception:  # the channel is already gone
                pass

    async def _keep(self, intake: Intake, messages: list[aio_pika.abc.AbstractIncomingMessage]) -> None:
        """Keep the messages in one transaction, then acknowledge them; if the store failed, requeue them."""
        incoming = [Incoming(message_id_of(m.body, m.message_id, m.correlation_id, reply_to=m.reply_to), m.body,
                             m.reply_to, m.correlation_id) for m in messages]
        try:
            await asyncio.to_thread(intake.accept_many, incoming)
        except Exception:
            log.exception("intake %s: %d message(s) not kept; returned to the queue", intake.name, len(messages))
            for m in messages:
                await m.nack(requeue=True)
            return
        for m in messages:
            await m.ack()

    async def publish(self, message: IntakeMessage, line: bytes) -> None:
        """Publish mandatory, so that a queue that does not exist returns the result rather than the broker
        dropping it: a returned result goes to ``results_stream`` instead, else it is logged as dropped (a
        later try could not route it either, and it would hold back every result behind it)."""
        targets = [t for t in dict.fromkeys((message.reply_to, self.settings.results_stream)) if t]
        if not targets:
            log.warning("intake %s: message %s has no reply_to and no results_stream is set; result dropped",
                        self.settings.name, message.message_id)
            return
        channel = await self._open()
        for to in targets:
            try:
                confirmed = await channel.default_exchange.publish(
                    aio_pika.Message(line, correlation_id=message.correlation_id, message_id=message.message_id,
                                     content_type="application/json",
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=to, mandatory=True)
            except DeliveryError as exc:  # nacked: the queue refused it (full, with x-overflow reject-publish)
                raise Undeliverable(f"queue {to!r} refused it ({exc})") from exc
            if isinstance(confirmed, Basic.Ack):
                return
            log.warning("intake %s: no queue %r to take the result of message %s (declare reply queues before "
                        "sending)", self.settings.name, to, message.message_id,
                        extra={"event": "intake_unroutable", "intake": self.settings.name, "queue": to})
        log.warning("intake %s: result of message %s dropped: no queue could take it", self.settings.name,
                    message.message_id)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
