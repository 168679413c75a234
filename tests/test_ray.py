"""Local models on a real two-node Ray cluster on loopback (``placement = "ray"``; docs/ray.md).

One cluster for the module (``ray.cluster_utils.Cluster``: a head and one more node, its own temp dir,
every listener on 127.0.0.1). The models are the bundled ones; each test's freight runtime is built from
a freight.toml, as a user's would be. Actors are detached, so they outlive each test's runtime (that is
what the restart test shows).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Read by Ray when it is imported: every node binds to 127.0.0.1, not the machine's network address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray
from ray.cluster_utils import Cluster
from servers import done_requests, free_port, freight_command, subprocess_env

from freight.backends.ray import RayBackend
from freight.backends.ray.pool import ReplicaPool
from freight.config import load_settings
from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.requests import Result
from freight.runtime import Runtime, build_runtime

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

EMB, CHAT, PINNED, SCALED = "emb-ray", "chat-ray", "emb-pinned", "emb-scaled"
#: A vLLM model placed on the cluster, whose nodes have no vLLM (nor GPU): no replica can load it.
GPU = "vllm-ray"
#: The second node's own resource: the "pinned" model runs only there (so that removing it hits its replica).
NODE2 = "freight_node2"

CONFIG = f"""\
[models."{EMB}"]
backend = "local-embeddings"
placement = "ray"
replicas = {{ min = 1, max = 1 }}
num_cpus = 0.5
chunk_size = 8
threads = 1

[models."{CHAT}"]
backend = "llama-cpp"
placement = "ray"
replicas = {{ min = 1, max = 1 }}
num_cpus = 0.5
n_slots = 4
n_ctx = 1024
n_batch = 256
n_threads = 1
chunk_size = 4

[models."{PINNED}"]
backend = "local-embeddings"
placement = "ray"
replicas = {{ min = 1, max = 1 }}
num_cpus = 0.5
resources = {{ {NODE2} = 1 }}
chunk_size = 8
threads = 1

[models."{SCALED}"]
backend = "local-embeddings"
placement = "ray"
replicas = {{ min = 1, max = 3 }}
num_cpus = 0.25
chunk_size = 4
threads = 1
scale_interval_s = 0.2

[models."{GPU}"]
backend = "vllm"
model = "Qwen/Qwen2.5-0.5B-Instruct"
placement = "ray"
replicas = {{ min = 0, max = 1 }}
num_cpus = 0.25
chunk_size = 4

[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
retry_max_delay_s = 0.2

[cache]
enabled = false
"""

WORDS = ("freight keeps every request durable in its store so a lost node only reruns what it held "
         "while the cluster replaces its actors and the batch goes on").split()


def sentences(i: int, n: int) -> list[str]:
    """``n`` distinct sentences of request ``i`` (long enough that a chunk takes a moment on the model)."""
    return [" ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(24)) + f" {i}-{j}" for j in range(n)]


#: The port of the Ray Client server on the module's cluster's head node.
CLIENT_PORT: dict[str, int] = {}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR",)}
    # A short directory of its own: Ray's sockets live in it, and a Unix socket's path has at most 107
    # bytes (pytest's temp paths, under pytest-xdist especially, are too long).
    temp = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(temp)  # Ray's own files (the current cluster's address) stay in it too
    (temp / "ray").mkdir()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"freight_head": 1}, "temp_dir": str(temp), "include_dashboard": False,
        "object_store_memory": 100 * 1024 * 1024,
        "ray_client_server_port": CLIENT_PORT.setdefault("port", free_port())})
    c.add_node(num_cpus=2, resources={NODE2: 1}, object_store_memory=100 * 1024 * 1024)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="freight", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class World:
    rt: Runtime
    data_dir: Path

    def backend(self, model: str) -> RayBackend:
        for b in self.rt.catalog.backends:
            inner: Any = b
            while not isinstance(inner, RayBackend):
                inner = getattr(inner, "inner", None) or getattr(inner, "backend", None)
                assert inner is not None, f"no RayBackend under {b!r}"
            if inner.model_id == model:
                return inner
        raise AssertionError(model)

    def pool(self, model: str) -> ReplicaPool:
        pool = self.backend(model).pool
        assert pool is not None
        return pool

    def submit(self, model: str, endpoint: str, bodies: list[dict[str, Any]]) -> Batch:
        data = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": endpoint,
                                   "body": {"model": model, **b}}) + "\n" for i, b in enumerate(bodies)).encode()
        file_id, writer = self.rt.files.new_upload()
        writer.write(data)
        f = self.rt.files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch",
                                        expires_after_s=None)
        return self.rt.batches.create("p", {"input_file_id": f.id, "endpoint": endpoint, "completion_window": "24h"})

    def run(self, batch_id: str, during: Callable[[], Awaitable[None]] | None = None,
            timeout_s: float = 120) -> Batch:
        def done() -> bool:
            b = self.rt.store.get_batch("p", batch_id)
            return b is not None and b.status in TERMINAL

        async def main() -> None:
            task = asyncio.create_task(self.rt.engine.run(until=done))
            if during is not None:
                await asyncio.wait_for(during(), timeout_s)
            await asyncio.wait_for(task, timeout_s)
            for b in self.rt.catalog.backends:
                await b.close()

        asyncio.run(main())
        batch = self.rt.store.get_batch("p", batch_id)
        assert batch is not None
        return batch

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        key = self.rt.store.file_blob_key(file_id)
        assert key is not None
        with self.rt.blobs.open(key) as fh:
            return [json.loads(line) for line in fh.read().decode().splitlines()]

    def attempts(self, batch_id: str) -> dict[str, int]:
        return {cid: row[2] for cid, row in done_requests(self.data_dir / "freight.db", batch_id).items()}


def make_world(path: Path) -> World:
    path.mkdir(parents=True, exist_ok=True)
    config = path / "freight.toml"
    config.write_text(CONFIG)
    settings = load_settings(config, data_dir=path / "data", env={})
    return World(build_runtime(settings, lock=False), settings.data_dir)


@pytest.fixture
def world(cluster: Cluster, tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path)
    try:
        yield w
    finally:
        w.rt.close()


def completed_once(w: World, batch: Batch, n: int) -> list[dict[str, Any]]:
    """The output lines, after checking that every request is there exactly once and succeeded."""
    assert batch.status == BatchStatus.COMPLETED, batch
    out = w.lines(batch.output_file_id)
    assert w.lines(batch.error_file_id) == []
    assert sorted(line["custom_id"] for line in out) == sorted(f"r{i}" for i in range(n))
    assert all(line["response"]["status_code"] == 200 for line in out)
    return out


def actor_info(pool: ReplicaPool) -> list[dict[str, Any]]:
    return ray.get([r.handle.info.remote() for r in pool.live.values()])


def test_embeddings_batch_runs_on_ray_actors(world: World) -> None:
    n = 24
    batch = world.run(world.submit(EMB, "/v1/embeddings", [{"input": sentences(i, 2)} for i in range(n)]).id)
    out = completed_once(world, batch, n)
    assert all(len(line["response"]["body"]["data"]) == 2 for line in out)
    (info,) = actor_info(world.pool(EMB))
    assert info["pid"] != os.getpid() and info["chunks"] >= n // 8 and info["loads"] == 1
    assert info["calls"] == 1  # the replica reserves half a CPU: one model call at a time, whatever the cores


def test_chat_batch_runs_on_ray_actors(world: World) -> None:
    n = 6
    bodies = [{"messages": [{"role": "user", "content": f"Say a number: {i}"}], "max_tokens": 4} for i in range(n)]
    batch = world.run(world.submit(CHAT, "/v1/chat/completions", bodies).id)
    out = completed_once(world, batch, n)
    assert all(line["response"]["body"]["choices"][0]["message"]["role"] == "assistant" for line in out)
    (info,) = actor_info(world.pool(CHAT))
    assert info["pid"] != os.getpid() and info["chunks"] >= 2


def test_sigkill_of_an_actor_mid_chunk_loses_nothing(world: World) -> None:
    n = 24
    batch = world.submit(EMB, "/v1/embeddings", [{"input": sentences(i, 12)} for i in range(n)])
    killed: list[int] = []

    async def kill_mid_chunk() -> None:
        pool = None
        while pool is None or not any(r.inflight for r in pool.live.values()):
            await asyncio.sleep(0.01)
            pool = world.backend(EMB).pool
        replica = next(r for r in pool.live.values() if r.inflight)
        pid = (await replica.handle.info.remote())["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    done = world.run(batch.id, during=kill_mid_chunk)
    completed_once(world, done, n)
    pool = world.pool(EMB)
    assert pool.lost == 1
    # The chunk it held ran again (attempt 2); everything else ran once.
    retried = [cid for cid, a in world.attempts(batch.id).items() if a > 1]
    assert 1 <= len(retried) <= pool.spec.chunks_per_replica * 8
    (info,) = actor_info(pool)  # the replacement, in the same slot
    assert info["pid"] != killed[0] and info["loads"] == 1


def test_losing_a_node_reruns_only_what_it_held(world: World, cluster: Cluster) -> None:
    n = 24
    # A second node with the pinned model's resource, so that its replica has somewhere to go.
    cluster.add_node(num_cpus=2, resources={NODE2: 1}, object_store_memory=100 * 1024 * 1024)
    cluster.wait_for_nodes()
    batch = world.submit(PINNED, "/v1/embeddings", [{"input": sentences(i, 12)} for i in range(n)])
    lost_node: list[str] = []

    async def remove_node_mid_chunk() -> None:
        pool = None
        # Let some chunks finish first, then take the node away while one runs on it.
        while pool is None or not any(r.inflight for r in pool.live.values()) or len(world.attempts(batch.id)) < 8:
            await asyncio.sleep(0.01)
            pool = world.backend(PINNED).pool
        replica = next(r for r in pool.live.values() if r.inflight)
        node_id = (await replica.handle.info.remote())["node_id"]
        node = next(node for node in cluster.worker_nodes if node.node_id == node_id)
        await asyncio.to_thread(cluster.remove_node, node)
        lost_node.append(node_id)

    done = world.run(batch.id, during=remove_node_mid_chunk)
    completed_once(world, done, n)
    pool = world.pool(PINNED)
    assert pool.lost >= 1
    attempts = world.attempts(batch.id)
    retried = [cid for cid, a in attempts.items() if a > 1]
    # Only the chunks in flight on the lost node ran again; those finished before ran once.
    assert 1 <= len(retried) <= pool.spec.chunks_per_replica * 8
    assert sum(1 for a in attempts.values() if a == 1) >= 8
    (info,) = actor_info(pool)
    assert info["node_id"] != lost_node[0]


def test_a_restarted_freight_finds_its_models_warm(cluster: Cluster, tmp_path: Path) -> None:
    first = make_world(tmp_path / "a")
    try:
        batch = first.run(first.submit(EMB, "/v1/embeddings", [{"input": "one"}, {"input": "two"}]).id)
        completed_once(first, batch, 2)
        (before,) = actor_info(first.pool(EMB))
    finally:
        first.rt.close()
    # Another freight process (`freight run`), joining the cluster through [ray] address.
    root = tmp_path / "b"
    root.mkdir()
    (root / "freight.toml").write_text(CONFIG + f'\n[ray]\naddress = "{cluster.address}"\n')
    (root / "in.jsonl").write_text("".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": EMB, "input": f"line {i}"}}) + "\n" for i in range(3)))
    done = subprocess.run([*freight_command(), "run", "in.jsonl", "-o", "out.jsonl", "--data-dir", "data",
                           "--config", "freight.toml"], cwd=root, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in out) == ["r0", "r1", "r2"]
    (after,) = ray.get([ray.get_actor(before_name(first), namespace="freight").info.remote()])
    assert after["pid"] == before["pid"]
    assert after["loads"] == before["loads"] == 1  # the model was not loaded again
    assert after["chunks"] > before["chunks"]


def test_freight_drives_the_cluster_through_ray_client(cluster: Cluster, tmp_path: Path) -> None:
    # `[ray] address = "ray://host:port"`: freight as a Ray Client of the head's client server (the driver is not
    # a cluster node); its chunks run on the same named actors.
    port = CLIENT_PORT["port"]
    root = tmp_path / "client"
    root.mkdir()
    (root / "freight.toml").write_text(CONFIG + f'\n[ray]\naddress = "ray://127.0.0.1:{port}"\n')
    n = 20
    (root / "in.jsonl").write_text("".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": EMB, "input": f"client line {i}"}}) + "\n" for i in range(n)))
    chunks_before = sum(i["chunks"] for i in emb_actor_infos())
    done = subprocess.run([*freight_command(), "run", "in.jsonl", "-o", "out.jsonl", "--data-dir", "data",
                           "--config", "freight.toml"], cwd=root, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in out) == sorted(f"r{i}" for i in range(n))
    assert all(line["response"]["status_code"] == 200 for line in out)
    infos = emb_actor_infos()
    assert len(infos) == 1  # the model's one replica (adopted if an earlier test started it)
    assert sum(i["chunks"] for i in infos) >= chunks_before + n // 8  # chunks of 8 ran on the cluster's actor


def emb_actor_infos() -> list[dict[str, Any]]:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "freight" and a["name"].startswith(f"{EMB}:")]
    infos = []
    for name in names:
        try:
            infos.append(ray.get(ray.get_actor(name, namespace="freight").info.remote(), timeout=30))
        except (ray.exceptions.RayActorError, ValueError):
            continue  # a dead one (killed by an earlier test)
    return infos


def before_name(w: World) -> str:
    pool = w.pool(EMB)
    (slot,) = pool.live
    return pool.spec.name(slot)


def test_replicas_grow_with_the_queue_and_shrink_when_it_drains(world: World) -> None:
    # Twelve sentences a request: one replica needs several seconds for the queue, about twice what a new
    # replica takes to load here, so the pool grows while the work is still queued (with two sentences the
    # queue once drained before the second replica was up, in a loaded full-suite run).
    n = 96
    batch = world.submit(SCALED, "/v1/embeddings", [{"input": sentences(i, 12)} for i in range(n)])
    sizes: list[int] = []
    while_queued: list[int] = []  # replicas live while the batch still had requests queued or running

    async def watch() -> None:
        pool = None
        while pool is None:
            await asyncio.sleep(0.02)
            pool = world.backend(SCALED).pool
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            sizes.append(len(pool.live))
            b = world.rt.store.get_batch("p", batch.id)
            if b is not None and b.status not in TERMINAL and b.request_counts.completed < n:
                while_queued.append(len(pool.live))
            if b is not None and b.status in TERMINAL and len(pool.live) == 1 and max(sizes) > 1:
                return
            await asyncio.sleep(0.05)

    done = world.run(batch.id, during=watch)
    completed_once(world, done, n)
    assert 1 < max(while_queued) <= 3, while_queued
    assert max(sizes) <= 3, sizes
    assert sizes[-1] == 1
    assert len(world.pool(SCALED).live) == 1


def test_a_model_no_replica_can_load_fails_its_requests_instead_of_waiting(world: World) -> None:
    # A vLLM model on a cluster whose nodes lack vLLM: the replica's load fails, twice, and the slot gives up;
    # the chunks get MODEL_UNAVAILABLE (retried, then error lines naming the cause), the batch ends.
    from freight.backends.ray import MODEL_UNAVAILABLE
    from freight.backends.vllm import INSTALL_HINT

    n = 6
    started = time.monotonic()
    done = world.run(world.submit(GPU, "/v1/chat/completions",
                                  [{"messages": [{"role": "user", "content": f"hi {i}"}]} for i in range(n)]).id)
    assert done.status == BatchStatus.COMPLETED, done
    assert (done.request_counts.completed, done.request_counts.failed) == (0, n)
    errors = world.lines(done.error_file_id)
    assert sorted(line["custom_id"] for line in errors) == sorted(f"r{i}" for i in range(n))
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == MODEL_UNAVAILABLE
        assert "could load it" in line["error"]["message"] and INSTALL_HINT in line["error"]["message"]
    pool = world.pool(GPU)
    assert not pool.live and pool.load_error is not None
    assert time.monotonic() - started < 60  # one failed load per slot, then every attempt fails at once


def test_scaling_down_lets_other_workers_chunks_finish(world: World) -> None:
    # Two freight workers share a cluster: worker A runs chunks on two replicas; worker B (its own pool over
    # the same actors) scales down to one replica, retiring the higher slot, which is idle as far as B knows.
    # A's chunk there still ends with its results (no replica_lost, so no attempt spent), A's next chunk runs
    # on the other slot, and the retired actor is gone once it has drained.
    backend = world.backend(SCALED)
    bodies = [{"model": SCALED, "input": sentences(i, 12)} for i in range(16)]

    async def main() -> None:
        a = ReplicaPool(backend._spec())  # without the backend's autoscaler, which would shrink it meanwhile
        await a.adopt()
        await a.scale(2)
        await a.wait_ready(2, timeout_s=120)
        # Which two slots depends on what the earlier test left running (its last replica may be in any
        # slot; a new one takes the lowest free slot). B retires the higher one: highest slots go first.
        keep, retired = sorted(a.live)
        retired_name = a.spec.name(retired)
        b = ReplicaPool(a.spec)
        assert await b.adopt() == 2
        chunks = [asyncio.create_task(a.execute("/v1/embeddings", bodies)) for _ in range(2)]
        deadline = time.monotonic() + 30
        while not all(r.inflight for r in a.live.values()):  # one chunk on each replica
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await b.scale(1)
        assert set(b.live) == {keep} and set(b.retiring) == {retired}
        await a.scale(1)  # A's autoscaler agrees (same queue); both its replicas are busy, so it retires none
        assert set(a.live) == {keep, retired} and not a.retiring
        for results in await asyncio.gather(*chunks):
            assert all(isinstance(r, Result) and r.status_code == 200 for r in results), results
        # Two more chunks at once: the one sent to the retired slot (drained, within its grace) is answered
        # "retiring" and runs on the other.
        for results in await asyncio.gather(*(a.execute("/v1/embeddings", bodies[:4]) for _ in range(2))):
            assert all(isinstance(r, Result) and r.status_code == 200 for r in results), results
        assert set(a.live) == {keep} and a.lost == 0 and not a.starting
        await asyncio.wait_for(asyncio.gather(*b.retiring.values()), 60)
        with pytest.raises(ValueError):
            ray.get_actor(retired_name, namespace="freight")

    asyncio.run(main())


def test_options_ray_refuses_give_model_unavailable_not_a_silent_wait(world: World) -> None:
    """Found by an audit: ``resources = { CPU = 1 }`` (config refuses it now; Ray refuses it when it creates the
    actor) raised in the replica's start task, which nobody awaited: the pool waited for ever. Whatever options
    Ray refuses, the pool now records why, and a chunk gets MODEL_UNAVAILABLE at once."""
    import dataclasses

    from freight.backends.ray import MODEL_UNAVAILABLE
    from freight.domain.requests import Failure

    spec = world.backend(SCALED)._spec()
    refused = dataclasses.replace(spec, prefix=spec.prefix + "-refused",
                                  placement=dataclasses.replace(spec.placement, resources=(("CPU", 1.0),)))

    async def main() -> None:
        pool = ReplicaPool(refused)
        results = await asyncio.wait_for(pool.execute("/v1/embeddings", [{"model": SCALED, "input": "x"}]), 60)
        assert all(isinstance(r, Failure) and r.code == MODEL_UNAVAILABLE for r in results), results
        assert pool.load_error is not None and "Ray refused the replica's options" in pool.load_error
        assert not pool.live and not pool.starting

    asyncio.run(main())
