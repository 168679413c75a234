"""``freight submit --max-cost-usd`` refuses what no JSON body can carry before anything is uploaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from freight.cli.client import submit


@pytest.mark.parametrize("cap", ["inf", "nan", "-inf"])
def test_a_cap_that_is_not_finite_is_a_usage_error_before_any_upload(tmp_path: Path, cap: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}\n')
    # (nothing listens on this port: an upload would fail with exit 1, not a usage error)
    r = CliRunner().invoke(submit, [str(path), "--max-cost-usd", cap, "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 2, r.output
    assert "max-cost-usd" in r.output
