"""One nesting limit at every door (issue 10, item 1 and 2): the scanner, file validation, the upload
check, Message Batch create and the JSON body parser, in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from freight.backends.scripted import ScriptedBackend
from freight.domain.clock import FixedClock
from freight.domain.errors import InvalidInput
from freight.domain.nesting import MAX_JSON_NESTING
from freight.engine.ingest_messages import ingest_message_batch
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.services.message_batches import MessageBatchService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore
from freight.wire.batch_input import BatchInputValidator, iter_lines
from freight.wire.json_stream import nests_deeper_than

MODEL = "freight-scripted"


def nested(levels: int) -> bytes:
    """The JSON text of a list nested ``levels`` deep: nested(2) == b"[[]]"."""
    return b"[" * levels + b"]" * levels


def line(custom_id: str, body_input: bytes) -> bytes:
    """A batch line whose body's ``input`` is the JSON text ``body_input``."""
    head = json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": MODEL, "input": None}}).encode()
    return head.replace(b'"input": null', b'"input": ' + body_input)


def test_the_scanner_counts_levels_and_skips_strings() -> None:
    for depth in (1, 2, MAX_JSON_NESTING - 1, MAX_JSON_NESTING):
        assert not nests_deeper_than(nested(depth), MAX_JSON_NESTING), depth
    for depth in (MAX_JSON_NESTING + 1, 300, 1024, 5000):
        assert nests_deeper_than(nested(depth), MAX_JSON_NESTING), depth
    # mixed arrays and objects count the same
    mixed = b'{"a":' * 100 + b"[" * 29 + b"]" * 29 + b"}" * 100
    assert nests_deeper_than(mixed, 128) and not nests_deeper_than(mixed, 129)
    # brackets inside strings (escaped quotes included) are not nesting
    assert not nests_deeper_than(json.dumps({"s": "[" * 500 + '\\"' + "{" * 500}).encode(), 2)
    # many brackets side by side are wide, not deep
    assert not nests_deeper_than(json.dumps([[1, 2]] * 5000).encode(), 2)
    # not JSON: never raises; unclosed brackets count as open
    assert nests_deeper_than(b"[" * 500, MAX_JSON_NESTING)
    assert not nests_deeper_than(b"]" * 500 + b"[" * 100, MAX_JSON_NESTING)
    assert nests_deeper_than(b'x"' + b"[" * 200 + b"]" * 200 + b"{", MAX_JSON_NESTING)


def validate(*lines: bytes) -> BatchInputValidator:
    validator = BatchInputValidator(endpoint="/v1/embeddings", model_check=lambda m, e: None)
    for raw in iter_lines(io.BytesIO(b"\n".join(lines) + b"\n"), 1 << 24):
        validator.feed(raw)
    validator.finish()
    return validator


@pytest.mark.parametrize("levels", [MAX_JSON_NESTING, 300, 1023, 2000])
def test_a_deep_line_is_a_validation_problem_with_its_line_number(levels: int) -> None:
    # the line object and the body are two levels above the input
    validator = validate(line("a", b'"fine"'), line("b", nested(levels)), line("c", b'"fine"'))
    assert [(p.line, p.code) for p in validator.problems] == [(2, "nesting_too_deep")]
    assert f"more than {MAX_JSON_NESTING} levels" in validator.problems[0].message


def test_a_line_at_the_limit_is_valid() -> None:
    validator = validate(line("a", nested(MAX_JSON_NESTING - 2)))
    assert validator.problems == [] and validator.request_count == 1


@pytest.fixture
def services(tmp_path: Path) -> Any:
    store = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    clock = FixedClock()
    yield FileService(store, blobs, clock), MessageBatchService(store, blobs, clock)
    store.close()


def test_the_upload_check_refuses_a_deep_line(services: Any) -> None:
    files, _ = services
    file_id, writer = files.new_upload()
    writer.write(line("a", b'"x"') + b"\n" + line("b", nested(300)) + b"\n")
    with pytest.raises(InvalidInput) as caught:
        files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch", expires_after_s=None)
    assert caught.value.code == "invalid_file_format"
    assert f"line 2: nests more than {MAX_JSON_NESTING} levels deep" in caught.value.message


@pytest.mark.parametrize("levels", [300, 1023])
def test_message_batch_create_refuses_a_deep_request(services: Any, levels: int) -> None:
    _, message_batches = services
    params = b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": ' + nested(levels) + b"}]}"
    body = b'{"requests": [{"custom_id": "ok", "params": {"model": "m"}}, {"custom_id": "deep", "params": ' + params
    body += b"}]}"
    create = message_batches.creator("p")
    with pytest.raises(InvalidInput) as caught:
        create.feed(body)
        create.finish()
    create.abort()
    assert caught.value.status_code == 400
    assert caught.value.message.startswith("requests.1 nests arrays and objects more than")


def test_a_deep_extension_parameter_says_it_is_too_deep_not_invalid_json(services: Any) -> None:
    """A nested ``priority`` on a Message Batches create was "priority: not valid JSON" (found by an audit)."""
    _, message_batches = services
    create = message_batches.creator("p")
    with pytest.raises(InvalidInput) as caught:
        create.feed(b'{"priority": ' + nested(5000) + b', "requests": [{"custom_id": "a", "params": {"model": "m"}}]}')
        create.finish()
    create.abort()
    assert caught.value.code == "nesting_too_deep" and caught.value.message.startswith("priority: the value nests")


def test_a_stored_message_batch_with_a_deep_request_gives_that_request_its_error(services: Any) -> None:
    files, message_batches = services
    store, blobs, clock = files.store, files.blobs, files.clock
    create = message_batches.creator("p")
    create.feed(b'{"requests": [{"custom_id": "a", "params": {"model": "m"}}, '
                b'{"custom_id": "b", "params": {"model": "m"}}]}')
    batch = create.finish().batch
    # What a batch made before the create checked nesting holds.
    key = store.file_blob_key(batch.input_file_id)
    writer = blobs.writer(key)
    writer.write(b'{"custom_id":"a","method":"POST","url":"/v1/messages","body":{"model":"m"}}\n'
                 b'{"custom_id":"b","method":"POST","url":"/v1/messages","body":{"model":"m","x":'
                 + nested(300) + b"}}\n")
    writer.commit()
    assert ingest_message_batch(batch, store, blobs, ModelCatalog([ScriptedBackend()]), clock)
    deep = store.results(batch.id, 0, 10)[0]
    assert (deep.custom_id, deep.result.status_code) == ("b", 400)
    assert b"nests arrays and objects more than 128 levels" in (deep.result.body or b"")
