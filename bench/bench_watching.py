"""The cost of watching (issue 12): an embeddings batch run by ``freight serve`` with ``/metrics``
scraped every second, versus the same batch with nobody scraping (target: <= 1.05x the time).

One server, a warm-up batch first (the model loads), then unwatched and watched runs alternated,
each timed from create to the terminal status as seen by a poll every 0.2 s (the same in both).
The best of each is compared: on a shared machine the spread between runs is the noise to read
beside the ratio. (The dashboard of issue 12 is not part of this run: it is built elsewhere.)
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

import httpx

from bench.bench_embeddings import make_input
from bench.common import WORK, Row, fmt_s

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _batch(client: object, file_id: str) -> float:
    started = time.perf_counter()
    b = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",  # type: ignore[attr-defined]
                              completion_window="24h")
    while b.status not in TERMINAL:
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)  # type: ignore[attr-defined]
    if b.status != "completed":
        raise RuntimeError(f"batch ended {b.status}")
    return time.perf_counter() - started


def _scraper(url: str, stop: threading.Event, seen: list[float]) -> None:
    with httpx.Client(timeout=30) as http:
        while not stop.wait(1.0):
            started = time.perf_counter()
            r = http.get(url)
            r.raise_for_status()
            seen.append(time.perf_counter() - started)


def run(n: int = 20_000, rounds: int = 2) -> list[Row]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import FreightServer

    WORK.mkdir(parents=True, exist_ok=True)
    input_path = WORK / f"embed{n}.jsonl"
    if not input_path.exists():
        make_input(input_path, n)
    root = WORK / "watching"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "freight.toml"
    config.write_text('[models."all-MiniLM-L6-v2"]\nbackend = "local-embeddings"\nbatch_size = 64\n')
    server = FreightServer(root / "data", config).start()
    try:
        client = server.client()
        warm = WORK / "embed-warm.jsonl"
        make_input(warm, 64)
        _batch(client, client.files.create(file=warm.open("rb"), purpose="batch").id)
        file_id = client.files.create(file=input_path.open("rb"), purpose="batch").id
        plain: list[float] = []
        watched: list[float] = []
        scrapes: list[float] = []
        for _ in range(rounds):
            plain.append(_batch(client, file_id))
            stop = threading.Event()
            t = threading.Thread(target=_scraper, args=(server.url + "/metrics", stop, scrapes), daemon=True)
            t.start()
            try:
                watched.append(_batch(client, file_id))
            finally:
                stop.set()
                t.join()
        client.close()
    finally:
        server.stop()
    ratio = min(watched) / min(plain)
    spread = max(plain) / min(plain)
    scrape_ms = sorted(scrapes)[len(scrapes) // 2] * 1000 if scrapes else 0.0
    return [
        Row(f"watching x{n}", "wall time (best)", fmt_s(min(watched)), fmt_s(min(plain)), f"{ratio:.3f}x",
            "<= 1.05x", ratio <= 1.05),
        Row(f"watching x{n}", "unwatched spread", f"{spread:.3f}x", "", "", ""),
        Row(f"watching x{n}", "scrapes (median ms)", f"{len(scrapes)} ({scrape_ms:.1f})", "", "", ""),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for row in run(args.n, args.rounds):
        print(row)
