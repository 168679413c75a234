"""The dbt example (examples/dbt): ``dbt build`` with dbt-duckdb runs its Python model, which enriches a
seeded table through a real ``freight serve``. Runs in .venv-pipelines (Makefile: test-integrations).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from servers import SCRIPTED, FreightServer, config_text

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dbt"


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text())


def test_dbt_build_enriches_the_seeded_table_through_freight(server: FreightServer, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    database = tmp_path / "example.duckdb"
    env = {**os.environ, "FREIGHT_URL": server.url, "FREIGHT_MODEL": SCRIPTED,
           "FREIGHT_DBT_DUCKDB": str(database), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
           "DBT_LOG_PATH": str(tmp_path / "logs")}
    dbt = Path(sys.executable).parent / "dbt"
    done = subprocess.run([str(dbt), "build", "--project-dir", str(project), "--profiles-dir", str(project)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    with duckdb.connect(str(database), read_only=True) as db:
        rows = db.execute("select review_id, summary from review_summaries order by review_id").fetchall()
    assert [r[0] for r in rows] == ["r1", "r2", "r3"]
    assert [r[1] for r in rows] == [
        "echo: Summarize this review in one short sentence: The tea was great and the staff were friendly.",
        "echo: Summarize this review in one short sentence: The soup arrived cold and the bread was stale.",
        "echo: Summarize this review in one short sentence: Service was slow but the dessert made up for it."]
    batches = server.client().batches.list(limit=10).data
    assert len(batches) == 1 and batches[0].status == "completed" and batches[0].request_counts.total == 3
