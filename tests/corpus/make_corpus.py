"""Regenerate the malformed-input corpus: one file per case, and manifest.json saying what each must get.

Stages:
- ``upload``: ``POST /v1/files`` (purpose batch) is refused with ``status`` and error ``code``; the
  message names ``lines``.
- ``batch``: the upload is accepted, the batch ends ``failed`` with exactly ``errors`` (line, code,
  param) in ``errors.data``.
- ``ok``: the batch completes; ``succeeded`` requests in the output file, ``refused`` custom_ids in the
  error file with a 400 from the model.

Cases that must not live in git as files (too large) are made by the test: see ``GENERATED``.
Endpoint of every batch: /v1/embeddings. Served models: all-MiniLM-L6-v2 and freight-scripted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
EMB = "all-MiniLM-L6-v2"


def req(cid: Any = "a", *, url: Any = "/v1/embeddings", method: Any = "POST", body: Any = None, **kw: Any) -> dict:
    line = {"custom_id": cid, "method": method, "url": url,
            "body": body if body is not None else {"model": EMB, "input": f"text {cid}"}}
    line.update(kw)
    return line


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def lines(*items: Any, sep: bytes = b"\n", trailing: bool = True) -> bytes:
    parts = [i if isinstance(i, bytes) else dumps(i) for i in items]
    return sep.join(parts) + (sep if trailing else b"")


CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    # ---- refused at upload: not JSONL ----
    ("broken_json", lines(req("a"), b'{"custom_id": "b", "method": '),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    ("not_an_object", lines(b"[1, 2, 3]", req("b")),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [1]}),
    ("json_string_line", lines(req("a"), b'"just a string"'),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    ("nul_byte", lines(req("a"), b'{"custom_id": "b"\x00}'),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    ("invalid_utf8", lines(req("a"), b'{"custom_id": "b\xff\xfe", "method": "POST"}'),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    ("lone_surrogate_escape", lines(req("a"), b'{"custom_id": "\\ud800", "method": "POST"}'),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    ("deeply_nested", lines(req("a"), b'{"custom_id": "b", "body": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    ("trailing_garbage", lines(req("a"), dumps(req("b")) + b" trailing"),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    ("two_objects_one_line", lines(dumps(req("a")) + dumps(req("b"))),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [1]}),
    ("many_bad_lines", lines(*[b"nope"] * 30),
     {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": list(range(1, 21))}),
    ("empty_file", b"", {"stage": "upload", "status": 400, "code": "empty_file", "lines": []}),
    ("only_newlines", b"\n\n\n\n", {"stage": "upload", "status": 400, "code": "empty_file", "lines": []}),
    ("only_whitespace", b" \t \n\r\n  \n", {"stage": "upload", "status": 400, "code": "empty_file", "lines": []}),
    ("bom_only", b"\xef\xbb\xbf", {"stage": "upload", "status": 400, "code": "empty_file", "lines": []}),
    # ---- accepted, and run ----
    ("bom", b"\xef\xbb\xbf" + lines(req("a"), req("b")), {"stage": "ok", "succeeded": ["a", "b"], "refused": []}),
    ("crlf", lines(req("a"), req("b"), sep=b"\r\n"), {"stage": "ok", "succeeded": ["a", "b"], "refused": []}),
    ("blank_lines", lines(b"", req("a"), b"   ", b"", req("b"), b"\t"),
     {"stage": "ok", "succeeded": ["a", "b"], "refused": []}),
    ("no_final_newline", lines(req("a"), req("b"), trailing=False),
     {"stage": "ok", "succeeded": ["a", "b"], "refused": []}),
    ("duplicate_keys_last_wins", lines(b'{"custom_id": "x", "custom_id": "a", "method": "POST", "url": '
                                       b'"/v1/embeddings", "body": {"model": "all-MiniLM-L6-v2", "input": "t"}}'),
     {"stage": "ok", "succeeded": ["a"], "refused": []}),
    ("unicode_line_separators", lines(req("a", body={"model": EMB, "input": "one\u2028two\u2029three\x85"})),
     {"stage": "ok", "succeeded": ["a"], "refused": []}),
    ("unsupported_body_param", lines(req("a"), req("b", body={"model": EMB, "input": "x", "dimensions": 10}),
                                     req("c", body={"model": EMB, "input": ""}),
                                     req("d", body={"model": EMB, "input": [1, 2, 3]}),
                                     req("e", body={"model": EMB, "input": "x", "temperature": 0.2})),
     {"stage": "ok", "succeeded": ["a"], "refused": ["b", "c", "d", "e"]}),
    # ---- accepted at upload, refused by batch validation ----
    ("missing_custom_id", lines(req("a"), {"method": "POST", "url": "/v1/embeddings", "body": {}}),
     {"stage": "batch", "errors": [[2, "missing_required_parameter", "custom_id"]]}),
    ("missing_method", lines({"custom_id": "a", "url": "/v1/embeddings", "body": {}}),
     {"stage": "batch", "errors": [[1, "missing_required_parameter", "method"]]}),
    ("missing_url", lines({"custom_id": "a", "method": "POST", "body": {}}),
     {"stage": "batch", "errors": [[1, "missing_required_parameter", "url"]]}),
    ("missing_body", lines({"custom_id": "a", "method": "POST", "url": "/v1/embeddings"}),
     {"stage": "batch", "errors": [[1, "missing_required_parameter", "body"]]}),
    ("custom_id_number", lines(req(17)), {"stage": "batch", "errors": [[1, "invalid_type", "custom_id"]]}),
    ("custom_id_null", lines(req(None)), {"stage": "batch", "errors": [[1, "invalid_type", "custom_id"]]}),
    ("custom_id_empty", lines(req("")), {"stage": "batch", "errors": [[1, "invalid_value", "custom_id"]]}),
    ("custom_id_10k_chars", lines(req("x" * 10_000)),
     {"stage": "batch", "errors": [[1, "invalid_value", "custom_id"]]}),
    ("custom_id_path_chars", lines(req("../../etc/passwd"), req("a/b\\c")),
     {"stage": "ok", "succeeded": ["../../etc/passwd", "a/b\\c"], "refused": []}),
    ("method_number", lines(req("a", method=1)), {"stage": "batch", "errors": [[1, "invalid_type", "method"]]}),
    ("method_get", lines(req("a", method="GET")), {"stage": "batch", "errors": [[1, "invalid_value", "method"]]}),
    ("method_lowercase", lines(req("a", method="post")),
     {"stage": "batch", "errors": [[1, "invalid_value", "method"]]}),
    ("url_number", lines(req("a", url=5)), {"stage": "batch", "errors": [[1, "invalid_type", "url"]]}),
    ("url_mismatch", lines(req("a"), req("b", url="/v1/chat/completions")),
     {"stage": "batch", "errors": [[2, "invalid_url", "url"]]}),
    ("unknown_endpoint_url", lines(req("a", url="/v1/images/generations")),
     {"stage": "batch", "errors": [[1, "invalid_url", "url"]]}),
    ("body_string", lines(req("a", body="text")), {"stage": "batch", "errors": [[1, "invalid_type", "body"]]}),
    ("body_array", lines(req("a", body=[1])), {"stage": "batch", "errors": [[1, "invalid_type", "body"]]}),
    ("body_null", lines(b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": null}'),
     {"stage": "batch", "errors": [[1, "invalid_type", "body"]]}),
    ("stream_true", lines(req("a", body={"model": EMB, "input": "x", "stream": True})),
     {"stage": "batch", "errors": [[1, "streaming_unsupported", "body.stream"]]}),
    ("missing_model", lines(req("a", body={"input": "x"})),
     {"stage": "batch", "errors": [[1, "invalid_request", "body.model"]]}),
    ("model_number", lines(req("a", body={"model": 3, "input": "x"})),
     {"stage": "batch", "errors": [[1, "invalid_type", "body.model"]]}),
    ("unknown_model", lines(req("a", body={"model": "gpt-17", "input": "x"})),
     {"stage": "batch", "errors": [[1, "model_not_found", "body.model"]]}),
    ("mismatched_model", lines(req("a"), req("b", body={"model": "freight-scripted", "input": "x"})),
     {"stage": "batch", "errors": [[2, "mismatched_model", "body.model"]]}),
    ("missing_input", lines(req("a", body={"model": EMB})),
     {"stage": "batch", "errors": [[1, "invalid_request", "body.input"]]}),
    ("duplicate_custom_ids", lines(req("a"), req("b"), req("a"), req("b")),
     {"stage": "batch", "errors": [[3, "duplicate_custom_id", "custom_id"], [4, "duplicate_custom_id", "custom_id"]]}),
    ("every_line_reported", lines(req("a"), req(1), req("c", method="GET"), req("a"), req("e", url="/x")),
     {"stage": "batch", "errors": [[2, "invalid_type", "custom_id"], [3, "invalid_value", "method"],
                                   [4, "duplicate_custom_id", "custom_id"], [5, "invalid_url", "url"]]}),
]

#: Made by the test at run time (too big for git): name -> (how, expected).
GENERATED = {
    "line_over_limit": ("one 2 MB line, over the test server's 1 MB max_line_bytes",
                        {"stage": "upload", "status": 400, "code": "invalid_file_format", "lines": [2]}),
    "ten_mb_line": ("one 10 MB line", {"stage": "upload", "status": 400, "code": "invalid_file_format",
                                        "lines": [1]}),
    "file_over_limit": ("a 13 MB file, over the test server's 12 MiB max_input_bytes",
                        {"stage": "upload", "status": 413, "code": "file_too_large", "lines": []}),
    "too_many_lines": ("301 lines, over the test server's 300 max_lines",
                       {"stage": "upload", "status": 400, "code": "too_many_tasks", "lines": []}),
}


def main() -> None:
    manifest = {}
    for name, data, expected in CASES:
        (HERE / f"{name}.jsonl").write_bytes(data)
        manifest[name] = expected
    for name, (how, expected) in GENERATED.items():
        manifest[name] = {**expected, "generated": how}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{len(CASES)} files, {len(GENERATED)} generated cases")


if __name__ == "__main__":
    main()
