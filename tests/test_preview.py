"""``freight preview``: a few lines of a batch file run now, on the configured backends, as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from servers import SCRIPTED, freight_command, subprocess_env

CONFIG = f"""
[models."{SCRIPTED}"]
backend = "scripted"
price = {{ input_per_mtok = 1000, output_per_mtok = 2000 }}
"""


def line(i: int, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": SCRIPTED, "messages": [{"role": "user", "content": f"question {i}"}], **body}}


def preview(tmp_path: Path, lines: list[Any], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "freight.toml").write_text(CONFIG)
    path = tmp_path / "in.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return subprocess.run([*freight_command(), "preview", str(path), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)


def test_preview_runs_n_lines_and_extrapolates_to_the_file(tmp_path: Path) -> None:
    r = preview(tmp_path, [line(i) for i in range(40)], "-n", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["custom_id"] for x in out["lines"]] == ["r0", "r1", "r2", "r3"]
    first = out["lines"][0]
    assert first["answer"] == "echo: question 0" and first["ok"] and first["check"] == "ok"
    assert first["input"]["messages"][0]["content"] == "question 0" and first["latency_s"] >= 0
    tokens_in = sum(x["input_tokens"] for x in out["lines"])
    tokens_out = sum(x["output_tokens"] for x in out["lines"])
    ext = out["extrapolation"]
    assert ext["requests"] == 40 and ext["input_tokens"] == tokens_in * 10 and ext["output_tokens"] == tokens_out * 10
    assert ext["cost_usd"] == pytest.approx((tokens_in * 1000 + tokens_out * 2000) * 10 / 1e6)
    assert ext["requests_per_s"] > 0 and ext["duration_s"] is not None


def test_preview_shows_a_table_and_fails_when_a_line_fails_its_check(tmp_path: Path) -> None:
    lines = [line(0), line(1, response_format={"type": "json_object"}, script={"reply": "not json"}), line(2)]
    r = preview(tmp_path, lines, "-n", "3")
    assert r.returncode == 1
    assert "question 0" in r.stdout + r.stderr and "whole file (3 requests" in r.stdout + r.stderr
    assert "line 2: failed: output_invalid" in r.stderr


def test_random_picks_are_reproducible_with_a_seed(tmp_path: Path) -> None:
    lines = [line(i) for i in range(30)]
    picks = [[x["custom_id"] for x in json.loads(preview(tmp_path, lines, "-n", "5", "--pick", "random",
                                                         "--seed", "7", "--json").stdout)["lines"]]
             for _ in range(2)]
    assert picks[0] == picks[1] and picks[0] != ["r0", "r1", "r2", "r3", "r4"] and len(set(picks[0])) == 5


def test_a_file_that_would_fail_validation_runs_nothing(tmp_path: Path) -> None:
    r = preview(tmp_path, [line(0), "{not json"], "-n", "2")
    assert r.returncode == 1 and "line 2" in r.stderr and "nothing was run" in r.stderr


def test_a_problem_after_the_previewed_lines_is_reported_beside_them(tmp_path: Path) -> None:
    """With ``--pick first`` the first lines run while the rest is validated: a later problem still fails it."""
    lines = [line(i) for i in range(30)] + ["{not json"] + [line(i) for i in range(31, 40)]
    r = preview(tmp_path, lines, "-n", "3", "--json")
    assert r.returncode == 1 and "line 31" in r.stderr and "the 3 previewed lines" in r.stderr
    assert [x["custom_id"] for x in json.loads(r.stdout)["lines"]] == ["r0", "r1", "r2"]


def test_random_picks_run_nothing_on_a_file_with_a_late_problem(tmp_path: Path) -> None:
    lines = [line(i) for i in range(30)] + ["{not json"]
    r = preview(tmp_path, lines, "-n", "3", "--pick", "random", "--seed", "1")
    assert r.returncode == 1 and "line 31" in r.stderr and "nothing was run" in r.stderr and not r.stdout


def test_a_line_the_model_answers_with_an_error_shows_that_error(tmp_path: Path) -> None:
    r = preview(tmp_path, [line(0), line(1, script={"status": 400})], "-n", "2", "--json")
    assert r.returncode == 1
    failed = json.loads(r.stdout)["lines"][1]
    assert failed["error_code"] == "invalid_request_error" and failed["error_message"] == "scripted failure 400"
    assert failed["check"] == "failed: HTTP 400: invalid_request_error: scripted failure 400"
    assert "line 2: failed: HTTP 400: invalid_request_error: scripted failure 400" in r.stderr
    r = preview(tmp_path, [line(0), line(1, script={"status": 400})], "-n", "2")
    assert r.returncode == 1 and "scripted failure 400" in r.stdout + r.stderr
