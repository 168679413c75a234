"""The bundled all-MiniLM-L6-v2 backend: numerically against an independent numpy BERT, and its API."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from reference_minilm import ReferenceMiniLM, pool, single_threaded_blas

from freight.backends.embedding_text import MAX_INPUTS, plan_batches
from freight.backends.local_embeddings import LocalEmbeddingBackend
from freight.domain.errors import ConfigError
from freight.domain.requests import Failure, Result
from freight.wire import jsonx

MODEL = "all-MiniLM-L6-v2"
ENDPOINT = "/v1/embeddings"

LONG = " ".join(f"Sentence number {i} talks about rivers, mountains and the weather in spring." for i in range(40))
SENTENCES = [
    "Hi",
    "A man is playing a guitar.",
    "What?! No way... really??? (yes) -- #1 @home $5.99 100% {ok} [sic] <tag> a/b\\c",
    "Café crème brûlée — naïve façade, São Paulo, Zürich, Ærøskøbing.",
    "我喜欢机器学习和自然语言处理。",
    "Привет, как дела? Всё хорошо.",
    LONG,
    "def square(x): return x ** 2  # returns the square",
    "Emoji and symbols: 🎉🚀 ©®™ ½ ∑ ∞",
    "THE STOCK MARKET FELL SHARPLY TODAY AFTER THE CENTRAL BANK'S ANNOUNCEMENT.",
]


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalEmbeddingBackend]:
    b = LocalEmbeddingBackend(model_id=MODEL, batch_size=64)
    asyncio.run(b.start())
    yield b
    asyncio.run(b.close())


@pytest.fixture(scope="module")
def reference() -> ReferenceMiniLM:
    return ReferenceMiniLM()


@pytest.fixture(scope="module")
def hidden_states(reference: ReferenceMiniLM) -> list[np.ndarray]:
    with single_threaded_blas():
        return [reference.hidden_states(reference.token_ids(s)) for s in SENTENCES]


def run(backend: LocalEmbeddingBackend, bodies: Sequence[dict[str, Any]], endpoint: str = ENDPOINT
        ) -> list[Result | Failure]:
    return asyncio.run(backend.execute(endpoint, bodies))


def ok(result: Result | Failure) -> dict[str, Any]:
    assert isinstance(result, Result), result
    assert result.status_code == 200, result.body
    assert result.body is not None
    response: dict[str, Any] = jsonx.loads(result.body)
    return response


def vectors(result: Result | Failure) -> np.ndarray:
    data = ok(result)["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float64)


def embed(backend: LocalEmbeddingBackend, texts: list[str]) -> np.ndarray:
    return vectors(run(backend, [{"model": MODEL, "input": texts}])[0])


def refused(result: Result | Failure) -> dict[str, Any]:
    assert isinstance(result, Result), result
    assert result.status_code == 400
    assert result.body is not None
    envelope: dict[str, Any] = jsonx.loads(result.body)
    assert set(envelope) == {"error"}
    assert set(envelope["error"]) == {"message", "type", "param", "code"}
    assert envelope["error"]["type"] == "invalid_request_error"
    assert envelope["error"]["message"]
    assert result.request_id is not None and result.request_id.startswith("req_")
    return dict(envelope["error"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- numerics: against the fp32 numpy reference --------------------------------------------------


def test_matches_independent_reference(backend: LocalEmbeddingBackend, hidden_states: list[np.ndarray]) -> None:
    got = embed(backend, SENTENCES)
    cosines = [cosine(g, pool(h)) for g, h in zip(got, hidden_states, strict=True)]
    assert min(cosines) > 0.99, cosines
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_reference_comparison_can_fail(backend: LocalEmbeddingBackend, hidden_states: list[np.ndarray]) -> None:
    """A wrong pooling is caught by a wide margin, and normalisation is visible in the norms."""
    got = embed(backend, SENTENCES)
    mean_cos = np.array([cosine(g, pool(h)) for g, h in zip(got, hidden_states, strict=True)])
    cls_cos = np.array([cosine(g, pool(h, pooling="cls")) for g, h in zip(got, hidden_states, strict=True)])
    assert cls_cos.max() < 0.9, cls_cos
    assert (mean_cos - cls_cos).min() > 0.09
    unnormalised = np.array([np.linalg.norm(pool(h, normalize=False)) for h in hidden_states])
    assert np.abs(unnormalised - 1.0).min() > 0.1, unnormalised


def test_truncates_at_256_tokens_like_the_reference(backend: LocalEmbeddingBackend,
                                                    reference: ReferenceMiniLM) -> None:
    assert len(reference.tokenizer.encode(LONG, add_special_tokens=True).ids) == 256
    longer = LONG + " And a tail that the model never sees."
    a, b = embed(backend, [LONG, longer])
    assert cosine(a, b) > 0.99999
    assert ok(run(backend, [{"model": MODEL, "input": longer}])[0])["usage"]["prompt_tokens"] == 256


def test_semantic_sanity(backend: LocalEmbeddingBackend) -> None:
    guitar, instrument, market = embed(
        backend, ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell today."]
    )
    assert cosine(guitar, instrument) > cosine(guitar, market) + 0.2


def test_batching_does_not_change_results(backend: LocalEmbeddingBackend) -> None:
    texts = [f"{s} ({i})" for i in range(8) for s in SENTENCES]  # 80 inputs: 2 padded model batches
    bodies = [{"model": MODEL, "input": texts[i:i + 7]} for i in range(0, len(texts), 7)]
    chunked = np.concatenate([vectors(r) for r in run(backend, bodies)])
    alone = np.concatenate([embed(backend, [t]) for t in texts])
    cosines = np.sum(chunked * alone, axis=1)
    assert cosines.min() > 0.9999, cosines.min()


# ---- the API ----------------------------------------------------------------------------------------


def test_models_and_settings() -> None:
    b = LocalEmbeddingBackend(model_id="mini", chunk_size=32, max_concurrency=3, batch_size=8, threads=1)
    (info,) = b.models()
    assert (info.id, info.endpoints, info.owned_by) == ("mini", frozenset({ENDPOINT}), "freight")
    assert (b.chunk_size, b.max_concurrency) == (32, 3)
    default = LocalEmbeddingBackend()
    assert (default.chunk_size, default.max_concurrency) == (1024, 2)
    assert (default.batch_size, default.batch_tokens) == (32, 2048)


def test_model_batches_are_capped_in_rows_and_padded_tokens() -> None:
    lengths = [5, 5, 5, 9, 9, 40, 300]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    assert plan_batches(order, lengths, 2, 1000) == [[0, 1], [2, 3], [4, 5], [6]]
    assert plan_batches(order, lengths, 32, 30) == [[0, 1, 2], [3, 4], [5], [6]]  # 4 x 9 > 30; 40 alone
    assert plan_batches([], [], 32, 2048) == []


class RecordingSession:
    """Wraps the real session; records the shape of every model batch."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.shapes: list[tuple[int, int]] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.shapes.append(feeds["input_ids"].shape)
        return self.real.run(names, feeds)


def test_a_chunk_is_sorted_as_a_whole_into_small_padded_batches(backend: LocalEmbeddingBackend) -> None:
    """600 inputs of 1 to 120 words in one chunk: one sort over all of them, so padding stays under 5% of
    the real tokens."""
    b = LocalEmbeddingBackend(model_id=MODEL)
    b._tokenizer, b._probe = backend._tokenizer, backend._probe
    b._session = recording = RecordingSession(backend._session)
    rng = np.random.default_rng(3)
    words = "rivers mountains weather spring tickets billing refunds shipping crashing update".split()
    bodies = [{"model": MODEL, "input": " ".join(rng.choice(words, size=int(rng.integers(1, 120))))}
              for _ in range(600)]
    results = run(b, bodies)
    real = sum(ok(r)["usage"]["prompt_tokens"] for r in results)
    padded = sum(rows * width for rows, width in recording.shapes)
    assert padded <= 1.05 * real, (padded, real)
    assert all(rows <= 32 and (rows == 1 or rows * width <= 2048) for rows, width in recording.shapes)
    assert sum(rows for rows, _ in recording.shapes) == 600


def test_onnxruntime_threads_spin_unless_told_not_to(backend: LocalEmbeddingBackend) -> None:
    options = backend._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    quiet = LocalEmbeddingBackend(model_id=MODEL, spin=False)
    asyncio.run(quiet.start())
    try:
        assert quiet._session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning") == "0"
    finally:
        asyncio.run(quiet.close())
    with pytest.raises(ConfigError, match="spin must be true or false"):
        LocalEmbeddingBackend(model_id=MODEL, spin="no")  # type: ignore[arg-type]


def test_the_tokenizer_has_no_thread_pool_unless_the_environment_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its pool's threads, woken between model calls, took cores from onnxruntime's (local_embeddings.py)."""
    for preset, expected in ((None, "false"), ("true", "true")):
        if preset is None:
            monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
        else:
            monkeypatch.setenv("TOKENIZERS_PARALLELISM", preset)
        b = LocalEmbeddingBackend(model_id=MODEL)
        asyncio.run(b.start())
        try:
            assert os.environ["TOKENIZERS_PARALLELISM"] == expected
            assert ok(run(b, [{"model": MODEL, "input": "still embeds"}])[0])["data"][0]["embedding"]
        finally:
            asyncio.run(b.close())


def test_start_is_idempotent(backend: LocalEmbeddingBackend) -> None:
    session = backend._session
    asyncio.run(backend.start())
    assert backend._session is session


def test_response_shape_list_input_and_usage(backend: LocalEmbeddingBackend, reference: ReferenceMiniLM) -> None:
    texts = ["first input", "Second, longer input with more tokens!", "Ünïcödé"]
    (result,) = run(backend, [{"model": MODEL, "input": texts, "user": "u-1", "dimensions": 384,
                               "encoding_format": "float"}])
    response = ok(result)
    assert set(response) == {"object", "data", "model", "usage"}
    assert response["object"] == "list" and response["model"] == MODEL
    assert [(d["object"], d["index"], len(d["embedding"])) for d in response["data"]] == [
        ("embedding", i, 384) for i in range(3)
    ]
    assert reference.tokenizer.encode("first input").tokens == ["[CLS]", "first", "input", "[SEP]"]
    expected = sum(len(reference.token_ids(t)) for t in texts)
    assert response["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert isinstance(result, Result)
    assert (result.input_tokens, result.output_tokens) == (expected, 0)
    assert result.request_id is not None and len(result.request_id) == 4 + 24
    # A list input gives the same vectors as the same strings sent one by one.
    for text, vector in zip(texts, vectors(result), strict=True):
        assert cosine(vector, embed(backend, [text])[0]) > 0.9999
    assert result.body is not None and result.body.isascii()


def test_base64_is_the_float_vector(backend: LocalEmbeddingBackend) -> None:
    texts = ["base64 please", "and another"]
    as_float, as_b64 = run(backend, [{"model": MODEL, "input": texts},
                                     {"model": MODEL, "input": texts, "encoding_format": "base64"}])
    floats = vectors(as_float).astype(np.float32)
    data = ok(as_b64)["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    assert decoded.shape == (2, 384)
    np.testing.assert_array_equal(decoded, floats)


BAD_BODIES: list[tuple[dict[str, Any], str | None, str]] = [
    ({"model": MODEL}, "input", "input"),
    ({"model": MODEL, "input": ""}, "input", "empty"),
    ({"model": MODEL, "input": []}, "input", "empty"),
    ({"model": MODEL, "input": ["fine", ""]}, "input", "empty"),
    ({"model": MODEL, "input": [101, 2023, 102]}, "input", "token arrays are not supported"),
    ({"model": MODEL, "input": [[101, 2023], [102]]}, "input", "token arrays are not supported"),
    ({"model": MODEL, "input": 42}, "input", "string"),
    ({"model": MODEL, "input": {"text": "x"}}, "input", "string"),
    ({"model": MODEL, "input": ["ok", None]}, "input", "string"),
    ({"model": MODEL, "input": ["hello", 5]}, "input", "'input[1]' must be a string, got int"),  # not "token arrays"
    ({"model": MODEL, "input": ["x"] * (MAX_INPUTS + 1)}, "input", "2048"),
    ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
    ({"model": MODEL, "input": "x", "dimensions": 256}, "dimensions", "dimensions"),
    ({"model": MODEL, "input": "x", "dimensions": "384"}, "dimensions", "dimensions"),
    ({"model": "text-embedding-3-small", "input": "x"}, "model", "does not exist"),
    ({"input": "x"}, "model", "model"),
    ({"model": MODEL, "input": "x", "temperature": 0.5}, "temperature", "Unsupported parameter: 'temperature'"),
]


def test_each_refusal_is_a_400_that_leaves_its_neighbours_alone(backend: LocalEmbeddingBackend) -> None:
    good = [f"good request number {i}" for i in range(len(BAD_BODIES) + 1)]
    bodies: list[dict[str, Any]] = [{"model": MODEL, "input": good[0]}]
    for (bad, _, _), text in zip(BAD_BODIES, good[1:], strict=True):
        bodies += [bad, {"model": MODEL, "input": text}]
    results = run(backend, bodies)
    assert len(results) == len(bodies)
    expected_good = embed(backend, good)
    for i, text_vector in enumerate(expected_good):
        assert cosine(vectors(results[2 * i])[0], text_vector) > 0.9999  # right order, right request
    for (_, param, words), result in zip(BAD_BODIES, results[1::2], strict=True):
        error = refused(result)
        assert error["param"] == param
        assert words.lower() in error["message"].lower(), error
    codes = {refused(r)["code"] for r in results[1::2]}
    assert {"model_not_found", "unsupported_parameter"} <= codes


def test_wrong_endpoint_is_refused(backend: LocalEmbeddingBackend) -> None:
    (result,) = run(backend, [{"model": MODEL, "input": "x"}], endpoint="/v1/chat/completions")
    assert "/v1/embeddings" in refused(result)["message"]


def test_null_optional_parameters_are_defaults(backend: LocalEmbeddingBackend) -> None:
    (result,) = run(backend, [{"model": MODEL, "input": "x", "encoding_format": None, "dimensions": None,
                               "user": None}])
    assert isinstance(ok(result)["data"][0]["embedding"], list)


class PoisonedSession:
    """Wraps the real session; fails every model batch that holds the token id of 'poison'."""

    def __init__(self, real: Any, poison_id: int) -> None:
        self.real = real
        self.poison_id = poison_id

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        if (feeds["input_ids"] == self.poison_id).any():
            raise RuntimeError("onnxruntime exploded")
        return self.real.run(names, feeds)


def test_model_error_fails_only_the_affected_requests(backend: LocalEmbeddingBackend) -> None:
    b = LocalEmbeddingBackend(model_id=MODEL, batch_size=1)
    b._tokenizer = backend._tokenizer
    poison_id = backend._tokenizer.token_to_id("poison")
    b._session = PoisonedSession(backend._session, poison_id)
    results = run(b, [{"model": MODEL, "input": "fine"}, {"model": MODEL, "input": ["ok", "poison"]},
                      {"model": MODEL, "input": ""}, {"model": MODEL, "input": "also fine"}])
    ok(results[0])
    assert isinstance(results[1], Failure) and results[1].code == "model_error"
    assert "exploded" in results[1].message
    refused(results[2])
    ok(results[3])


def test_a_broken_tokenizer_never_raises_out_of_execute(backend: LocalEmbeddingBackend) -> None:
    class Broken:
        def encode_batch(self, *args: Any, **kwargs: Any) -> Any:
            raise ValueError("tokenizer broke")

    b = LocalEmbeddingBackend(model_id=MODEL)
    b._session, b._tokenizer = backend._session, Broken()
    good, bad = run(b, [{"model": MODEL, "input": "x"}, {"model": "other", "input": "x"}])
    assert isinstance(good, Failure) and good.code == "model_error"
    refused(bad)


def test_execute_does_not_block_the_event_loop(backend: LocalEmbeddingBackend) -> None:
    bodies = [{"model": MODEL, "input": [f"{s} {i}" for s in SENTENCES[:6]]} for i in range(40)]

    async def main() -> int:
        task = asyncio.create_task(backend.execute(ENDPOINT, bodies))
        ticks = 0
        while not task.done():
            await asyncio.sleep(0.002)
            ticks += 1
        assert all(isinstance(r, Result) and r.status_code == 200 for r in task.result())
        return ticks

    assert asyncio.run(main()) >= 5


class OverlapSession(RecordingSession):
    """Records how many model calls run at once (each held a moment, so that overlaps show)."""

    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.lock = threading.Lock()
        self.now = self.most = 0

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.02)
            return super().run(names, feeds)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize(("threads", "calls"), [(1, 2), (2, 1)])
def test_model_batches_run_side_by_side_as_many_at_once_as_the_cores_hold(
    backend: LocalEmbeddingBackend, monkeypatch: pytest.MonkeyPatch, threads: int, calls: int
) -> None:
    """On 2 cores: single-threaded model calls two at a time; two-threaded ones one at a time. The vectors
    are those of one call at a time."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    b = LocalEmbeddingBackend(model_id=MODEL, threads=threads, batch_size=8)
    assert b.calls == calls
    b._tokenizer, b._probe = backend._tokenizer, backend._probe
    b._session = overlap = OverlapSession(backend._session)
    bodies = [{"model": MODEL, "input": f"sentence number {i} " + "word " * (i % 7)} for i in range(64)]
    try:
        results = run(b, bodies)
    finally:
        asyncio.run(b.close())
    assert overlap.most == calls
    assert len(overlap.shapes) == 8
    alone = run(backend, bodies)
    for mine, theirs in zip(results, alone, strict=True):
        np.testing.assert_allclose(ok(mine)["data"][0]["embedding"], ok(theirs)["data"][0]["embedding"], atol=1e-5)


def test_a_model_call_uses_one_thread_unless_told_otherwise(backend: LocalEmbeddingBackend) -> None:
    assert backend.threads is None
    assert backend._session.get_session_options().intra_op_num_threads == 1
    assert backend.calls == max(1, os.cpu_count() or 1)
