"""``LlamaCppRunner``: everything llama.cpp (model, context, ``llama_batch``, sampler chains, KV cells)."""

from __future__ import annotations

import ctypes
import importlib
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from freight.backends.llama_cpp.interface import (
    BadRequest,
    BatchItem,
    RunnerError,
    SamplingParams,
    common_prefix,
)
from freight.backends.llama_cpp.weights import import_llama_cpp

KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type of the KV cache


class _NativeSampler:
    """A llama.cpp sampler chain for one sequence, plus its grammar (kept outside the chain, see ``sample``)."""

    __slots__ = ("chain", "grammar", "plain_greedy")

    def __init__(self, chain: Any, grammar: Any, plain_greedy: bool) -> None:
        self.chain = chain
        self.grammar = grammar
        #: The chain is just argmax over the raw logits (no bias, no penalties).
        self.plain_greedy = plain_greedy


class LlamaCppRunner:
    """One llama.cpp model and context with ``n_slots`` sequences; used by one thread at a time (the engine)."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_slots: int = 8,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        kv_unified: bool = False,
        flash_attn: bool | None = False,
        prefix_cache: bool = True,
        kv_type: str = "f16",
    ) -> None:
        if n_slots < 1 or n_ctx < n_slots or n_batch < n_slots:
            raise ValueError("need n_slots >= 1, n_ctx >= n_slots and n_batch >= n_slots")
        lc = import_llama_cpp()
        self._lc = lc
        threads = n_threads or os.cpu_count() or 1
        mparams = lc.llama_model_default_params()
        self._model = lc.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self._vocab = lc.llama_model_get_vocab(self._model)
        cparams = lc.llama_context_default_params()
        # One more sequence than slots when the prefix cache is on: it keeps the last prompt's KV cells.
        n_seq = n_slots + 1 if prefix_cache else n_slots
        cparams.n_ctx = (n_ctx // n_slots) * n_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_ubatch or n_batch, n_batch)
        cparams.n_seq_max = n_seq
        cparams.n_threads = threads
        cparams.n_threads_batch = n_threads_batch or threads
        cparams.kv_unified = kv_unified
        cparams.flash_attn_type = -1 if flash_attn is None else int(flash_attn)
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type]
        if kv_type not in ("f16", "f32"):
            cparams.flash_attn_type = 1  # llama.cpp needs flash attention for a quantised V cache
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise RuntimeError("llama.cpp could not create a context")
        self._mem = lc.llama_get_memory(self._ctx)
        self.n_slots = n_slots
        self.n_batch = n_batch
        self.n_ctx = int(lc.llama_n_ctx(self._ctx))
        self.slot_ctx = self.n_ctx // n_seq if kv_unified else int(lc.llama_n_ctx_seq(self._ctx))
        self.wants_dense_slots = not kv_unified
        self._cache_seq = n_slots if prefix_cache else -1
        self._cache_tokens: list[int] = []
        #: Shortest common prefix worth a KV copy (in non-unified mode a copy moves the whole slot buffer).
        self.min_prefix = 16
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self.kv_unified = kv_unified
        self.threads = threads
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        # candidates buffer for grammar-constrained sampling (engine thread only)
        self._cand_dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self._cand = np.zeros(self.n_vocab, dtype=self._cand_dtype)
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._one = (lc.llama_token_data * 1)()
        self._closed = False
        self._init_chat_template()

    # ---- tokenizer and chat template --------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def _init_chat_template(self) -> None:
        self.chat_template = self._meta("tokenizer.chat_template")
        self._formatter: Any = None
        if self.chat_template:
            fmt = importlib.import_module("llama_cpp.llama_chat_format")
            self._formatter = fmt.Jinja2ChatFormatter(
                template=self.chat_template,
                eos_token=self._token_text(self._lc.llama_vocab_eos(self._vocab)),
                bos_token=self._token_text(self._lc.llama_vocab_bos(self._vocab)),
                add_generation_prompt=True,
            )

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (self._lc.llama_token * cap)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Render with the GGUF's template the way llama-cpp-python's ``Jinja2ChatFormatter`` does, tokenize."""
        if self._formatter is None:
            raise BadRequest("this model has no chat template; use /v1/completions", "messages")
        try:
            result = self._formatter(messages=messages)
        except Exception as e:  # jinja2 errors, raise_exception() in the template
            raise BadRequest(f"the chat template rejected the messages: {e}", "messages") from e
        return self.tokenize(result.prompt, add_special=not result.added_special, parse_special=True)

    def piece(self, token: int) -> bytes:
        p = self._pieces.get(token)
        if p is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            p = buf.raw[:n]
            self._pieces[token] = p
        return p

    def is_eog(self, token: int) -> bool:
        e = self._eog.get(token)
        if e is None:
            e = bool(self._lc.llama_vocab_is_eog(self._vocab, token))
            self._eog[token] = e
        return e

    # ---- samplers ---------------------------------------------------------------------------------------------
    def make_sampler(self, params: SamplingParams) -> _NativeSampler:
        """Build the sequence's native chain: logit bias, penalties, then greedy or top-k/top-p/temperature/dist."""
        lc = self._lc
        grammar = None
        if params.grammar is not None:
            grammar = lc.llama_sampler_init_grammar(self._vocab, params.grammar.encode(), b"root")
            if not grammar:
                raise BadRequest("the response_format could not be turned into a grammar", "response_format")
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lc.llama_sampler_chain_add
        if params.logit_bias:
            arr = (lc.llama_logit_bias * len(params.logit_bias))()
            for i, (tok, bias) in enumerate(params.logit_bias):
                arr[i].token = tok
                arr[i].bias = bias
            add(chain, lc.llama_sampler_init_logit_bias(self.n_vocab, len(params.logit_bias), arr))
        if params.presence_penalty or params.frequency_penalty:
            add(
                chain,
                lc.llama_sampler_init_penalties(
                    self.n_vocab, self.slot_ctx, 1.0, params.frequency_penalty, params.presence_penalty
                ),
            )
        if params.temperature <= 0.0:
            add(chain, lc.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, lc.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
            add(chain, lc.llama_sampler_init_temp(params.temperature))
            add(chain, lc.llama_sampler_init_dist(params.seed))
        plain = params.temperature <= 0.0 and not params.logit_bias
        plain = plain and not (params.presence_penalty or params.frequency_penalty)
        return _NativeSampler(chain, grammar, plain)

    def free_sampler(self, sampler: Any) -> None:
        if isinstance(sampler, _NativeSampler):
            if sampler.chain:
                self._lc.llama_sampler_free(sampler.chain)
                sampler.chain = None
            if sampler.grammar:
                self._lc.llama_sampler_free(sampler.grammar)
                sampler.grammar = None

    def sample(self, sampler: Any, out: int) -> int:
        """Sample the next token of a sequence from output ``out`` of the last forward pass, and accept it.

        Without a grammar this is ``llama_sampler_sample`` (all in C). With one, applying the grammar to the whole
        vocabulary costs ~10-17 ms a token here, so as llama.cpp's own ``common_sampler`` does: sample without the
        grammar, check only that token against it (cheap), and only when it is rejected apply the grammar to
        every candidate and sample again.
        """
        lc = self._lc
        if sampler.grammar is None:
            return int(lc.llama_sampler_sample(sampler.chain, self._ctx, out))
        logits = self._logits(out)
        tok = self._apply_chain(sampler.chain, logits, None)
        one = self._one
        one[0].id = tok
        one[0].logit = 1.0
        one[0].p = 0.0
        single = lc.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
        lc.llama_sampler_apply(sampler.grammar, ctypes.byref(single))
        if math.isinf(one[0].logit):
            tok = self._greedy_under_grammar(sampler.grammar, logits) if sampler.plain_greedy else -1
            if tok < 0:
                tok = self._apply_chain(sampler.chain, logits, sampler.grammar)
            if tok < 0:  # the grammar allows nothing at all: end the sequence
                return int(lc.llama_vocab_eos(self._vocab))
        lc.llama_sampler_accept(sampler.grammar, tok)
        lc.llama_sampler_accept(sampler.chain, tok)
        return tok

    def _greedy_under_grammar(self, grammar: Any, logits: np.ndarray, k: int = 256) -> int:
        """Argmax over the tokens the grammar allows, looking only at the ``k`` best first (exact; -1: none there)."""
        lc = self._lc
        top = np.argpartition(-logits, k)[:k]
        top = top[np.argsort(-logits[top], kind="stable")]
        cand = np.zeros(k, dtype=self._cand_dtype)
        cand["id"] = top
        cand["logit"] = logits[top]
        arr = lc.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)), size=k, selected=-1, sorted=False
        )
        lc.llama_sampler_apply(grammar, ctypes.byref(arr))
        ok = np.flatnonzero(np.isfinite(cand["logit"][: arr.size]))
        return int(cand["id"][ok[0]]) if ok.size else -1

    def _apply_chain(self, chain: Any, logits: np.ndarray, grammar: Any) -> int:
        lc = self._lc
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = lc.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)), size=self.n_vocab, selected=-1, sorted=False
        )
        if grammar is not None:
            lc.llama_sampler_apply(grammar, ctypes.byref(arr))
            if not np.isfinite(cand["logit"][: arr.size]).any():
                return -1
        lc.llama_sampler_apply(chain, ctypes.byref(arr))
        return int(arr.data[arr.selected].id)

    def _logits(self, out: int) -> np.ndarray:
        ptr = self._lc.llama_get_logits_ith(self._ctx, out)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def logprobs(self, out: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        """Log-probabilities of the model's raw distribution (before temperature, penalties, grammar)."""
        x = self._logits(out).astype(np.float64)
        m = float(x.max())
        lse = m + math.log(float(np.exp(x - m).sum()))
        alts: list[tuple[int, float]] = []
        if top > 0:
            idx = np.argpartition(-x, top)[:top]
            idx = idx[np.argsort(-x[idx], kind="stable")]
            alts = [(int(i), float(x[i] - lse)) for i in idx]
        return float(x[token] - lse), alts

    # ---- the forward pass -------------------------------------------------------------------------------------
    def forward(self, items: Sequence[BatchItem]) -> list[int]:
        total = sum(len(item.tokens) for item in items)
        if total > self.n_batch:
            raise RunnerError(f"batch of {total} tokens exceeds n_batch={self.n_batch}")
        b = self._batch
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        n = 0
        outs: list[int] = []
        for item in items:
            p = item.pos
            slot = item.slot
            for t in item.tokens:
                token[n] = t
                pos[n] = p
                n_seq_id[n] = 1
                seq_id[n][0] = slot
                logits[n] = 0
                p += 1
                n += 1
            if item.logits:
                logits[n - 1] = 1
                outs.append(n - 1)
            else:
                outs.append(-1)
        b.n_tokens = n
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise RunnerError(f"llama_decode failed with {rc}")
        return outs

    def release(self, slot: int) -> None:
        self._lc.llama_memory_seq_rm(self._mem, slot, -1, -1)

    def move(self, src: int, dst: int) -> None:
        lc = self._lc
        lc.llama_memory_seq_rm(self._mem, dst, -1, -1)
        lc.llama_memory_seq_cp(self._mem, src, dst, -1, -1)  # across KV streams: the whole buffer (p0 = p1 = -1)
        lc.llama_memory_seq_rm(self._mem, src, -1, -1)

    # ---- prefix cache: the KV cells of the last prompt, shared with the next prompts that start the same way ---
    def cached_prefix(self, prompt: Sequence[int]) -> int:
        if self._cache_seq < 0 or not self._cache_tokens:
            return 0
        n = common_prefix(self._cache_tokens, prompt, min(len(self._cache_tokens), len(prompt) - 1))
        return n if n >= self.min_prefix else 0

    def reuse_prefix(self, slot: int, prompt: Sequence[int]) -> int:
        """Give an empty slot the KV cells of the common prefix with the cached prompt; returns its length.

        Always leaves at least one prompt token to process (the logits of the last one are needed).
        """
        n = self.cached_prefix(prompt)
        return self.share_prefix(self._cache_seq, slot, n) if n else 0

    def share_prefix(self, src: int, dst: int, n: int) -> int:
        lc = self._lc
        if self.kv_unified:  # one cell pool: the cells are shared, nothing is copied
            lc.llama_memory_seq_cp(self._mem, src, dst, 0, n)
            return n
        # Across KV streams llama.cpp copies whole buffers only (p0 = p1 = -1); then drop what is not shared.
        lc.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        if not lc.llama_memory_seq_rm(self._mem, dst, n, -1):
            lc.llama_memory_seq_rm(self._mem, dst, -1, -1)
            return 0
        return n

    def remember_prefix(self, slot: int, prompt: Sequence[int]) -> None:
        """Called when ``slot`` holds exactly ``prompt`` (its prefill just ended): keep a copy for later prompts."""
        if self._cache_seq < 0 or len(prompt) < self.min_prefix or self._cache_tokens == list(prompt):
            return
        lc = self._lc
        lc.llama_memory_seq_rm(self._mem, self._cache_seq, -1, -1)
        lc.llama_memory_seq_cp(self._mem, slot, self._cache_seq, -1, -1)
        self._cache_tokens = list(prompt)

    def clear(self) -> None:
        self._lc.llama_memory_clear(self._mem, True)
        self._cache_tokens = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        lc = self._lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)
