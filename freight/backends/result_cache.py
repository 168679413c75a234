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
import dataclasses
import hashlib
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from freight.domain import ids
from freight.domain.cache_key import NO_CACHE_KEY, cache_key, cacheable, canonical
from freight.domain.clock import Clock
from freight.domain.requests import Failure, Outcome, Result
from freight.ports import Backend, CachedAnswer, ModelInfo, ResultCache, answering_for
from freight.wire import jsonx

#: Options of a model's table that do not change its answers (left out of its identity).
_OPERATIONAL = frozenset({
    "max_concurrency", "chunk_size", "timeout_s", "rpm", "tpm", "env", "api_key_env", "n_threads", "n_slots",
    "price", "machine_cost_per_hour", "cache", "endpoints", "cache_dir", "threads", "spin",
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


#: The most requests the wrapper asks the engine for in one chunk while every request is a hit.
CACHED_CHUNK_MAX = 1024
#: ... and at most about this many bytes of stored answers (large answers, such as embeddings, make smaller chunks).
CACHED_CHUNK_BYTES = 8 << 20
#: How much the chunk grows after a chunk answered wholly from the cache.
_GROWTH = 4


class CachedBackend:
    """A ``Backend`` that answers from the result cache what it can and stores what it runs.

    Chunks: the engine claims ``chunk_size`` requests at a time. That is the wrapped backend's own
    chunk size until a chunk is answered wholly from the cache; then it grows (x4 per such chunk, up
    to ``CACHED_CHUNK_MAX`` requests and ``CACHED_CHUNK_BYTES`` of answers), so that a re-run of an
    unchanged file takes a few large claims, lookups and writes instead of one per 16 requests. A
    chunk with as many misses as the wrapped backend's chunk size puts it back. The misses of a
    large chunk go to the wrapped backend in calls of at most its ``chunk_size``, at most its
    ``max_concurrency`` at once for this wrapper (its own contract, whatever the engine claimed).
    The size is a hint kept in this process only.
    """

    def __init__(self, inner: Backend, setup: CacheSetup, identity: Callable[[], str]):
        self.inner = inner
        self.setup = setup
        #: The model's identity, computed on first use (a local model's file is hashed once).
        self._identity = identity
        self.identity: str | None = None
        self.max_concurrency = inner.max_concurrency
        self._chunk = inner.chunk_size
        self._last_evicted: float | None = None
        self._calls: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    @property
    def chunk_size(self) -> int:
        """How many requests the engine claims for one ``execute`` (see the class)."""
        return max(self._chunk, self.inner.chunk_size)

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        self.inner.chunk_size = value
        self._chunk = value

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

    def _key(self, endpoint: str, body: dict[str, Any], identity: str, project: str | None) -> str | None:
        if body.get(NO_CACHE_KEY) or not cacheable(endpoint, body):
            return None
        try:
            return cache_key(endpoint, body, identity, project)
        except (TypeError, ValueError, RecursionError):  # not JSON, or nested too deep: not cached
            return None

    def _look_up(self, endpoint: str, bodies: Sequence[dict[str, Any]], identity: str,
                 project: str | None) -> tuple[list[str | None], dict[str, CachedAnswer]]:
        """Every body's key (None: not cached) and the live entries under them (one query)."""
        keys = [self._key(endpoint, b, identity, project) for b in bodies]
        wanted = sorted({k for k in keys if k is not None})
        found = self.setup.store.get_cached(wanted, self.setup.clock.now()) if wanted else {}
        return keys, found

    def _semaphore(self) -> asyncio.Semaphore:
        """At most the wrapped backend's ``max_concurrency`` calls at once (one per event loop)."""
        loop = asyncio.get_running_loop()
        if self._calls is None or self._calls[0] is not loop:
            self._calls = (loop, asyncio.Semaphore(max(1, self.inner.max_concurrency)))
        return self._calls[1]

    async def _run(self, endpoint: str, bodies: list[dict[str, Any]],
                   keys: list[str | None]) -> list[Result | Failure]:
        """The wrapped backend's answers, in calls of at most its chunk size; each call's new answers
        are stored as soon as it returns (a kill -9 during a large chunk runs again only the calls
        that were in flight, as with chunks of the wrapped backend's size)."""
        size = max(1, self.inner.chunk_size)
        sem = self._semaphore()

        async def part(start: int) -> list[Result | Failure]:
            piece = bodies[start:start + size]
            async with sem:
                got = list(await self.inner.execute(endpoint, piece))
            if len(got) != len(piece):
                if len(bodies) <= size:
                    return got  # a broken backend: the engine reports it as it is
                raise RuntimeError(f"backend returned {len(got)} results for {len(piece)} requests")
            fresh = {key: r for key, r in zip(keys[start:start + size], got, strict=True)
                     if key is not None and isinstance(r, Result) and _storable(r)}
            if fresh:
                await asyncio.to_thread(self._store, fresh, self.setup.clock.now())
            return got

        parts = await asyncio.gather(*(part(i) for i in range(0, len(bodies), size)))
        return [r for p in parts for r in p]

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        if self.identity is None:
            self.identity = await asyncio.to_thread(self._identity)
        keys, found = await asyncio.to_thread(self._look_up, endpoint, bodies, self.identity, self._project())
        out: list[Result | Failure | None] = [None] * len(bodies)
        run: list[int] = []  # indices sent to the wrapped backend
        first: dict[str, int] = {}  # key -> the index that runs for it
        fresh_ids = iter(ids.new_request_ids(sum(1 for k in keys if k is not None and k in found)))
        for i, key in enumerate(keys):
            if key is not None and key in found:
                out[i] = _hit(found[key], next(fresh_ids))
            elif key is not None and key in first:
                continue  # a duplicate: answered from its first's run below
            else:
                if key is not None:
                    first[key] = i
                run.append(i)
        inner_size = max(1, self.inner.chunk_size)
        if not run:
            # Larger, but not past CACHED_CHUNK_BYTES of answers at this chunk's mean answer size.
            mean = sum(len(a.body) for a in found.values()) / max(1, len(found))
            cap = max(inner_size, min(CACHED_CHUNK_MAX, int(CACHED_CHUNK_BYTES / max(1.0, mean))))
            self._chunk = min(cap, max(self._chunk, inner_size) * _GROWTH)
        elif len(run) >= inner_size:
            self._chunk = inner_size
        if not run:
            return [r for r in out if r is not None]
        results = await self._run(endpoint, [_without_marker(bodies[i]) for i in run], [keys[i] for i in run])
        if len(results) != len(run):
            return list(results)  # a broken backend: the engine reports it as it is
        for i, result in zip(run, results, strict=True):
            out[i] = result
        for i, key in enumerate(keys):
            if out[i] is None and key is not None:  # a duplicate: its first's answer, as a hit if it succeeded
                done = out[first[key]]
                if isinstance(done, Result) and _storable(done):
                    out[i] = _hit(CachedAnswer(done.status_code or 200, done.body or b"", done.input_tokens,
                                               done.output_tokens))
                elif isinstance(done, Result) and done.request_id is not None:
                    out[i] = dataclasses.replace(done, request_id=ids.new_request_id())  # each line its own id
                else:
                    out[i] = done
        return [r for r in out if r is not None]

    def _store(self, fresh: dict[str, Result], now: float) -> None:
        """The new answers, in one write; then eviction, at most once per ``evict_every_s``."""
        self.setup.store.put_cached({key: CachedAnswer(r.status_code or 200, r.body or b"", r.input_tokens,
                                                       r.output_tokens) for key, r in fresh.items()},
                                    now, now + self.setup.ttl_s)
        if self._last_evicted is None or now - self._last_evicted >= self.setup.evict_every_s:
            self._last_evicted = now
            self.setup.store.evict_cache(now, self.setup.max_bytes)


def _storable(r: Result) -> bool:
    """A 2xx answer with a body (what the cache keeps)."""
    return r.outcome is Outcome.SUCCEEDED and r.body is not None and r.status_code is not None


def _without_marker(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != NO_CACHE_KEY} if NO_CACHE_KEY in body else body


def _hit(answer: CachedAnswer, request_id: str | None = None) -> Result:
    """A stored answer as a result of its own: a fresh request id, and a fresh ``id`` in its body (each
    completion has its own, as OpenAI's and Anthropic's do: code that keys on it must not see two answers
    as one)."""
    return Result(status_code=answer.status_code, body=_with_fresh_id(answer.body),
                  request_id=request_id or ids.new_request_id(), input_tokens=answer.input_tokens,
                  output_tokens=answer.output_tokens, cached=True)


def _with_fresh_id(body: bytes) -> bytes:
    """``body`` with its top-level ``id`` (``chatcmpl-…``, ``msg_…``) replaced by a new one of the same form."""
    if b'"id"' not in body:
        return body  # (embeddings: no id)
    if body.startswith(b'{"id":"'):  # the usual form (the top-level object's first key): no parse needed
        end = body.find(b'"', 7)
        if end > 7 and b"\\" not in body[7:end]:
            return body[:7] + _fresh(body[7:end].decode()).encode() + body[end:]
    try:
        parsed = jsonx.loads(body)
    except jsonx.JSONDecodeError:
        return body
    old = parsed.get("id") if isinstance(parsed, dict) else None
    if not isinstance(old, str) or not old:
        return body
    parsed["id"] = _fresh(old)
    return jsonx.dumps(parsed)


def _fresh(old: str) -> str:
    """A new id of ``old``'s form: its prefix ("chatcmpl-", "msg_") and as many random hex digits (at least 16)."""
    cut = max(old.rfind("-"), old.rfind("_")) + 1
    size = max(16, len(old) - cut)
    return old[:cut] + secrets.token_hex((size + 1) // 2)[:size]


__all__ = ["CACHED_CHUNK_BYTES", "CACHED_CHUNK_MAX", "CacheSetup", "CachedBackend", "file_hash", "model_identity"]
