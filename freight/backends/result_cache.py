"""The result cache (issue 13): a wrapper around any backend that answers a request seen before.

``build_backends`` wraps each model's backend in a ``CachedBackend`` when the runtime gives it a
``CacheSetup`` (and the model's table does not say ``cache = false``). For each request of an
``execute`` call that the policy allows (freight/domain/cache_key.py ``cacheable``: deterministic
ones) and whose batch did not say ``cache: false`` (marked at ingest under ``NO_CACHE_KEY``, taken
off here), the key is the canonical hash of the endpoint, the body and the model's identity, and with
``scope = "project"`` the project the request is answered for (``answering_for``, set by the engine for
each chunk and by the real-time routes; a call outside any project, such as ``freight preview``, has
entries of its own):

- a hit is answered with the stored body and a fresh request id, and is marked ``cached`` (its
  tokens count as saved, not spent; ``freight.cached`` and ``freight.savings_usd`` on the Batch);
- duplicates within the call run once; the others are answered from that one run (``cached``);
- a miss runs on the wrapped backend, and a 2xx answer is stored with ``expires_at = now + ttl``.

The cache is outermost: the output check (freight/backends/output_check.py) has passed every answer
it stores, and the batch's ``output_schema`` is part of the key. Eviction (expired entries, then
the oldest beyond ``max_bytes``) runs after a store at most once per ``evict_every_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from freight.domain import ids
from freight.domain.cache_key import NO_CACHE_KEY, cache_key, cacheable, canonical
from freight.domain.clock import Clock
from freight.domain.requests import Failure, Outcome, Result
from freight.ports import Backend, CachedAnswer, ModelInfo, ResultCache, answering_for

#: Options of a model's table that do not change its answers (left out of its identity).
_OPERATIONAL = frozenset({
    "max_concurrency", "chunk_size", "timeout_s", "rpm", "tpm", "env", "api_key_env", "n_threads", "n_slots",
    "price", "machine_cost_per_hour", "cache", "endpoints", "cache_dir", "threads",
})
#: Options naming a model file, whose content (not its name) is the model's identity.
_FILE_OPTIONS = ("model_path", "path")

_file_hashes: dict[tuple[str, int, int], str] = {}


def file_hash(path: str) -> str:
    """The SHA-256 of a model file, computed once per path, size and modification time."""
    st = os.stat(path)
    memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    found = _file_hashes.get(memo)
    if found is None:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        found = _file_hashes[memo] = digest.hexdigest()
    return found


def model_identity(name: str, table: dict[str, Any]) -> str:
    """What the cache key says about the model: a remote one's base URL and model name; a local
    one's file content hash (and the options that shape its answers)."""
    kind = table.get("backend")
    if kind == "openai":
        return canonical({"kind": kind, "base_url": str(table.get("base_url", "")).rstrip("/"),
                          "model": table.get("upstream_model") or name})
    options: dict[str, Any] = {}
    for k, v in table.items():
        if k in _OPERATIONAL:
            continue
        if k in _FILE_OPTIONS and isinstance(v, str) and os.path.isfile(v):
            options[k] = {"sha256": file_hash(v)}
        elif isinstance(v, str | int | float | bool | list | dict) or v is None:
            options[k] = v
        else:
            options[k] = repr(v)
    return canonical({"name": name, "options": options})


@dataclass
class CacheSetup:
    """What the composition root gives ``build_backends`` to wrap models in the cache."""

    store: ResultCache
    clock: Clock
    ttl_s: float
    max_bytes: int | None = None
    evict_every_s: float = 60.0
    #: ``[cache] scope``: "project" (the key holds the project the request carries) or "global".
    scope: str = "project"


class CachedBackend:
    """A ``Backend`` that answers from the result cache what it can and stores what it runs."""

    def __init__(self, inner: Backend, setup: CacheSetup, identity: Callable[[], str]):
        self.inner = inner
        self.setup = setup
        #: The model's identity, computed on first use (a local model's file is hashed once).
        self._identity = identity
        self.identity: str | None = None
        self.chunk_size = inner.chunk_size
        self.max_concurrency = inner.max_concurrency
        self._last_evicted: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def models(self) -> Sequence[ModelInfo]:
        return self.inner.models()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def _project(self) -> str | None:
        """The project the entries belong to: the one being answered for, unless the scope is global."""
        return answering_for.get() if self.setup.scope == "project" else None

    def _key(self, endpoint: str, body: dict[str, Any], identity: str) -> str | None:
        if body.get(NO_CACHE_KEY) or not cacheable(endpoint, body):
            return None
        try:
            return cache_key(endpoint, body, identity, self._project())
        except (TypeError, ValueError):
            return None

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        if self.identity is None:
            self.identity = await asyncio.to_thread(self._identity)
        keys = [self._key(endpoint, b, self.identity) for b in bodies]
        clean = [{k: v for k, v in b.items() if k != NO_CACHE_KEY} if NO_CACHE_KEY in b else b for b in bodies]
        wanted = sorted({k for k in keys if k is not None})
        now = self.setup.clock.now()
        found = await asyncio.to_thread(self.setup.store.get_cached, wanted, now) if wanted else {}
        out: list[Result | Failure | None] = [None] * len(bodies)
        run: list[int] = []  # indices sent to the wrapped backend
        first: dict[str, int] = {}  # key -> the index that runs for it
        for i, key in enumerate(keys):
            if key is not None and key in found:
                out[i] = _hit(found[key])
            elif key is not None and key in first:
                continue  # a duplicate: answered from its first's run below
            else:
                if key is not None:
                    first[key] = i
                run.append(i)
        if run:
            results = await self.inner.execute(endpoint, [clean[i] for i in run])
            if len(results) != len(run):
                return list(results)  # a broken backend: the engine reports it as it is
            for i, result in zip(run, results, strict=True):
                out[i] = result
            fresh = {keys[i]: r for i, r in zip(run, results, strict=True)
                     if keys[i] is not None and isinstance(r, Result) and r.outcome is Outcome.SUCCEEDED
                     and r.body is not None and r.status_code is not None}
            for i, key in enumerate(keys):
                if out[i] is None and key is not None:
                    done = out[first[key]]
                    good = fresh.get(key)
                    out[i] = (_hit(CachedAnswer(good.status_code or 200, good.body or b"", good.input_tokens,
                                                good.output_tokens)) if good is not None else done)
            if fresh:
                await asyncio.to_thread(self._store, fresh, self.setup.clock.now())
        return [r for r in out if r is not None]

    def _store(self, fresh: dict[str | None, Result], now: float) -> None:
        for key, r in fresh.items():
            if key is not None and r.body is not None and r.status_code is not None:
                self.setup.store.put_cached(key, CachedAnswer(r.status_code, r.body, r.input_tokens, r.output_tokens),
                                            now, now + self.setup.ttl_s)
        if self._last_evicted is None or now - self._last_evicted >= self.setup.evict_every_s:
            self._last_evicted = now
            self.setup.store.evict_cache(now, self.setup.max_bytes)


def _hit(answer: CachedAnswer) -> Result:
    return Result(status_code=answer.status_code, body=answer.body, request_id=ids.new_request_id(),
                  input_tokens=answer.input_tokens, output_tokens=answer.output_tokens, cached=True)


__all__ = ["CacheSetup", "CachedBackend", "file_hash", "model_identity"]
