"""N workers, one upstream rpm: the shared limiter (Redis) against each worker keeping to rpm alone.

``python bench/run.py shared-limit`` (or ``python -m bench.bench_shared_limit --workers 4 --rpm 3000
--requests 2000``). Needs Redis at ``--redis-url`` (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import shutil

from bench.common import WORK, Row
from freight.testing.limit_fleet import measure


def run(workers: int = 4, rpm: int = 3000, requests: int = 2000,
        redis_url: str = "redis://127.0.0.1:6379/0") -> list[Row]:
    root = WORK / "shared-limit"
    shutil.rmtree(root, ignore_errors=True)
    shared = measure(root / "shared", workers=workers, rpm=rpm, requests=requests, redis_url=redis_url,
                     upstream_subprocess=True)
    alone = measure(root / "alone", workers=workers, rpm=rpm, requests=requests, redis_url=None,
                    upstream_subprocess=True)
    label = f"shared limit ({workers} workers, {requests} req, rpm {rpm})"
    return [
        Row(label, "429s (over the limit)", str(shared.rate_limited), str(alone.rate_limited), "", "0",
            shared.rate_limited == 0),
        Row(label, "share of the limit used", f"{shared.used:.0%}", f"{alone.used:.0%}", "", ">= 90%",
            0.9 <= shared.used <= 1.1),
        Row(label, "wall span at the upstream", f"{shared.span_s:.1f} s", f"{alone.span_s:.1f} s",
            f"{alone.span_s / shared.span_s:.2f}x" if shared.span_s else "", "", None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    for row in run(args.workers, args.rpm, args.requests):
        print(row)


if __name__ == "__main__":
    main()
