"""The BlobStore contract on the filesystem and on S3 (moto's S3 server on loopback, real HTTP),
and the OpenAI SDK lifecycle against ``freight serve --blobs s3://…``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from servers import (
    SCRIPTED,
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

from freight.domain.errors import ConfigError, StoreError
from freight.ports import BlobStore
from freight.store.blobs import LocalBlobStore
from freight.store.blobs_s3 import PART_BYTES, S3BlobStore

BUCKET = "freight-blobs"


def _moto() -> tuple[ThreadedMotoServer, dict[str, str]]:
    """A moto S3 server started on a free loopback port, with the bucket; the environment that points freight at it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "FREIGHT_BLOBS_ALLOW_HTTP": "1"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
    return server, env


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on a free loopback port; the environment that points freight at it."""
    server, env = _moto()
    try:
        yield env
    finally:
        server.stop()


def _objects(env: dict[str, str], prefix: str) -> dict[str, int]:
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    found = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["Size"] for o in found}


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    env: dict[str, str] = request.getfixturevalue("s3")
    return S3BlobStore(f"s3://{BUCKET}/{tmp_path.name}", env=env)


def _write(blobs: BlobStore, key: str, pieces: list[bytes]) -> int:
    w = blobs.writer(key)
    for piece in pieces:
        w.write(piece)
    return w.commit()


def test_write_commit_read_back(blobs: BlobStore) -> None:
    assert not blobs.exists("file-a") and blobs.keys() == []
    assert _write(blobs, "file-a", [b"hello ", b"world\n"]) == 12
    assert blobs.exists("file-a") and blobs.size("file-a") == 12
    with blobs.open("file-a") as fh:
        assert fh.read(6) == b"hello "
        assert fh.read() == b"world\n"
        assert fh.read() == b""
    assert blobs.keys() == ["file-a"]
    # the orphan sweep's filter: only blobs last written before a time
    assert blobs.keys(older_than=time.time() + 60) == ["file-a"] and blobs.keys(older_than=time.time() - 3600) == []


def test_a_blob_larger_than_a_part_streams_both_ways(blobs: BlobStore) -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB
    n = PART_BYTES // len(piece) * 2 + 3  # a multipart upload of three parts on S3
    assert _write(blobs, "big", [piece] * n) == n * len(piece)
    assert blobs.size("big") == n * len(piece)
    read = 0
    with blobs.open("big") as fh:
        for line_piece in iter(lambda: fh.read(777_777), b""):
            assert line_piece == (piece * 2)[read % len(piece):read % len(piece) + len(line_piece)]
            read += len(line_piece)
    assert read == n * len(piece)
    with blobs.open("big") as fh:
        first = fh.readline()  # IO[bytes] for the JSONL readers
        assert first == piece[:piece.index(b"\n") + 1]


def test_uncommitted_and_aborted_writes_leave_nothing(blobs: BlobStore) -> None:
    w = blobs.writer("half")
    w.write(b"x" * (PART_BYTES + 1))
    assert w.size == PART_BYTES + 1
    assert not blobs.exists("half"), "a reader never sees half a file"
    w.abort()
    assert not blobs.exists("half") and blobs.keys() == []


def test_delete_is_idempotent_and_missing_blobs_are_clear_errors(blobs: BlobStore) -> None:
    _write(blobs, "gone", [b"1"])
    blobs.delete("gone")
    blobs.delete("gone")
    assert not blobs.exists("gone")
    with pytest.raises(StoreError, match="cannot open blob gone"):
        blobs.open("gone")
    with pytest.raises(FileNotFoundError):
        blobs.size("gone")


def test_keys_are_checked_before_they_become_a_location(blobs: BlobStore) -> None:
    for bad in ("../escape", "a/b", "", "x" * 129):
        with pytest.raises(StoreError, match="invalid blob key"):
            blobs.writer(bad)


def test_overwriting_a_key_replaces_it_whole(blobs: BlobStore) -> None:
    _write(blobs, "k", [b"first version"])
    _write(blobs, "k", [b"second"])
    with blobs.open("k") as fh:
        assert fh.read() == b"second"


def test_plain_http_is_refused_unless_asked_for(s3: dict[str, str]) -> None:
    env = {k: v for k, v in s3.items() if k != "FREIGHT_BLOBS_ALLOW_HTTP"}
    with pytest.raises(ConfigError, match="FREIGHT_BLOBS_ALLOW_HTTP=1"):
        S3BlobStore(f"s3://{BUCKET}/x", env=env)
    s3_only = {**{k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL"},
               "AWS_ENDPOINT_URL_S3": env["AWS_ENDPOINT_URL"]}
    with pytest.raises(ConfigError, match=r"^AWS_ENDPOINT_URL_S3 "):  # the variable it came from
        S3BlobStore(f"s3://{BUCKET}/x", env=s3_only)
    S3BlobStore(f"s3://{BUCKET}/x", env={**env, "FREIGHT_BLOBS_ALLOW_HTTP": "1"}).check()


def test_bad_locations_are_config_errors(s3: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="expected s3://BUCKET"):
        S3BlobStore("s3:///prefix", env=s3)
    with pytest.raises(ConfigError, match="cannot be reached or listed"):
        S3BlobStore("s3://no-such-bucket-here/p", env=s3).check()


class _S3Server(FreightServer):
    def __init__(self, *args: Any, blobs: str, env: dict[str, str], **kw: Any):
        super().__init__(*args, **kw)
        self.blobs, self.env = blobs, env

    def spawn(self) -> None:
        cmd = [*freight_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--config", str(self.config), "--blobs", self.blobs]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.config.parent, env={**subprocess_env(), **self.env},
                                         start_new_session=True)


def test_sdk_lifecycle_with_files_in_s3(s3: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    server = _S3Server(tmp_path / "data", config, blobs=f"s3://{BUCKET}/lifecycle", env=s3).start()
    try:
        client = server.client()
        lines = [request_line(f"r-{i}") for i in range(25)]
        f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
        assert client.files.content(f.id).content == jsonl_bytes(lines)
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b,
                        30, "the batch to finish")
        assert done.status == "completed" and done.model == SCRIPTED
        assert done.request_counts is not None and done.request_counts.completed == 25
        assert done.output_file_id is not None
        out = parse_jsonl(client.files.content(done.output_file_id).content)
        assert [line["custom_id"] for line in out] == [f"r-{i}" for i in range(25)]
        stored = _objects(s3, "lifecycle/")
        assert len(stored) == 2, stored  # the input and the output, in the bucket
        assert not any((tmp_path / "data" / "blobs").glob("*")), "no file bytes in the data dir"
    finally:
        server.stop()
    assert os.path.exists(tmp_path / "data" / "freight.db")


def test_serve_refuses_plain_http_without_the_opt_in(s3: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    env = {**subprocess_env(), **{k: v for k, v in s3.items() if k != "FREIGHT_BLOBS_ALLOW_HTTP"}}
    done = subprocess.run([*freight_command(), "serve", "--port", str(free_port()), "--data-dir",
                           str(tmp_path / "data"), "--config", str(config), "--blobs", f"s3://{BUCKET}/x"],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 1
    assert "FREIGHT_BLOBS_ALLOW_HTTP=1" in done.stdout + done.stderr


_MEMORY_CHILD = """
import os, sys
from freight.store.blobs_s3 import S3BlobStore

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

store = S3BlobStore(sys.argv[1])
store.check()
n = int(sys.argv[2])
base = status("VmRSS")
w = store.writer("big")
for _ in range(n):
    w.write(os.urandom(1 << 20))  # a new buffer each time (the same one could be shared, not copied)
w.commit()
with store.open("big") as fh:
    total = sum(len(chunk) for chunk in iter(lambda: fh.read(1 << 20), b""))
assert total == n << 20, total
print(status("VmHWM") - base)
"""


def test_a_large_blob_never_sits_whole_in_memory(s3: dict[str, str], tmp_path: Path) -> None:
    """96 MiB up and down in a child process (its own peak RSS): the writer holds its parts in flight,
    the reader its ranges, never the file."""
    mib = 96
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, f"s3://{BUCKET}/memory", str(mib)],
                          capture_output=True, text=True, env={**subprocess_env(), **s3}, timeout=300)
    assert done.returncode == 0, done.stderr
    grew = float(done.stdout.strip().splitlines()[-1])
    assert grew < mib / 2, f"peak RSS grew by {grew:.0f} MiB moving a {mib} MiB blob"


def test_a_file_store_that_stops_answering_is_a_503_that_says_so(tmp_path: Path) -> None:
    """Found by an audit: with the S3 endpoint gone, an upload was a bare 500 and the log an 'unhandled error'
    traceback (obstore's writer raises OSError, which was not caught). Now a 503 saying nothing was kept."""
    import openai

    moto, env = _moto()  # its own: this test stops it
    endpoint = env["AWS_ENDPOINT_URL"]
    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    server = _S3Server(tmp_path / "data", config, blobs=f"s3://{BUCKET}/gone", env=env).start()
    try:
        client = server.client().with_options(max_retries=0, timeout=120)
        kept = client.files.create(file=("in.jsonl", jsonl_bytes([request_line("a")])), purpose="batch")
        moto.stop()
        with pytest.raises(openai.APIStatusError) as info:
            client.files.create(file=("in.jsonl", jsonl_bytes([request_line("b")])), purpose="batch")
        assert info.value.status_code == 503, info.value
        assert "file store did not answer" in str(info.value.body) and endpoint not in str(info.value.body)
        with pytest.raises(openai.APIStatusError) as read:
            client.files.content(kept.id)
        assert read.value.status_code == 503
        log = server.log_tail(1 << 20)
        assert "blob_store_failed" in log or "S3 file store failed" in log, log
        assert "unhandled error" not in log, log
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            moto.stop()
