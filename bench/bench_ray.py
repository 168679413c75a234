"""Local models on Ray (issue 15): what a Ray actor costs per chunk, and what a second replica buys.

    python bench/bench_ray.py                  # 16 chunks of 256 requests per side, alternated
    python bench/bench_ray.py --chunks 8

A one-machine Ray (``address = "local"``, on 127.0.0.1, its own temp dir) and the bundled embedding model.

- **Per-chunk overhead**: the same chunks (256 requests of one short sentence each; the model's default chunk
  is 1,024) run by the in-process backend (``LocalEmbeddingBackend.execute``) and by ``RayBackend`` on one
  replica with the same options (2 intra-op threads; ``num_cpus = 2``, so Ray's ``OMP_NUM_THREADS`` is 2 as in
  process), alternated one chunk each, one chunk at a time. Figure:
  the median chunk time on Ray over the median in process, minus one. Target: <= 5%. Beside it, the part of a
  Ray chunk's time spent outside the actor's model call (sending the chunk, returning the results: Ray's own
  cost), over the in-process chunk time; on a busy machine it is the steadier figure.
- **Throughput with 1 and 2 replicas**: the same chunks through ``RayBackend`` with ``replicas = 1`` and
  ``replicas = 2`` (each replica 1 thread and ``num_cpus = 1``), as many chunks in flight as the engine would
  allow; requests/s. Reported: on a 2-core machine the second replica can add at most the second core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row
from freight.backends import build_backend
from freight.backends.ray import RayBackend

CHUNK = 256
WORDS = "the quick brown fox jumps over the lazy dog while a batch of requests waits in the store".split()


def chunk_bodies(c: int) -> list[dict[str, Any]]:
    return [{"model": "emb", "input": " ".join(WORDS[(c + i + k) % len(WORDS)] for k in range(12)) + f" {c}.{i}"}
            for i in range(CHUNK)]


def ray_backend(replicas: int, threads: int) -> RayBackend:
    backend = build_backend("emb", {"backend": "local-embeddings", "placement": "ray", "threads": threads,
                                    "chunk_size": CHUNK, "replicas": replicas, "num_cpus": threads},
                            ray_address="local")
    assert isinstance(backend, RayBackend)
    return backend


async def overhead(chunks: int) -> tuple[float, float, float]:
    local = build_backend("emb", {"backend": "local-embeddings", "threads": 2, "chunk_size": CHUNK})
    remote = ray_backend(1, 2)
    await local.start()
    await remote.start()
    for c in range(2):  # warm both sides
        await local.execute("/v1/embeddings", chunk_bodies(c))
        await remote.execute("/v1/embeddings", chunk_bodies(c))
    assert remote.pool is not None
    (replica,) = remote.pool.live.values()
    t_local: list[float] = []
    t_ray: list[float] = []
    t_transport: list[float] = []  # a Ray chunk's time outside the actor's own execute
    for c in range(chunks):
        bodies = chunk_bodies(100 + c)
        for side in (local, remote) if c % 2 == 0 else (remote, local):
            busy = (await replica.handle.info.remote())["busy_s"]
            started = time.perf_counter()
            results = await side.execute("/v1/embeddings", bodies)
            elapsed = time.perf_counter() - started
            assert all(getattr(r, "status_code", None) == 200 for r in results)
            if side is local:
                t_local.append(elapsed)
            else:
                t_ray.append(elapsed)
                t_transport.append(elapsed - ((await replica.handle.info.remote())["busy_s"] - busy))
    await remote.shutdown()
    await local.close()
    return statistics.median(t_local), statistics.median(t_ray), statistics.median(t_transport)


async def throughput(replicas: int, chunks: int) -> float:
    backend = ray_backend(replicas, 1)
    await backend.start()
    assert backend.pool is not None
    await backend.pool.wait_ready(replicas, timeout_s=120)
    await asyncio.gather(*(backend.execute("/v1/embeddings", chunk_bodies(c)) for c in range(replicas * 2)))
    started = time.perf_counter()
    await asyncio.gather(*(backend.execute("/v1/embeddings", chunk_bodies(200 + c)) for c in range(chunks)))
    elapsed = time.perf_counter() - started
    await backend.shutdown()
    return chunks * CHUNK / elapsed


def main(chunks: int = 16) -> dict[str, float]:
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory(prefix="ray-") as tmp:
        ray.init(address="local", namespace="freight", _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
        try:
            local_s, ray_s, transport_s = asyncio.run(overhead(chunks))
            one = asyncio.run(throughput(1, chunks))
            two = asyncio.run(throughput(2, chunks))
        finally:
            ray.shutdown()
    figures = {"chunks": chunks, "chunk_requests": CHUNK, "local_chunk_s": round(local_s, 4),
               "ray_chunk_s": round(ray_s, 4), "overhead": round(ray_s / local_s - 1, 4),
               "ray_transport_s": round(transport_s, 4), "transport_overhead": round(transport_s / local_s, 4),
               "one_replica_rps": round(one, 1), "two_replicas_rps": round(two, 1),
               "scaling": round(two / one, 3), "cpus": os.cpu_count() or 0}
    print(json.dumps(figures))
    return figures


def run(chunks: int = 16) -> list[Row]:
    """The ``ray`` rows of ``make bench``."""
    f = main(chunks)
    return [
        Row("ray", f"embeddings: median time of a {CHUNK}-request chunk on a Ray actor",
            f"{f['ray_chunk_s'] * 1000:.0f} ms", f"in process {f['local_chunk_s'] * 1000:.0f} ms",
            f"{1 + f['overhead']:.3f}", "<= 1.05", f["overhead"] <= 0.05),
        Row("ray", "embeddings: a chunk's time outside the actor's model call (Ray's own cost)",
            f"{f['ray_transport_s'] * 1000:.1f} ms", f"in-process chunk {f['local_chunk_s'] * 1000:.0f} ms",
            f"{f['transport_overhead']:.3f}", "<= 0.05", f["transport_overhead"] <= 0.05),
        Row("ray", f"embeddings: requests/s, 2 replicas vs 1 ({f['cpus']:.0f} CPUs)",
            f"{f['two_replicas_rps']:.0f}/s", f"1 replica {f['one_replica_rps']:.0f}/s", f"{f['scaling']:.2f}",
            "report", None),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=16)
    main(parser.parse_args().chunks)
