"""``HFTextModel``: the request layer's ``TextModel`` over a Hugging Face tokenizer (the one vLLM loaded)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any


class HFTextModel:
    """Tokenizing, the chat template and decoding through a ``transformers`` tokenizer (or vLLM's wrapper of one).

    The chat template is rendered to text, then tokenized without adding special tokens (the template writes its
    own BOS), as vLLM's OpenAI server does. A fast tokenizer must not be used by two threads at once ("Already
    borrowed"): every call holds a lock.
    """

    def __init__(self, tokenizer: Any, max_model_len: int, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size if vocab_size is not None else len(tokenizer)
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        with self._lock:
            return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=True)]

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        with self._lock:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return [int(t) for t in self.tokenizer.encode(str(text), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return str(self.tokenizer.decode(list(ids)))

    def token(self, token_id: int) -> str:
        """One token's text (for logprob entries vLLM left undecoded)."""
        return self.decode([token_id])
