"""What the request layer, the decode loop and a model runner exchange (the seam for another engine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = frozenset({CHAT, COMPLETIONS})


class BadRequest(Exception):
    """A request the model side refuses (an HTTP 400 with OpenAI's error envelope)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class RunnerError(RuntimeError):
    """The model failed on a batch (not the request's fault: retried by the engine)."""


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
    """What the decode loop and the request layer need from a model (the seam for another engine)."""

    n_slots: int
    slot_ctx: int
    n_batch: int
    n_vocab: int
    #: Shortest common prefix worth copying KV cells for.
    min_prefix: int
    #: Whether the active sequences should occupy the lowest slots without gaps (see ``DecodeLoop._compact``).
    wants_dense_slots: bool

    # request layer
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]: ...
    def make_sampler(self, params: SamplingParams) -> Any: ...

    # decode loop
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


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


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
