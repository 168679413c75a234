"""Anthropic Message Batches: create, look up, list, cancel, delete and read results.

A Message Batch is an ordinary freight batch on ``/v1/messages`` (so it is durable, resumable,
retried, expired and project-isolated exactly like one made through the OpenAI API); this service
is the Anthropic-shaped door to it:

- **create** streams the body (up to 256 MB) through ``ArrayFieldSplitter``: each request is
  checked as it arrives (what Anthropic checks synchronously: ``custom_id`` and its uniqueness,
  ``params`` being an object; and freight's one rule: one model per batch), and written at once as
  an OpenAI-format line (``url: /v1/messages``) into a new input file. The body is never held in
  memory. The file, the batch and its Message Batch row are then recorded in one transaction, and
  the engine validates ``params`` asynchronously (``engine/ingest_messages.py``);
- **results** are rendered from the stored per-request results, in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from freight.domain import ids
from freight.domain.batches import Batch, BatchStatus
from freight.domain.clock import Clock
from freight.domain.durations import parse_duration_s
from freight.domain.errors import InvalidInput, NotFound, PayloadTooLarge
from freight.domain.files import BATCH_FILE_DEFAULT_EXPIRY_S, File, FileStatus
from freight.domain.message_batches import (
    CUSTOM_ID_RE,
    MESSAGES_ENDPOINT,
    MessageBatch,
    ProcessingStatus,
    batch_id_of,
    message_batch_id,
)
from freight.domain.nesting import MAX_JSON_NESTING, too_deep_message
from freight.domain.windows import Calendar
from freight.ports import BlobStore, BlobWriter, Quota, Store
from freight.services.scheduling import not_before_of, priority_of_raw, raw_value, schedule_of
from freight.services.transitions import log_transition
from freight.wire import jsonx
from freight.wire.anthropic import result_line
from freight.wire.json_stream import ArrayFieldSplitter, JsonStreamError, nests_deeper_than

RESULTS_CHUNK = 1000
WRITE_BUFFER = 1 << 20


@dataclass(frozen=True)
class MessageBatchLimits:
    """``[anthropic]`` in freight.toml; the defaults are Anthropic's (batch-apis.md §4.4)."""

    max_requests: int = 100_000
    #: The whole create body.
    max_bytes: int = 256 * 1024 * 1024
    #: One request (Anthropic's Messages API takes at most 32 MB).
    max_request_bytes: int = 32 * 1024 * 1024
    #: How long a batch may run before its unfinished requests expire.
    batch_window: str = "24h"

    @property
    def window_s(self) -> int:
        return parse_duration_s(self.batch_window)


@dataclass
class MessageBatchService:
    store: Store
    blobs: BlobStore
    clock: Clock
    limits: MessageBatchLimits = field(default_factory=MessageBatchLimits)
    quota: Quota = field(default_factory=Quota)
    on_change: Callable[[], None] = lambda: None
    #: The models' and off-peak hours (``schedule: "off_peak"`` needs off-peak hours configured).
    calendar: Calendar = field(default_factory=Calendar)
    #: Why a project's spending cap could not hold a batch of a model (None: it can, or there is none).
    cap_problem: Callable[[str, str], str | None] = lambda project, model: None

    # ---- create ------------------------------------------------------------------------
    def creator(self, project: str) -> MessageBatchCreate:
        """Start a create; feed it the body as it arrives, then ``finish()`` (or ``abort()``)."""
        return MessageBatchCreate(self, project)

    # ---- reads -------------------------------------------------------------------------
    def _settled(self, mb: MessageBatch) -> MessageBatch:
        if mb.processing_status == ProcessingStatus.ENDED and mb.ended is None:
            ended = self.store.settle_message_batch(mb.batch.id)
            if ended is not None:
                return replace(mb, ended=ended)
        return mb

    def get(self, project: str, message_batch_id: str) -> MessageBatch:
        batch_id = batch_id_of(message_batch_id)
        mb = self.store.get_message_batch(project, batch_id) if batch_id else None
        if mb is None:
            raise NotFound(f"No message batch found with id '{message_batch_id}'.")
        return self._settled(mb)

    def list(self, project: str, *, after_id: str | None, before_id: str | None,
             limit: int) -> tuple[list[MessageBatch], bool]:
        if after_id is not None and before_id is not None:
            raise InvalidInput("Give either after_id or before_id, not both.")
        after = batch_id_of(after_id) if after_id is not None else None
        before = batch_id_of(before_id) if before_id is not None else None
        if (after_id is not None and after is None) or (before_id is not None and before is None):
            return [], False  # a cursor that names no Message Batch: nothing is after or before it
        page = self.store.list_message_batches(project, after=after, before=before, limit=limit)
        return [self._settled(mb) for mb in page.items], page.has_more

    def results(self, project: str, message_batch_id: str) -> Iterator[bytes]:
        """The results JSONL, in input order, a chunk of lines at a time (the batch must have ended)."""
        mb = self.get(project, message_batch_id)
        if mb.processing_status != ProcessingStatus.ENDED:
            raise InvalidInput(f"Message batch '{mb.id}' has not ended yet (processing_status "
                               f"'{mb.processing_status}'); its results are available once it has.")
        batch_id = mb.batch.id

        def lines() -> Iterator[bytes]:
            after = -1
            while chunk := self.store.results(batch_id, after, RESULTS_CHUNK):
                yield b"".join(result_line(s.custom_id, s.result) for s in chunk)
                after = chunk[-1].idx

        return lines()

    # ---- changes -----------------------------------------------------------------------
    def cancel(self, project: str, message_batch_id: str) -> MessageBatch:
        for _ in range(5):  # the engine may move the batch between our read and our write
            mb = self.get(project, message_batch_id)
            if mb.processing_status == ProcessingStatus.CANCELING:
                return mb
            if mb.processing_status == ProcessingStatus.ENDED:
                raise InvalidInput(f"Message batch '{mb.id}' has already ended; there is nothing to cancel.")
            updated = self.store.set_status(mb.batch.id, [mb.batch.status], BatchStatus.CANCELLING,
                                            int(self.clock.now()))
            if updated is not None:
                log_transition(mb.batch.status, updated)
                self.on_change()
                return replace(mb, batch=updated)
        return self.get(project, message_batch_id)

    def delete(self, project: str, message_batch_id: str) -> str:
        mb = self.get(project, message_batch_id)
        if mb.processing_status != ProcessingStatus.ENDED:
            raise InvalidInput(f"Message batch '{mb.id}' has not ended (processing_status "
                               f"'{mb.processing_status}'); cancel it and wait until it has ended to delete it.")
        if not self.store.delete_message_batch(project, mb.batch.id):
            raise NotFound(f"No message batch found with id '{message_batch_id}'.")
        return mb.id


class MessageBatchCreate:
    """One ``POST /v1/messages/batches`` in progress: requests are checked and written as they arrive."""

    def __init__(self, service: MessageBatchService, project: str):
        self.service = service
        self.project = project
        self.limits = service.limits
        self.file_id = ids.new_file_id()
        self.writer: BlobWriter = service.blobs.writer(self.file_id)
        self.splitter = ArrayFieldSplitter("requests", max_element_bytes=self.limits.max_request_bytes)
        self.size = 0
        self.count = 0
        self.model: str | None = None
        self._model_at = 0
        self._seen: dict[str, int] = {}
        self._closed = False

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limits.max_bytes:
            raise PayloadTooLarge(f"The request body is larger than the {self.limits.max_bytes} byte limit of a "
                                  "Message Batch.", code="request_too_large")
        self._take(self._split(self.splitter.feed, data))

    def _split(self, step: Callable[..., list[bytes]], *args: bytes) -> list[bytes]:
        try:
            return step(*args)
        except JsonStreamError as exc:
            if self.splitter.too_large:
                raise PayloadTooLarge(str(exc), code="request_too_large") from None
            raise InvalidInput(str(exc), code="invalid_request") from None

    def _take(self, elements: list[bytes]) -> None:
        out: list[bytes] = []
        for raw in elements:
            i = self.count
            self.count += 1
            if self.count > self.limits.max_requests:
                raise PayloadTooLarge(f"requests: a Message Batch holds at most {self.limits.max_requests} requests.",
                                      code="request_too_large")
            out.append(self._line(i, raw))
        if out:
            self.writer.write(b"".join(out))

    def _line(self, i: int, raw: bytes) -> bytes:
        where = f"requests.{i}"
        # Checked before anything else: a request orjson reads but cannot write back would be
        # accepted here and fail the batch's validation on every try.
        if nests_deeper_than(raw, MAX_JSON_NESTING):
            raise InvalidInput(too_deep_message(where))
        try:
            request = jsonx.loads(raw)
        except jsonx.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: not valid JSON: {jsonx.reason(exc)}.") from None
        if not isinstance(request, dict):
            raise InvalidInput(f"{where}: Input should be a valid dictionary.")
        for key in ("custom_id", "params"):
            if key not in request:
                raise InvalidInput(f"{where}.{key}: Field required.")
        extra = sorted(set(request) - {"custom_id", "params"})
        if extra:
            raise InvalidInput(f"{where}.{extra[0]}: Extra inputs are not permitted.")
        custom_id, params = request["custom_id"], request["params"]
        if not isinstance(custom_id, str):
            raise InvalidInput(f"{where}.custom_id: Input should be a valid string.")
        if not custom_id:
            raise InvalidInput(f"{where}.custom_id: String should have at least 1 character.")
        if len(custom_id) > 64:
            raise InvalidInput(f"{where}.custom_id: String should have at most 64 characters.")
        if not CUSTOM_ID_RE.fullmatch(custom_id):  # (match: "$" lets a final "\n" through)
            raise InvalidInput(f"{where}.custom_id: String should match pattern '{CUSTOM_ID_RE.pattern}'.")
        first = self._seen.setdefault(custom_id, i)
        if first != i:
            raise InvalidInput(f"{where}.custom_id: {custom_id!r} is already the custom_id of requests.{first}; "
                               "custom_id must be unique within a batch.")
        if not isinstance(params, dict):
            raise InvalidInput(f"{where}.params: Input should be a valid dictionary.")
        model = params.get("model")
        if isinstance(model, str):
            if self.model is None:
                self.model, self._model_at = model, i
            elif model != self.model:
                raise InvalidInput(
                    f"{where}.params.model: {model!r} differs from requests.{self._model_at}.params.model "
                    f"({self.model!r}); freight runs each Message Batch on one model, so send one batch per model.")
        try:
            body = jsonx.dumps(params)
        except (TypeError, ValueError) as exc:  # orjson read it but cannot write it back
            raise InvalidInput(f"{where}.params: cannot be stored ({exc}).") from None
        return (b'{"custom_id":' + jsonx.dumps(custom_id) + b',"method":"POST","url":"' + MESSAGES_ENDPOINT.encode()
                + b'","body":' + body + b"}\n")

    def finish(self) -> MessageBatch:
        """The body is complete: record the batch (or raise why it is refused)."""
        self._take(self._split(self.splitter.finish))
        if not self.splitter.seen_field:
            raise InvalidInput("requests: Field required.")
        others = dict(self.splitter.others)
        # freight's extensions (docs/scheduling.md, docs/cache.md)
        priority = priority_of_raw(others.pop("priority", None))
        schedule = schedule_of(raw_value(others.pop("schedule", None), "schedule"), self.service.calendar)
        opened = int(self.service.clock.now())
        not_before = not_before_of(raw_value(others.pop("not_before", None), "not_before"),
                                   opened + self.limits.window_s)
        use_cache = raw_value(others.pop("cache", None), "cache")
        if use_cache is not None and not isinstance(use_cache, bool):
            raise InvalidInput("cache: Input should be a valid boolean.", param="cache", code="invalid_type")
        if others:
            raise InvalidInput(f"{sorted(others)[0]}: Extra inputs are not permitted.")
        if self.count == 0:
            raise InvalidInput("requests: List should have at least 1 item after validation, not 0.")
        if self.model is not None and (problem := self.service.cap_problem(self.project, self.model)) is not None:
            raise InvalidInput(f"requests.{self._model_at}.params.model: {problem}")
        quota = self.service.quota
        if quota.max_queued_requests is not None and self.count > quota.max_queued_requests:
            raise InvalidInput(f"requests: this batch has {self.count} requests; a project may have at most "
                               f"{quota.max_queued_requests} queued (limits.max_queued_requests_per_project).")
        size = self.writer.commit()
        self._closed = True
        store, now = self.service.store, int(self.service.clock.now())
        batch_id = ids.new_batch_id()
        f = File(id=self.file_id, project=self.project, filename=f"{message_batch_id(batch_id)}_requests.jsonl",
                 purpose="batch", bytes=size, created_at=now, status=FileStatus.PROCESSED,
                 expires_at=now + max(BATCH_FILE_DEFAULT_EXPIRY_S, self.limits.window_s), lines=self.count)
        batch = Batch(id=batch_id, project=self.project, endpoint=MESSAGES_ENDPOINT, input_file_id=self.file_id,
                      completion_window=self.limits.batch_window, status=BatchStatus.VALIDATING, created_at=now,
                      expires_at=now + self.limits.window_s, priority=priority, schedule=schedule,
                      not_before=not_before, use_cache=use_cache is not False)
        try:
            store.insert_message_batch(f, self.file_id, batch, self.count, quota)
        except BaseException:
            self.service.blobs.delete(self.file_id)
            raise
        log_transition(None, batch)
        self.service.on_change()
        return MessageBatch(batch=batch, requests=self.count)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.abort()
