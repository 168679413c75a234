"""The intake core on a real store with a fixed clock: dedupe, poison lines, flush by age, a flush a crash
interrupted makes the same batch (never a second one), and results are handed out until delivered."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import postgres_database

from freight.config import Settings
from freight.config.settings import ProjectSettings
from freight.domain.intake import FlushPolicy, IntakeRequest, message_key
from freight.intake.core import Intake
from freight.intake.runner import pump_once
from freight.intake.settings import IntakeSettings, intake_settings
from freight.ports import IntakeMessage
from freight.runtime import Runtime, build_runtime

MODEL = "freight-scripted"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = build_runtime(Settings(data_dir=tmp_path / "data", models={MODEL: {"backend": "scripted"}}), lock=False)
    yield rt
    rt.close()


def _intake(rt: Runtime, clock: Clock, size: int = 3) -> Intake:
    cfg = IntakeSettings("q", "redis", queue="s", model=MODEL, policy=FlushPolicy(size, 10, 5))
    return Intake(cfg, rt.store, rt.files, rt.batches, clock, lambda: {MODEL})


def _msg(i: int) -> bytes:
    return json.dumps({"custom_id": f"c{i}", "body": {"messages": [{"role": "user", "content": "x"}]}}).encode()


def test_a_redelivered_message_is_kept_once_and_poison_gets_its_line_at_once(runtime: Runtime) -> None:
    intake = _intake(runtime, Clock())
    first = intake.accept("m1", _msg(1), reply_to="r")
    assert intake.accept("m1", _msg(1), reply_to="r") == first
    intake.accept("bad", b"{oops")
    ready = intake.ready()
    assert [(m.message_id, json.loads(line)["error"]["code"]) for m, line in ready] == [("bad", "invalid_json")]
    assert ready[0][1] == intake.ready()[0][1]  # sent again after a crash: the identical line
    intake.delivered([ready[0][0]])
    assert intake.ready() == []


def test_poison_that_parses_gets_its_line_at_once_and_never_blocks_a_flush(runtime: Runtime) -> None:
    """Messages that read as requests but cannot be a batch's line (found by an audit: each one made every
    flush of its intake fail, or its consumer crash, for ever): an error line at once; the rest flow on."""
    intake = _intake(runtime, Clock(), size=1)
    body = {"messages": [{"role": "user", "content": "x"}]}
    limit = runtime.files.limits.input.max_line_bytes
    intake.accept("huge", json.dumps({"body": {"messages": [{"role": "user", "content": "x" * limit}]}}).encode())
    intake.accept("surrogate", b'{"body": {"messages": [{"role": "user", "content": "\\ud800"}]}}')
    intake.accept("deep", b'{"body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    intake.accept("far-deadline", json.dumps({"body": body, "deadline": 10**400}).encode())
    intake.accept("fine", json.dumps({"body": body}).encode())
    codes = {m.message_id: json.loads(line)["error"]["code"] for m, line in intake.ready()}
    assert codes == {"huge": "line_too_large", "surrogate": "invalid_json", "deep": "invalid_json"}, codes
    made = intake.flush()
    assert len(made) == 2, "the two good messages made batches (flush_size 1); no flush failed"
    assert intake.store.intake_pending("q") == []


def test_flush_waits_for_age_then_makes_one_ordinary_batch(runtime: Runtime,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    intake = _intake(runtime, clock)
    intake.accept("m1", _msg(1))
    intake.accept("m2", _msg(2))
    assert intake.flush() == []
    clock.t += 10
    with caplog.at_level("INFO", logger="freight.intake"):
        made = intake.flush()
    assert len(made) == 1
    batch = runtime.batches.get("default", made[0])
    assert batch.endpoint == "/v1/chat/completions" and batch.metadata and batch.metadata["freight_intake"] == "q"
    # The flush's log record names the flush (bench/bench_intake.py times each message's flush by it).
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "intake_flush"]
    assert (vars(record)["flush_id"], vars(record)["flush_reason"], vars(record)["flush_messages"]) == (
        batch.metadata["flush"], "age", 2)
    assert runtime.store.intake_pending("q") == []


def test_a_flush_interrupted_after_its_claim_makes_the_same_batch_once(runtime: Runtime) -> None:
    intake = _intake(runtime, Clock())
    for i in range(3):
        intake.accept(f"m{i}", _msg(i))
    runtime.store.claim_intake("q", "flush_crashed", 3)  # the claim committed, then the process died
    made = intake.flush()
    assert len(made) == 1
    assert intake._make_batches("flush_crashed") == []  # every message has its batch now
    # Had the crash come after the batch but before the messages recorded it, the same batch comes back:
    again = intake.batches.create("default", {"input_file_id": "file-" + "0" * 24}, idempotency_key=(
        "intake:q:flush_crashed:/v1/chat/completions"))
    assert again.id == made[0]
    assert len(runtime.batches.list("default", after=None, limit=10).items) == 1


def test_a_flush_refused_as_it_is_gives_each_message_its_error_line_not_a_retry_for_ever(tmp_path: Path) -> None:
    """A project's spending cap on a model without a price refuses every batch made of these messages:
    each gets the refusal as its error line and the flush closes (it was tried again for ever)."""
    settings = Settings(data_dir=tmp_path / "data", models={MODEL: {"backend": "scripted"}},
                        projects={"default": ProjectSettings(max_cost_usd=1.0)})
    rt = build_runtime(settings, lock=False)
    try:
        intake = _intake(rt, Clock(), size=2)
        intake.accept("m1", _msg(1))
        intake.accept("m2", _msg(2))
        assert intake.flush() == []
        lines = {m.message_id: json.loads(line) for m, line in intake.ready()}
        assert set(lines) == {"m1", "m2"} and lines["m1"]["custom_id"] == "c1"
        assert {(line["error"]["code"], "max_cost_usd" in line["error"]["message"]) for line in lines.values()} == {
            ("invalid_value", True)}
        assert rt.store.open_flushes("q") == [] and rt.store.intake_pending("q") == []
        assert intake.flush() == [] and rt.batches.list("default", after=None, limit=10).items == []
    finally:
        rt.close()


def test_the_pump_delivers_each_finished_result_once(runtime: Runtime) -> None:
    intake = _intake(runtime, Clock(), size=2)
    intake.accept("m1", _msg(1))
    intake.accept("m2", _msg(2))
    intake.accept("bad", b'{"custom_id": "x"}')
    sent: list[tuple[str, bytes]] = []

    class Source:
        async def publish(self, message: IntakeMessage, line: bytes) -> None:
            sent.append((message.message_id, line))

    async def drive() -> None:
        stop = asyncio.Event()
        engine = asyncio.create_task(runtime.engine.run(stop))
        for _ in range(200):
            await pump_once(intake, Source())  # type: ignore[arg-type]
            if len(sent) == 3:
                break
            await asyncio.sleep(0.05)
        await pump_once(intake, Source())  # type: ignore[arg-type]
        stop.set()
        await engine

    asyncio.run(drive())
    assert sorted(m for m, _ in sent) == ["bad", "m1", "m2"]
    lines = {m: json.loads(line) for m, line in sent}
    assert lines["m1"]["custom_id"] == "c1" and lines["m1"]["response"]["status_code"] == 200
    assert lines["bad"]["error"]["code"] == "missing_required_parameter"


def test_intake_tables_are_checked() -> None:
    got = intake_settings({"a": {"kind": "amqp", "queue": "q", "flush_size": 5}})
    assert got["a"].policy.flush_size == 5
    for bad in ({"kind": "kafka"}, {"kind": "redis"}, {"kind": "amqp", "queue": "q", "flush_size": 0},
                {"kind": "http", "colour": 1}, {"kind": "http", "completion_window": "banana"},
                {"kind": "http", "completion_window": 24}):
        with pytest.raises(ValueError, match=r'intake\."a"'):
            intake_settings({"a": bad})


def test_freight_toml_intake_tables_load_and_bad_ones_are_a_config_error(tmp_path: Path) -> None:
    from freight.config import load_settings
    from freight.domain.errors import ConfigError

    path = tmp_path / "freight.toml"
    path.write_text('[intake."q"]\nkind = "redis"\nstream = "in"\ngroup = "g"\nflush_age_s = 1.5\n')
    settings = load_settings(path, env={})
    assert settings.intake["q"].queue == "in" and settings.intake["q"].policy.flush_age_s == 1.5
    path.write_text('[intake."q"]\nkind = "sqs"\n')
    with pytest.raises(ConfigError, match=r"kind in .* must be one of 'redis', 'amqp', 'http', got 'sqs'"):
        load_settings(path, env={})


def test_a_message_a_batch_line_would_refuse_gets_its_own_line_and_its_flush_runs_per_model(tmp_path: Path) -> None:
    """Found by an audit: a message that passed the intake's checks but not a batch line's (``stream``, no
    ``messages``, nesting past the limit) failed its whole flush's batch, and one naming another served model
    failed it with ``mismatched_model``. Now the same line checks as a batch file's refuse it at once (over
    HTTP a 400), and a flush makes one batch per model."""
    other = "freight-scripted-2"
    rt = build_runtime(Settings(data_dir=tmp_path / "data", models={MODEL: {"backend": "scripted"},
                                                                      other: {"backend": "scripted"}}), lock=False)
    try:
        clock = Clock()
        cfg = IntakeSettings("q", "http", model=MODEL, policy=FlushPolicy(6, 10, 5))
        intake = Intake(cfg, rt.store, rt.files, rt.batches, clock, lambda: {MODEL, other},
                        model_check=rt.catalog.check)
        chat = [{"role": "user", "content": "x"}]
        poison = {"stream": {"messages": chat, "stream": True}, "nomessages": {"prompt": "x"},
                  "deep": {"messages": chat, "x": json.loads("[" * 200 + "]" * 200)}}
        for mid, body in poison.items():
            rejected = intake.parse(mid, json.dumps({"body": body}))
            assert not isinstance(rejected, IntakeRequest), mid  # what the HTTP intake answers with a 400
            intake.accept(mid, json.dumps({"body": body}))
        for i, model in enumerate([MODEL, MODEL, other]):
            intake.accept(f"m{i}", json.dumps({"custom_id": f"c{i}", "body": {"model": model, "messages": chat}}))
        errors = {m.message_id: json.loads(line)["error"] for m, line in intake.ready()}
        assert {k: (e["code"], e["message"]) for k, e in errors.items()} == {
            "stream": ("streaming_unsupported", "Streaming is not supported in the Batch API."),
            "nomessages": ("invalid_request", "Messages parameter is required."),
            "deep": ("nesting_too_deep", "The message's request, as a batch line, nests arrays and objects more "
                     "than 128 levels deep; the limit is 128 levels.")}
        intake.delivered([m for m, _ in intake.ready()])
        clock.t += 10
        assert len(intake.flush()) == 2  # one flush, one batch per model
        sent: dict[str, dict[str, object]] = {}

        class Source:
            async def publish(self, message: IntakeMessage, line: bytes) -> None:
                sent[message.message_id] = json.loads(line)

        async def drive() -> None:
            stop = asyncio.Event()
            engine = asyncio.create_task(rt.engine.run(stop))
            for _ in range(200):
                await pump_once(intake, Source())  # type: ignore[arg-type]
                if len(sent) == 3:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await engine

        asyncio.run(drive())
        assert {mid: (line["custom_id"], line["error"]) for mid, line in sent.items()} == {
            "m0": ("c0", None), "m1": ("c1", None), "m2": ("c2", None)}
    finally:
        rt.close()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_message_the_store_cannot_keep_as_sent_is_refused_alone_and_a_long_id_is_kept_as_its_digest(
        tmp_path: Path, store: str) -> None:
    """Found by an audit on PostgreSQL: a NUL in a custom_id, message id or reply_to, or an id of 8,000
    characters (over the unique index's entry size), made the store refuse the whole transaction, for ever:
    a Redis consumer reread the same entries every second, AMQP requeued them in a hot loop, HTTP answered
    500. Now such a message gets its own error line (a NUL id, a long one: kept as its digest) and the
    messages with it are kept."""
    from freight.intake.core import Incoming

    with contextlib.ExitStack() as stack:
        url = None
        if store == "postgres":
            from freight.store.postgres.migrate import migrate

            url = stack.enter_context(postgres_database("freight_intake_core"))
            migrate(url)
        rt = build_runtime(Settings(data_dir=tmp_path / "data", database_url=url,
                                    models={MODEL: {"backend": "scripted"}}), lock=False)
        stack.callback(rt.close)
        intake = _intake(rt, Clock(), size=100)
        long_id = "x" * 8000
        sent = [Incoming("nul-custom", json.dumps({"custom_id": "a\0b", "body": {"messages": []}}), "r"),
                Incoming("nul-reply", _msg(1), "r\0"), Incoming("nul-corr", _msg(2), "r", "c\0"),
                Incoming("nul\0id", _msg(3), "r"), Incoming(long_id, _msg(4), "r"),
                Incoming("surrogate", '{"custom_id": "\\ud800", "body": {"messages": []}}', "r"),
                Incoming("fine", _msg(5), "r")]
        intake.accept_many(sent)
        intake.accept_many(sent)  # redelivered: kept once, under the same ids
        assert [m.message_id for m in rt.store.intake_pending("q")] == [
            message_key("nul\0id"), message_key(long_id), "fine"]
        assert message_key(long_id).startswith("sha256:") and len(message_key(long_id)) == 71
        assert intake.accept(long_id, _msg(4)).custom_id == "c4"
        errors = {m.message_id: (m.reply_to, json.loads(line)["custom_id"], json.loads(line)["error"]["code"],
                                 json.loads(line)["error"]["message"]) for m, line in intake.ready()}
        assert errors == {
            "nul-custom": ("r", "nul-custom", "invalid_value", "The message's custom_id holds a NUL character or "
                           "text that is not UTF-8; it cannot be kept."),
            "nul-reply": (None, "c1", "invalid_value", "The message's reply_to holds a NUL character or text that "
                          "is not UTF-8; it cannot be kept."),
            "nul-corr": (None, "c2", "invalid_value", "The message's correlation_id holds a NUL character or text "
                         "that is not UTF-8; it cannot be kept."),
            "surrogate": ("r", "surrogate", "invalid_value", "The message's custom_id holds a NUL character or "
                          "text that is not UTF-8; it cannot be kept.")}


def test_intake_tables_that_could_never_work_are_refused_when_the_config_loads(tmp_path: Path) -> None:
    """Found by an audit: a flush_size over [limits] max_lines (every full flush failed with too_many_tasks),
    a redis intake with both stream and queue (it read queue, silently), an endpoint freight does not serve
    (every flush refused) were all accepted."""
    from freight.config import load_settings
    from freight.domain.errors import ConfigError

    path = tmp_path / "freight.toml"
    for table, error in [
        ('[limits]\nmax_lines = 10\n[intake."q"]\nkind = "http"\nflush_size = 11\n',
         r'\[intake\."q"\] flush_size 11 is more than limits.max_lines \(10\): every full flush would make a batch '
         r"over the limit, and fail"),
        ('[intake."q"]\nkind = "redis"\nstream = "a"\nqueue = "b"\n',
         r"\[intake\.\"q\"\]: set 'stream' only, not both 'stream' and 'queue' \(a redis intake reads its 'stream'"),
        ('[intake."q"]\nkind = "http"\nendpoint = "/v1/chat"\n',
         r"\[intake\.\"q\"\]: endpoint must be one of /v1/chat/completions, .*, got '/v1/chat'")]:
        path.write_text(table)
        with pytest.raises(ConfigError, match=error):
            load_settings(path, env={})
    path.write_text('[limits]\nmax_lines = 10\n[intake."q"]\nkind = "http"\nflush_size = 10\n')
    assert load_settings(path, env={}).intake["q"].policy.flush_size == 10
