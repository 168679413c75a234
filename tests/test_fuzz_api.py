"""Fuzzing the HTTP API from freight's own OpenAPI schema (schemathesis + hypothesis), against a real
``freight serve`` with API keys.

For every operation in /openapi.json, up to ``MAX_EXAMPLES`` generated requests (valid ones, and ones
that break the schema on purpose): no response may be a 5xx, every error must be in its protocol's
envelope (OpenAI's, or Anthropic's under /v1/messages), and every response carries a request id.
The total number of requests sent is checked (and printed) at the end.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from servers import FreightServer, config_text, jsonl_bytes, request_line

MAX_EXAMPLES = 50
SENT: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(make_server: Callable[..., FreightServer]) -> FreightServer:
    server = make_server(config_text(), start=False)
    server.key = server.create_key("fuzz")  # type: ignore[attr-defined]
    server.start()
    # something real to point at: a batch input file (batch creates that name it get further)
    with server.client(api_key=server.key) as client:  # type: ignore[attr-defined]
        f = client.files.create(file=("seed.jsonl", jsonl_bytes([request_line(f"s{i}") for i in range(3)])),
                                purpose="batch")
        server.file_id = f.id  # type: ignore[attr-defined]
    return server


def openapi_document() -> dict[str, Any]:
    """/openapi.json as the server makes it (built in-process: it is fixed by the code, not the data)."""
    from freight.api.app import create_app
    from freight.config import Settings
    from freight.runtime import build_runtime

    with tempfile.TemporaryDirectory() as tmp:
        runtime = build_runtime(Settings(data_dir=Path(tmp), models={"freight-scripted": {"backend": "scripted"}}),
                                lock=False)
        try:
            return create_app(runtime, run_engine=False).openapi()
        finally:
            runtime.close()


schema = schemathesis.openapi.from_dict(openapi_document())


def check_envelope(path: str, response: Any) -> None:
    body = response.json()
    if path.startswith("/v1/messages"):
        assert isinstance(body, dict) and body.get("type") == "error", body
        assert set(body["error"]) == {"type", "message"} and body["request_id"], body
    else:
        assert isinstance(body, dict) and set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_error_in_its_envelope(case: Any, fuzz_server: FreightServer) -> None:
    if case.method == "POST" and case.path == "/v1/batches" and isinstance(case.body, dict) \
            and SENT[case.operation.label] % 2:
        case.body["input_file_id"] = fuzz_server.file_id  # type: ignore[attr-defined]
    response = case.call(base_url=fuzz_server.url, timeout=30,
                         headers={"authorization": f"Bearer {fuzz_server.key}"})  # type: ignore[attr-defined]
    SENT[case.operation.label] += 1
    STATUSES[response.status_code] += 1
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    assert response.headers.get("x-request-id"), "every response carries a request id"
    if response.status_code >= 400:
        try:
            check_envelope(case.path, response)
        except AssertionError as exc:
            raise AssertionError(f"{response.request.method} {response.request.url}: {exc}") from None


def test_zz_the_fuzzer_ran(fuzz_server: FreightServer) -> None:
    total = sum(SENT.values())
    print(f"\nfuzzing: {total} requests over {len(SENT)} operations (with probes of methods they do not allow); "
          f"statuses {dict(sorted(STATUSES.items()))}")
    for operation, n in sorted(SENT.items()):
        print(f"  {n:4d}  {operation}")
    if not SENT:
        pytest.skip("runs after the fuzzing test of this module")
    assert len(SENT) >= 10 and total >= 10 * 20
    assert fuzz_server.proc is not None and fuzz_server.proc.poll() is None, "the server is still up"
