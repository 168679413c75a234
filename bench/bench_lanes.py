"""Forwarding overhead: from the provider's batch completing to freight's batch completing.

    python bench/bench_lanes.py                  # 10,000 chat requests, poll interval 0.1 s
    python bench/bench_lanes.py -n 50000 --poll 1

Two ``freight serve`` processes on loopback: the provider (the scripted model, big chunks) and the
forwarder (``backend = "openai-batch"`` pointing at the provider). A batch of ``n`` requests goes
to the forwarder; the script watches the provider's batch and the forwarder's batch and prints the
time between the two completions: one poll interval at most, then downloading the output file,
storing every result (one transaction) and writing freight's own output file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

FREIGHT = [str(Path(sys.executable).parent / "freight")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(root: Path, config: str, port: int) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True)
    (root / "freight.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHT_")}
    proc = subprocess.Popen([*FREIGHT, "serve", "--port", str(port), "--data-dir", str(root / "data"), "--config",
                             str(root / "freight.toml")], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("freight serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--poll", type=float, default=0.1, help="the lane's poll interval (s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        up_port, fw_port = free_port(), free_port()
        up = serve(Path(tmp) / "up", '[models."freight-scripted"]\nbackend = "scripted"\nchunk_size = 500\n'
                   "max_concurrency = 8\n[engine]\npoll_interval_s = 0.05\n", up_port)
        fw = serve(Path(tmp) / "fw", f'[models."fwd"]\nbackend = "openai-batch"\n'
                   f'base_url = "http://127.0.0.1:{up_port}/v1"\nupstream_model = "freight-scripted"\n'
                   f"poll_interval_s = {args.poll}\nmax_poll_interval_s = {args.poll}\n"
                   "[engine]\npoll_interval_s = 0.05\n", fw_port)
        try:
            F = httpx.Client(base_url=f"http://127.0.0.1:{fw_port}/v1", timeout=120)
            U = httpx.Client(base_url=f"http://127.0.0.1:{up_port}/v1", timeout=120)
            lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": {"model": "fwd", "messages": [
                                            {"role": "user", "content": f"question {i} " + "x" * 200}]}}) + "\n"
                            for i in range(args.n)).encode()
            fid = F.post("/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}).json()["id"]
            t0 = time.time()
            bid = F.post("/batches", json={"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                           "completion_window": "24h"}).json()["id"]
            db = sqlite3.connect(f"file:{Path(tmp) / 'fw' / 'data' / 'freight.db'}?mode=ro", uri=True)
            upstream: list[str] = []
            while not upstream:
                upstream = [r[0] for r in db.execute(
                    "SELECT upstream_id FROM lane_subs WHERE batch_id=? AND upstream_id IS NOT NULL", (bid,))]
                time.sleep(0.01)
            t_created = time.time()
            t_up = None
            while True:
                if t_up is None and all(U.get(f"/batches/{u}").json()["status"] == "completed" for u in upstream):
                    t_up = time.time()
                f = F.get(f"/batches/{bid}").json()
                if f["status"] == "completed":
                    t_done = time.time()
                    break
                time.sleep(0.02)
            assert t_up is not None
            print(f"n={args.n} poll={args.poll}s: upstream batches {len(upstream)}, validate+upload+create "
                  f"{t_created - t0:.2f}s, upstream ran {t_up - t_created:.2f}s, overhead (upstream completed -> "
                  f"freight completed) {t_done - t_up:.2f}s; request_counts {f['request_counts']}")
        finally:
            for p in (fw, up):
                p.terminate()
                p.wait(15)


if __name__ == "__main__":
    main()
