"""The decode loop: continuous batching of sequences over a ``ModelRunner`` on one thread (see the package doc).

Named for llama.cpp's token loop; it is not the engine's job scheduling.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from freight.backends.llama_cpp.interface import (
    BatchItem,
    ModelRunner,
    RunnerError,
    SeqOutput,
    SeqSpec,
    TokenLogprob,
    common_prefix,
)

log = logging.getLogger(__name__)


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
    pos_offset: int = 0  # debug only: see DecodeLoop.debug_pos_offset
    stale: bool = False  # debug only: see DecodeLoop.debug_stale_token
    started: bool = False  # its first prompt chunk was scheduled

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.spec.prompt)


@dataclass
class DecodeStats:
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


class DecodeLoop:
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
        self.stats = DecodeStats()
        # Debug/test hooks that inject decode-loop bugs into chosen sequences, to show that the tests can see them.
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
                n = common_prefix(d.spec.prompt, prompt, min(limit, d.n_past, len(d.spec.prompt)))
                if n > best:
                    best, src = n, d.slot
        for d, end in prefilling_now:
            if common_prefix(d.spec.prompt, prompt, min(limit, end)) >= best + runner.min_prefix:
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
