"""Settings: every declared key read the same way from freight.toml, the environment and flags
(freight/config/registry.py), and the docs' tables generated from the declarations."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.cli.show_config import without_password
from freight.config import CacheSettings, load_settings
from freight.config.docs import regenerate, render
from freight.config.models import BACKEND_OPTIONS
from freight.config.models import BACKENDS as MODEL_BACKENDS
from freight.config.registry import BY_NAME, ENV_ONLY, SETTINGS, Setting
from freight.domain.errors import ConfigError
from freight.domain.webhooks import WebhookPolicy
from freight.engine.settings import EngineSettings
from freight.services.message_batches import MessageBatchLimits
from freight.wire import jsonx
from freight.wire.batch_input import InputLimits

ROOT = Path(__file__).parent.parent


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, **flags: Any) -> Any:
    path = tmp_path / "freight.toml"
    path.write_text(text)
    return load_settings(path, env=env or {}, **flags)


def test_nothing_configured_gives_the_defaults_of_the_objects_that_use_them(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    assert s.input_limits == InputLimits()
    assert s.webhooks == WebhookPolicy()
    assert s.cache == CacheSettings()
    assert s.anthropic == MessageBatchLimits()  # its window written as "24h", as before
    engine = EngineSettings()
    assert (s.engine.lease_s, s.engine.poll_interval_s, s.engine.retry) == (engine.lease_s, engine.poll_interval_s,
                                                                             engine.retry)
    assert (s.quota.max_active_batches, s.quota.max_queued_requests) == (100, 1_000_000)
    assert all(source == "default" for _, source in s.given.values())


@pytest.mark.parametrize(("text", "message"), [
    ("[engine]\nlease_s = 0", "engine.lease_s in .* must be more than 0, got 0"),
    ("[engine]\nmax_attempts = 0", "engine.max_attempts in .* must be at least 1, got 0"),
    ("[limits]\nmax_lines = 0", "limits.max_lines in .* must be at least 1, got 0"),
    ("[server]\nport = \"80\"", "server.port in .* must be a whole number, got '80'"),
    ("[engine]\npoll_interval_s = true", "engine.poll_interval_s in .* must be a number"),
    ("[scheduling]\nmargin = 1.5", "scheduling.margin in .* must be at most 1, got 1.5"),
    ("[server]\nsqlite_synchronous = \"OFF\"", "must be one of 'FULL', 'NORMAL', 'EXTRA'"),
    ("[engine]\nleese_s = 5", r"unknown key\(s\) in \[engine\].*leese_s \(did you mean lease_s\?\)"),
    ("[engnie]\nlease_s = 5", r"engnie \(did you mean engine\?\)"),
    ("[cache]\nttl = \"soon\"", "cache.ttl in .*: not a duration"),
    ("[projects.\"a\"]\nweight = 0", "projects.\"a\".weight in .* must be more than 0, got 0"),
    ("[intake.\"q\"]\nkind = \"kafka\"", "intake.\"q\".kind in .* must be one of 'redis', 'amqp', 'http'"),
    ("[limits]\ncompletion_window_min = \"2d\"\ncompletion_window_max = \"1d\"",
     "completion_window_min .* is more than"),
    # an intake's window out of the limits: every flush would fail, for ever
    ("[intake.\"q\"]\nkind = \"http\"\ncompletion_window = \"31d\"",
     r"\[intake.\"q\"\] completion_window '31d' is outside limits.completion_window_min..max \(1s..2592000s\)"),
    ("[limits]\ncompletion_window_min = \"1h\"\n[intake.\"q\"]\nkind = \"http\"\ncompletion_window = \"10m\"",
     r"completion_window '10m' is outside .*\(3600s..2592000s\)"),
    ("[engine]\nretry_base_delay_s = 10\nretry_max_delay_s = 5", "retry_base_delay_s must be at most"),
    ("[webhooks]\nretry_base_delay_s = 10\nretry_max_delay_s = 5",
     r"\[webhooks\]: retry_base_delay_s \(10.0\) must be at most retry_max_delay_s \(5.0\)"),
    # nan passes every bound (a nan poll interval hung the engine), inf is no setting
    ("[engine]\npoll_interval_s = nan", "engine.poll_interval_s in .* must be a finite number, got nan"),
    ("[engine]\nlease_s = inf", "engine.lease_s in .* must be a finite number, got inf"),
    ("[models.\"m\"]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\ntimeout_s = nan",
     "models.\"m\".timeout_s in .* must be a finite number"),
    # a URL with a scheme its client cannot use (a bad Redis URL left every remote batch stuck, retrying)
    ("[server]\nredis_url = \"notaurl\"", "server.redis_url in .* must be a URL starting redis://, rediss:// or "
     "unix://, got 'notaurl'"),
    ("[server]\nblobs = \"ftp://x/y\"", "server.blobs in .* must be a directory or a URL starting s3://"),
    # ... or a port that is not a number (every remote request then failed: model_unavailable)
    ("[server]\nredis_url = \"redis://:secret@127.0.0.1:notaport/0\"",
     r"server.redis_url in .* is not a valid URL: Port could not be cast to integer value as 'notaport'$"),
    # a required key, when the config loads (not a constructor's missing-argument error at start)
    *[(f"[models.\"m\"]\nbackend = \"{b}\"", rf"\[models.\"m\"\] of .* needs a 'base_url' key \(backend '{b}'\)")
      for b in ("openai", "openai-batch", "anthropic-batch")],
])
def test_a_bad_value_is_an_error_naming_where_it_came_from(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def test_an_explicit_zero_means_no_limit_only_where_declared(tmp_path: Path) -> None:
    s = load(tmp_path, "[limits]\nmax_active_batches_per_project = 0\n[cache]\nmax_bytes = 0\n"
                       "[engine]\ndrain_timeout_s = 0\n")
    assert s.quota.max_active_batches is None
    assert s.cache.max_bytes is None
    assert s.engine.drain_timeout_s == 0  # a real 0, not the default 30


def test_flag_over_variable_over_file_over_default(tmp_path: Path) -> None:
    text = "[server]\nport = 9001\nhost = \"0.0.0.0\"\n[engine]\nlease_s = 30\n"
    s = load(tmp_path, text, env={"FREIGHT_PORT": "9002", "FREIGHT_HOST": "", "FREIGHT_ENGINE_MAX_ATTEMPTS": "2"},
             port=9003)
    assert (s.port, s.given["server.port"][1]) == (9003, "--port")
    assert (s.host, s.given["server.host"][1]) == ("0.0.0.0", str(tmp_path / "freight.toml"))  # "" is unset
    assert (s.engine.lease_s, s.engine.retry.max_attempts) == (30.0, 2)
    assert s.given["engine.max_attempts"] == (2, "FREIGHT_ENGINE_MAX_ATTEMPTS")
    assert s.given["engine.poll_interval_s"][1] == "default"
    s = load(tmp_path, text, env={"FREIGHT_PORT": "9002"})
    assert (s.port, s.given["server.port"][1]) == (9002, "FREIGHT_PORT")


def test_variables_are_parsed_by_the_settings_type(tmp_path: Path) -> None:
    env = {"FREIGHT_WEBHOOKS_ALLOW_HTTP": "yes", "FREIGHT_CACHE_TTL": "12h", "FREIGHT_SCHEDULING_OFF_PEAK":
           "22:00-23:00, 01:00-05:00", "FREIGHT_LIMITS_MAX_QUEUED_REQUESTS_PER_PROJECT": "0",
           "FREIGHT_SERVER_SQLITE_SYNCHRONOUS": "normal"}
    s = load(tmp_path, "", env=env)
    assert s.webhooks.allow_http is True
    assert s.cache.ttl_s == 12 * 3600
    assert s.engine.scheduling.calendar.off_peak is not None
    assert len(s.engine.scheduling.calendar.off_peak.windows) == 2
    assert s.quota.max_queued_requests is None
    assert s.sqlite_synchronous == "NORMAL"
    with pytest.raises(ConfigError, match="FREIGHT_ENGINE_LEASE_S must be a number, got 'soon'"):
        load(tmp_path, "", env={"FREIGHT_ENGINE_LEASE_S": "soon"})
    with pytest.raises(ConfigError, match="FREIGHT_METRICS_PROJECT_LABEL must be true or false"):
        load(tmp_path, "", env={"FREIGHT_METRICS_PROJECT_LABEL": "maybe"})
    with pytest.raises(ConfigError, match="FREIGHT_ENGINE_LEASE_S must be a finite number, got nan"):
        load(tmp_path, "", env={"FREIGHT_ENGINE_LEASE_S": "nan"})
    with pytest.raises(ConfigError, match="FREIGHT_REDIS_URL must be a URL starting redis://"):
        load(tmp_path, "", env={"FREIGHT_REDIS_URL": "http://x"})
    assert load(tmp_path, "", env={"FREIGHT_BLOBS": "s3://b/p"}).blobs == "s3://b/p"


def test_a_configured_data_dir_wins_over_a_commands_own_default(tmp_path: Path) -> None:
    s = load(tmp_path, f"[server]\ndata_dir = \"{tmp_path / 'd'}\"\n", default_dir=tmp_path / "run")
    assert s.data_dir == tmp_path / "d"
    assert load(tmp_path, "", default_dir=tmp_path / "run").data_dir == tmp_path / "run"


def _in_bounds(s: Setting) -> st.SearchStrategy[Any]:
    low = s.min if s.min is not None else (s.above + 1e-6 if s.above is not None else 0)
    high = s.max if s.max is not None else 10**9
    if s.kind in ("int", "duration"):
        return st.integers(int(max(low, 1 if s.zero is None and low > 0 else low)), int(high))
    return st.floats(min_value=low, max_value=high, allow_nan=False)


NUMBERS = [s for s in SETTINGS if s.kind in ("int", "float", "duration") and not s.section.endswith(".*")]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_number_in_bounds_is_used_as_given_and_any_other_refused(tmp_path_factory: Any, data: Any) -> None:
    s = data.draw(st.sampled_from(NUMBERS))
    tmp = tmp_path_factory.mktemp("cfg")
    value = data.draw(_in_bounds(s))
    for pair in ("engine", "webhooks"):  # (base <= max is checked: keep the other at its default)
        if s.name == f"{pair}.retry_max_delay_s":
            value = max(value, BY_NAME[f"{pair}.retry_base_delay_s"].default)
        if s.name == f"{pair}.retry_base_delay_s":
            value = min(value, BY_NAME[f"{pair}.retry_max_delay_s"].default)
    if s.name == "limits.completion_window_min":
        value = min(value, BY_NAME["limits.completion_window_max"].default)
    literal = repr(float(value)) if isinstance(value, float) else str(value)
    got = load(tmp, f"[{s.section}]\n{s.key} = {literal}\n").given[s.name]
    assert got[0] == (None if s.zero is not None and value == 0 else value)
    below = (s.min - 1) if s.min is not None else s.above
    if below is not None and not (s.zero is not None and below == 0):
        bad = repr(float(below)) if s.kind == "float" else str(int(below))
        with pytest.raises(ConfigError, match=re.escape(s.name)):
            load(tmp, f"[{s.section}]\n{s.key} = {bad}\n")


def test_every_toml_example_in_the_docs_loads(tmp_path: Path) -> None:
    pages = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    blocks = [(page.name, b) for page in pages for b in re.findall(r"```toml\n(.*?)```", page.read_text(), re.S)]
    assert len(blocks) >= 15
    for name, block in blocks:
        try:
            load(tmp_path, block)
        except ConfigError as exc:
            raise AssertionError(f"a freight.toml example in {name} does not load: {exc}\n{block}") from None


def test_the_docs_tables_are_what_the_registry_says() -> None:
    done = subprocess.run([sys.executable, "-m", "freight.config.docs", "--check"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "configuration.md").read_text()
    for s in SETTINGS:
        assert f"| `{s.key}` |" in page, s.name
    stale = page.replace("FREIGHT_ENGINE_LEASE_S", "FREIGHT_LEASE")
    assert regenerate(stale) == page
    assert "FREIGHT_ENGINE_LEASE_S" in render("engine")


def test_every_variable_freight_reads_is_documented() -> None:
    documented = {s.env_var for s in SETTINGS if s.env_var} | {
        name.strip() for e in ENV_ONLY for name in e.name.split(",")}
    source = "\n".join(p.read_text() for p in (ROOT / "freight").rglob("*.py"))
    read = set(re.findall(r"\"(FREIGHT_[A-Z_]+)\"", source))
    assert read <= documented, read - documented
    for e in ENV_ONLY:
        for name in e.name.split(","):
            assert f'"{name.strip()}"' in source or name.strip().startswith("AWS_"), name


def test_freight_config_shows_each_value_and_its_source(tmp_path: Path) -> None:
    (tmp_path / "freight.toml").write_text(
        "[engine]\nlease_s = 45\n[limits]\nmax_active_batches_per_project = 0\n"
        '[models."gpt-x"]\nbackend = "openai"\nbase_url = "http://u:secret@127.0.0.1:9/v1"\nrpm = 60\n'
        '[projects."team-a"]\nmax_cost_usd = 5.0\nweight = 2.0\n'
        '[intake."tickets"]\nkind = "redis"\nurl = "redis://127.0.0.1:6379/0"\nstream = "in"\nmodel = "gpt-x"\n')
    env = {"FREIGHT_CONFIG": str(tmp_path / "freight.toml"), "FREIGHT_WEBHOOKS_TIMEOUT_S": "3",
           "FREIGHT_DATABASE_URL": "postgresql://freight:hunter2@db:5432/freight"}
    # In a process of its own: the command sets up logging for the whole process.
    import os

    done = subprocess.run([sys.executable, "-m", "freight", "config"], env={**os.environ, **env}, capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = {line.split(" = ")[0].strip(): line for line in done.stdout.splitlines() if " = " in line}
    assert lines["engine.lease_s"].endswith(f"= 45.0  # {tmp_path / 'freight.toml'}")
    assert lines["webhooks.timeout_s"].endswith("= 3.0  # FREIGHT_WEBHOOKS_TIMEOUT_S")
    assert "hunter2" not in done.stdout + done.stderr
    assert '"postgresql://freight:***@db:5432/freight"' in lines["server.database_url"]
    assert lines["engine.poll_interval_s"].endswith("# default")
    # an explicit 0 that turns a limit off is shown as given, with what it means (not as "(none)")
    assert lines["limits.max_active_batches_per_project"].endswith(f"= 0 (no limit)  # {tmp_path / 'freight.toml'}")
    # the named tables too: each model's keys (passwords masked), each project's and each intake's
    file = tmp_path / "freight.toml"
    assert lines['models."gpt-x".rpm'] == f'models."gpt-x".rpm = 60  # {file}'
    assert lines['models."gpt-x".chunk_size'] == 'models."gpt-x".chunk_size = 16  # default'  # its backend's default
    assert '"http://u:***@127.0.0.1:9/v1"' in lines['models."gpt-x".base_url'] and "secret" not in done.stdout
    assert lines['projects."team-a".max_cost_usd'] == f'projects."team-a".max_cost_usd = 5.0  # {file}'
    assert lines['intake."tickets".stream'] == f'intake."tickets".stream = "in"  # {file}'
    assert lines['intake."tickets".flush_size'] == 'intake."tickets".flush_size = 100  # default'  # not given
    as_json = jsonx.loads(subprocess.run([sys.executable, "-m", "freight", "config", "--json"], capture_output=True,
                                         env={**os.environ, **env}, text=True, cwd=tmp_path, check=True).stdout)
    assert as_json["models"]["gpt-x"]["backend"] == "openai"
    assert as_json["projects"] == {"team-a": {"max_cost_usd": 5.0, "weight": 2.0}}  # (every key: weights too)
    assert as_json["intake"]["tickets"]["model"] == "gpt-x"


def test_a_password_in_a_url_is_masked() -> None:
    assert without_password("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert without_password("amqp://guest@h/") == "amqp://guest@h/"
    assert without_password("postgresql://u:p@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"


def _constructor(backend: str) -> dict[str, Any]:
    """The keyword parameters (and defaults) a backend's class takes from a model's table."""
    import inspect

    from freight.backends.llama_cpp import LlamaCppBackend
    from freight.backends.local_embeddings import LocalEmbeddingBackend
    from freight.backends.openai_http import OpenAIHTTPBackend
    from freight.backends.provider_batches import AnthropicBatchLane, OpenAIBatchLane
    from freight.backends.scripted import ScriptedBackend
    from freight.backends.vllm import VllmBackend

    classes = {"local-embeddings": LocalEmbeddingBackend, "llama-cpp": LlamaCppBackend, "vllm": VllmBackend,
               "openai": OpenAIHTTPBackend, "openai-batch": OpenAIBatchLane, "anthropic-batch": AnthropicBatchLane,
               "scripted": ScriptedBackend}
    params: dict[str, Any] = {}
    for cls in classes[backend].__mro__:  # a lane's subclass adds its own keys to its base's
        if "__init__" in vars(cls) and cls is not object:
            for p in inspect.signature(cls.__init__).parameters.values():
                if p.kind is not p.VAR_KEYWORD:
                    params.setdefault(p.name, None if p.default is p.empty else p.default)
    for name in ("self", "model_id", "env", "api_key"):  # not from the file
        params.pop(name, None)
    return params


@pytest.mark.parametrize("backend", sorted(MODEL_BACKENDS))
def test_each_backends_declared_keys_and_defaults_are_its_own(backend: str) -> None:
    declared = {s.key: s.default for s in BACKEND_OPTIONS[backend]}
    assert declared == _constructor(backend)


@pytest.mark.parametrize(("table", "message"), [
    ('backend = "local-embeddings"\nbacth_size = 8', r"bacth_size \(did you mean batch_size\?\)"),
    ('backend = "local-embeddings"\nbatch_size = "8"', r'models."m".batch_size in .* must be a whole number'),
    ('backend = "llama"', r"models.\"m\".backend in .* must be one of 'local-embeddings', 'llama-cpp'"),
    ('model_path = "x.gguf"', "needs a 'backend' key"),
    ('backend = "openai"\nbase_url = "http://h/v1"\napi_key = "sk-very-secret"', "name it in api_key_env"),
    ('backend = "openai-batch"\nbase_url = "http://h/v1"\ncache = false', r"unknown key\(s\).*cache"),
    ('backend = "openai"\nbase_url = "http://h/v1"\nplacement = "ray"',
     r"placement apply only to local models, which can be placed on Ray .*not to backend .openai."),
    ('backend = "llama-cpp"\nreplicas = "two"\nplacement = "ray"', r"replicas must be a number or a table"),
    # numeric keys' bounds, read with the file (so `freight config` catches them before a deploy)
    ('backend = "openai"\nbase_url = "http://h/v1"\nrpm = -1', r'models."m".rpm in .* must be at least 1, got -1'),
    ('backend = "scripted"\nchunk_size = 0', r'models."m".chunk_size in .* must be at least 1, got 0'),
    ('backend = "openai-batch"\nbase_url = "http://h/v1"\npoll_interval_s = 0', r"poll_interval_s .* more than 0"),
    ('backend = "vllm"\ngpu_memory_utilization = 1.5', r"gpu_memory_utilization .* at most 1, got 1.5"),
    ('backend = "scripted"\nmachine_cost_per_hour = -1.0', r"machine_cost_per_hour .* at least 0"),
])
def test_a_models_table_is_checked_when_the_config_loads(tmp_path: Path, table: str, message: str | None) -> None:
    text = f'[models."m"]\n{table}\n'
    if message is None:
        load(tmp_path, text)
        return
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, text)
    assert "sk-very-secret" not in str(info.value)


def test_the_docs_have_a_table_for_every_backend() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for backend in MODEL_BACKENDS:
        assert f'### `backend = "{backend}"`' in page


def test_a_misspelt_freight_variable_is_named_and_a_users_own_is_not(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    env = {"FREIGHT_ENGINE_LEESE_S": "5", "FREIGHT_MY_UPSTREAM_KEY": "sk-1", "FREIGHT_PORT": "9000"}
    with caplog.at_level("WARNING", logger="freight.config"):
        s = load(tmp_path, "", env=env)
    assert s.engine.lease_s == 120 and s.port == 9000
    assert [r.getMessage() for r in caplog.records] == [
        "ignored the environment variable FREIGHT_ENGINE_LEESE_S (did you mean FREIGHT_ENGINE_LEASE_S?)"]
