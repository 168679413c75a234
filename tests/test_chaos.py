"""Chaos in the test suite: freight serve and freight run SIGKILLed at every moment of a batch's life.

The driver is tests/chaos.py (``python -m tests.chaos --kills 100`` for the long run). The seed is
printed; ``FREIGHT_CHAOS_SEED=N`` replays a schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos import PHASES, Tally, chaos, check_lines, check_not_rerun

pytestmark = pytest.mark.slow


def test_the_checks_can_fail() -> None:
    ids = ["a", "b", "c"]
    line = {"response": {"status_code": 200, "request_id": "req_1"}}
    tally = Tally(seed=0, echo=False)
    check_lines(tally, "ok", ids, [{"custom_id": "a", **line}, {"custom_id": "b", **line}],
                [{"custom_id": "c", "response": None}], (3, 2, 1))
    assert tally.ok and tally.lines == 3
    check_lines(tally, "lost and doubled", ids, [{"custom_id": "a", **line}, {"custom_id": "a", **line}],
                [{"custom_id": "x", "response": None}], (3, 2, 1))
    assert (tally.lost, tally.doubled, tally.counts) == (2, 2, 0)
    check_lines(tally, "counts", ids, [{"custom_id": c, **line} for c in ids], [], (3, 2, 1))
    assert tally.counts == 1
    check_not_rerun(tally, "rerun", {"a": (200, "req_0")}, [{"custom_id": "a", **line}])
    assert tally.rerun == 1 and not tally.ok


def test_freight_serve_survives_kills_at_every_moment(tmp_path: Path) -> None:
    tally = chaos(max(10, len(PHASES) + 3), target="serve", workdir=tmp_path, big=800, deadline_s=90)
    print(tally.table())
    assert tally.kills >= 10
    assert tally.ok, tally.table()
    assert tally.batches >= 5 and tally.lines >= 1000, tally.table()


def test_freight_run_survives_repeated_kills(tmp_path: Path) -> None:
    tally = chaos(4, target="run", workdir=tmp_path, run_size=600, deadline_s=60)
    print(tally.table())
    assert tally.kills >= 4
    assert tally.ok, tally.table()
    assert tally.batches >= 1 and tally.lines >= 600
