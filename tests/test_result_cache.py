"""The result cache wrapper (freight/backends/result_cache.py) on the scripted backend, a SQLite store
and a fixed clock: hits, duplicates, the policy, TTL, per-batch opt-out, and the model identity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freight.backends import build_backends
from freight.backends.result_cache import (
    CACHED_CHUNK_BYTES,
    CACHED_CHUNK_MAX,
    CachedBackend,
    CacheSetup,
    model_identity,
)
from freight.backends.scripted import ScriptedBackend
from freight.domain.cache_key import NO_CACHE_KEY
from freight.domain.claims import Tally
from freight.domain.clock import FixedClock
from freight.domain.requests import Result
from freight.store.sqlite import SqliteStore

EMB = "/v1/embeddings"
CHAT = "/v1/chat/completions"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "t.db", synchronous="OFF")
    yield s
    s.close()


def wrap(store: SqliteStore, clock: FixedClock, ttl_s: float = 100) -> tuple[CachedBackend, ScriptedBackend]:
    inner = ScriptedBackend()
    return CachedBackend(inner, CacheSetup(store, clock, ttl_s), lambda: "scripted@1"), inner


def run(backend: CachedBackend, endpoint: str, bodies: list[dict[str, Any]]) -> list[Result]:
    out = asyncio.run(backend.execute(endpoint, bodies))
    assert all(isinstance(r, Result) for r in out)
    return out  # type: ignore[return-value]


def test_a_repeated_request_is_answered_from_the_cache(store: SqliteStore) -> None:
    backend, inner = wrap(store, FixedClock())
    first = run(backend, EMB, [{"model": "m", "input": "a"}, {"model": "m", "input": "b"}])
    assert inner.executed == 2 and not any(r.cached for r in first)
    again = run(backend, EMB, [{"model": "m", "input": "b", "user": "someone else"}, {"model": "m", "input": "c"}])
    assert inner.executed == 3, "only the new line ran"
    assert again[0].cached and again[0].body == first[1].body and again[0].request_id != first[1].request_id
    assert not again[1].cached
    tally = Tally.of(again)
    assert (tally.cached, tally.saved_input_tokens, tally.input_tokens) == (1, first[1].input_tokens,
                                                                           again[1].input_tokens)


def test_duplicates_in_one_call_run_once(store: SqliteStore) -> None:
    backend, inner = wrap(store, FixedClock())
    out = run(backend, EMB, [{"model": "m", "input": "same"}] * 5)
    assert inner.executed == 1
    assert [r.cached for r in out] == [False, True, True, True, True]
    assert len({r.request_id for r in out}) == 5


def test_each_answer_from_the_cache_has_a_completion_id_of_its_own(store: SqliteStore) -> None:
    """Found by an audit: two identical seeded requests got the same body, ``id`` included; OpenAI's ids are
    one per completion, and code that keys on them saw one answer. The rest of the body is the stored one."""
    backend, inner = wrap(store, FixedClock())
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    first = run(backend, CHAT, [body] * 3)
    again = run(backend, CHAT, [body])
    assert inner.executed == 1
    parsed = [json.loads(r.body or b"") for r in first + again]
    assert len({p["id"] for p in parsed}) == 4, [p["id"] for p in parsed]
    assert all(p["id"].startswith("chatcmpl-") and len(p["id"]) == len(parsed[0]["id"]) for p in parsed)
    assert all({k: v for k, v in p.items() if k != "id"} == {k: v for k, v in parsed[0].items() if k != "id"}
               for p in parsed)


def test_sampled_requests_are_never_cached(store: SqliteStore) -> None:
    backend, inner = wrap(store, FixedClock())
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}
    run(backend, CHAT, [body, body])
    run(backend, CHAT, [body])
    assert inner.executed == 3
    run(backend, CHAT, [{**body, "seed": 1}])
    run(backend, CHAT, [{**body, "seed": 1}])
    assert inner.executed == 4, "a seed makes it reusable"


def test_an_entry_past_its_ttl_runs_again(store: SqliteStore) -> None:
    clock = FixedClock()
    backend, inner = wrap(store, clock, ttl_s=100)
    body = {"model": "m", "input": "a"}
    run(backend, EMB, [body])
    clock.advance(99)
    run(backend, EMB, [body])
    assert inner.executed == 1
    clock.advance(2)
    assert not run(backend, EMB, [body])[0].cached
    assert inner.executed == 2


def test_failures_are_not_stored_and_a_batch_can_opt_out(store: SqliteStore) -> None:
    backend, inner = wrap(store, FixedClock())
    bad = {"model": "m", "input": "a", "script": {"status": 400}}
    run(backend, EMB, [bad])
    run(backend, EMB, [bad])
    assert inner.executed == 2
    body = {"model": "m", "input": "x"}
    run(backend, EMB, [body])
    out = run(backend, EMB, [{**body, NO_CACHE_KEY: True}])
    assert inner.executed == 4 and not out[0].cached
    assert NO_CACHE_KEY not in json.loads(out[0].body or b"{}")["echo"], "the marker is not sent"


def test_model_identity_is_the_file_for_local_models_and_url_and_name_for_remote(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights 1")
    a = model_identity("m", {"backend": "llama-cpp", "model_path": str(f), "n_slots": 4})
    assert a == model_identity("m", {"backend": "llama-cpp", "model_path": str(f), "n_slots": 8}), "operational"
    f.write_bytes(b"weights 2, longer")
    assert model_identity("m", {"backend": "llama-cpp", "model_path": str(f)}) != a, "new file content, new key"
    remote = model_identity("m", {"backend": "openai", "base_url": "http://h/v1/", "max_concurrency": 3})
    assert remote == model_identity("m", {"backend": "openai", "base_url": "http://h/v1"})
    assert remote != model_identity("m", {"backend": "openai", "base_url": "http://h/v1", "upstream_model": "x"})
    assert remote != model_identity("m", {"backend": "openai", "base_url": "http://other/v1"})


def test_build_backends_wraps_unless_a_model_says_cache_false(store: SqliteStore) -> None:
    setup = CacheSetup(store, FixedClock(), 100)
    tables = {"a": {"backend": "scripted", "cache": True},
              "b": {"backend": "scripted", "cache": False},
              "c": {"backend": "scripted"}}
    kinds = [type(b).__name__ for b in build_backends(tables, setup)]
    assert kinds == ["CachedBackend", "OutputCheck", "OutputCheck"]
    assert [type(b).__name__ for b in build_backends(tables)] == ["OutputCheck"] * 3


def test_freight_status_shows_answers_from_the_cache() -> None:
    from freight.cli.figures import freight_rows

    assert dict(freight_rows({"freight": {"cached": 3}}))["from the result cache"].startswith("3 requests")
    assert "from the result cache" not in dict(freight_rows({"freight": {"cached": 0}}))


def test_cache_settings(tmp_path: Path) -> None:
    from freight.config import load_settings
    from freight.domain.errors import ConfigError

    def settings(text: str) -> Any:
        path = tmp_path / "f.toml"
        path.write_text(text)
        return load_settings(path, env={}).cache

    assert (settings("").enabled, settings("").ttl_s) == (True, 7 * 24 * 3600)
    got = settings('[cache]\nenabled = false\nttl = "12h"\nmax_bytes = 0\n')
    assert (got.enabled, got.ttl_s, got.max_bytes) == (False, 12 * 3600, None)
    assert settings("[cache]\nttl = 30\nmax_bytes = 1000\n").max_bytes == 1000
    for bad in ("ttl = 0", 'ttl = "soon"', "max_bytes = -1", "enabled = 1", "size = 3"):
        with pytest.raises(ConfigError):
            settings(f"[cache]\n{bad}\n")


def test_entries_are_per_project_unless_the_scope_is_global(store: SqliteStore) -> None:
    from freight.ports import on_behalf_of

    body = {"model": "m", "input": "the same question"}
    inner = ScriptedBackend()
    scoped = CachedBackend(inner, CacheSetup(store, FixedClock(), 100), lambda: "scripted@1")
    with on_behalf_of("alpha"):
        run(scoped, EMB, [body])
        assert run(scoped, EMB, [body])[0].cached, "a project reuses its own answers"
    with on_behalf_of("beta"):
        assert not run(scoped, EMB, [body])[0].cached, "but not another project's: no side channel"
    assert inner.executed == 2
    shared = CachedBackend(inner, CacheSetup(store, FixedClock(), 100, scope="global"), lambda: "scripted@2")
    with on_behalf_of("alpha"):
        run(shared, EMB, [body])
    with on_behalf_of("beta"):
        assert run(shared, EMB, [body])[0].cached, "global: every project shares the answers"
    assert inner.executed == 3


def test_cache_scope_setting(tmp_path: Path) -> None:
    from freight.config import load_settings
    from freight.domain.errors import ConfigError

    path = tmp_path / "f.toml"
    path.write_text("")
    assert load_settings(path, env={}).cache.scope == "project"
    path.write_text('[cache]\nscope = "global"\n')
    assert load_settings(path, env={}).cache.scope == "global"
    path.write_text('[cache]\nscope = "team"\n')
    with pytest.raises(ConfigError, match="scope"):
        load_settings(path, env={})


class Recording(ScriptedBackend):
    """The scripted backend, recording the size of each call and the most calls at once."""

    def __init__(self) -> None:
        super().__init__(chunk_size=4, max_concurrency=2)
        self.sizes: list[int] = []
        self.now = self.most = 0

    async def execute(self, endpoint: str, bodies: Any) -> Any:
        self.sizes.append(len(bodies))
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.01)
            return await super().execute(endpoint, bodies)
        finally:
            self.now -= 1


def test_chunks_grow_while_everything_hits_and_misses_keep_the_inner_backends_contract(store: SqliteStore) -> None:
    inner = Recording()
    backend = CachedBackend(inner, CacheSetup(store, FixedClock(), 100), lambda: "scripted@1")
    bodies = [{"model": "m", "input": f"line {i}"} for i in range(40)]
    assert backend.chunk_size == 4
    run(backend, EMB, bodies[:4])
    assert backend.chunk_size == 4, "misses: the wrapped backend's size"
    run(backend, EMB, bodies[:4])
    assert backend.chunk_size == 16, "a chunk wholly from the cache: larger"
    run(backend, EMB, bodies[:4])
    assert backend.chunk_size == 64
    inner.sizes.clear()
    out = run(backend, EMB, bodies)  # 4 hits, 36 misses: calls of at most 4, at most 2 at once
    assert [r.cached for r in out] == [True] * 4 + [False] * 36
    assert sum(inner.sizes) == 36 and max(inner.sizes) == 4 and inner.most == 2
    assert backend.chunk_size == 4, "as many misses as the wrapped backend's chunk: back to its size"
    for _ in range(8):
        hits = run(backend, EMB, bodies)
    assert backend.chunk_size == CACHED_CHUNK_MAX and inner.executed == 40
    ids = [r.request_id or "" for r in hits]
    assert len(set(ids)) == 40 and all(i.startswith("req_") and len(i) == 28 for i in ids), "each hit its own id"


def test_duplicates_of_a_failure_get_the_failure(store: SqliteStore) -> None:
    backend, inner = wrap(store, FixedClock())
    bad = {"model": "m", "input": "a", "script": {"status": 400}}
    out = run(backend, EMB, [bad, bad])
    assert inner.executed == 1 and [r.status_code for r in out] == [400, 400] and not any(r.cached for r in out)
    assert out[0].body == out[1].body and out[0].request_id != out[1].request_id, "each line its own request id"


def test_large_answers_make_smaller_chunks(store: SqliteStore) -> None:
    inner = Recording()
    backend = CachedBackend(inner, CacheSetup(store, FixedClock(), 100), lambda: "scripted@1")
    big = [{"model": "m", "input": "x" * (CACHED_CHUNK_BYTES // 10), "n": i} for i in range(4)]  # answers of ~1/10
    run(backend, EMB, big)
    for _ in range(4):
        run(backend, EMB, big)
    assert 4 < backend.chunk_size <= 10, "at most CACHED_CHUNK_BYTES of answers a chunk"


@pytest.mark.parametrize(("body", "prefix"), [
    (b'{"id":"chatcmpl-0123456789abcdef01234567","object":"chat.completion"}', "chatcmpl-"),  # read in place
    (b'{"object":"message","id":"msg_01XFDUDYJgAACzvnptvVoYEL"}', "msg_"),  # parsed: id is not first
    (b'{"id":"odd\\"id","x":1}', ""),  # an escaped quote: parsed
])
def test_a_fresh_id_keeps_the_form_and_the_rest_of_the_body(body: bytes, prefix: str) -> None:
    from freight.backends.result_cache import _with_fresh_id

    old, new = json.loads(body), json.loads(_with_fresh_id(body))
    assert new["id"] != old["id"] and new["id"].startswith(prefix) and len(new["id"]) >= len(prefix) + 16
    assert {k: v for k, v in new.items() if k != "id"} == {k: v for k, v in old.items() if k != "id"}
    assert _with_fresh_id(b'{"object":"list","data":[{"id":"x"}]}') == b'{"object":"list","data":[{"id":"x"}]}'
