"""``freight validate`` and ``freight preview`` report what a real batch would: the endpoint check of a
batch's create (freight/services/batches.py) before any line's, one problem format, usage errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from servers import freight_command, subprocess_env

from freight.cli.preview import endpoint_refusal
from freight.domain.errors import InvalidInput
from freight.services.batches import BATCH_ENDPOINTS, BatchService

MODEL = "all-MiniLM-L6-v2"
CONFIG = f'[models."{MODEL}"]\nbackend = "local-embeddings"\n'
SUPPORTED = ", ".join(f"'{e}'" for e in BATCH_ENDPOINTS)


def emb_line(i: int, url: str = "/v1/embeddings", **body: Any) -> dict[str, Any]:
    return {"custom_id": f"e{i}", "method": "POST", "url": url,
            "body": {"model": MODEL, "input": f"the mobile app crashes, ticket {i}", **body}}


def write(tmp_path: Path, lines: list[dict[str, Any]], name: str = "in.jsonl") -> Path:
    (tmp_path / "freight.toml").write_text(CONFIG)
    path = tmp_path / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def freight(tmp_path: Path, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*freight_command(), *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=timeout)


def flat(text: str) -> str:
    """The text without rich's line wrapping."""
    return " ".join(text.split())


@pytest.mark.parametrize("url", ["/v1/foo", "/v1/embedding"])
def test_an_endpoint_freight_does_not_serve_is_refused_before_the_lines(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, [emb_line(0, url), emb_line(1, url)])
    expected = f"{path}:line 1: invalid_value (url): Invalid value: '{url}'. Supported values are: {SUPPORTED}."
    r = freight(tmp_path, "validate", path)
    assert r.returncode == 1, r
    assert r.stdout.splitlines() == [expected]
    assert "1 problem(s); 0 valid request(s)." in r.stderr
    r = freight(tmp_path, "preview", path, "-n", "2")
    assert r.returncode == 1, r
    assert expected in r.stderr.splitlines() and "model_not_found" not in r.stderr
    assert "nothing was run" in r.stderr and not r.stdout
    # ``freight run`` refuses the same batch with the same message
    r = freight(tmp_path, "run", path, "-o", tmp_path / "out.jsonl", "--data-dir", tmp_path / "data")
    assert r.returncode == 1, r
    assert flat(f"error: Invalid value: '{url}'. Supported values are: {SUPPORTED}.") in flat(r.stdout + r.stderr)


def test_an_endpoint_flag_freight_does_not_serve_is_refused_as_freight_run_refuses_it(tmp_path: Path) -> None:
    path = write(tmp_path, [emb_line(0), emb_line(1)])
    expected = flat(f"error: Invalid value: '/v1/foo'. Supported values are: {SUPPORTED}.")
    runs = {"run": freight(tmp_path, "run", path, "--endpoint", "/v1/foo", "-o", tmp_path / "out.jsonl",
                           "--data-dir", tmp_path / "data"),
            "validate": freight(tmp_path, "validate", path, "--endpoint", "/v1/foo"),
            "preview": freight(tmp_path, "preview", path, "--endpoint", "/v1/foo")}
    for command, r in runs.items():
        assert r.returncode == 1, (command, r)
        assert flat(r.stdout + r.stderr) == expected, command
        assert "invalid_url" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_the_refusal_is_the_one_a_batch_create_answers(tmp_path: Path) -> None:
    path = write(tmp_path, [emb_line(0, "/v1/foo")])
    service = BatchService(cast(Any, None), cast(Any, None))
    with pytest.raises(InvalidInput) as created:
        service.create("p", {"input_file_id": "file-x", "endpoint": "/v1/foo", "completion_window": "24h"})
    refused = endpoint_refusal(path, "/v1/foo", 1 << 20)
    assert refused is not None
    assert (refused.code, refused.message) == (created.value.code, created.value.message)
    with pytest.raises(InvalidInput) as flagged:
        endpoint_refusal(path, "/v1/bar", 1 << 20)
    assert (flagged.value.code, flagged.value.param) == ("invalid_value", "endpoint")
    assert endpoint_refusal(path, "/v1/embeddings", 1 << 20) is None


def test_preview_prints_problems_as_validate_does(tmp_path: Path) -> None:
    bad = emb_line(1)
    bad["body"]["model"] = "no-such-model"
    path = write(tmp_path, [emb_line(0), bad])
    validated = freight(tmp_path, "validate", path)
    previewed = freight(tmp_path, "preview", path, "-n", "1", "--pick", "random")
    assert validated.returncode == previewed.returncode == 1
    (problem,) = validated.stdout.splitlines()
    assert problem.startswith(f"{path}:line 2: model_not_found (body.model): ")
    assert "'no-such-model'" in problem
    assert problem in previewed.stderr.splitlines()


def test_validate_json_needs_estimate(tmp_path: Path) -> None:
    path = write(tmp_path, [emb_line(0)])
    r = freight(tmp_path, "validate", path, "--json")
    assert r.returncode == 2 and not r.stdout, r
    assert "--json needs --estimate" in r.stderr
    r = freight(tmp_path, "validate", path, "--json", "--estimate")
    assert r.returncode == 0, r
    assert json.loads(r.stdout)["requests"] == 1


def test_preview_shows_why_the_model_refused_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, [emb_line(0, dimensions=7), emb_line(1)])
    why = "This model does not support specifying dimensions other than 384 (got 7)."
    r = freight(tmp_path, "preview", path, "-n", "2", "--json")
    assert r.returncode == 1, r
    first = json.loads(r.stdout)["lines"][0]
    assert not first["ok"] and first["error_message"] == why
    assert first["check"] == f"failed: HTTP 400: {first['error_code']}: {why}"
    assert f"line 1: failed: HTTP 400: {first['error_code']}: {why}" in r.stderr


def test_schedule_is_checked_as_creating_the_batch_would_and_needs_estimate(tmp_path: Path) -> None:
    path = write(tmp_path, [emb_line(0)])
    r = freight(tmp_path, "validate", path, "--estimate", "--schedule", "off_peak")
    assert r.returncode == 2, r
    assert "this server has no off-peak hours configured ([scheduling] off_peak)" in flat(r.stderr), r.stderr
    r = freight(tmp_path, "validate", path, "--schedule", "off_peak")
    assert r.returncode == 2 and "--schedule needs --estimate" in r.stderr, r
    (tmp_path / "freight.toml").write_text(CONFIG + '\n[scheduling]\noff_peak = ["00:00-06:00"]\n')
    r = freight(tmp_path, "validate", path, "--estimate", "--schedule", "off_peak", "--json")
    assert r.returncode == 0, r
    assert json.loads(r.stdout.splitlines()[-1])["requests"] == 1
