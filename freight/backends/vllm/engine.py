"""The engine part: one ``vllm.LLM`` (vLLM's offline engine) stepped by one thread, with continuous batching.

``VllmEngine`` owns the ``LLM`` and drives its ``LLMEngine`` directly (``add_request`` / ``step`` /
``abort_request``) rather than calling ``LLM.generate``, which would run one list of prompts to completion: here
requests of every ``execute`` call in flight join the running batch as they arrive, finished ones are delivered
at once, and an abort (a withdrawn or cancelled call) takes effect between two steps. Everything lives on the
instance (no module state), so an engine can be built inside a Ray actor as well as in the freight process.

vLLM is imported only in ``load`` (``import_vllm``); this module imports without it. NOT YET RUN ON A GPU: see
docs/vllm.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import itertools
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from freight.backends.vllm.text_model import HFTextModel
from freight.backends.vllm.translate import EngineRequest
from freight.domain.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install 'freight[vllm]' on a machine with a GPU that vLLM supports (it brings a CUDA build "
                "of torch, several GB)")


def vllm_missing(model_id: str) -> str | None:
    """Why the model cannot run here (vLLM is not installed), or None. Does not import vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return (f"[models.\"{model_id}\"]: backend \"vllm\" needs the vllm package, which is not installed in this "
                f"Python ({INSTALL_HINT}).")
    return None


def import_vllm(model_id: str) -> ModuleType:
    """The ``vllm`` module, or a ``ConfigError`` that says how to get it."""
    missing = vllm_missing(model_id)
    if missing is not None:
        raise ConfigError(missing, param="backend")
    try:
        return importlib.import_module("vllm")
    except Exception as e:  # installed but broken (no CUDA, a torch mismatch): say so rather than a traceback
        raise ConfigError(f"[models.\"{model_id}\"]: vllm is installed but cannot be imported: "
                          f"{type(e).__name__}: {e}", param="backend") from e


@dataclass
class Outcome:
    """What became of one engine request: vLLM's finished output, or why there is none."""

    output: Any = None
    #: vLLM refused the request when it was added (bad parameters for this model): a 400 for its body.
    refused: str | None = None
    #: The engine failed, or the request was aborted: ``(code, message)`` of a ``Failure``.
    error: tuple[str, str] | None = None


@dataclass
class Submission:
    prompt_token_ids: list[int]
    params: Any  # vllm.SamplingParams or vllm.PoolingParams
    done: Callable[[Outcome], None]
    request_id: str = ""


def sampling_params(vllm: ModuleType, request: EngineRequest) -> Any:
    """vLLM's ``SamplingParams`` for an ``EngineRequest``: structured outputs as ``StructuredOutputsParams``
    (vLLM >= 0.11, field ``structured_outputs``) or ``GuidedDecodingParams`` (before, field ``guided_decoding``);
    only final outputs are returned (``RequestOutputKind.FINAL_ONLY``)."""
    sp = importlib.import_module("vllm.sampling_params")
    kw = dict(request.sampling)
    if request.guided is not None:
        if hasattr(sp, "StructuredOutputsParams"):
            kw["structured_outputs"] = sp.StructuredOutputsParams(**request.guided.kwargs())
        else:
            kw["guided_decoding"] = sp.GuidedDecodingParams(**request.guided.kwargs())
    kw["output_kind"] = sp.RequestOutputKind.FINAL_ONLY
    return vllm.SamplingParams(**kw)


def pooling_params(vllm: ModuleType, dimensions: int | None) -> Any:
    """vLLM's ``PoolingParams`` for an embedding (``task="embed"`` where the version has that field)."""
    kw: dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
    try:
        return vllm.PoolingParams(task="embed", **kw)
    except TypeError:  # versions without a task field
        return vllm.PoolingParams(**kw)


def _engine_arg_names(vllm: ModuleType) -> set[str]:
    cls = vllm.EngineArgs
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(inspect.signature(cls).parameters)


class VllmEngine:
    """One ``vllm.LLM`` and the thread that steps it. ``load`` blocks (minutes on a big model)."""

    def __init__(self, model_id: str, llm_kwargs: dict[str, Any], *, pooling: bool) -> None:
        self.model_id = model_id
        self.llm_kwargs = dict(llm_kwargs)
        self.pooling = pooling
        self.vllm: ModuleType | None = None
        self.llm: Any = None
        self.text_model: HFTextModel | None = None
        self._lock = threading.Condition()
        self._incoming: list[Submission] = []
        self._aborts: list[str] = []
        self._running: dict[str, Submission] = {}  # our request id -> submission
        self._ids = itertools.count()
        self._prefix = "fr" + secrets.token_hex(4)  # no '-': vLLM may append '-<suffix>' to ids it is given
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.dead: str | None = None

    # ---- life -----------------------------------------------------------------------------------------------------
    def load(self) -> HFTextModel:
        vllm = import_vllm(self.model_id)
        kwargs = dict(self.llm_kwargs)
        if self.pooling:  # vLLM >= 0.11 says runner="pooling"; older versions task="embed"
            names = _engine_arg_names(vllm)
            if "runner" in names:
                kwargs.setdefault("runner", "pooling")
            elif "task" in names:
                kwargs.setdefault("task", "embed")
        llm = vllm.LLM(**kwargs)
        engine = llm.llm_engine
        model_config = getattr(engine, "model_config", None)
        max_len = getattr(model_config, "max_model_len", None) or kwargs.get("max_model_len")
        if not isinstance(max_len, int):
            raise ConfigError(f"[models.\"{self.model_id}\"]: could not read the model's max_model_len; set it")
        vocab = model_config.get_vocab_size() if model_config is not None else None
        text_model = HFTextModel(llm.get_tokenizer(), max_len, vocab)
        self.vllm, self.llm, self.text_model = vllm, llm, text_model
        self._thread = threading.Thread(target=self._run, name=f"vllm-{self.model_id}", daemon=True)
        self._thread.start()
        return text_model

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead is None

    def stop(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        llm, self.llm = self.llm, None
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:
                log.exception("vllm: engine shutdown failed")

    # ---- requests (any thread) ------------------------------------------------------------------------------------
    def submit(self, items: Sequence[Submission]) -> list[str]:
        """Queue requests for the next step; their ids, for ``abort``."""
        with self._lock:
            if self._stopping or self.dead is not None or self._thread is None:
                raise RuntimeError(self.dead or "the vLLM engine is not running")
            for item in items:
                item.request_id = f"{self._prefix}x{next(self._ids)}"
                self._incoming.append(item)
            self._lock.notify_all()
        return [item.request_id for item in items]

    def abort(self, request_ids: Sequence[str]) -> None:
        """Abort requests (between two steps); each unfinished one ends as ``Outcome(error=("aborted", ...))``."""
        with self._lock:
            self._aborts.extend(request_ids)
            self._lock.notify_all()

    # ---- the engine thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.llm.llm_engine
        try:
            while True:
                with self._lock:
                    while not (self._stopping or self._incoming or self._aborts or self._running):
                        self._lock.wait()
                    if self._stopping:
                        break
                    incoming, self._incoming = self._incoming, []
                    aborts, self._aborts = self._aborts, []
                self._add(engine, incoming)
                self._abort(engine, aborts)
                if self._running:
                    for out in engine.step():
                        if getattr(out, "finished", True):
                            self._deliver(out)
        except Exception as e:  # the engine is gone (CUDA error, OOM): every request in it fails, and is retried
            log.exception("vllm: the engine failed")
            self.dead = f"the vLLM engine failed: {type(e).__name__}: {e}"
        reason = self.dead or "the vLLM engine stopped"
        with self._lock:
            left = list(self._running.values()) + self._incoming
            self._running.clear()
            self._incoming = []
        for item in left:
            item.done(Outcome(error=("backend_unavailable", reason)))

    def _add(self, engine: Any, incoming: list[Submission]) -> None:
        for item in incoming:
            prompt = {"prompt_token_ids": item.prompt_token_ids}
            try:
                engine.add_request(item.request_id, prompt, item.params)
            except (ValueError, TypeError) as e:  # vLLM's validation of one request (VLLMValidationError too)
                item.done(Outcome(refused=str(e) or type(e).__name__))
                continue
            self._running[item.request_id] = item

    def _abort(self, engine: Any, aborts: list[str]) -> None:
        ids = [i for i in aborts if i in self._running]
        if not ids:
            return
        engine.abort_request(ids)  # our ids: vLLM maps them to its internal ones (an '-<suffix>' added, >= 0.12)
        for i in ids:
            self._running.pop(i).done(Outcome(error=("aborted", "the request was aborted")))

    def _deliver(self, out: Any) -> None:
        rid = str(out.request_id)
        item = self._running.pop(rid, None)
        if item is None:  # vLLM answered with its internal id ('<ours>-<suffix>')
            rid = rid.split("-", 1)[0]
            item = self._running.pop(rid, None)
        if item is None:
            return
        completions = getattr(out, "outputs", None)
        if isinstance(completions, list) and any(getattr(c, "finish_reason", None) == "abort" for c in completions):
            item.done(Outcome(error=("aborted", "vLLM aborted the request")))
            return
        item.done(Outcome(output=out))
