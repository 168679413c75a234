"""FreightBatchOperator in real Airflow (``dag.test()`` on SQLite) against a real ``freight serve``.

Runs in .venv-pipelines (Makefile: test-integrations). ``dag.test()`` runs the task in process;
when it defers, Airflow serializes the trigger, re-imports it by its class path, runs it inline
(as the triggerer would) and resumes the task with the trigger's event.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import FreightServer, jsonl_bytes, parse_jsonl, request_line

DAG_FILE = '''
import os
from datetime import timedelta

from airflow.sdk import DAG

from freight.integrations.airflow.operators import FreightBatchOperator

with DAG("freight_batch", schedule=None) as dag:
    FreightBatchOperator(
        task_id="batch",
        input_file=os.environ["FREIGHT_TEST_INPUT"],
        freight_url="{{ var.value.freight_url }}",  # a template, as docs/pipelines.md shows for api_key
        extra_body={"priority": 3, "max_cost_usd": 5.0},
        poll_interval_s=0.2,
        wait_timeout=timedelta(minutes=2),
        download_to=os.environ["FREIGHT_TEST_DOWNLOAD"],
    )

with DAG("freight_expiring", schedule=None) as expiring:
    # 16 requests of 1.5 s on a model running 8 at a time, in a 1 s completion window: the batch expires.
    FreightBatchOperator(
        task_id="batch",
        requests=[{"messages": [{"role": "user", "content": f"q{i}"}], "script": {"sleep_s": 1.5}}
                  for i in range(16)],
        model="freight-scripted-slow",
        completion_window="1s",
        freight_url=os.environ["FREIGHT_TEST_URL"],
        poll_interval_s=0.2,
    )
'''


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory, server: FreightServer) -> Iterator[dict[str, Any]]:
    """AIRFLOW_HOME in a temp dir with a migrated SQLite database and a dags folder holding DAG_FILE."""
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    (home / "dags" / "freight_dags.py").write_text(textwrap.dedent(DAG_FILE))
    lines = [request_line(f"r{i}", model="freight-priced", sleep_s=0.3) for i in range(6)]
    (home / "input.jsonl").write_bytes(jsonl_bytes(lines))
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
           "FREIGHT_TEST_URL": server.url, "FREIGHT_TEST_INPUT": str(home / "input.jsonl"),
           "FREIGHT_TEST_DOWNLOAD": str(home / "results"), "AIRFLOW_VAR_FREIGHT_URL": server.url}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    airflow = Path(sys.executable).parent / "airflow"
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(home / "dags"))
    assert not bag.import_errors, bag.import_errors
    yield {"home": home, "dags": bag.dags}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _task_result(dag_run: Any) -> tuple[str, Any]:
    """The task's state and its return value (XCom), read from Airflow's database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    ti = dag_run.get_task_instance("batch")
    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, key="return_value", task_ids="batch",
                                                 dag_ids=dag_run.dag_id)).first()
        value = XComModel.deserialize_value(row) if row is not None else None
    return str(ti.state), value


def test_the_operator_defers_and_returns_where_the_results_are(airflow_env: dict[str, Any], server: FreightServer,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        dag_run = airflow_env["dags"]["freight_batch"].test()
    state, result = _task_result(dag_run)
    assert state == "success", state
    assert result["status"] == "completed" and result["total"] == 6 and result["completed"] == 6
    # Only the trigger's event carries a poll count: execute_complete ran on the trigger's event.
    assert result["trigger_polls"] >= 1
    assert "[DAG TEST] running trigger in line" in caplog.text
    assert result["cost_usd"] > 0
    out = parse_jsonl(Path(result["output_path"]).read_bytes())
    assert sorted(line["custom_id"] for line in out) == [f"r{i}" for i in range(6)]
    assert result["error_path"] is None
    batch = server.client().batches.retrieve(result["batch_id"])
    assert batch.output_file_id == result["output_file_id"]
    assert batch.model_extra and batch.model_extra["freight"]["max_cost_usd"] == 5.0
    assert batch.model_extra["freight"]["priority"] == 3


def test_a_batch_that_expires_fails_the_task_after_the_trigger_fired(airflow_env: dict[str, Any],
                                                                     server: FreightServer,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    before = {b.id for b in server.client().batches.list(limit=100)}
    with caplog.at_level("INFO"):
        dag_run = airflow_env["dags"]["freight_expiring"].test()
    state, result = _task_result(dag_run)
    assert state == "failed" and result is None
    assert "[DAG TEST] running trigger in line" in caplog.text  # the task deferred; the trigger ran
    (batch,) = [b for b in server.client().batches.list(limit=100) if b.id not in before]
    assert batch.status == "expired" and batch.completion_window == "1s"


def test_airflow_finds_the_provider(airflow_env: dict[str, Any]) -> None:
    from airflow.providers_manager import ProvidersManager

    info = ProvidersManager().providers["freight"].data
    assert info["operators"][0]["python-modules"] == ["freight.integrations.airflow.operators"]
    assert info["triggers"][0]["python-modules"] == ["freight.integrations.airflow.triggers"]


def test_the_trigger_polls_until_the_batch_ends(server: FreightServer) -> None:
    """The trigger alone, as the triggerer runs it: rebuilt from serialize(), iterated on an event loop."""
    from airflow.sdk._shared.module_loading import import_string

    from freight.client import Client
    from freight.integrations.airflow.triggers import FreightBatchTrigger

    with Client(server.url) as client:
        batch = client.submit([request_line(f"s{i}", model="freight-scripted-slow", sleep_s=0.4) for i in range(16)])
    classpath, kwargs = FreightBatchTrigger(batch["id"], server.url, poll_interval_s=0.1).serialize()
    trigger = import_string(classpath)(**kwargs)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "ended" and payload["batch"]["status"] == "completed"
    assert payload["batch"]["request_counts"]["completed"] == 16
    assert payload["polls"] >= 3  # 16 requests of 0.4 s, 8 at a time: about 0.8 s of polling every 0.1 s


def test_the_trigger_reports_a_batch_freight_does_not_know(server: FreightServer) -> None:
    from freight.integrations.airflow.triggers import FreightBatchTrigger

    async def first_event() -> Any:
        async for event in FreightBatchTrigger("batch_nope", server.url, poll_interval_s=0.1).run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "error" and payload["batch_id"] == "batch_nope" and "HTTP 404" in payload["message"]
