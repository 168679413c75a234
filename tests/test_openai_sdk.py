"""The whole OpenAI Files + Batches lifecycle through the official ``openai`` SDK, strictly validated.

One real ``freight serve`` subprocess for the module; every response the SDK sees is recorded, and
the last test checks that none was a 5xx and that all carried an ``x-request-id``.
(shared/reference/batch-apis.md §1, §2, §3, §5, §7.)
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import Batch, FileObject
from servers import (
    EMBEDDING_MODEL,
    SCRIPTED,
    SCRIPTED_SLOW,
    TERMINAL,
    FreightServer,
    ResponseLog,
    config_text,
    jsonl_bytes,
    parse_jsonl,
    request_line,
    wait_for,
)

CHAT = "/v1/chat/completions"
UNKNOWN_BATCH = "batch_" + "0" * 24
UNKNOWN_FILE = "file-" + "0" * 24
ERROR_KEYS = {"message", "type", "param", "code"}
OUTPUT_LINE_KEYS = {"id", "custom_id", "response", "error"}


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer], database_url: str | None) -> Iterator[FreightServer]:
    s = make_server(config_text(embeddings=True), database_url=database_url)
    yield s
    s.stop()  # before its database is dropped


@pytest.fixture(scope="module")
def responses() -> ResponseLog:
    return ResponseLog()


@pytest.fixture(scope="module")
def client(server: FreightServer, responses: ResponseLog) -> Iterator[OpenAI]:
    c = server.client(responses)
    yield c
    c.close()


# ---- helpers -------------------------------------------------------------------------------

def upload(client: OpenAI, lines: list[Any], name: str = "input.jsonl") -> FileObject:
    return client.files.create(file=(name, jsonl_bytes(lines)), purpose="batch")


def create_batch(client: OpenAI, lines: list[Any], *, endpoint: str = CHAT, window: str = "24h",
                 **kwargs: Any) -> Batch:
    f = upload(client, lines)
    return client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                                 completion_window=window, **kwargs)  # type: ignore[arg-type]


def wait_terminal(client: OpenAI, batch_id: str, timeout_s: float = 30) -> Batch:
    def done() -> Batch | None:
        b = client.batches.retrieve(batch_id)
        return b if b.status in TERMINAL else None

    batch: Batch = wait_for(done, timeout_s, f"batch {batch_id} to finish")
    return batch


def file_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return parse_jsonl(client.files.content(file_id).content)


def check_success_line(line: dict[str, Any]) -> None:
    assert set(line) == OUTPUT_LINE_KEYS
    assert line["id"].startswith("batch_req_")
    assert line["error"] is None
    assert set(line["response"]) == {"status_code", "request_id", "body"}
    assert line["response"]["status_code"] == 200
    assert isinstance(line["response"]["request_id"], str) and line["response"]["request_id"]
    assert isinstance(line["response"]["body"], dict)


def check_never_ran_line(line: dict[str, Any], code: str) -> None:
    assert set(line) == OUTPUT_LINE_KEYS
    assert line["id"].startswith("batch_req_")
    assert line["response"] is None
    assert line["error"]["code"] == code
    assert isinstance(line["error"]["message"], str) and line["error"]["message"]


def check_api_error(exc: openai.APIStatusError, status: int) -> None:
    assert exc.status_code == status
    assert isinstance(exc.body, dict) and set(exc.body) == ERROR_KEYS, exc.body
    assert isinstance(exc.body["message"], str) and exc.body["message"]
    assert exc.response.headers.get("content-type", "").startswith("application/json")


def check_partial(client: OpenAI, batch: Batch, custom_ids: list[str], code: str) -> tuple[list[str], list[str]]:
    """A cancelled or expired batch: finished requests in the output, the rest ``code`` error lines."""
    out = file_lines(client, batch.output_file_id)
    err = file_lines(client, batch.error_file_id)
    for line in out:
        check_success_line(line)
    for line in err:
        check_never_ran_line(line, code)
    out_ids = [line["custom_id"] for line in out]
    err_ids = [line["custom_id"] for line in err]
    assert sorted(out_ids + err_ids) == sorted(custom_ids), "exactly one line per custom_id"
    # freight writes both files in input order
    assert out_ids == [c for c in custom_ids if c in set(out_ids)]
    assert err_ids == [c for c in custom_ids if c in set(err_ids)]
    counts = batch.request_counts
    assert counts is not None
    assert counts.total == len(custom_ids)
    assert counts.completed == len(out_ids)
    assert counts.completed + counts.failed == counts.total
    return out_ids, err_ids


# ---- models --------------------------------------------------------------------------------

def test_models_list(client: OpenAI) -> None:
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert SCRIPTED in ids and SCRIPTED_SLOW in ids
    assert EMBEDDING_MODEL in ids
    assert len(ids) == len(set(ids)) == 3
    assert all(m.object == "model" for m in models)
    assert client.models.retrieve(SCRIPTED).id == SCRIPTED
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    check_api_error(e.value, 404)


# ---- files ---------------------------------------------------------------------------------

def test_file_upload_retrieve_content_delete(client: OpenAI, tmp_path: Path) -> None:
    data = jsonl_bytes([request_line("a"), request_line("b")])
    before = time.time()
    f = client.files.create(file=("my input.jsonl", data), purpose="batch")
    assert f.id.startswith("file-")
    assert f.object == "file"
    assert f.bytes == len(data)
    assert f.filename == "my input.jsonl"
    assert f.purpose == "batch"
    assert f.status == "processed"
    assert int(before) - 1 <= f.created_at <= time.time() + 1
    assert f.expires_at == f.created_at + 30 * 86400, "batch files expire after 30 days by default"

    assert client.files.retrieve(f.id) == f
    assert client.files.content(f.id).content == data

    # A Path upload: the part's filename is the basename.
    path = tmp_path / "from-disk.jsonl"
    path.write_bytes(data)
    g = client.files.create(file=path, purpose="batch")
    assert g.filename == "from-disk.jsonl" and g.bytes == len(data)
    assert client.files.content(g.id).read() == data

    deleted = client.files.delete(f.id)
    assert deleted.id == f.id and deleted.deleted is True and deleted.object == "file"
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as e:
            call(f.id)
        check_api_error(e.value, 404)
    assert f.id not in {x.id for x in client.files.list()}
    assert client.files.retrieve(g.id).id == g.id


def test_upload_expires_after(client: OpenAI) -> None:
    data = jsonl_bytes([request_line("a")])
    f = client.files.create(file=("e.jsonl", data), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("e.jsonl", data), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 60})
    check_api_error(e.value, 400)
    assert e.value.param == "expires_after.seconds"


def test_non_batch_purpose_takes_any_bytes(client: OpenAI) -> None:
    data = b"\x00\x01 not json at all\n\xff"
    f = client.files.create(file=("blob.bin", data), purpose="user_data")
    assert f.purpose == "user_data" and f.bytes == len(data)
    assert f.expires_at is None, "only batch files expire by default"
    assert client.files.content(f.id).content == data


def test_files_list_filters_order_and_pages(client: OpenAI) -> None:
    mine = [upload(client, [request_line(f"l{i}")], name=f"list-{i}.jsonl") for i in range(3)]
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    mine_ids = [f.id for f in mine]

    newest_first = [f.id for f in client.files.list()]
    assert len(newest_first) == len(set(newest_first))
    assert [i for i in newest_first if i in mine_ids] == mine_ids[::-1], "default order is desc"
    assert newest_first.index(other.id) < newest_first.index(mine_ids[-1])

    batch_files = list(client.files.list(purpose="batch"))
    assert all(f.purpose == "batch" for f in batch_files)
    assert other.id not in {f.id for f in batch_files}
    asc = [f.id for f in client.files.list(purpose="batch", order="asc")]
    assert [i for i in asc if i in mine_ids] == mine_ids
    assert asc == [f.id for f in batch_files][::-1]

    page = client.files.list(purpose="batch", order="asc", limit=1, after=mine_ids[0])
    assert [f.id for f in page.data] == [mine_ids[1]]
    assert page.has_more is True
    last = client.files.list(purpose="batch", order="asc", limit=5, after=mine_ids[2])
    assert last.data == [] and last.has_more is False

    # Auto-pagination with limit=1 visits every file exactly once, in order.
    pages = 0
    seen: list[str] = []
    current = client.files.list(purpose="batch", order="asc", limit=1)
    while True:
        pages += 1
        seen.extend(f.id for f in current.data)
        if not current.has_next_page():
            break
        current = current.get_next_page()
    assert seen == asc and pages >= len(asc)

    raw = client.files.with_raw_response.list(purpose="batch", limit=2).http_response.json()
    assert raw["object"] == "list" and raw["has_more"] is True
    assert raw["first_id"] == raw["data"][0]["id"] and raw["last_id"] == raw["data"][-1]["id"]

    with pytest.raises(openai.BadRequestError) as e:
        client.files.list(purpose="nonsense")  # type: ignore[arg-type]
    check_api_error(e.value, 400)


def test_upload_of_non_jsonl_batch_file_is_rejected_with_line_numbers(client: OpenAI) -> None:
    before = {f.id for f in client.files.list()}
    data = b'{"custom_id": "a", "method": "POST"}\nnot json\n[1, 2]\n{"ok": true}\n'
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", data), purpose="batch")
    check_api_error(e.value, 400)
    message = e.value.body["message"]  # type: ignore[index]
    assert "line 2" in message and "line 3" in message, message
    assert "line 1" not in message and "line 4" not in message, message
    assert e.value.response.headers.get("x-should-retry") == "false"

    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("empty.jsonl", b"\n  \n"), purpose="batch")
    check_api_error(e.value, 400)

    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="not-a-purpose")  # type: ignore[arg-type]
    check_api_error(e.value, 400)
    assert e.value.param == "purpose"
    assert {f.id for f in client.files.list()} == before, "rejected uploads leave no file behind"


# ---- batches: the happy path ---------------------------------------------------------------

def test_batch_lifecycle_completed(client: OpenAI) -> None:
    custom_ids = [f"{c}-{i}" for i, c in enumerate("zyxwvutsrqponm")]  # input order is not sorted order
    lines = [request_line(c) for c in custom_ids]
    f = upload(client, lines)
    created = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                                    metadata={"project": "sdk-test"})
    assert created.id.startswith("batch_")
    assert created.object == "batch"
    assert created.status == "validating"
    assert created.endpoint == CHAT and created.input_file_id == f.id and created.completion_window == "24h"
    assert created.expires_at == created.created_at + 86400
    assert created.errors is None and created.output_file_id is None and created.error_file_id is None
    assert created.request_counts is not None and created.request_counts.total == 0
    assert created.metadata == {"project": "sdk-test"}
    raw = client.batches.with_raw_response.retrieve(created.id).http_response.json()
    for key in ("errors", "output_file_id", "error_file_id", "in_progress_at", "expires_at", "finalizing_at",
                "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at", "request_counts",
                "metadata", "model", "usage"):
        assert key in raw, f"the batch object always carries {key!r}"
    assert raw["output_file_id"] != "" and raw["error_file_id"] != ""

    done = wait_terminal(client, created.id)
    assert done.status == "completed", done
    assert done.in_progress_at is not None and done.finalizing_at is not None and done.completed_at is not None
    assert created.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.failed_at is None and done.expired_at is None and done.cancelled_at is None
    assert done.cancelling_at is None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (14, 14, 0)
    assert done.error_file_id is None, "no errors, no error file"
    assert done.model == SCRIPTED
    assert done.metadata == {"project": "sdk-test"}
    assert done.usage is not None and done.usage.input_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert client.batches.retrieve(created.id) == done

    assert done.output_file_id is not None
    out_file = client.files.retrieve(done.output_file_id)
    assert out_file.purpose == "batch_output" and out_file.status == "processed"
    data = client.files.content(done.output_file_id).content
    assert out_file.bytes == len(data)
    out = parse_jsonl(data)
    assert [line["custom_id"] for line in out] == custom_ids, "one line per request, in input order"
    assert len({line["id"] for line in out}) == len(out)
    assert len({line["response"]["request_id"] for line in out}) == len(out)
    for line, sent in zip(out, lines, strict=True):
        check_success_line(line)
        assert line["response"]["body"]["echo"]["messages"] == sent["body"]["messages"]
    assert done.output_file_id in {x.id for x in client.files.list(purpose="batch_output")}


def test_embeddings_batch_with_the_real_model(client: OpenAI, server: FreightServer) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue grew by 4%.",
             "Ünïcödé text — with dashes and 漢字."]
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": EMBEDDING_MODEL, "input": t}} for i, t in enumerate(texts)]
    lines.append({"custom_id": "pair", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": EMBEDDING_MODEL, "input": texts[:2]}})
    done = wait_terminal(client, create_batch(client, lines, endpoint="/v1/embeddings").id, timeout_s=60)
    assert done.status == "completed", done
    assert done.model == EMBEDDING_MODEL
    assert done.request_counts is not None and done.request_counts.completed == len(lines)
    assert done.error_file_id is None
    assert done.usage is not None and done.usage.input_tokens > 0
    out = file_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in out] == [f"e{i}" for i in range(len(texts))] + ["pair"]
    pair = out.pop()["response"]["body"]
    assert [d["index"] for d in pair["data"]] == [0, 1]
    assert pair["usage"]["prompt_tokens"] > 0
    vectors = []
    for line in out:
        check_success_line(line)
        body = line["response"]["body"]
        assert body["object"] == "list" and body["model"] == EMBEDDING_MODEL
        (item,) = body["data"]
        assert item["object"] == "embedding" and item["index"] == 0
        vector = item["embedding"]
        assert len(vector) == 384 and all(isinstance(x, float) for x in vector)
        vectors.append(vector)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2, "similar texts embed close together"
    assert cos(pair["data"][0]["embedding"], vectors[0]) > 0.999, "a text embeds the same alone or in a list"
    assert cos(pair["data"][1]["embedding"], vectors[1]) > 0.999

    # The real-time endpoint gives the same vector as the batch. (Strict validation cannot parse the
    # SDK's default base64 answer, so ask for floats; a default client checks the base64 encoding.)
    live = client.embeddings.create(model=EMBEDDING_MODEL, input=texts[0], encoding_format="float")
    assert len(live.data) == 1 and len(live.data[0].embedding) == 384
    assert cos(live.data[0].embedding, vectors[0]) > 0.999
    with OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as lenient:
        b64 = lenient.embeddings.create(model=EMBEDDING_MODEL, input=texts[:2])
    assert [d.index for d in b64.data] == [0, 1]
    assert cos(b64.data[0].embedding, vectors[0]) > 0.999 and cos(b64.data[1].embedding, vectors[1]) > 0.999


def test_permanent_errors_go_to_the_error_file(client: OpenAI) -> None:
    key = uuid.uuid4().hex
    bad = {"r2", "r5", "r7"}
    lines = []
    for i in range(10):
        cid = f"r{i}"
        if cid in bad:
            lines.append(request_line(cid, status=400))
        elif i == 3:  # transient: fails twice, then succeeds (the engine retries it)
            lines.append(request_line(cid, status=503, fail_times=2, key=key))
        else:
            lines.append(request_line(cid))
    batch = create_batch(client, lines, output_expires_after={"anchor": "created_at", "seconds": 3600})
    done = wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (10, 7, 3)

    out = file_lines(client, done.output_file_id)
    err = file_lines(client, done.error_file_id)
    assert [line["custom_id"] for line in out] == [f"r{i}" for i in range(10) if f"r{i}" not in bad]
    assert [line["custom_id"] for line in err] == sorted(bad)
    for line in out:
        check_success_line(line)
    assert next(line for line in out if line["custom_id"] == "r3")["response"]["body"]["attempt"] == 3
    for line in err:
        assert set(line) == OUTPUT_LINE_KEYS and line["id"].startswith("batch_req_")
        assert line["error"] is None, "an HTTP error from the model keeps error null"
        assert line["response"]["status_code"] == 400
        assert isinstance(line["response"]["request_id"], str)
        assert set(line["response"]["body"]["error"]) >= {"message", "type"}
    for file_id in (done.output_file_id, done.error_file_id):
        assert file_id is not None
        f = client.files.retrieve(file_id)
        assert f.purpose == "batch_output"
        assert f.expires_at == f.created_at + 3600, "output_expires_after applies to both result files"


def test_batch_where_everything_failed_has_no_output_file(client: OpenAI) -> None:
    done = wait_terminal(client, create_batch(client, [request_line(f"f{i}", status=400) for i in range(3)]).id)
    assert done.status == "completed"
    assert done.output_file_id is None and done.error_file_id is not None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
    assert [line["response"]["status_code"] for line in file_lines(client, done.error_file_id)] == [400] * 3


# ---- listing -------------------------------------------------------------------------------

def test_batches_list_pages_newest_first(client: OpenAI) -> None:
    mine = [create_batch(client, [request_line(f"p{i}")]).id for i in range(5)]

    raw = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert raw["object"] == "list" and len(raw["data"]) == 2 and raw["has_more"] is True
    assert raw["first_id"] == raw["data"][0]["id"] == mine[-1]
    assert raw["last_id"] == raw["data"][1]["id"] == mine[-2]

    everything = client.batches.list(limit=100)
    assert everything.has_more is False
    all_ids = [b.id for b in everything.data]

    paged = [b for b in client.batches.list(limit=2)]  # the SDK's auto-pagination
    paged_ids = [b.id for b in paged]
    assert len(paged_ids) == len(set(paged_ids)), "no batch twice"
    assert paged_ids == all_ids, "every batch exactly once, in the same order"
    assert [i for i in paged_ids if i in mine] == mine[::-1], "newest first"
    created = [b.created_at for b in paged]
    assert created == sorted(created, reverse=True)

    after = client.batches.list(after=mine[-1], limit=2)
    assert [b.id for b in after.data] == [mine[-2], mine[-3]]
    tail = client.batches.list(after=all_ids[-1], limit=2)
    assert tail.data == [] and tail.has_more is False
    # A cursor no id can be (a NUL: PostgreSQL cannot even compare it) is the client's 400, not the store's 500.
    for listing in (lambda: client.batches.list(after="batch_\x00"), lambda: client.files.list(after="file-\x00")):
        with pytest.raises(openai.BadRequestError) as nul:
            listing()
        assert nul.value.code == "invalid_value" and nul.value.param == "after"

    for limit in (0, 101):
        with pytest.raises(openai.BadRequestError) as e:
            client.batches.list(limit=limit)
        check_api_error(e.value, 400)
    for batch_id in mine:
        assert wait_terminal(client, batch_id).status == "completed"


# ---- cancel and expiry ---------------------------------------------------------------------

def test_cancel_in_progress_keeps_finished_results(client: OpenAI) -> None:
    custom_ids = [f"c{i:02d}" for i in range(48)]
    lines = [request_line(c, model=SCRIPTED_SLOW, sleep_s=0.25) for c in custom_ids]
    batch = create_batch(client, lines)

    def some_done() -> bool:
        b = client.batches.retrieve(batch.id)
        assert b.status not in TERMINAL, f"finished before it could be cancelled: {b.status}"
        return b.request_counts is not None and b.request_counts.completed > 0

    wait_for(some_done, 30, "the first requests to finish")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.id == batch.id
    assert cancelling.status in ("cancelling", "cancelled")
    assert isinstance(cancelling.cancelling_at, int)

    done = wait_terminal(client, batch.id)
    assert done.status == "cancelled", done
    assert done.cancelled_at is not None and done.cancelling_at is not None
    assert done.cancelled_at >= done.cancelling_at
    assert done.completed_at is None
    out_ids, err_ids = check_partial(client, done, custom_ids, "batch_cancelled")
    assert out_ids, "requests finished before the cancel are kept"
    assert err_ids, "requests that never started are batch_cancelled"

    again = client.batches.cancel(batch.id)  # cancelling a cancelled batch returns it
    assert again.status == "cancelled" and again.cancelled_at == done.cancelled_at


def test_cancel_while_validating(client: OpenAI) -> None:
    """Cancelled before it starts: it ends cancelled, and the counts agree with the result files."""
    for n in (1, 3000):  # a big file is still validating when the cancel lands
        custom_ids = [f"v{i}" for i in range(n)]
        batch = create_batch(client, [request_line(c, model=SCRIPTED_SLOW, sleep_s=0.2) for c in custom_ids])
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        done = wait_terminal(client, batch.id)
        assert done.status == "cancelled"
        out = file_lines(client, done.output_file_id)
        err = file_lines(client, done.error_file_id)
        counts = done.request_counts
        assert counts is not None
        assert (counts.completed, counts.failed) == (len(out), len(err))
        assert counts.total == counts.completed + counts.failed, f"counts do not add up: {counts}"
        if out or err:
            assert sorted(line["custom_id"] for line in out + err) == sorted(custom_ids)
            for line in err:
                check_never_ran_line(line, "batch_cancelled")


def test_cancel_of_a_completed_batch_is_a_409(client: OpenAI) -> None:
    done = wait_terminal(client, create_batch(client, [request_line("only")]).id)
    assert done.status == "completed"
    with pytest.raises(openai.ConflictError) as e:
        client.batches.cancel(done.id)
    check_api_error(e.value, 409)
    assert e.value.type == "invalid_request_error"
    assert "completed" in e.value.message
    assert e.value.response.headers.get("x-should-retry") == "false", "the SDK would retry a 409 otherwise"
    assert client.batches.retrieve(done.id).status == "completed"


def test_expiry_keeps_finished_results(client: OpenAI) -> None:
    custom_ids = [f"x{i:02d}" for i in range(80)]
    lines = [request_line(c, model=SCRIPTED_SLOW, sleep_s=0.5) for c in custom_ids]
    batch = create_batch(client, lines, window="3s")
    assert batch.expires_at == batch.created_at + 3
    assert batch.completion_window == "3s"

    done = wait_terminal(client, batch.id, timeout_s=30)
    assert done.status == "expired", done
    assert done.expired_at is not None and done.expires_at is not None
    assert done.expired_at >= done.expires_at
    assert done.completed_at is None and done.cancelled_at is None
    out_ids, err_ids = check_partial(client, done, custom_ids, "batch_expired")
    assert out_ids, "requests finished before expiry are kept"
    assert err_ids, "requests that never ran are batch_expired"

    with pytest.raises(openai.ConflictError) as e:
        client.batches.cancel(done.id)
    check_api_error(e.value, 409)


# ---- validation ----------------------------------------------------------------------------

def test_validation_failures_are_reported_per_line(client: OpenAI) -> None:
    missing_custom_id = request_line("ignored")
    del missing_custom_id["custom_id"]
    lines: list[Any] = [
        request_line("ok-1"),                                         # 1
        missing_custom_id,                                            # 2
        "",                                                           # 3 (blank: skipped, still counted)
        request_line("wrong-url", url="/v1/embeddings"),              # 4
        request_line("ok-1"),                                         # 5
        request_line("unknown-model", model="gpt-nope"),              # 6
        request_line("streamed", body={"stream": True}),              # 7
        request_line("other-model", model=SCRIPTED_SLOW),             # 8
        request_line("ok-9"),                                         # 9
    ]
    batch = create_batch(client, lines)
    done = wait_terminal(client, batch.id)
    assert done.status == "failed", done
    assert done.failed_at is not None and done.in_progress_at is None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (0, 0, 0)
    assert done.errors is not None and done.errors.object == "list"
    errors = done.errors.data or []
    assert [(e.line, e.code) for e in errors] == [
        (2, "missing_required_parameter"),
        (4, "invalid_url"),
        (5, "duplicate_custom_id"),
        (6, "model_not_found"),
        (7, "streaming_unsupported"),
        (8, "mismatched_model"),
    ]
    params = {e.code: e.param for e in errors}
    assert params["missing_required_parameter"] == "custom_id"
    assert params["invalid_url"] == "url"
    assert params["duplicate_custom_id"] == "custom_id"
    assert params["model_not_found"] == "body.model"
    assert params["streaming_unsupported"] == "body.stream"
    assert all(isinstance(e.message, str) and e.message for e in errors)
    assert "gpt-nope" in next(e.message or "" for e in errors if e.code == "model_not_found")

    with pytest.raises(openai.ConflictError) as e:
        client.batches.cancel(done.id)
    check_api_error(e.value, 409)


def test_create_time_errors_are_400s_and_create_nothing(client: OpenAI) -> None:
    f = upload(client, [request_line("a")])
    before = [b.id for b in client.batches.list(limit=100)]

    def create(**body: Any) -> openai.BadRequestError:
        with pytest.raises(openai.BadRequestError) as e:
            client.post("/batches", body=body, cast_to=Batch)
        check_api_error(e.value, 400)
        assert e.value.response.headers.get("x-should-retry") == "false"
        return e.value

    ok = {"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h"}

    e = create(**{**ok, "endpoint": "/v1/nope"})
    assert (e.code, e.param) == ("invalid_value", "endpoint") and "/v1/nope" in e.message

    for missing in ("input_file_id", "endpoint", "completion_window"):
        body = dict(ok)
        del body[missing]
        e = create(**body)
        assert (e.code, e.param) == ("missing_required_parameter", missing), e.body

    e = create(**ok, metadata={"tags": ["a", "b"]})
    assert (e.code, e.param) == ("invalid_type", "metadata.tags")
    assert "array" in e.message
    e = create(**ok, metadata={"n": 1})
    assert (e.code, e.param) == ("invalid_type", "metadata.n")
    e = create(**ok, metadata={f"k{i}": "v" for i in range(17)})
    assert e.param == "metadata"

    for window in ("25x", "0s", "", "24"):
        e = create(**{**ok, "completion_window": window})
        assert "completion_window" in e.message or e.param == "completion_window", e.body
    e = create(**{**ok, "completion_window": 24})
    assert e.param == "completion_window"

    e = create(**{**ok, "input_file_id": UNKNOWN_FILE})
    assert e.param == "input_file_id"
    e = create(**{**ok, "input_file_id": "../../etc/passwd"})
    assert e.param == "input_file_id"
    other = client.files.create(file=("x.txt", b"x"), purpose="user_data")
    e = create(**{**ok, "input_file_id": other.id})
    assert e.param == "input_file_id" and "purpose" in e.message

    e = create(**ok, output_expires_after={"anchor": "created_at", "seconds": 60})
    assert e.param == "output_expires_after.seconds"
    e = create(**ok, output_expires_after={"anchor": "created_at", "seconds": 3600, "secnods": 7200})
    assert (e.code, e.param) == ("unknown_parameter", "output_expires_after.secnods"), e.body

    for value, code in (("high", "invalid_type"), (1.5, "invalid_type"), (True, "invalid_type"),
                        (10_000, "invalid_value")):
        e = create(**ok, priority=value)
        assert (e.code, e.param) == (code, "priority"), e.body
    e = create(**ok, not_before="soon")
    assert (e.code, e.param) == ("invalid_type", "not_before"), e.body
    e = create(**ok, priorty=5)  # a misspelt option is refused, not silently the default
    assert (e.code, e.param) == ("unknown_parameter", "priorty") and "priorty" in e.message, e.body

    with pytest.raises(openai.BadRequestError) as bad_json:
        client.post("/batches", cast_to=Batch, content=b"{not json",
                    options={"headers": {"Content-Type": "application/json"}})
    check_api_error(bad_json.value, 400)

    assert [b.id for b in client.batches.list(limit=100)] == before, "no failed create left a batch behind"


def test_unknown_ids_are_404(client: OpenAI) -> None:
    for call in (client.batches.retrieve, client.batches.cancel):
        for batch_id in (UNKNOWN_BATCH, "not-a-batch-id"):
            with pytest.raises(openai.NotFoundError) as e:
                call(batch_id)
            check_api_error(e.value, 404)
    for file_call in (client.files.retrieve, client.files.content, client.files.delete):
        for file_id in (UNKNOWN_FILE, "file-abc"):
            with pytest.raises(openai.NotFoundError) as e:
                file_call(file_id)
            check_api_error(e.value, 404)
    with pytest.raises(openai.NotFoundError) as e:
        client.get("/no/such/route", cast_to=Batch)
    check_api_error(e.value, 404)


def test_realtime_requests_and_a_backend_that_raises(server: FreightServer) -> None:
    """POST /v1/chat/completions answers at once; a backend exception is a 503 envelope, not a bare 500."""
    with server.client() as c:  # not the recorded client: the 503 below is deliberate
        ok = c.post("/chat/completions", cast_to=object,
                    body={"model": SCRIPTED, "messages": [{"role": "user", "content": "hi"}]})
        assert isinstance(ok, dict) and ok["echo"]["messages"] == [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.InternalServerError) as e:
            c.post("/chat/completions", cast_to=object,
                   body={"model": SCRIPTED, "messages": [], "script": {"status": "not-a-number"}})
        check_api_error(e.value, 503)
        assert e.value.code == "backend_error"
        assert (e.value.response.headers.get("x-request-id") or "").startswith("req_")
        with pytest.raises(openai.BadRequestError) as bad:
            c.post("/chat/completions", cast_to=object, body={"model": SCRIPTED, "messages": [], "stream": True})
        check_api_error(bad.value, 400)


def test_an_unexpected_exception_is_a_500_envelope_with_a_request_id(tmp_path: Path) -> None:
    """In-process: whatever a route raises, the answer is the OpenAI envelope and carries x-request-id."""
    from fastapi.testclient import TestClient

    from freight.api.app import create_app
    from freight.config import load_settings
    from freight.runtime import build_runtime

    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    runtime = build_runtime(load_settings(config, data_dir=tmp_path / "data", env={}))
    try:
        app = create_app(runtime, run_engine=False)

        def boom() -> None:
            raise RuntimeError("secret internals")

        app.add_api_route("/v1/boom", boom)
        with TestClient(app, raise_server_exceptions=False) as tc:
            r = tc.get("/v1/boom")
    finally:
        runtime.close()
    assert r.status_code == 500
    assert set(r.json()["error"]) == ERROR_KEYS and r.json()["error"]["type"] == "server_error"
    assert "secret internals" not in r.text
    assert r.headers.get("x-request-id", "").startswith("req_")
    assert r.headers.get("request-id") == r.headers["x-request-id"]


def test_zz_every_response_had_a_request_id_and_none_was_a_5xx(responses: ResponseLog) -> None:
    """Runs last in this module: looks back at every response the SDK received above."""
    if not responses.entries:
        pytest.skip("looks back at the other tests of this module; run it with them")
    server_errors = [e for e in responses.entries if e[2] >= 500]
    assert not server_errors, server_errors
    missing = [e for e in responses.entries if not (e[3] or "").startswith("req_")]
    assert not missing, missing
    ids = [e[3] for e in responses.entries]
    assert len(ids) == len(set(ids)), "request ids are unique"


def test_every_answer_that_asking_again_cannot_change_says_so(server: FreightServer) -> None:
    """``x-should-retry: false`` on routing errors and on a model's own 4xx answer on the real-time endpoints
    too (the batch API's errors are checked above): the SDKs retry 409 by default, and the header settles it."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.put("/v1/batches")
        assert r.status_code == 405 and r.headers.get("x-should-retry") == "false", r.text
        r = http.post("/v1/chat/completions", json=request_line("a", status=400)["body"])
        assert r.status_code == 400 and r.headers.get("x-should-retry") == "false", r.text
        r = http.post("/v1/chat/completions", json=request_line("b")["body"])
        assert r.status_code == 200 and "x-should-retry" not in r.headers, r.text
