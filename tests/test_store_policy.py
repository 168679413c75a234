"""The store's policy, computed in the domain (pure; no database): status changes as
compare-and-set, quotas, claims' verdicts, counters, Message Batch outcomes, and the named SQL
that carries the domain's values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.domain.batches import TERMINAL, TIMESTAMP_FIELD, BatchStatus
from freight.domain.claims import Tally, is_lost, worker_lost
from freight.domain.errors import RateLimited
from freight.domain.message_batches import ended_counts
from freight.domain.quota import ActiveBatch, Quota, check_quota, queued_requests
from freight.domain.requests import BATCH_CANCELLED, BATCH_EXPIRED, WORKER_LOST, RequestState, Result
from freight.domain.status_changes import STAMP_FIELDS, after_failed_validation, after_validation, change_status
from freight.store import queries

statuses = st.sampled_from(list(BatchStatus))
stamps = st.fixed_dictionaries({k: st.none() | st.integers(0, 10**10) for k in STAMP_FIELDS})


@given(statuses, stamps, st.sets(statuses), statuses, st.integers(0, 10**10))
def test_a_status_change_happens_only_from_an_expected_status_and_sets_only_its_stamp(
    current: BatchStatus, before: dict[str, int | None], expected: set[BatchStatus], new: BatchStatus, at: int
) -> None:
    change = change_status(current, before, expected, new, at)
    if current not in expected:
        assert change is None
        return
    assert change is not None and change.expected is current and change.new is new
    field = TIMESTAMP_FIELD.get(new)
    for k in STAMP_FIELDS:
        assert change.stamps[k] == (at if k == field else before[k])


@given(statuses, stamps, st.integers(0, 10**10))
def test_validation_starts_a_validating_batch_and_leaves_a_cancelling_one(
    current: BatchStatus, before: dict[str, int | None], at: int
) -> None:
    started, failed = after_validation(current, before, at), after_failed_validation(current, before, at)
    if current is BatchStatus.VALIDATING:
        assert started is not None and started.new is BatchStatus.IN_PROGRESS and started.stamps["in_progress_at"] == at
        assert failed is not None and failed.new is BatchStatus.FAILED and failed.stamps["failed_at"] == at
    elif current is BatchStatus.CANCELLING:
        for change in (started, failed):
            assert change is not None and change.new is BatchStatus.CANCELLING and change.stamps == before
    else:
        assert started is None and failed is None


@given(st.none() | st.integers(0, 50), st.none() | st.integers(0, 500), st.integers(0, 60), st.integers(0, 600),
       st.integers(0, 100))
def test_a_quota_refuses_exactly_past_its_limits(
    max_active: int | None, max_queued: int | None, active: int, queued: int, requests: int
) -> None:
    quota = Quota(max_active_batches=max_active, max_queued_requests=max_queued)
    too_many_batches = max_active is not None and active >= max_active
    too_many_requests = max_queued is not None and queued + requests > max_queued
    if not (too_many_batches or too_many_requests):
        check_quota(quota, active, queued, requests)
        return
    with pytest.raises(RateLimited) as err:
        check_quota(quota, active, queued, requests)
    assert err.value.code == ("too_many_active_batches" if too_many_batches else "too_many_queued_requests")
    assert "limits.max_" in err.value.message


def test_only_a_running_request_on_its_last_attempt_is_lost() -> None:
    assert is_lost(RequestState.RUNNING, 3, 3) and is_lost(RequestState.RUNNING, 4, 3)
    assert not is_lost(RequestState.RUNNING, 2, 3) and not is_lost(RequestState.PENDING, 3, 3)
    lost = worker_lost(3, 3)
    assert lost.error_code == WORKER_LOST and lost.status_code is None and "3 of 3" in (lost.error_message or "")


results = st.builds(Result, status_code=st.none() | st.integers(100, 599), input_tokens=st.integers(0, 100),
                    output_tokens=st.integers(0, 100))


@given(st.lists(results))
def test_a_tally_counts_every_result_once(rs: list[Result]) -> None:
    t = Tally.of(rs)
    assert t.completed + t.failed == len(rs)
    assert t.completed == sum(1 for r in rs if r.status_code is not None and 200 <= r.status_code < 300)
    assert t.input_tokens == sum(r.input_tokens for r in rs) and t.output_tokens == sum(r.output_tokens for r in rs)
    assert Tally.of(rs, tokens=False).input_tokens == 0
    assert bool(t) == bool(rs)


codes = st.none() | st.sampled_from([BATCH_CANCELLED, BATCH_EXPIRED, WORKER_LOST, "x"])


@given(st.lists(st.tuples(st.none() | st.integers(100, 599), codes, st.integers(0, 1000))))
def test_ended_counts_put_each_result_in_exactly_one_kind(groups: list[tuple[int | None, str | None, int]]) -> None:
    e = ended_counts(groups)
    assert e.succeeded + e.errored + e.canceled + e.expired == sum(n for _, _, n in groups)
    assert e.canceled == sum(n for s, c, n in groups if s is None and c == BATCH_CANCELLED)
    assert e.expired == sum(n for s, c, n in groups if s is None and c == BATCH_EXPIRED)


def test_sql_macros_are_the_domain_values_and_unknown_ones_are_refused() -> None:
    assert queries.expand("{batch.in_progress} {request.done} {file.purged} {sub.done}") == "'in_progress' 2 2 'done'"
    terminal = queries.expand("{batch.terminal}")
    assert sorted(terminal.strip("()").replace("'", "").split(", ")) == sorted(str(s) for s in TERMINAL)
    with pytest.raises(KeyError):
        queries.expand("{batch.nope}")


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_dialect_has_the_same_named_queries_and_no_macro_left(dialect: str) -> None:
    named = queries.queries(dialect)
    assert set(named) == set(queries.queries("sqlite"))
    for name, sql in named.items():
        assert "{" not in sql, name


def test_named_parameters_become_numbered_ones_for_rows_passed_as_tuples() -> None:
    sql, order = queries.positional("UPDATE t SET a = :a, b = :b || ':x' WHERE id = :id AND a <> :a AND c::text = 'y'")
    assert order == ("a", "b", "id")
    assert sql == "UPDATE t SET a = ?1, b = ?2 || ':x' WHERE id = ?3 AND a <> ?1 AND c::text = 'y'"


@given(st.lists(st.sampled_from(["alpha", "beta", "gamma_1", "d"]), min_size=1, max_size=8))
def test_positional_numbers_each_name_once_in_order_of_first_use(names: list[str]) -> None:
    sql, order = queries.positional(" ".join(f":{n}" for n in names))
    assert order == tuple(dict.fromkeys(names))
    assert sql.split() == [f"?{order.index(n) + 1}" for n in names]


def test_every_sql_file_is_package_data() -> None:
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["freight"]
    sql = [p.relative_to(root / "freight").as_posix() for p in (root / "freight" / "store").rglob("*.sql")]
    assert len(sql) > 10
    assert [p for p in sql if not any(fnmatch.fnmatchcase(p, pat) for pat in patterns)] == []


active_batches = st.builds(ActiveBatch, total=st.integers(0, 100), completed=st.integers(0, 50),
                           failed=st.integers(0, 50), input_lines=st.none() | st.integers(0, 100))


@given(st.lists(active_batches))
def test_queued_requests_count_a_validating_batch_by_its_input_lines(batches: list[ActiveBatch]) -> None:
    expected = 0
    for b in batches:
        expected += (b.input_lines or 0) if b.total == 0 else b.total - b.completed - b.failed
    assert queued_requests(batches) == expected
    assert queued_requests([ActiveBatch(0, 0, 0, 7), ActiveBatch(10, 3, 2, 99)]) == 12
