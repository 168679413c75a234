"""``LlamaCppBackend``: the asyncio side (``freight.ports.Backend``) bridged to the decode loop's thread."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from freight.backends.llama_cpp.decode_loop import DecodeLoop, Job
from freight.backends.llama_cpp.interface import ENDPOINTS, BadRequest, SeqSpec
from freight.backends.llama_cpp.params import Prepared, RequestParser
from freight.backends.llama_cpp.response import build_response, error_result
from freight.backends.llama_cpp.runner import KV_TYPES, LlamaCppRunner
from freight.backends.llama_cpp.weights import CONVERT_FTYPES, DEFAULT_MODEL_ID, convert_weights, smollm2_path
from freight.backends.openai_params import is_int
from freight.domain.errors import ConfigError
from freight.domain.ids import new_request_id
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo, current_withdrawal
from freight.wire.jsonx import dumps

log = logging.getLogger(__name__)

#: Slots (sequences decoded together) and context of the default engine; see bench/bench_chat.py.
DEFAULT_N_SLOTS = 32
DEFAULT_N_CTX = 32768


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
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer", param=name)
        for name, opt in (("chunk_size", chunk_size), ("max_concurrency", max_concurrency), ("n_threads", n_threads)):
            if opt is not None and (not is_int(opt) or opt < 1):
                raise ConfigError(f"{name} must be a positive integer", param=name)
        if n_batch < n_slots or n_ctx // n_slots < 64:
            raise ConfigError("need n_batch >= n_slots and at least 64 tokens of context per slot", param="n_ctx")
        if kv_type not in KV_TYPES:
            raise ConfigError(f"kv_type must be one of {sorted(KV_TYPES)}", param="kv_type")
        if convert == "auto":  # the bundled model's Q4_1 weights, dequantised exactly (see "Weights" above)
            convert = "f32" if model_path is None else None
        if convert is not None and convert not in CONVERT_FTYPES:
            raise ConfigError(f"convert must be one of {sorted(CONVERT_FTYPES)} or 'auto'", param="convert")
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
        self.decode_loop: DecodeLoop | None = None
        self.parser: RequestParser | None = None
        self._start_lock = threading.Lock()

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=ENDPOINTS)]

    def _load(self) -> None:
        with self._start_lock:
            if self.decode_loop is None:
                self._load_locked()

    def _load_locked(self) -> None:
        path = self._model_path or smollm2_path()
        if self._convert:
            path = convert_weights(path, self._convert, self._cache_dir)
        runner = LlamaCppRunner(path, **self._runner_kw)
        decoder = DecodeLoop(runner)
        decoder.start()
        self.runner, self.decode_loop = runner, decoder
        self.parser = RequestParser(runner, self.model_id)

    async def start(self) -> None:
        if self.decode_loop is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        decoder, runner = self.decode_loop, self.runner
        self.decode_loop = None
        if decoder is not None:
            await asyncio.to_thread(decoder.stop)
        if runner is not None and (decoder is None or not decoder.alive):
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
                out.append(error_result(400, e.message, "invalid_request_error", e.param, e.code))
            except Exception as e:
                log.exception("llama.cpp backend: could not prepare a request")
                out.append(error_result(500, f"could not prepare the request: {e!r}", "server_error", None, None))
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
        decoder, runner = self.decode_loop, self.runner
        if decoder is None or runner is None or not decoder.alive:
            return [Failure("backend_unavailable", "the local model backend is not running")] * len(bodies)
        loop = asyncio.get_running_loop()
        withdrawal = current_withdrawal.get()
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
            job = Job(len(p.specs), _waker(loop, fut), withdrawal)
            futures.append(fut)
            jobs.append(job)
            batch.extend((spec, job, i) for i, spec in enumerate(p.specs))
        try:
            if batch:
                decoder.submit(batch)
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
            if job.withdrawn and withdrawal is not None:
                results.append(withdrawal.failure())
                continue
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
