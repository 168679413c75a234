"""A GPU backend on vLLM's offline engine: chat, completions and embeddings. NOT YET RUN ON A GPU (docs/vllm.md).

How a request flows
-------------------
1. ``Translator`` (translate.py, pure): an OpenAI body becomes ``EngineRequest``s, the prompt's token ids (chat
   template applied through the model's tokenizer) and ``vllm.SamplingParams`` keywords, with a ``Guided``
   constraint for ``response_format`` json_object/json_schema and for forced tool calls. The parameters accepted
   are the llama.cpp lane's; a bad or over-long body is a 400 for that body alone.
2. ``VllmEngine`` (engine.py): one ``vllm.LLM`` whose ``LLMEngine`` one thread steps; requests of every
   ``execute`` in flight join the running batch (continuous batching), finished ones are delivered at once, and a
   withdrawn or cancelled call's requests are aborted between two steps.
3. ``build_generation`` / ``build_embeddings`` (responses.py, pure): vLLM's outputs as OpenAI bodies (choices,
   ``finish_reason``, usage, logprobs, tool calls).

Tool calls: the tools are described in the system prompt as for the llama.cpp lane (freight/wire/tools_prompt.py).
With ``tool_choice`` ``required`` or a named function, the output is held by vLLM's structured outputs to the JSON
array of calls (``freight.wire.tools.call_schema``), as vLLM's own server does; with ``auto`` the model answers
freely and a ``<tool_call>[...]</tool_call>`` answer is read as calls.

vLLM is imported only when the model loads (``start``); a machine without it gets a ``ConfigError`` that says how
to install it. The backend keeps no module state, so it can be built inside a Ray actor.
"""

from freight.backends.vllm.backend import TASKS, VllmBackend
from freight.backends.vllm.engine import INSTALL_HINT, VllmEngine, import_vllm, vllm_missing
from freight.backends.vllm.responses import build_embeddings, build_generation
from freight.backends.vllm.text_model import HFTextModel
from freight.backends.vllm.translate import (
    EMBEDDINGS,
    EmbeddingPlan,
    EngineRequest,
    GenerationPlan,
    Guided,
    TextModel,
    Translator,
)

__all__ = [
    "EMBEDDINGS",
    "INSTALL_HINT",
    "TASKS",
    "EmbeddingPlan",
    "EngineRequest",
    "GenerationPlan",
    "Guided",
    "HFTextModel",
    "TextModel",
    "Translator",
    "VllmBackend",
    "VllmEngine",
    "build_embeddings",
    "build_generation",
    "import_vllm",
    "vllm_missing",
]
