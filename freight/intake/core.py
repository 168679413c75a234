"""One intake: take a message durably, flush pending messages as a batch, hand back finished results.

Every step is a short store operation that a restarted (or second) process can redo:

- ``accept``: the message is parsed and kept (deduplicated on its id) before the source acknowledges it;
  a malformed one is kept with its error line as its result.
- ``flush``: pending messages are claimed into a flush (compare-and-set), then one batch per url and
  model is made with the flush id in the file's and the batch's idempotency key, so a crash between the
  claim and the batch makes that same batch on the next pass, never a second one.
- ``ready``/``delivered``: results not yet delivered; the source publishes each, then records it.
  A crash in between publishes it again, the same line.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from freight.domain.batches import TERMINAL
from freight.domain.clock import Clock
from freight.domain.errors import FreightError, InvalidInput, PayloadTooLarge
from freight.domain.ids import batch_request_id
from freight.domain.intake import (
    IntakeRequest,
    Pending,
    Rejected,
    flush_reason,
    message_key,
    parse_message,
    route_problem,
)
from freight.domain.requests import Result
from freight.engine.repeats import RepeatedFailures
from freight.intake.settings import IntakeSettings
from freight.ports import IntakeMessage, Store
from freight.services.batches import BATCH_ENDPOINTS, BatchService
from freight.services.files import FileService
from freight.wire import jsonx
from freight.wire.batch_input import BatchInputValidator, RawLine
from freight.wire.batch_output import result_line

log = logging.getLogger("freight.intake")

#: The custom_id of a message's line in the batch file (unique in it, whatever the producer's custom_id).
LINE_PREFIX = "intake-"


@dataclass(frozen=True)
class _Storable(IntakeRequest):
    """A request whose body is written as JSON (``body_text``) and fits a batch line."""

    body_text: str = ""


@dataclass(frozen=True)
class Incoming:
    """A message as a source received it."""

    message_id: str
    payload: bytes | str | dict[str, object]
    reply_to: str | None = None
    correlation_id: str | None = None


def batch_line(custom_id: str, url: str, body_text: str) -> bytes:
    """A message's line of its batch's input file."""
    return (b'{"custom_id":' + jsonx.dumps(custom_id) + b',"method":"POST","url":' + jsonx.dumps(url)
            + b',"body":' + body_text.encode() + b"}\n")


def _model_of(body_text: str) -> str:
    model = jsonx.loads(body_text).get("model")
    return model if isinstance(model, str) else ""


def _rejected_line_id(source: str, message_id: str) -> str:
    return "intake_req_" + hashlib.sha256(f"{source}\0{message_id}".encode()).hexdigest()[:24]


class Intake:
    def __init__(self, settings: IntakeSettings, store: Store, files: FileService, batches: BatchService,
                 clock: Clock, models: Callable[[], Collection[str]],
                 model_check: Callable[[str, str], str | None] | None = None):
        self.settings = settings
        self.name = settings.name
        self.store = store
        self.files = files
        self.batches = batches
        self.clock = clock
        self.models = models
        self.repeats = RepeatedFailures(log)
        #: ``ModelCatalog.check``: None when a model is served for an endpoint, else why not.
        self.model_check = model_check or self._served

    def _served(self, model: str, endpoint: str) -> str | None:
        return None if model in self.models() else f"The model {model!r} is not served here."

    def parse(self, message_id: str, payload: bytes | str | dict[str, object]) -> _Storable | Rejected:
        """The request a message asks for, ready to store; or why not (its error line; a 400 over HTTP)."""
        parsed = parse_message(payload, message_id=message_id, model=self.settings.model,
                               endpoint=self.settings.endpoint, models=self.models(), endpoints=BATCH_ENDPOINTS)
        return self._storable(parsed) if isinstance(parsed, IntakeRequest) else parsed

    def accept(self, message_id: str, payload: bytes | str | dict[str, object], *, reply_to: str | None = None,
               correlation_id: str | None = None) -> IntakeMessage:
        """Keep one message durably (a redelivery: the one kept before). Acknowledge it after this returns."""
        existing = self.store.get_intake(self.name, message_key(message_id))
        if existing is not None:
            return existing
        self.accept_many([Incoming(message_id, payload, reply_to, correlation_id)])
        stored = self.store.get_intake(self.name, message_key(message_id))
        assert stored is not None
        return stored

    def accept_many(self, incoming: Sequence[Incoming]) -> None:
        """Keep these messages durably, in one transaction; redeliveries are kept once. Then acknowledge them."""
        now = self.clock.now()
        messages = []
        for item in incoming:
            # Whatever a producer sent must not make the store refuse the lot (a NUL, an id longer than
            # its index takes): every message here is kept, as a request or with its error line.
            key = message_key(item.message_id)
            parsed = self.parse(key, item.payload)
            reply_to, correlation_id = item.reply_to, item.correlation_id
            refused = route_problem(parsed.custom_id, reply_to=reply_to, correlation_id=correlation_id)
            if refused is not None:
                log.warning("intake %s: message %s refused: %s", self.name, key, refused.message)
                parsed, reply_to, correlation_id = refused, None, None
            if isinstance(parsed, _Storable):
                messages.append(IntakeMessage(self.name, key, parsed.custom_id, parsed.url, parsed.body_text,
                                              reply_to, correlation_id, now, parsed.deadline))
            else:
                line = result_line(_rejected_line_id(self.name, key), parsed.custom_id,
                                   Result.never_ran(parsed.code, parsed.message))
                messages.append(IntakeMessage(self.name, key, parsed.custom_id, self.settings.endpoint,
                                              None, reply_to, correlation_id, now, result=line.decode()))
        new = self.store.add_intakes(messages)
        if new < len(messages):
            log.info("intake %s: %d message(s) delivered again; kept once", self.name, len(messages) - new)

    def _storable(self, parsed: IntakeRequest) -> _Storable | Rejected:
        """A request that can become a line of a batch file: its body written as JSON (a lone surrogate
        cannot be), and the line passing the checks every batch line passes (freight/wire/batch_input.py:
        the line limit, nesting, ``stream``, the endpoint's required parameter, a model served for the
        endpoint). Else its error line now, never a flush that fails for ever (poison never blocks)."""
        try:
            text = jsonx.dumps(parsed.body).decode()
        except (TypeError, ValueError) as exc:
            return Rejected(parsed.custom_id, "invalid_json", f"The message's body cannot be stored as JSON: {exc}.")
        limits = self.files.limits.input
        line = batch_line(LINE_PREFIX + "9" * 19, parsed.url, text)[:-1]  # (the longest custom_id a line gets)
        raw = RawLine(1, line if len(line) <= limits.max_line_bytes else None, len(line))
        validator = BatchInputValidator(endpoint=parsed.url, model_check=self.model_check, limits=limits)
        if validator.feed(raw) is None:
            problem = validator.problems[0]
            # (The line is freight's, not the producer's: say whose it is.)
            message = problem.message.replace("This line", "The message's request, as a batch line,", 1)
            return Rejected(parsed.custom_id, problem.code, message, problem.param)
        return _Storable(parsed.custom_id, parsed.url, parsed.body, parsed.deadline, text)

    def flush(self) -> list[str]:
        """Finish flushes a crash interrupted, then flush if the policy says so. The batches made."""
        made: list[str] = []
        for flush_id in self.store.open_flushes(self.name):
            made += self._make_batches(flush_id)
        while True:
            pending = self.store.intake_pending(self.name)
            reason = flush_reason(self.settings.policy, [Pending(m.received_at, m.deadline) for m in pending],
                                  self.clock.now())
            if reason is None:
                return made
            flush_id = "flush_" + uuid.uuid4().hex
            taken = self.store.claim_intake(self.name, flush_id, self.settings.policy.flush_size)
            log.info("intake %s: flushing %d message(s) (%s)", self.name, taken, reason,
                     extra={"event": "intake_flush", "intake": self.name, "flush_id": flush_id,
                            "flush_reason": reason, "flush_messages": taken})
            made += self._make_batches(flush_id)

    def _make_batches(self, flush_id: str) -> list[str]:
        """One batch per url and model of the flush's messages (a batch holds one model)."""
        groups: dict[tuple[str, str], list[IntakeMessage]] = defaultdict(list)
        for m in self.store.intake_flush(flush_id):
            if m.body is not None and m.result is None:
                groups[(m.url, _model_of(m.body))].append(m)
        models_per_url: dict[str, int] = defaultdict(int)
        for url, _ in groups:
            models_per_url[url] += 1
        made = []
        for (url, model), members in groups.items():
            messages = [m for m in members if m.batch_id is None]
            if not messages:
                continue
            # The key of a url's only model is the url's (as before batches were per model too): a flush a
            # crash left open across an upgrade still makes its one batch. From all the flush's messages,
            # batched or not, so that a retry after a crash keys each group as the first try did.
            key = f"intake:{self.name}:{flush_id}:{url}" + (f":{model}" if models_per_url[url] > 1 else "")
            try:
                made.append(self._make_batch(flush_id, key, url, messages))
            except (InvalidInput, PayloadTooLarge) as exc:
                # Refused as it is (a project's spending cap, a file over a limit): trying it again would
                # be refused again and hold the flush open for ever, so each message gets the refusal as
                # its error line. What may pass later (a quota: RateLimited) stays open and is retried.
                self._refuse(messages, exc)
        return made

    def _make_batch(self, flush_id: str, key: str, url: str, messages: Sequence[IntakeMessage]) -> str:
        project = self.settings.project
        f = self.files.find(project, key)
        if f is None:
            file_id, writer = self.files.new_upload()
            for m in messages:
                writer.write(batch_line(f"{LINE_PREFIX}{m.seq}", url, m.body or "null"))
            f = self.files.finish_upload(project, file_id, writer, filename=f"intake-{self.name}.jsonl",
                                         purpose="batch", expires_after_s=None, idempotency_key=key)
        batch = self.batches.create(project, {
            "input_file_id": f.id, "endpoint": url, "completion_window": self.settings.completion_window,
            "metadata": {"freight_intake": self.name, "flush": flush_id}}, idempotency_key=key)
        self.store.set_intake_batch(flush_id, [m.seq for m in messages], batch.id)
        return batch.id

    def _refuse(self, messages: Sequence[IntakeMessage], exc: FreightError) -> None:
        code = exc.code or "invalid_request"
        log.warning("intake %s: %d message(s) cannot become a batch: %s", self.name, len(messages), exc.message,
                    extra={"event": "intake_flush_refused", "intake": self.name, "code": code})
        self.store.set_intake_results(self.name, [
            (m.message_id, result_line(_rejected_line_id(self.name, m.message_id), m.custom_id,
                                       Result.never_ran(code, exc.message)).decode()) for m in messages])

    def ready(self, limit: int = 10_000) -> list[tuple[IntakeMessage, bytes]]:
        """Results to deliver: rejected messages' lines, and lines of finished requests."""
        out: list[tuple[IntakeMessage, bytes]] = []
        by_batch: dict[str, list[IntakeMessage]] = defaultdict(list)
        for m in self.store.intake_undelivered(self.name, limit):
            if m.result is not None:
                out.append((m, m.result.encode()))
            elif m.batch_id is not None:
                by_batch[m.batch_id].append(m)
        for batch_id, messages in by_batch.items():
            lines = self._lines(batch_id, messages)
            out += [(m, lines[m.message_id]) for m in messages if m.message_id in lines]
        return out

    def result_of(self, message: IntakeMessage) -> bytes | None:
        """One message's result line, once there is one."""
        if message.result is not None:
            return message.result.encode()
        if message.batch_id is None:
            return None
        return self._lines(message.batch_id, [message]).get(message.message_id)

    def _lines(self, batch_id: str, messages: Sequence[IntakeMessage]) -> dict[str, bytes]:
        """The result lines of these messages of one batch that are ready, by message id."""
        batch = self.store.get_batch(None, batch_id)
        done = {s.custom_id: s for s in self.store.results(batch_id, -1, 1 << 30)}
        out: dict[str, bytes] = {}
        for m in messages:
            s = done.get(f"{LINE_PREFIX}{m.seq}")
            if s is not None:
                out[m.message_id] = result_line(batch_request_id(batch_id, s.idx), m.custom_id, s.result)
            elif batch is None or batch.status in TERMINAL:
                status = batch.status.value if batch is not None else "gone"
                out[m.message_id] = result_line(
                    _rejected_line_id(self.name, m.message_id), m.custom_id,
                    Result.never_ran("request_not_run", f"Its batch {batch_id} ended ({status}) "
                                     "without running this request."))
        return out

    def delivered(self, messages: Sequence[IntakeMessage]) -> None:
        self.store.mark_intake_delivered(self.name, [m.message_id for m in messages])

    def try_flush(self) -> list[str]:
        """``flush``, where a refusal that may pass later (the project's quota) keeps the flush open to be
        tried again: logged once when it starts, then as counts (RepeatedFailures), and once recovered."""
        key = f"intake_flush_blocked:{self.name}"
        try:
            made = self.flush()
        except FreightError as exc:
            self.repeats.failed(key, f"intake {self.name}: cannot make a batch yet: {exc.message}", exc,
                                level=logging.WARNING, extra={"intake": self.name})
            return []
        self.repeats.ok(key)
        return made


def message_id_of(body: bytes, *candidates: str | None, reply_to: str | None = None) -> str:
    """A message's dedupe key: its own id where it has one, else a digest of its bytes and of where its
    result goes (the same request from two senders is two messages, each answered)."""
    for c in candidates:
        if c:
            return c
    route = reply_to.encode(errors="surrogatepass") + b"\0" if reply_to else b""
    return "sha256:" + hashlib.sha256(route + body).hexdigest()


def fields_text(fields: dict[bytes, bytes]) -> dict[str, object]:
    """A Redis stream entry's fields as text (bytes that are not UTF-8 make the body invalid JSON)."""
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}

