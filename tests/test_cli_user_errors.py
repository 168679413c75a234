"""A user's mistakes on ``freight results`` (``--join``, ``-o``) and ``freight submit --metadata``: each one
a clear message naming what is wrong (and the file and line where a file is), never a traceback or an
exception's class name, and never a silent no-op.

Mistakes in the command line or in a --join file are found before the server is asked anything: most of
these tests point ``--url`` at a port nobody listens on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import FreightServer, config_text, free_port, freight_command, jsonl_bytes, request_line, subprocess_env

from freight.client import Client


def freight(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*freight_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)


def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


def shown(r: subprocess.CompletedProcess[str]) -> str:
    """stderr on one line (rich wraps long messages), checked for what a user must never see."""
    text = " ".join(r.stderr.split())
    assert "Traceback" not in text, text
    for name in ("JSONDecodeError", "ArrowInvalid", "ConnectError", "KeyError", "AttributeError", "ValueError"):
        assert name not in text, text
    return text


def results(tmp_path: Path, *args: str | Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    return freight("results", "batch_" + "0" * 24, *args, "--url", url or nowhere(), cwd=tmp_path)


# ---- freight results --join ------------------------------------------------------------------

@pytest.mark.parametrize("name, text", [
    ("data.csv", "id,title\nr0,first\n"),
    ("data.jsonl", '{"id": "r0", "title": "first"}\n'),
])
def test_a_join_file_without_the_on_column_is_refused_with_its_columns(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    r = results(tmp_path, "--join", name)
    assert r.returncode == 1, r
    msg = shown(r)
    assert f"error: {name} has no column 'custom_id'" in msg and "its columns: 'id', 'title'" in msg, msg
    r = results(tmp_path, "--join", name, "--on", "key")
    assert r.returncode == 1 and f"{name} has no column 'key'" in shown(r), r


def test_a_parquet_join_file_without_the_on_column_and_an_empty_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["r0"], "n": [1]}), tmp_path / "data.parquet")
    r = results(tmp_path, "--join", "data.parquet")
    assert r.returncode == 1 and "data.parquet has no column 'custom_id'" in shown(r) and "'id', 'n'" in shown(r), r
    (tmp_path / "empty.csv").write_text("")
    r = results(tmp_path, "--join", "empty.csv")
    assert r.returncode == 1 and "empty.csv has no column 'custom_id'" in shown(r) and "empty" in shown(r), r


def join_refusal(tmp_path: Path, name: str, text: str) -> str:
    """``results --join NAME`` of a file holding ``text``: refused (exit 1); what it says, on one line."""
    (tmp_path / name).write_text(text)
    r = results(tmp_path, "--join", name)
    assert r.returncode == 1, r
    return shown(r)


def test_a_broken_jsonl_join_file_names_its_file_and_line(tmp_path: Path) -> None:
    said = join_refusal(tmp_path, "join.jsonl", '{"custom_id": "r0"}\nnot json\n')
    assert said.startswith("error: join.jsonl line 2: not valid JSON ("), said
    said = join_refusal(tmp_path, "list.jsonl", '{"custom_id": "r0"}\n\n[1, 2]\n')
    assert "error: list.jsonl line 3: not a JSON object" in said, said


@pytest.mark.parametrize("name, text, expected", [
    ("some.jsonl", '{"custom_id": "r0"}\n{"title": "x"}\n', "error: some.jsonl line 2: no 'custom_id'"),
    ("dup.csv", "custom_id,t\nr0,a\nr1,b\nr0,c\n", "error: dup.csv line 4: custom_id 'r0' again (first on line 2)"),
    ("long.csv", "custom_id,t\nr0,a,extra\n", "error: long.csv line 2: more fields than the header"),
])
def test_join_rows_without_an_id_with_the_same_id_or_with_extra_fields(tmp_path: Path, name: str, text: str,
                                                                        expected: str) -> None:
    said = join_refusal(tmp_path, name, text)
    assert expected in said, said


def test_a_join_file_of_an_unknown_extension_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text('{"custom_id": "r0"}\n')
    r = results(tmp_path, "--join", "data.txt")
    assert r.returncode == 2, r
    msg = shown(r)
    assert "--join" in msg and "data.txt" in msg and "'.txt'" in msg and ".jsonl, .csv, .parquet" in msg, msg


def test_a_corrupt_parquet_join_file(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_text("custom_id,t\nr0,a\n")
    r = results(tmp_path, "--join", "data.parquet")
    assert r.returncode == 1, r
    assert shown(r).startswith("error: cannot read data.parquet as Parquet: "), r.stderr


# ---- freight results -o / --format -----------------------------------------------------------

def test_an_output_of_an_unknown_extension_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    r = results(tmp_path, "-o", "r.xlsx")
    assert r.returncode == 2, r
    msg = shown(r)
    assert "'-o'" in msg and "r.xlsx" in msg and "'.xlsx'" in msg and ".jsonl, .csv, .parquet" in msg, msg
    assert not (tmp_path / "r.xlsx").exists()
    r = results(tmp_path, "-o", "r.csv", "--format", "parquet")  # the extension says another format
    assert r.returncode == 2 and "--format parquet does not match" in shown(r), r
    assert not (tmp_path / "r.csv").exists()
    r = results(tmp_path, "--format", "parquet")
    assert r.returncode == 2 and "--format parquet needs -o FILE" in shown(r), r


def test_an_unknown_extension_with_format_and_no_extension_still_go_to_the_server(tmp_path: Path) -> None:
    for args in (["-o", "r.txt", "--format", "csv"], ["-o", "noext"], []):
        r = results(tmp_path, *args)
        assert r.returncode == 1 and "cannot reach the server" in shown(r), (args, r)


# ---- against a server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text())


def test_join_on_another_column_and_a_join_that_matches_nothing(tmp_path: Path, server: FreightServer) -> None:
    with Client(server.url) as client:
        batch = client.wait(client.submit([request_line("r0"), request_line("r1")])["id"], poll_s=0.1, timeout_s=30)
    (tmp_path / "data.jsonl").write_text('{"id": "r1", "title": "second"}\n')
    r = freight("results", batch["id"], "--join", "data.jsonl", "--on", "id", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x.get("title") for x in rows] == [None, "second"] and rows[1]["id"] == "r1"
    (tmp_path / "other.csv").write_text("custom_id,title\nzz,none\n")
    r = freight("results", batch["id"], "--join", "other.csv", "-o", "out.csv", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    assert "warning: no row of other.csv matched a request" in " ".join(r.stderr.split()), r.stderr
    assert (tmp_path / "out.csv").read_text().startswith("custom_id,")
    for out in ("missing/out.csv", "missing/out.parquet"):
        r = freight("results", batch["id"], "-o", out, "--url", server.url, cwd=tmp_path)
        assert r.returncode == 1 and f"error: cannot write {out}: " in shown(r), r


# ---- freight submit --metadata ---------------------------------------------------------------

@pytest.mark.parametrize("given, said", [
    (["novalue"], "expected KEY=VALUE, got 'novalue'"),
    (["=x"], "expected KEY=VALUE, got '=x'"),
    (["a=1", "a=2"], "key 'a' given twice"),
])
def test_submit_metadata_that_is_not_key_value_is_a_usage_error(tmp_path: Path, given: list[str], said: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes([request_line("a")]))
    args = [x for item in given for x in ("--metadata", item)]
    r = freight("submit", path, *args, "--url", nowhere(), cwd=tmp_path)  # (refused before any upload)
    assert r.returncode == 2, r
    msg = shown(r)
    assert "Invalid value for '--metadata'" in msg and said in msg, msg


def test_submit_metadata_values_and_the_servers_limits(tmp_path: Path, server: FreightServer) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes([request_line("a")]))
    r = freight("submit", path, "--metadata", "empty=", "--metadata", "q=a=b", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    with Client(server.url) as client:
        assert client.retrieve(r.stdout.strip())["metadata"] == {"empty": "", "q": "a=b"}
    many = [x for i in range(17) for x in ("--metadata", f"k{i}=v")]
    r = freight("submit", path, *many, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1 and "HTTP 400" in r.stderr and "at most 16" in r.stderr, r
    r = freight("submit", path, "--metadata", "k=" + "v" * 513, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1 and "HTTP 400" in r.stderr and "at most 512" in r.stderr, r


def test_a_negative_priority_is_a_priority_not_an_option(tmp_path: Path) -> None:
    """`freight priority BATCH -5` said "No such option: -5" (found by an audit); out of range is a usage error."""
    done = subprocess.run([sys.executable, "-m", "freight", "priority", "batch_x", "-5", "--url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert "No such option" not in done.stderr and "cannot reach" in (done.stdout + done.stderr).lower(), done.stderr
    done = subprocess.run([sys.executable, "-m", "freight", "priority", "batch_x", "5000"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "-1000<=x<=1000" in done.stderr, done.stderr


def test_a_data_dir_that_cannot_be_made_is_one_clear_line(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("x")  # a data dir under a file cannot be made
    done = subprocess.run([sys.executable, "-m", "freight", "migrate", "--data-dir", str(blocked / "data")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"--data-dir {blocked / 'data'}: cannot keep freight's data there" in done.stderr
    assert "Error" not in done.stderr.replace("error:", ""), done.stderr


def test_no_key_against_a_server_with_keys_says_a_key_is_needed(make_server: Callable[..., FreightServer],
                                                                  tmp_path: Path) -> None:
    """It said "Incorrect API key provided" though none was given (found by an audit)."""
    keyed = make_server(config_text(), start=False)
    key = keyed.create_key("p")
    keyed.start()
    r = freight("list", "--url", keyed.url, cwd=tmp_path)
    assert r.returncode == 1 and "needs an API key, and none was given" in shown(r), r.stderr
    r = freight("list", "--url", keyed.url, "--api-key", "wrong", cwd=tmp_path)
    assert r.returncode == 1 and "none was given" not in shown(r)
    assert freight("list", "--url", keyed.url, "--api-key", key, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("command", ["preview", "run"])
def test_an_empty_input_file_is_said_to_be_empty(tmp_path: Path, command: str) -> None:
    """Not "Cannot tell the endpoint … pass --endpoint", which sent the user after the wrong thing."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    extra = ["-o", str(tmp_path / "out.jsonl"), "--data-dir", str(tmp_path / "d")] if command == "run" else []
    done = freight(command, empty, *extra, cwd=tmp_path)
    assert done.returncode != 0 and "The input file is empty" in done.stderr, done.stderr
    assert "--endpoint" not in done.stderr and "Traceback" not in done.stderr, done.stderr
