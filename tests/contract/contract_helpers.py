"""Records the contract tests make."""

from __future__ import annotations

from freight.domain.batches import Batch, BatchStatus
from freight.domain.files import File
from freight.domain.requests import Result
from freight.ports import NewRequest, Store

NOW = 1_700_000_000.0


def new_batch(batch_id: str = "batch_" + "a" * 24, project: str = "p", input_file_id: str = "file-" + "0" * 24,
              endpoint: str = "/v1/embeddings") -> Batch:
    return Batch(id=batch_id, project=project, endpoint=endpoint, input_file_id=input_file_id,
                 completion_window="24h", status=BatchStatus.VALIDATING, created_at=int(NOW),
                 expires_at=int(NOW) + 60)


def make_batch(store: Store, n: int, batch_id: str = "batch_" + "a" * 24, project: str = "p",
               model: str = "m") -> Batch:
    """A batch in progress with ``n`` pending requests."""
    b = new_batch(batch_id, project)
    store.insert_batch(b, None)
    store.insert_requests(b.id, [NewRequest(i, i + 1, f"c{i}", b'{"model":"m"}') for i in range(n)])
    assert store.start_batch(b.id, n, model, int(NOW))
    return b


def ok(body: bytes = b"{}") -> Result:
    return Result(status_code=200, body=body, request_id="req_1", input_tokens=3, output_tokens=2)


def a_file(file_id: str, project: str = "p", lines: int | None = 5, purpose: str = "batch",
           expires_at: int | None = None) -> File:
    return File(id=file_id, project=project, filename="in.jsonl", purpose=purpose, bytes=10, created_at=int(NOW),
                lines=lines, expires_at=expires_at)
