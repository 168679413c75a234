"""kill -9 in the middle of a batch, then start again on the same data dir.

What must hold afterwards: the batch finishes; across the output and error files there is exactly
one line per custom_id; the request counts match the files; and no request that had its final
result stored before the kill is executed again. The last point is checked through the data dir's
SQLite ``requests`` table: the scripted backend gives every execution a fresh ``request_id``, so a
request finished before the kill must keep, in the final file, the request_id it had stored then.
(Requests in flight at the kill may legitimately run twice; they are not checked.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import (
    SCRIPTED_SLOW,
    TERMINAL,
    FreightServer,
    config_text,
    done_requests,
    freight_command,
    jsonl_bytes,
    parse_jsonl,
    request_line,
    request_states,
    subprocess_env,
    wait_for,
)

N = 400
FAILING = {f"k{i:03d}" for i in range(7, N, 50)}  # permanent 400s, so the error file is exercised too


def input_lines(sleep_s: float = 0.03) -> list[dict[str, Any]]:
    return [request_line(f"k{i:03d}", model=SCRIPTED_SLOW, sleep_s=sleep_s,
                         **({"status": 400} if f"k{i:03d}" in FAILING else {}))
            for i in range(N)]


CUSTOM_IDS = [line["custom_id"] for line in input_lines()]


def check_results(out: list[dict[str, Any]], err: list[dict[str, Any]],
                  before_kill: dict[str, tuple[int | None, str | None, int]]) -> None:
    out_ids = [line["custom_id"] for line in out]
    err_ids = [line["custom_id"] for line in err]
    assert len(out_ids) == len(set(out_ids)) and len(err_ids) == len(set(err_ids)), "no duplicate lines"
    assert sorted(out_ids + err_ids) == sorted(CUSTOM_IDS), "exactly one line per custom_id"
    assert set(err_ids) == FAILING
    assert out_ids == [c for c in CUSTOM_IDS if c not in FAILING], "output in input order"
    for line in out:
        assert line["error"] is None and line["response"]["status_code"] == 200
    for line in err:
        assert line["error"] is None and line["response"]["status_code"] == 400

    final = {line["custom_id"]: (line["response"]["status_code"], line["response"]["request_id"])
             for line in out + err}
    rerun = [cid for cid, (status, request_id, _) in before_kill.items() if final[cid] != (status, request_id)]
    assert not rerun, f"{len(rerun)} requests finished before the kill were executed again: {rerun[:5]}"


def test_server_killed_mid_batch_resumes_without_redoing_work(make_server: Callable[..., FreightServer]) -> None:
    server = make_server(config_text())
    client = server.client()
    f = client.files.create(file=("crash.jsonl", jsonl_bytes(input_lines())), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

    def partly_done() -> bool:
        b = client.batches.retrieve(batch.id)
        assert b.status not in TERMINAL, f"finished before the kill: {b.status}"
        return b.request_counts is not None and b.request_counts.completed + b.request_counts.failed >= 30

    wait_for(partly_done, 60, "the batch to be partly done")
    server.kill()
    before_kill = done_requests(server.db_path, batch.id)
    assert 30 <= len(before_kill) < N, f"killed with {len(before_kill)} of {N} done"
    attempts_before = {cid: attempts for cid, (_, _, attempts) in before_kill.items()}

    server.start()
    client = server.client()
    done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in TERMINAL and b, 60,
                    "the batch to finish after the restart")
    assert done.status == "completed", done
    out = parse_jsonl(client.files.content(done.output_file_id).content)
    err = parse_jsonl(client.files.content(done.error_file_id).content)
    check_results(out, err, before_kill)
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (N, len(out), len(err))

    after = done_requests(server.db_path, batch.id)
    assert len(after) == N
    assert {cid: after[cid][2] for cid in attempts_before} == attempts_before, "no new attempts after the kill"
    client.close()


def _run_cmd(input_path: Path, out: Path, data_dir: Path, config: Path) -> list[str]:
    return [*freight_command(), "run", str(input_path), "-o", str(out), "--data-dir", str(data_dir),
            "--config", str(config)]


def test_freight_run_killed_mid_batch_resumes_without_redoing_work(tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    input_path = tmp_path / "in.jsonl"
    input_path.write_bytes(jsonl_bytes(input_lines(sleep_s=0.06)))  # slow enough to outlast the check below
    out = tmp_path / "results" / "out.jsonl"
    errors = tmp_path / "results" / "out.errors.jsonl"
    data_dir = tmp_path / "data"
    db = data_dir / "freight.db"
    cmd = _run_cmd(input_path, out, data_dir, config)
    env = subprocess_env()

    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             cwd=tmp_path, env=env, start_new_session=True)
    try:
        def partly_done() -> bool:
            assert first.poll() is None, f"freight run ended before the kill: {first.communicate()}"
            return request_states(db).get(2, 0) >= 30

        wait_for(partly_done, 60, "freight run to be partly done")

        # A second engine on the same data dir is refused while the first holds it.
        busy = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert busy.returncode == 1, busy
        assert "in use" in busy.stderr, busy.stderr
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    assert not out.exists() and not errors.exists(), "no partial result files are delivered"

    before_kill = done_requests(db)
    assert 30 <= len(before_kill) < N, f"killed with {len(before_kill)} of {N} done"

    started = time.monotonic()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert second.returncode == 3, f"exit 3: finished with failed requests\n{second.stdout}\n{second.stderr}"
    assert "resuming" in second.stderr
    assert second.stdout.strip() == str(out)
    assert time.monotonic() - started < 60

    check_results(parse_jsonl(out.read_bytes()), parse_jsonl(errors.read_bytes()), before_kill)

    # Run a third time: the batch is found finished and the same files are delivered, nothing runs.
    executed = done_requests(db)
    third = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert third.returncode == 3, third
    assert done_requests(db) == executed
    check_results(parse_jsonl(out.read_bytes()), parse_jsonl(errors.read_bytes()), before_kill)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_freight_run_interrupted_exits_130_and_resumes(tmp_path: Path, signum: int) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    input_path = tmp_path / "in.jsonl"
    input_path.write_bytes(jsonl_bytes(input_lines()))
    out = tmp_path / "out.jsonl"
    data_dir = tmp_path / "data"
    cmd = _run_cmd(input_path, out, data_dir, config)
    env = subprocess_env()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=tmp_path, env=env, start_new_session=True)
    try:
        wait_for(lambda: request_states(data_dir / "freight.db").get(2, 0) >= 30, 60, "progress")
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "run the same command again" in stderr.decode()
    assert not out.exists(), "an interrupted run delivers no (empty) result files"
    before = done_requests(data_dir / "freight.db")
    assert len(before) < N
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert again.returncode == 3, again
    check_results(parse_jsonl(out.read_bytes()),
                  parse_jsonl((tmp_path / "out.errors.jsonl").read_bytes()), before)
    summary = re.search(r"reused: (\d+) from the result cache, ran: (\d+)", again.stderr)
    assert summary and int(summary[1]) + int(summary[2]) == N - len(before), "what this run did, not the whole batch"
