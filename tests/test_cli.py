"""The ``freight`` command line as a user runs it: subprocesses, exit codes, printed output, files.

Exit codes (freight/cli/main.py): 0 success; 1 an error or a batch that failed validation;
2 a usage error; 3 a batch that finished with failed requests; 130 interrupted.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from servers import (
    SCRIPTED,
    SCRIPTED_SLOW,
    TERMINAL,
    FreightServer,
    config_text,
    free_port,
    freight_command,
    jsonl_bytes,
    parse_jsonl,
    request_line,
    subprocess_env,
    wait_for,
)

BATCH_ID = re.compile(r"^batch_[0-9a-f]{24}$")


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text())


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "freight.toml"
    path.write_text(config_text())
    return path


def freight(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*freight_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=timeout)


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(jsonl_bytes(lines))
    return path


# ---- validate ------------------------------------------------------------------------------

def test_validate_reports_every_problem_with_its_line(tmp_path: Path, config: Path) -> None:
    no_custom_id = request_line("x")
    del no_custom_id["custom_id"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        request_line("a"),                                  # 1 ok
        "this is not json",                                 # 2
        no_custom_id,                                       # 3
        request_line("b", url="/v1/embeddings"),            # 4
        request_line("a"),                                  # 5 duplicate
        request_line("c", model="gpt-nope"),                # 6
        request_line("d", body={"stream": True}),           # 7
        request_line("e", model=SCRIPTED_SLOW),             # 8
        request_line("f"),                                  # 9 ok
    ])
    r = freight("validate", bad, "--config", config, cwd=tmp_path)
    assert r.returncode == 1, r
    problems = [line for line in r.stdout.splitlines() if line.strip()]
    expected = [(2, "invalid_json_line"), (3, "missing_required_parameter"), (4, "invalid_url"),
                (5, "duplicate_custom_id"), (6, "model_not_found"), (7, "streaming_unsupported"),
                (8, "mismatched_model")]
    assert len(problems) == len(expected), r.stdout
    for text, (line, code) in zip(problems, expected, strict=True):
        assert text.startswith(f"{bad}:line {line}: {code}"), text
    assert "(custom_id)" in problems[1]
    assert "7 problem(s); 2 valid request(s)." in r.stderr


def test_validate_a_good_file(tmp_path: Path, config: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [request_line(f"g{i}") for i in range(3)])
    r = freight("validate", good, "--config", config, cwd=tmp_path)
    assert r.returncode == 0, r
    assert r.stdout.strip() == f"ok: 3 requests for {SCRIPTED} on /v1/chat/completions"


def test_validate_an_empty_file_and_a_missing_one(tmp_path: Path, config: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    r = freight("validate", empty, "--config", config, cwd=tmp_path)
    assert r.returncode == 1 and "empty_file" in r.stdout, r
    r = freight("validate", tmp_path / "nope.jsonl", "--config", config, cwd=tmp_path)
    assert r.returncode == 2, r  # click: the path does not exist, a usage error


# ---- client commands against a server ------------------------------------------------------

def test_submit_wait_downloads_the_results(tmp_path: Path, server: FreightServer) -> None:
    ids = [f"s{i}" for i in range(5)]
    path = write_jsonl(tmp_path / "in.jsonl", [request_line(c) for c in ids])
    out_dir = tmp_path / "results"
    r = freight("submit", path, "--wait", "-o", out_dir, "--url", server.url, "--metadata", "team=cli", cwd=tmp_path)
    assert r.returncode == 0, r
    batch_id = r.stdout.strip().splitlines()[-1]
    assert BATCH_ID.match(batch_id), r.stdout
    assert f"{batch_id} completed: 5 succeeded, 0 failed of 5" in r.stderr
    out = parse_jsonl((out_dir / f"{batch_id}_output.jsonl").read_bytes())
    assert [line["custom_id"] for line in out] == ids
    assert not (out_dir / f"{batch_id}_errors.jsonl").exists()
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{batch_id}_output.jsonl"], "no .part files left"


def test_submit_wait_with_failed_requests_exits_3(tmp_path: Path, server: FreightServer) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [request_line("ok"), request_line("bad", status=400)])
    r = freight("submit", path, "--wait", "-o", tmp_path, "--url", server.base_url, cwd=tmp_path)
    assert r.returncode == 3, r
    batch_id = r.stdout.strip().splitlines()[-1]
    errors = parse_jsonl((tmp_path / f"{batch_id}_errors.jsonl").read_bytes())
    assert [line["custom_id"] for line in errors] == ["bad"]
    assert [line["custom_id"] for line in parse_jsonl((tmp_path / f"{batch_id}_output.jsonl").read_bytes())] == [
        "ok"]


def test_submit_wait_of_an_invalid_file_exits_1_with_line_numbers(tmp_path: Path, server: FreightServer) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [request_line("a"), request_line("b", model="gpt-nope")])
    r = freight("submit", path, "--wait", "-o", tmp_path, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1, r
    assert "failed" in r.stderr and "line 2: model_not_found" in r.stderr, r.stderr


def test_submit_of_a_non_jsonl_file_is_refused(tmp_path: Path, server: FreightServer) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(request_line("a")) + "\nnot json\n")
    r = freight("submit", path, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1, r
    assert "HTTP 400" in r.stderr and "line 2" in r.stderr, r.stderr


def test_status_list_cancel_download(tmp_path: Path, server: FreightServer, client: OpenAI) -> None:
    ids = [f"q{i:02d}" for i in range(64)]
    path = write_jsonl(tmp_path / "slow.jsonl", [request_line(c, model=SCRIPTED_SLOW, sleep_s=0.5) for c in ids])
    r = freight("submit", path, "--url", server.url, "--metadata", "k=v", cwd=tmp_path)
    assert r.returncode == 0, r
    batch_id = r.stdout.strip()
    assert BATCH_ID.match(batch_id), r.stdout

    def some_done() -> bool:
        b = client.batches.retrieve(batch_id)
        assert b.status not in TERMINAL, b.status
        return b.request_counts is not None and b.request_counts.completed > 0

    wait_for(some_done, 30, "the first requests to finish")
    r = freight("cancel", batch_id, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    assert re.search(rf"{batch_id} (cancelling|cancelled): \d+ succeeded, \d+ failed of 64", r.stdout), r.stdout

    r = freight("status", batch_id, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    # What was asked for goes to stdout (so that it pipes), and a pipe gets whole ids, never cut to 80 columns.
    assert batch_id in r.stdout and "/v1/chat/completions" in r.stdout and "cancel" in r.stdout, r.stdout
    r = freight("status", batch_id, "--json", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    shown = json.loads(r.stdout)
    assert shown["id"] == batch_id and shown["metadata"] == {"k": "v"}
    assert shown["status"] in ("cancelling", "cancelled") and shown["request_counts"]["total"] == 64

    r = freight("list", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0 and batch_id in r.stdout and "…" not in r.stdout, r
    assert [line.split()[1] for line in r.stdout.splitlines() if batch_id in line] == [batch_id], r.stdout
    r = freight("list", "--json", "--limit", "1", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    page = json.loads(r.stdout)
    assert [b["id"] for b in page["data"]] == [batch_id]
    assert page["has_more"] is (len(client.batches.list(limit=100).data) > 1)

    batch = wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in TERMINAL and b, 30, "cancelled")
    assert batch.status == "cancelled"
    out_dir = tmp_path / "dl"
    r = freight("download", batch_id, "-o", out_dir, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    printed = [Path(p) for p in r.stdout.split()]
    assert printed == [out_dir / f"{batch_id}_output.jsonl", out_dir / f"{batch_id}_errors.jsonl"]
    out = parse_jsonl(printed[0].read_bytes())
    err = parse_jsonl(printed[1].read_bytes())
    assert out and err
    assert sorted(line["custom_id"] for line in out + err) == ids
    assert {line["error"]["code"] for line in err} == {"batch_cancelled"}
    assert batch.request_counts is not None and batch.request_counts.completed == len(out)

    # Cancelling again is fine (the batch is returned); cancelling a completed batch is an error.
    assert freight("cancel", batch_id, "--url", server.url, cwd=tmp_path).returncode == 0
    done = write_jsonl(tmp_path / "one.jsonl", [request_line("one")])
    r = freight("submit", done, "--wait", "-o", tmp_path, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    r = freight("cancel", r.stdout.strip().splitlines()[-1], "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1 and "HTTP 409" in r.stderr, r


def test_client_errors_exit_1(tmp_path: Path, server: FreightServer) -> None:
    r = freight("status", "batch_" + "0" * 24, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1 and "HTTP 404" in r.stderr, r
    r = freight("download", "batch_" + "0" * 24, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1 and "HTTP 404" in r.stderr, r
    r = freight("list", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert r.returncode == 1 and "cannot reach the server" in r.stderr, r
    assert "Traceback" not in r.stderr


# ---- freight run ---------------------------------------------------------------------------

def test_run_prints_a_summary_and_writes_the_outputs(tmp_path: Path, config: Path) -> None:
    ids = [f"r{i}" for i in range(6)]
    path = write_jsonl(tmp_path / "in.jsonl", [request_line(c) for c in ids])
    out = tmp_path / "out" / "results.jsonl"
    r = freight("run", path, "-o", out, "--data-dir", tmp_path / "data", "--config", config, cwd=tmp_path)
    assert r.returncode == 0, r
    assert r.stdout.strip() == str(out)
    assert re.search(r"completed batch_[0-9a-f]+ in [0-9.]+s: 6 requests, 6 succeeded, 0 failed", r.stderr), r.stderr
    assert [line["custom_id"] for line in parse_jsonl(out.read_bytes())] == ids
    errors = tmp_path / "out" / "results.errors.jsonl"
    assert errors.exists() and errors.read_bytes() == b""


def test_run_that_expires_counts_what_never_ran_apart(tmp_path: Path, config: Path) -> None:
    """The summary's "ran" is what was sent to the model: requests the expiry ended unsent are counted apart
    (they were counted as ran)."""
    lines = [request_line(f"e{i}", model=SCRIPTED_SLOW, sleep_s=1.0) for i in range(24)]  # 8 at a time
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "o.jsonl"
    r = freight("run", path, "-o", out, "--data-dir", tmp_path / "data", "--config", config,
                "--completion-window", "2s", cwd=tmp_path)
    assert r.returncode == 3, r
    errors = parse_jsonl((tmp_path / "o.errors.jsonl").read_bytes())
    unsent = sum(line["error"]["code"] == "batch_expired" for line in errors)
    assert unsent >= 1, "the window let every request start: the test tested nothing"
    shown = " ".join(r.stderr.split())
    assert f"reused: 0 from the result cache, ran: {24 - unsent}, never sent: {unsent} (the batch was expired " \
           "first)" in shown, shown


def test_run_again_after_it_finished_runs_nothing_and_says_so(tmp_path: Path, config: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [request_line(c) for c in ("a", "b")])
    out = tmp_path / "o.jsonl"
    args = ("run", path, "-o", out, "--data-dir", tmp_path / "data", "--config", config)
    first = freight(*args, cwd=tmp_path)
    assert first.returncode == 0 and "ran: 2" in first.stderr, first
    written = out.read_bytes()
    out.unlink()
    again = freight(*args, cwd=tmp_path)
    assert again.returncode == 0, again
    shown = " ".join(again.stderr.split())
    assert "finished in an earlier run of this command (completed): nothing runs now" in shown, shown
    assert "ran:" not in shown and "requests/s" not in shown, shown
    assert re.search(r"completed batch_[0-9a-f]+: 2 requests, 2 succeeded, 0 failed", shown), shown
    assert out.read_bytes() == written


def test_run_with_failed_requests_exits_3(tmp_path: Path, config: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [request_line("a"), request_line("b", status=400), request_line("c")])
    out = tmp_path / "o.jsonl"
    errors = tmp_path / "e.jsonl"
    r = freight("run", path, "-o", out, "--errors", errors, "--data-dir", tmp_path / "data", "--config", config,
                cwd=tmp_path)
    assert r.returncode == 3, r
    assert "3 requests, 2 succeeded, 1 failed" in r.stderr
    assert [line["custom_id"] for line in parse_jsonl(out.read_bytes())] == ["a", "c"]
    assert [line["custom_id"] for line in parse_jsonl(errors.read_bytes())] == ["b"]


def test_run_of_an_invalid_file_exits_1_and_lists_the_lines(tmp_path: Path, config: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [request_line("a"), request_line("a"), request_line("b", model="zz")])
    out = tmp_path / "o.jsonl"
    r = freight("run", path, "-o", out, "--data-dir", tmp_path / "data", "--config", config, cwd=tmp_path)
    assert r.returncode == 1, r
    assert "line 2: duplicate_custom_id" in r.stderr and "line 3: model_not_found" in r.stderr, r.stderr
    assert not out.exists()


def test_run_refuses_an_output_it_cannot_write_before_running_anything(tmp_path: Path, config: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [request_line("a")])
    (tmp_path / "a-file").write_text("")
    for args, option in ((["-o", tmp_path / "a-file" / "o.jsonl"], "-o/--output"),
                         (["-o", tmp_path / "o.jsonl", "--errors", tmp_path / "a-file" / "e.jsonl"], "--errors")):
        r = freight("run", path, *args, "--data-dir", tmp_path / "data", "--config", config, cwd=tmp_path)
        assert r.returncode == 2, r
        assert f"Invalid value for {option}: cannot write {tmp_path / 'a-file'}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "completed batch" not in r.stderr, r.stderr
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.tmp").exists()
    assert not (tmp_path / "data").exists()  # nothing was run (the data dir is made when a batch starts)


def test_run_of_a_file_that_is_not_jsonl_lists_its_lines_and_points_to_validate(tmp_path: Path, config: Path) -> None:
    path = tmp_path / "in.jsonl"
    # line 5: what json.dumps writes for text holding half an emoji (valid JSON; no UTF-8 string can hold it)
    path.write_bytes(jsonl_bytes([request_line("a")]) + b'{"custom_id": broken\n' + jsonl_bytes([request_line("b")])
                     + b"[1]\n" + json.dumps(request_line("c", body={"note": "half \ud83d"})).encode() + b"\n")
    r = freight("run", path, "-o", tmp_path / "o.jsonl", "--data-dir", tmp_path / "data", "--config", config,
                cwd=tmp_path)
    assert r.returncode == 1, r
    shown = " ".join(r.stderr.split())
    said = ("line 2: not valid JSON: unexpected character, expected a JSON value, column 15; line 4: not a JSON "
            "object; line 5: not valid JSON: no low surrogate in string (a \\ud800-\\udfff escape without its pair: "
            "half an emoji")
    assert said in shown, shown
    assert f"`freight validate {path}` lists every problem of the file." in shown, shown


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [request_line("a")])
    assert freight("run", path, cwd=tmp_path).returncode == 2  # -o is required
    assert freight("no-such-command", cwd=tmp_path).returncode == 2
    assert freight("list", "--limit", "0", cwd=tmp_path).returncode == 2
    r = freight("--version", cwd=tmp_path)
    assert r.returncode == 0 and "freight" in r.stdout
