"""Long inputs to the bundled embedding model: cut before tokenizing without changing the result, memory
bounded whatever the input size, and the inputs that cannot be cut safely refused with a 400."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from freight.backends.embedding_text import FIRST_CUT_CHARS, MAX_INPUT_CHARS, MAX_TOKENS, bounded_text, load_tokenizer
from freight.backends.local_embeddings import LocalEmbeddingBackend
from freight.domain.requests import Failure, Result
from freight.wire import jsonx

MODEL = "all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parent.parent

PROSE = " ".join(f"Sentence {i} talks about rivers, mountains and the weather in spring." for i in range(400))
# Pieces that stress the normalizer (accents, combining marks, case mappings that change length,
# control characters it deletes), the pre-tokenizer (punctuation, CJK characters, which are words of
# their own, whitespace of every kind) and WordPiece (words over 100 characters become one [UNK]).
PIECES = [
    "word", "Ünïcödé", "e\u0301\u0302", "\u0301", "İstanbul", "ß", "ΣΑΣ", "ǅ", "ﬁ", "한국어", "我喜欢机器学习",
    "\x00", "\u200b", "\ufffd", "😀", "a" * 99, "b" * 150, "x-y", "...", "'", " ", "  ", "\t", "\n",
    "\u3000", "\u00a0", "(", ")", "#1", "3.14", "Ærøskøbing", "naïve", "ﾊﾝｶｸ",
]


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalEmbeddingBackend]:
    b = LocalEmbeddingBackend(model_id=MODEL)
    asyncio.run(b.start())
    yield b
    asyncio.run(b.close())


def body(text: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": text}


def response(b: LocalEmbeddingBackend, text: Any) -> tuple[int, dict[str, Any]]:
    (result,) = asyncio.run(b.execute("/v1/embeddings", [body(text)]))
    assert isinstance(result, Result) and result.status_code is not None and result.body is not None, result
    payload: dict[str, Any] = jsonx.loads(result.body)
    return result.status_code, payload


def random_text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        piece = rng.choice(PIECES) if rng.random() < 0.7 else rng.choice(PIECES) + rng.choice(PIECES)
        out.append(piece)
        size += len(piece)
    return "".join(out)


def texts_to_cut() -> list[str]:
    rng = random.Random(7)
    cases = [PROSE, "x" * 500 + " " + PROSE]
    # A word straddling each cut point: whole it is one [UNK] (over 100 characters), cut it is not.
    for limit in (FIRST_CUT_CHARS, 2 * FIRST_CUT_CHARS):
        for width in (10, 60, 99, 101, 400):
            head = "ab " * ((limit - width // 2) // 3)
            cases.append(head + "q" * width + " tail" * 600)
    # Whitespace, stripped accents and deleted control characters before the words: the first cut
    # holds too few tokens and the next ones are tried.
    for filler in (" ", "\u0301", "\x00", "\u3000", "\n\t"):
        cases.append(filler * 3000 + PROSE)
    cases += ["한국어 " * 2000, "我喜欢机器学习和自然语言处理。" * 400]
    cases += ["İ" * 3000 + " " + PROSE, "e\u0301" * 2000 + PROSE]
    cases += [random_text(rng, rng.choice((2100, 3000, 5000, 9000, 20000))) for _ in range(150)]
    return cases


def test_a_cut_text_has_exactly_the_tokens_of_the_whole_text() -> None:
    """The proof obligation of the cut: the truncated token ids the model sees are identical."""
    truncating, probe = load_tokenizer(), load_tokenizer(None)
    cut_some = 0
    for text in texts_to_cut():
        assert len(text) > FIRST_CUT_CHARS
        cut = bounded_text(text, probe)
        assert cut is not None and text.startswith(cut)
        whole = truncating.encode(text, add_special_tokens=True).ids
        assert truncating.encode(cut, add_special_tokens=True).ids == whole, (len(text), len(cut), text[:80])
        if len(cut) < len(text):
            cut_some += 1
            assert len(whole) == MAX_TOKENS  # only inputs that are truncated anyway are ever cut
    assert cut_some > 100


def test_the_embedding_of_a_cut_text_is_that_of_the_whole_text(backend: LocalEmbeddingBackend) -> None:
    """Against the model run by hand on the whole text's token ids (no cut involved)."""
    tokenizer, session = load_tokenizer(), backend._session
    for text in (PROSE, " " * 3000 + PROSE, "b" * 150 + " " + PROSE):
        status, payload = response(backend, text)
        assert status == 200 and payload["usage"]["prompt_tokens"] == MAX_TOKENS
        ids = np.array([tokenizer.encode(text, add_special_tokens=True).ids], dtype=np.int64)
        (hidden,) = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                                        "token_type_ids": np.zeros_like(ids)})
        pooled = hidden[0].mean(axis=0)
        expected = pooled / np.linalg.norm(pooled)
        np.testing.assert_allclose(payload["data"][0]["embedding"], expected, rtol=0, atol=1e-6)


def test_long_inputs_that_cannot_be_cut_safely_are_refused(backend: LocalEmbeddingBackend) -> None:
    blank = " " * MAX_INPUT_CHARS
    # Up to the limit everything is tokenized whole: 65,536 characters of blanks and one word.
    status, payload = response(backend, blank[:-6] + " hello")
    assert status == 200 and payload["usage"]["prompt_tokens"] == 3
    # Over it, an input must fill the model's tokens within its first MAX_INPUT_CHARS characters.
    for text in (blank + " hello", "a" * (MAX_INPUT_CHARS + 1), "\u0301" * 200_000 + "word"):
        status, payload = response(backend, text)
        assert status == 400, payload
        error = payload["error"]
        assert error["param"] == "input" and error["code"] == "invalid_value"
        assert "65,536 characters" in error["message"] and f"{len(text):,}" in error["message"]
    status, payload = response(backend, ["fine", "c" * 100_000])
    assert status == 400 and "'input[1]'" in payload["error"]["message"]
    # A long input that does fill them is cut and embedded, whatever its length.
    status, payload = response(backend, PROSE * 40)
    assert status == 200 and payload["usage"]["prompt_tokens"] == MAX_TOKENS


MEMORY_SCRIPT = textwrap.dedent("""
    import asyncio, re, sys
    from freight.backends.local_embeddings import LocalEmbeddingBackend

    def peak_mb():
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

    backend = LocalEmbeddingBackend()
    asyncio.run(backend.start())
    run = lambda value: asyncio.run(backend.execute("/v1/embeddings", [{"model": "all-MiniLM-L6-v2",
                                                                         "input": value}]))[0]
    run(["warm up", "the model"] * 40)
    mb = 1 << 20
    inputs = {
        "prose": ("A sentence about rivers, mountains and the weather in spring. " * (10 * mb // 63))[: 10 * mb],
        "three prose lines": ["Another sentence, and words. " * (10 * mb // 29)] * 3,
        "one word": "a" * (10 * mb),
        "blanks": " " * (10 * mb),
        "token ids": list(range(10 * mb // 4)),
        "token id arrays": [list(range(10 * mb // 8))] * 2,
    }
    for name, value in inputs.items():
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS to the current RSS
        before = peak_mb()
        result = run(value)
        print(name, result.status_code, round(peak_mb() - before, 1), flush=True)
""")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's peak-RSS reset")
def test_memory_stays_bounded_for_10_mb_inputs() -> None:
    """Peak RSS growth while one request of 10 MB inputs runs, measured in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.rsplit(" ", 2) for line in done.stdout.splitlines()]
    growth = {name: (int(status), float(mb)) for name, status, mb in lines}
    assert set(growth) == {"prose", "three prose lines", "one word", "blanks", "token ids", "token id arrays"}
    assert growth["prose"][0] == growth["three prose lines"][0] == 200
    assert {status for status, _ in growth.values()} == {200, 400}
    for name, (_, mb) in growth.items():
        assert mb < 100, (name, growth)


def test_a_failing_cut_is_that_request_s_model_error(backend: LocalEmbeddingBackend) -> None:
    class BrokenProbe:
        def encode(self, *args: Any, **kwargs: Any) -> Any:
            raise ValueError("probe broke")

    b = LocalEmbeddingBackend(model_id=MODEL)
    b._session, b._tokenizer, b._probe = backend._session, backend._tokenizer, BrokenProbe()
    long, short = asyncio.run(b.execute("/v1/embeddings", [body(PROSE), body("short")]))
    assert isinstance(long, Failure) and long.code == "model_error" and "probe broke" in long.message
    assert isinstance(short, Result) and short.status_code == 200
