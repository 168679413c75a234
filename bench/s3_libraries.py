"""obstore vs s3fs: stream a file up and down an S3-compatible server; throughput and peak RSS.

    python bench/s3_libraries.py [--mb 200]

Starts moto's S3 server in its own process on a free loopback port (so its memory is not counted),
then runs each library and direction in a fresh child process, writing and reading 1 MiB pieces
(never the whole file in memory; each written piece a new buffer, since obstore keeps a reference to
what it is given instead of copying it, and one reused buffer would hide what it holds), and prints
MB/s and the child's RSS before the transfer and its peak (VmHWM).
Needs obstore, s3fs and moto[server] (not freight's runtime dependencies except obstore).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

PIECE = 1 << 20


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process (ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _child(lib: str, direction: str, mb: int, endpoint: str) -> None:
    base = _status_mib("VmRSS")
    if lib == "obstore":
        import obstore
        from obstore.store import S3Store

        base = _status_mib("VmRSS")
        store = S3Store("bench", config={"endpoint": endpoint, "region": "us-east-1"},
                        client_options={"allow_http": True})
        started = time.perf_counter()
        if direction == "up":
            with obstore.open_writer(store, "f", buffer_size=8 << 20, max_concurrency=4) as w:
                for _ in range(mb):
                    w.write(os.urandom(PIECE))
        else:
            r = obstore.open_reader(store, "f", buffer_size=4 << 20)
            while r.read(PIECE):
                pass
    else:
        import s3fs

        base = _status_mib("VmRSS")
        fs = s3fs.S3FileSystem(key="test", secret="test", client_kwargs={"endpoint_url": endpoint})
        started = time.perf_counter()
        if direction == "up":
            with fs.open("bench/f", "wb", block_size=8 << 20) as w:
                for _ in range(mb):
                    w.write(os.urandom(PIECE))
        else:
            with fs.open("bench/f", "rb", block_size=4 << 20) as r:
                while r.read(PIECE):
                    pass
    elapsed = time.perf_counter() - started
    peak = _status_mib("VmHWM")
    print(json.dumps({"lib": lib, "dir": direction, "MB": mb, "MB/s": round(mb / elapsed, 1),
                      "rss_before_MiB": round(base, 1), "peak_rss_MiB": round(peak, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.mb, os.environ["BENCH_ENDPOINT"])
        return
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", BENCH_ENDPOINT=endpoint)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket="bench")
        for lib in ("obstore", "s3fs"):
            for direction in ("up", "down"):
                subprocess.run([sys.executable, __file__, "--mb", str(args.mb), "--child", lib, direction],
                               env=env, check=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
