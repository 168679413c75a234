"""LaneStore: subs planned, updated and finished, and which requests each holds."""

from __future__ import annotations

import dataclasses

import pytest
from contract_helpers import NOW, make_batch, ok

from freight.domain.lanes import LaneSub, SubState
from freight.domain.requests import Result
from freight.ports import Store


def sub(sub_id: str, batch_id: str, n: int, created_at: float = NOW) -> LaneSub:
    return LaneSub(id=sub_id, batch_id=batch_id, round=1, state=SubState.PLANNED, requests=n, bytes=10 * n,
                   created_at=created_at)


def test_a_sub_holds_its_requests_until_it_is_finished(store: Store) -> None:
    b = make_batch(store, 5)
    assert [(i, h) for i, _, h in store.lane_unassigned(b.id, -1, 10)] == [(i, 0) for i in range(5)]
    s1 = sub("sub1", b.id, 3)
    store.lane_plan(s1, [0, 1, 2])
    assert store.lane_subs(b.id) == [s1]
    assert store.lane_items("sub1") == [0, 1, 2]
    assert [(i, body) for i, body in store.lane_bodies("sub1", -1, 2)] == [(0, b'{"model":"m"}'),
                                                                            (1, b'{"model":"m"}')]
    assert [i for i, _ in store.lane_bodies("sub1", 1, 10)] == [2]
    assert [i for i, _, _ in store.lane_unassigned(b.id, -1, 10)] == [3, 4]
    assert [i for i, _, _ in store.lane_unassigned(b.id, 3, 10)] == [4]
    # finished with results for two of its three: the third goes back to the pool, held once before
    bad = Result(status_code=500, body=b"{}", input_tokens=1)
    assert store.lane_finish("sub1", b.id, [(0, ok()), (1, bad), (4, ok())]) == 2, "only its own requests"
    assert store.lane_finish("sub1", b.id, [(2, ok())]) == 0, "finished once"
    assert store.lane_subs(b.id) == [] and store.lane_subs(b.id, live_only=False)[0].state is SubState.DONE
    assert [(i, h) for i, _, h in store.lane_unassigned(b.id, -1, 10)] == [(2, 1), (3, 0), (4, 0)]
    got = store.get_batch("p", b.id)
    assert got is not None and (got.request_counts.completed, got.request_counts.failed) == (1, 1)
    assert got.usage.input_tokens == 4
    assert [r.idx for r in store.results(b.id, -1, 10)] == [0, 1]
    assert store.lane_finish("nope", b.id, []) == 0


def test_lane_update_sets_columns_and_progress_counts_running_subs(store: Store) -> None:
    a = make_batch(store, 2, "batch_" + "1" * 24)
    b = make_batch(store, 2, "batch_" + "2" * 24)
    store.lane_plan(sub("sa", a.id, 2), [0, 1])
    store.lane_plan(sub("sb", b.id, 2, NOW + 1), [0, 1])
    store.lane_update("sa", state=SubState.RUNNING, upload_id="up", upstream_id="ub", create_sent_at=NOW + 2,
                      upstream_status="in_progress", completed=1, failed=1, cancel_sent=True)
    store.lane_update("sa", completed=2)
    (got,) = store.lane_subs(a.id)
    assert got == dataclasses.replace(sub("sa", a.id, 2), state=SubState.RUNNING, upload_id="up", upstream_id="ub",
                                      create_sent_at=NOW + 2, upstream_status="in_progress", completed=2, failed=1,
                                      cancel_sent=True)
    assert store.lane_progress([a.id, b.id]) == {a.id: (2, 1)}, "only running subs report progress"
    assert store.lane_progress([]) == {}
    with pytest.raises(ValueError):
        store.lane_update("sa", batch_id="x")
