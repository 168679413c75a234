"""``VllmBackend``: ``freight.ports.Backend`` on vLLM's offline engine (chat and completions, or embeddings)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from freight.backends.llama_cpp.interface import CHAT, COMPLETIONS, BadRequest
from freight.backends.openai_params import is_int
from freight.backends.vllm.engine import Outcome, Submission, VllmEngine, pooling_params, sampling_params
from freight.backends.vllm.responses import build_embeddings, build_generation, embedding_vector
from freight.backends.vllm.translate import EMBEDDINGS, EmbeddingPlan, GenerationPlan, Plan, Translator, refusal
from freight.domain.errors import ConfigError
from freight.domain.ids import new_request_id
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo, Withdrawal, current_withdrawal
from freight.wire.jsonx import dumps

log = logging.getLogger(__name__)

TASKS = {"generate": frozenset({CHAT, COMPLETIONS}), "embed": frozenset({EMBEDDINGS})}
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


class VllmBackend:
    """A model on vLLM: ``task = "generate"`` serves /v1/chat/completions and /v1/completions, ``"embed"``
    serves /v1/embeddings. Requests of all ``execute`` calls in flight share vLLM's running batch."""

    def __init__(
        self,
        *,
        model_id: str,
        model: str | None = None,
        task: str = "generate",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int | None = None,
        trust_remote_code: bool = False,
        enforce_eager: bool = False,
        download_dir: str | None = None,
        engine_args: dict[str, Any] | None = None,
        chunk_size: int = 256,
        max_concurrency: int = 2,
    ) -> None:
        where = f"[models.\"{model_id}\"]"
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigError(f"{where}.model must be a local path or a Hugging Face model id", param="model")
        if task not in TASKS:
            raise ConfigError(f"{where}.task must be one of {sorted(TASKS)}", param="task")
        for name, value in (("tensor_parallel_size", tensor_parallel_size), ("chunk_size", chunk_size),
                            ("max_concurrency", max_concurrency)):
            if not is_int(value) or value < 1:
                raise ConfigError(f"{where}.{name} must be a positive integer", param=name)
        if max_model_len is not None and (not is_int(max_model_len) or max_model_len < 16):
            raise ConfigError(f"{where}.max_model_len must be an integer of at least 16", param="max_model_len")
        if (not isinstance(gpu_memory_utilization, int | float) or isinstance(gpu_memory_utilization, bool)
                or not 0 < gpu_memory_utilization <= 1):
            raise ConfigError(f"{where}.gpu_memory_utilization must be a number in (0, 1]",
                              param="gpu_memory_utilization")
        if dtype not in DTYPES:
            raise ConfigError(f"{where}.dtype must be one of {', '.join(DTYPES)}", param="dtype")
        if seed is not None and not is_int(seed):
            raise ConfigError(f"{where}.seed must be an integer", param="seed")
        if engine_args is not None and not isinstance(engine_args, dict):
            raise ConfigError(f"{where}.engine_args must be a table of vllm.LLM keyword arguments",
                              param="engine_args")
        self.model_id = model_id
        self.task = task
        self.endpoints = TASKS[task]
        llm_kwargs: dict[str, Any] = {
            **(engine_args or {}),
            "model": model or model_id,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "enforce_eager": enforce_eager,
        }
        for key, opt in (("max_model_len", max_model_len), ("seed", seed), ("download_dir", download_dir)):
            if opt is not None:
                llm_kwargs[key] = opt
        self.llm_kwargs = llm_kwargs
        #: Enough requests to fill vLLM's running batch (its ``max_num_seqs`` is 256 by default in vLLM 0.x).
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.engine: VllmEngine | None = None
        self.translator: Translator | None = None
        self._start_lock = threading.Lock()

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=self.endpoints)]

    def _load(self) -> None:
        with self._start_lock:
            if self.engine is not None:
                return
            engine = VllmEngine(self.model_id, self.llm_kwargs, pooling=self.task == "embed")
            text_model = engine.load()
            self.translator = Translator(text_model, self.model_id, self.endpoints)
            self.engine = engine

    async def start(self) -> None:
        """Loads the model (a ``ConfigError`` naming the fix where vLLM is not installed)."""
        if self.engine is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.stop)

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        engine, translator = self.engine, self.translator
        if engine is None or translator is None or not engine.alive:
            reason = engine.dead if engine is not None and engine.dead else "the vLLM backend is not running"
            return [Failure("backend_unavailable", reason)] * len(bodies)
        assert engine.vllm is not None and engine.text_model is not None
        vllm, text_model = engine.vllm, engine.text_model
        plans = await asyncio.to_thread(translator.plan_all, endpoint, bodies)
        loop = asyncio.get_running_loop()
        withdrawal = current_withdrawal.get()

        # One engine request per prompt (chat: 1; completions: one per prompt; embeddings: one per input).
        futures: list[list[asyncio.Future[Outcome]]] = []
        submissions: list[Submission] = []
        for k, plan in enumerate(plans):
            mine: list[asyncio.Future[Outcome]] = []
            try:
                params = _engine_params(vllm, plan)
            except (ValueError, TypeError) as e:  # vLLM's own checks of the parameters, for this body only
                plans[k] = refusal(BadRequest(f"vLLM refused the request: {e}", None, "invalid_value"))
                params = []
            for prompt_ids, p in params:
                fut: asyncio.Future[Outcome] = loop.create_future()
                mine.append(fut)
                submissions.append(Submission(prompt_ids, p, _resolver(loop, fut)))
            futures.append(mine)
        try:
            ids = engine.submit(submissions) if submissions else []
        except RuntimeError as e:
            return [p if isinstance(p, Result) else Failure("backend_unavailable", str(e)) for p in plans]
        if withdrawal is not None and ids:
            withdrawal.add_callback(lambda: engine.abort(ids))
        try:
            await asyncio.gather(*(f for mine in futures for f in mine))
        except asyncio.CancelledError:
            engine.abort(ids)
            raise
        return [self._finish(plan, [f.result() for f in mine], text_model.token, withdrawal)
                for plan, mine in zip(plans, futures, strict=True)]

    def _finish(self, plan: Plan | Result, outcomes: list[Outcome], decode: Callable[[int], str],
                withdrawal: Withdrawal | None) -> Result | Failure:
        if isinstance(plan, Result):
            return plan
        for o in outcomes:
            if o.refused is not None:
                return refusal(BadRequest(f"vLLM refused the request: {o.refused}", None, "invalid_value"))
        for o in outcomes:
            if o.error is not None:
                if o.error[0] == "aborted" and withdrawal is not None and withdrawal.is_set():
                    return withdrawal.failure()
                return Failure(*o.error)
        try:
            if isinstance(plan, GenerationPlan):
                body = build_generation(plan, [o.output for o in outcomes], self.model_id, decode)
                completion_tokens = body["usage"]["completion_tokens"]
            else:
                body = build_embeddings(plan, [embedding_vector(o.output) for o in outcomes], self.model_id)
                completion_tokens = 0
        except Exception as e:  # an output we cannot read: the engine's fault, retried
            log.exception("vllm backend: could not build a response")
            return Failure("backend_error", f"could not read vLLM's output: {type(e).__name__}: {e}")
        return Result(status_code=200, body=dumps(body), request_id=new_request_id(),
                      input_tokens=body["usage"]["prompt_tokens"], output_tokens=completion_tokens)


def _engine_params(vllm: Any, plan: Plan | Result) -> list[tuple[list[int], Any]]:
    """(prompt token ids, vLLM params) of each engine request of a plan."""
    if isinstance(plan, GenerationPlan):
        return [(r.prompt_token_ids, sampling_params(vllm, r)) for r in plan.requests]
    if isinstance(plan, EmbeddingPlan):
        return [(ids, pooling_params(vllm, plan.dimensions)) for ids in plan.inputs]  # vLLM may alter params
    return []


def _resolver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Outcome]) -> Callable[[Outcome], None]:
    """A callback for the engine thread that completes ``fut`` on its event loop."""
    def done(outcome: Outcome) -> None:
        def set_result() -> None:
            if not fut.done():
                fut.set_result(outcome)

        try:
            loop.call_soon_threadsafe(set_result)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    return done
