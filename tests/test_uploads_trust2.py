"""``POST /v1/files`` with hand-built multipart bodies, over raw HTTP to a real ``freight serve``.

- A boundary longer than 256 characters is a 400 in OpenAI's envelope (it was a 500).
- A body that ends before its closing boundary (sent whole with a Content-Length, or chunked with
  the final chunk sent: HTTP says the body is complete, multipart says it is not) is an upload cut
  short: 400, with no file row, no blob, and nothing listed by ``GET /v1/files`` (it was stored as
  complete, with the lines that arrived).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from servers import FreightServer, jsonl_bytes, request_line

ERROR_KEYS = {"message", "type", "param", "code"}
BOUNDARY = "freight-test-boundary-7f3a"
CONTENT = jsonl_bytes([request_line(f"r{i}") for i in range(40)])
#: What the server holds: (files listed by the API, file rows in the store, blobs on disk).
Stored = tuple[list[Any], int, list[str]]


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server()


@pytest.fixture
def raw(server: FreightServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def multipart(boundary: str = BOUNDARY, content: bytes = CONTENT) -> bytes:
    """A complete body as the SDKs send it: the purpose field, then the file."""
    b = boundary.encode()
    return (b"--" + b + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            + b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            + b"Content-Type: application/jsonl\r\n\r\n" + content + b"\r\n--" + b + b"--\r\n")


def headers(boundary: str = BOUNDARY) -> dict[str, str]:
    return {"content-type": f"multipart/form-data; boundary={boundary}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert response.headers["x-request-id"]
    return body["error"]  # type: ignore[no-any-return]


def stored(server: FreightServer, raw: httpx.Client) -> Stored:
    """(files listed by the API, file rows in the store (deleted ones too), blobs on disk)."""
    listed = raw.get("/files").json()["data"]
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30) as c:
        rows = c.execute("SELECT count(*) FROM files").fetchone()[0]
    blobs = sorted(p.name for p in (server.data_dir / "blobs").iterdir())
    return listed, rows, blobs


@pytest.fixture
def empty(server: FreightServer, raw: httpx.Client) -> Stored:
    """No file is listed before the test: what is stored then, for the test to compare with."""
    for f in raw.get("/files").json()["data"]:
        raw.delete(f"/files/{f['id']}")
    before = stored(server, raw)
    assert before[0] == []
    return before


# ---- a boundary over 256 characters -------------------------------------------------------------

@pytest.mark.parametrize("length", [257, 1000, 8000])
def test_a_boundary_longer_than_256_characters_is_a_400(server: FreightServer, raw: httpx.Client, empty: Stored,
                                                        length: int) -> None:
    boundary = "b" * length
    response = raw.post("/files", content=multipart(boundary), headers=headers(boundary))
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_content_type"
    assert error["param"] == "file" and str(length) in error["message"] and "256" in error["message"]
    assert stored(server, raw) == empty


def test_a_boundary_of_256_characters_is_accepted(raw: httpx.Client, empty: Stored) -> None:
    boundary = "b" * 256
    response = raw.post("/files", content=multipart(boundary), headers=headers(boundary))
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == len(CONTENT)


# ---- a body cut short ---------------------------------------------------------------------------

FULL = multipart()
CUTS = {
    # inside the file's lines: a prefix of the file arrived
    "mid-file": FULL.index(CONTENT) + len(CONTENT) // 2,
    # after the whole file, its CRLF and the start of the closing delimiter
    "before-closing-dashes": len(FULL) - len(b"--\r\n"),
    # right after the file's content, before its delimiter
    "after-file-content": FULL.index(CONTENT) + len(CONTENT),
    # inside the file part's headers
    "in-file-headers": FULL.index(b"filename="),
    # after the purpose field only, at the start of the next part
    "after-purpose": FULL.index(b'name="file"') - len(b"Content-Disposition: form-data; "),
}


def chunks(data: bytes, size: int = 700) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
@pytest.mark.parametrize("cut", sorted(CUTS))
def test_an_upload_cut_short_is_refused_and_stores_nothing(server: FreightServer, raw: httpx.Client, empty: Stored,
                                                           cut: str, transfer: str) -> None:
    body = FULL[:CUTS[cut]]
    request = raw.build_request("POST", "/files", content=body if transfer == "content-length" else chunks(body),
                                headers=headers())
    if transfer == "chunked":
        assert request.headers["transfer-encoding"] == "chunked" and "content-length" not in request.headers
    else:
        assert request.headers["content-length"] == str(len(body))
    response = raw.send(request)
    assert response.status_code == 400, f"{cut}/{transfer}: {response.status_code} {response.text}"
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["param"] == "file"
    assert error["code"] in ("invalid_multipart", "missing_required_parameter"), error
    if cut != "after-purpose":  # that body has no file part at all: "missing 'file'" says it
        assert error["code"] == "invalid_multipart" and "cut short" in error["message"], error
    assert stored(server, raw) == empty, "nothing of the cut upload may be kept"


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_the_same_body_whole_is_stored(server: FreightServer, raw: httpx.Client, empty: Stored,
                                       transfer: str) -> None:
    """The control: the body the tests above cut, sent whole the same way, is a file."""
    response = raw.post("/files", content=FULL if transfer == "content-length" else chunks(FULL), headers=headers())
    assert response.status_code == 200, response.text
    f = response.json()
    assert f["bytes"] == len(CONTENT) and f["purpose"] == "batch"
    assert raw.get(f"/files/{f['id']}/content").content == CONTENT
    listed, rows, blobs = stored(server, raw)
    assert [x["id"] for x in listed] == [f["id"]] and rows == empty[1] + 1 and len(blobs) == len(empty[2]) + 1
    raw.delete(f"/files/{f['id']}")
