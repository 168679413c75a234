"""``placement = "ray"`` without a cluster: the autoscaling policy (properties) and the config's checks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.backends import build_backend
from freight.backends.ray import RayBackend, parse_placement
from freight.backends.ray.replica import fit_to_reserved_cores
from freight.config import load_settings
from freight.domain.errors import ConfigError
from freight.domain.replicas import ReplicaBounds, desired_replicas

bounds_st = st.tuples(st.integers(0, 6), st.integers(1, 8)).filter(lambda t: t[0] <= t[1]).map(
    lambda t: ReplicaBounds(*t))


@given(bounds_st, st.integers(0, 10_000), st.integers(0, 12), st.integers(1, 512))
def test_desired_replicas_stays_within_bounds(bounds: ReplicaBounds, queued: int, current: int,
                                              per_replica: int) -> None:
    assert bounds.min <= desired_replicas(queued, current, bounds, per_replica) <= bounds.max


@given(bounds_st, st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 12), st.integers(1, 512))
def test_more_queue_never_means_fewer_replicas(bounds: ReplicaBounds, a: int, b: int, current: int,
                                               per_replica: int) -> None:
    low, high = sorted((a, b))
    assert desired_replicas(low, current, bounds, per_replica) <= desired_replicas(high, current, bounds, per_replica)


@given(bounds_st, st.integers(0, 12), st.integers(1, 512))
def test_grows_under_a_queue_and_shrinks_to_min_once_drained(bounds: ReplicaBounds, current: int,
                                                              per_replica: int) -> None:
    # A queue that would keep every replica busy asks for all of them, at once.
    assert desired_replicas(per_replica * bounds.max, current, bounds, per_replica) == bounds.max
    # Drained: back to min, whatever ran before.
    assert desired_replicas(0, current, bounds, per_replica) == bounds.min


@given(bounds_st, st.integers(1, 10_000), st.integers(0, 12), st.integers(1, 512))
def test_a_queue_that_is_not_empty_never_shrinks_the_pool(bounds: ReplicaBounds, queued: int, current: int,
                                                           per_replica: int) -> None:
    inside = min(max(current, bounds.min), bounds.max)
    assert desired_replicas(queued, current, bounds, per_replica) >= inside


def test_placement_is_parsed_with_its_defaults() -> None:
    p = parse_placement("m", {"backend": "local-embeddings", "placement": "ray",
                              "replicas": {"min": 1, "max": 4}, "num_cpus": 2, "num_gpus": 0.5,
                              "resources": {"big": 1}})
    assert p is not None
    assert (p.bounds, p.num_cpus, p.num_gpus, p.resources) == (ReplicaBounds(1, 4), 2.0, 0.5, (("big", 1.0),))
    assert parse_placement("m", {"backend": "local-embeddings"}) is None
    one = parse_placement("m", {"backend": "llama-cpp", "placement": "ray", "replicas": 3})
    assert one is not None and one.bounds == ReplicaBounds(3, 3) and one.num_cpus == 1.0


@pytest.mark.parametrize(("table", "message"), [
    ({"backend": "local-embeddings", "placement": "cloud"}, "placement must be one of"),
    ({"backend": "openai", "placement": "ray"}, "is for local models"),
    ({"backend": "vllm", "placement": "ray", "task": "draw"}, "task must be one of"),
    ({"backend": "local-embeddings", "replicas": 2}, "only apply with placement"),
    ({"backend": "local-embeddings", "placement": "ray", "replicas": {"min": 3, "max": 2}}, "min <= max"),
    ({"backend": "local-embeddings", "placement": "ray", "replicas": {"min": 1, "most": 2}}, "replicas must be"),
    ({"backend": "local-embeddings", "placement": "ray", "replicas": {"min": 1.5}}, "must be an integer"),
    ({"backend": "local-embeddings", "placement": "ray", "replicas": {"max": 0}}, "min <= max"),
    ({"backend": "local-embeddings", "placement": "ray", "num_cpus": -1}, "num_cpus must be a number"),
    ({"backend": "local-embeddings", "placement": "ray", "num_gpus": "one"}, "num_gpus must be a number"),
    ({"backend": "local-embeddings", "placement": "ray", "resources": [1]}, "resources must be a table"),
    ({"backend": "local-embeddings", "placement": "ray", "resources": {"CPU": 1}}, r"resources.CPU: .*num_cpus"),
    ({"backend": "llama-cpp", "placement": "ray", "resources": {"GPU": 1}}, r"resources.GPU: .*num_gpus"),
    ({"backend": "local-embeddings", "placement": "ray", "batch_size": 0}, "batch_size must be a positive"),
])
def test_wrong_placement_is_a_config_error(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_backend("m", table)


def test_a_ray_model_is_built_without_touching_ray(tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text('[models."e"]\nbackend = "local-embeddings"\nplacement = "ray"\nchunk_size = 16\n'
                      'replicas = { min = 1, max = 3 }\n[ray]\naddress = "ray://head:10001"\n')
    settings = load_settings(config, data_dir=tmp_path, env={"RAY_ADDRESS": "auto"})
    assert settings.ray_address == "ray://head:10001"
    backend = build_backend("e", settings.models["e"], ray_address=settings.ray_address)
    assert isinstance(backend, RayBackend)
    assert backend.address == "ray://head:10001"
    assert [m.id for m in backend.models()] == ["e"]
    # The engine may keep every replica busy: max replicas x the local backend's chunks in flight.
    assert (backend.chunk_size, backend.max_concurrency) == (16, 3 * backend.local.max_concurrency)
    assert backend.pool is None  # nothing connects before work arrives


def test_a_vllm_model_is_placed_on_ray_without_vllm_in_this_process() -> None:
    # The freight worker that dispatches to GPU actors needs no vLLM (nor a GPU): the replicas load it.
    from freight.backends.vllm import vllm_missing

    assert vllm_missing("g") is not None, "this test is about a process without vLLM"
    with pytest.raises(ConfigError, match="vllm"):
        build_backend("g", {"backend": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct"})  # in process: said at once
    backend = build_backend("g", {"backend": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct", "placement": "ray",
                                  "num_gpus": 1, "replicas": {"min": 1, "max": 2}, "chunk_size": 128})
    assert isinstance(backend, RayBackend)
    assert (backend.kind, backend.placement.num_gpus, backend.chunk_size) == ("vllm", 1.0, 128)
    assert [m.id for m in backend.models()] == ["g"]
    assert backend.options == {"model": "Qwen/Qwen2.5-0.5B-Instruct", "chunk_size": 128}


def test_vllm_tensor_parallelism_needs_as_many_gpus_per_replica() -> None:
    table = {"backend": "vllm", "model": "m", "placement": "ray", "tensor_parallel_size": 2}
    with pytest.raises(ConfigError, match="tensor_parallel_size = 2 needs num_gpus >= 2"):
        parse_placement("g", {**table, "num_gpus": 1})
    placed = parse_placement("g", {**table, "num_gpus": 2})
    assert placed is not None and placed.num_gpus == 2.0


def test_replicas_are_named_by_their_weights(tmp_path: Path) -> None:
    from freight.backends.ray.placement import weights_identity

    # A Hugging Face id names itself; a local directory by its files (never read whole: they can be huge).
    assert weights_identity("vllm", "g", {"model": "org/a"}) != weights_identity("vllm", "g", {"model": "org/b"})
    assert weights_identity("vllm", "org/a", {}) == weights_identity("vllm", "g", {"model": "org/a"})
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    before = weights_identity("vllm", "g", {"model": str(d)})
    assert weights_identity("vllm", "g", {"model": str(d)}) == before
    (d / "model.safetensors").write_bytes(b"x" * 10)
    assert weights_identity("vllm", "g", {"model": str(d)}) != before
    # A single weights file: its content.
    f = tmp_path / "w.gguf"
    f.write_bytes(b"one")
    first = weights_identity("llama-cpp", "c", {"model_path": str(f)})
    f.write_bytes(b"two")
    assert weights_identity("llama-cpp", "c", {"model_path": str(f)}) != first


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("", {"RAY_ADDRESS": "ray://h:10001"}, "ray://h:10001"),
    ("", {}, None),
    ('[ray]\naddress = "local"\n', {"RAY_ADDRESS": "auto"}, "local"),
    ('[ray]\naddress = "10.0.0.1:6379"\n', {}, "10.0.0.1:6379"),
])
def test_ray_address_from_config_else_environment(tmp_path: Path, text: str, env: dict[str, str],
                                                  expected: str | None) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(text)
    assert load_settings(config, data_dir=tmp_path, env=env).ray_address == expected


@pytest.mark.parametrize(("table", "message"), [
    ("replicas = 0", "min <= max"), ("replicas = { min = 2, max = 1 }", "min <= max"),
    ('replicas = "two"', "replicas must be a number or a table"), ("replicas = true", "replicas must be"),
    ("replicas = 1.5", "replicas must be"), ("resources = { CPU = 1 }", "resources.CPU"),
])
def test_a_ray_placement_freight_could_not_run_is_refused_when_the_config_loads(tmp_path: Path, table: str,
                                                                                 message: str) -> None:
    """Found by an audit: ``freight config`` (the check before a deploy) said nothing; only building the
    runtime refused these."""
    config = tmp_path / "freight.toml"
    config.write_text(f'[models."e"]\nbackend = "local-embeddings"\nplacement = "ray"\n{table}\n')
    with pytest.raises(ConfigError, match=message):
        load_settings(config, data_dir=tmp_path, env={})


@pytest.mark.parametrize(("text", "message"), [
    ('[ray]\naddress = "head"\n', r"\[ray\].address must be"),
    ('[ray]\naddress = 3\n', r"ray.address in .* must be a string, got 3"),
    ('[ray]\nnamespace = "x"\n', r"unknown key\(s\) in \[ray\]"),
])
def test_wrong_ray_section_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, data_dir=tmp_path, env={})


def test_a_retiring_replica_is_orphaned_only_after_its_retirers_longest_wait() -> None:
    # Another worker's retired replica is left to that worker (it kills it after the drain), unless it has been
    # retiring longer than that worker could have waited: then whoever finds it kills it.
    from freight.backends.ray.pool import RETIRE_DRAIN_S, RETIRE_GRACE_S, orphaned

    assert not orphaned({"retiring": True, "retiring_for_s": 5.0})
    assert not orphaned({"retiring": True, "retiring_for_s": RETIRE_DRAIN_S + RETIRE_GRACE_S})
    assert orphaned({"retiring": True, "retiring_for_s": RETIRE_DRAIN_S + RETIRE_GRACE_S + 61})
    assert not orphaned({"retiring": False})  # an older replica's info has no such key either


@pytest.mark.parametrize(("cpus", "threads", "calls"), [(None, None, 8), (0.5, None, 1), (1, None, 1), (2, None, 2),
                                                         (3.5, None, 3), (4, 2, 2), (1, 2, 1)])
def test_a_replica_runs_as_many_model_calls_as_its_reserved_cores_hold(
    cpus: float | None, threads: int | None, calls: int
) -> None:
    backend = SimpleNamespace(calls=8, threads=threads)
    fit_to_reserved_cores(backend, cpus)
    assert backend.calls == calls
    other = SimpleNamespace()  # a backend without parallel model calls is left as it is
    fit_to_reserved_cores(other, 2)
    assert not hasattr(other, "calls")


def test_a_cluster_address_where_nothing_answers_is_a_config_error_at_once(tmp_path: Path) -> None:
    """Found by an audit: ``ray.init`` kept trying such an address for many minutes, on a thread Ctrl-C
    could not stop, so ``freight run`` hung. A probe of the address Ray would use says so in seconds."""
    import socket
    import time

    from freight.backends.ray.backend import bootstrap_address

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert bootstrap_address("ray://head:10001") == ("head", 10001)
    backend = build_backend("e", {"backend": "local-embeddings", "placement": "ray"}, ray_address=f"127.0.0.1:{port}")
    assert isinstance(backend, RayBackend)
    began = time.monotonic()
    with pytest.raises(ConfigError, match=rf"nothing answers at .*:{port}"):
        backend._connect()
    assert time.monotonic() - began < 30


def test_a_replica_that_is_not_placed_is_reported_not_waited_for_silently(caplog: pytest.LogCaptureFixture) -> None:
    """A replica Ray cannot place waits in Ray without a word; the pool says so once (found by an audit)."""
    import asyncio

    from freight.backends.ray.placement import RayPlacement
    from freight.backends.ray.pool import ReplicaPool, ReplicaSpec

    placement = RayPlacement(num_cpus=2.0, resources=(("big_memory", 1.0),))
    pool = ReplicaPool(ReplicaSpec("local-embeddings", "emb", {}, "emb:x:y", placement, 1))
    with caplog.at_level("WARNING"), pytest.raises(TimeoutError):
        asyncio.run(pool.wait_ready(1, timeout_s=0.3, warn_after_s=0.1))
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "replica_unplaced"]
    assert "num_cpus=2.0" in record.getMessage() and "'big_memory': 1.0" in record.getMessage()
