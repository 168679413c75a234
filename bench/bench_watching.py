"""The cost of watching (issue 12): an embeddings batch run by ``freight serve`` with the dashboard
open on it (its page loaded, then its live endpoint polled at the page's own rate) and ``/metrics``
scraped every second, versus the same batch with neither (target: <= 1.05x the time).

One server, a warm-up batch first (the model loads), then unwatched and watched runs alternated,
each timed from create to the terminal status as seen by a poll every 0.2 s (the same in both).
The best of each is compared: on a shared machine the spread between runs is the noise to read
beside the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.bench_embeddings import make_input
from bench.common import WORK, Row, fmt_s
from freight.api.dashboard.views import POLL_S

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _batch(client: object, file_id: str, on_create: Callable[[str], None] | None = None) -> float:
    started = time.perf_counter()
    # cache: false, so that every run computes its embeddings (docs/cache.md)
    b = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",  # type: ignore[attr-defined]
                              completion_window="24h", extra_body={"cache": False})
    if on_create is not None:
        on_create(b.id)
    while b.status not in TERMINAL:
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)  # type: ignore[attr-defined]
    if b.status != "completed":
        raise RuntimeError(f"batch ended {b.status}")
    return time.perf_counter() - started


def _scraper(url: str, stop: threading.Event, seen: list[float], every_s: float = 1.0,
             first: str | None = None) -> None:
    """GET ``url`` every ``every_s`` until stopped (``first``: a page loaded once before)."""
    with httpx.Client(timeout=30) as http:
        if first is not None:
            http.get(first).raise_for_status()
        while not stop.wait(every_s):
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
        polls: list[float] = []
        for _ in range(rounds):
            plain.append(_batch(client, file_id))
            stop = threading.Event()
            threads = [threading.Thread(target=_scraper, args=(server.url + "/metrics", stop, scrapes), daemon=True)]

            def open_dashboard(batch_id: str, threads: list[threading.Thread] = threads,
                               stop: threading.Event = stop) -> None:
                page = f"{server.url}/dashboard/batches/{batch_id}"
                live = f"{server.url}/dashboard/api/batches/{batch_id}"
                threads.append(threading.Thread(target=_scraper, args=(live, stop, polls, POLL_S, page), daemon=True))
                for t in threads:
                    t.start()

            try:
                watched.append(_batch(client, file_id, open_dashboard))
            finally:
                stop.set()
                for t in threads:
                    t.join()
        client.close()
    finally:
        server.stop()
    ratio = min(watched) / min(plain)
    spread = max(plain) / min(plain)
    scrape_ms = sorted(scrapes)[len(scrapes) // 2] * 1000 if scrapes else 0.0
    poll_ms = sorted(polls)[len(polls) // 2] * 1000 if polls else 0.0
    return [
        Row(f"watching x{n}", "wall time (best)", fmt_s(min(watched)), fmt_s(min(plain)), f"{ratio:.3f}x",
            "<= 1.05x", ratio <= 1.05),
        Row(f"watching x{n}", "unwatched spread", f"{spread:.3f}x", "", "", ""),
        Row(f"watching x{n}", "scrapes (median ms)", f"{len(scrapes)} ({scrape_ms:.1f})", "", "", ""),
        Row(f"watching x{n}", "dashboard polls (median ms)", f"{len(polls)} ({poll_ms:.1f})", "", "", ""),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for row in run(args.n, args.rounds):
        print(row)
