"""Prices, costs, projections, progress and caps: the pure policy and the freight.toml keys (fast, no server)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.config import load_settings
from freight.domain import budget
from freight.domain.batches import Batch, BatchStatus, RequestCounts, Usage
from freight.domain.errors import ConfigError, InvalidInput
from freight.domain.pricing import Billing, MachineCost, ModelPricing, Price, Tokens, progress, projected_usd
from freight.domain.requests import BATCH_CANCELLED, NEVER_RAN_MESSAGES, Result
from freight.ports import Store
from freight.services.budget_guard import BudgetedQueue
from freight.services.cost import CostControls
from freight.services.prices import PriceBook, pinned_price, pinned_table


class FixedClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def settings_from(tmp_path: Path, text: str) -> PriceBook:
    path = tmp_path / "freight.toml"
    path.write_text(text)
    return load_settings(path, env={}).price_book()


def test_realtime_cost_counts_cached_input_at_its_own_rate() -> None:
    p = ModelPricing(Billing.REALTIME, Price(2.5, 10.0, cached_input_per_mtok=1.25, batch_discount=0.5))
    tokens = Tokens(input=1_000_000, output=100_000, cached=400_000)
    assert p.realtime_usd(tokens) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 0.1 * 10.0)
    assert p.cost_usd(tokens) == p.realtime_usd(tokens)
    assert p.savings_usd(tokens, p.cost_usd(tokens)) == 0


def test_a_provider_batch_pays_the_discounted_price_and_saves_the_rest() -> None:
    p = ModelPricing(Billing.PROVIDER_BATCH, Price(2.0, 8.0, batch_discount=0.5))
    tokens = Tokens(input=2_000_000, output=1_000_000)
    assert p.cost_usd(tokens) == pytest.approx(6.0)
    assert p.savings_usd(tokens, p.cost_usd(tokens)) == pytest.approx(6.0)


def test_a_machine_costs_its_hours_at_the_configured_or_measured_rate() -> None:
    configured = ModelPricing(Billing.MACHINE, machine=MachineCost(per_hour=0.9, tokens_per_s=100))
    assert configured.cost_usd(Tokens(input=360_000)) == pytest.approx(0.9)
    measured = ModelPricing(Billing.MACHINE, machine=MachineCost(per_hour=0.9))
    assert measured.cost_usd(Tokens(input=5), busy_s=1800) == pytest.approx(0.45)
    assert measured.cost_usd(Tokens(input=5)) is None
    assert measured.savings_usd(Tokens(input=5), 0.45) is None  # no list price to compare with


def test_a_price_of_zero_is_a_price() -> None:
    free = ModelPricing(Billing.REALTIME, Price(0.0, 0.0))
    assert free.known and free.cost_usd(Tokens(input=10, output=10)) == 0.0


@pytest.mark.parametrize("kwargs", [{"input_per_mtok": -1.0, "output_per_mtok": 1.0},
                                    {"input_per_mtok": 1.0, "output_per_mtok": 1.0, "batch_discount": 1.0}])
def test_impossible_prices_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Price(**kwargs)


def test_projection_and_progress() -> None:
    assert projected_usd(1.0, 2, 10, finished=False) == pytest.approx(5.0)
    assert projected_usd(1.0, 2, 10, finished=True) == 1.0
    assert projected_usd(0.0, 0, 10, finished=False) is None
    assert projected_usd(None, 2, 10, finished=False) is None
    running = progress(started_at=1000, ended_at=None, now=1010.0, done=5, total=15)
    assert running.requests_per_s == pytest.approx(0.5) and running.eta_at == 1030
    ended = progress(started_at=1000, ended_at=1000, now=2000.0, done=3, total=3)
    assert ended.requests_per_s == pytest.approx(3.0) and ended.eta_at is None
    assert progress(started_at=None, ended_at=None, now=1.0, done=0, total=3).requests_per_s is None


def test_freight_toml_prices_override_the_pinned_table_and_never_reach_the_backend(tmp_path: Path) -> None:
    path = tmp_path / "freight.toml"
    path.write_text("""
[models."gpt-4o-mini"]
backend = "openai"
base_url = "http://127.0.0.1:1/v1"
price = { input_per_mtok = 0, output_per_mtok = 0.5, cached_input_per_mtok = 0, batch_discount = 0 }

[models."mine"]
backend = "openai"
base_url = "http://127.0.0.1:1/v1"
upstream_model = "gpt-4o"

[models."local"]
backend = "scripted"
machine_cost_per_hour = 0.9
tokens_per_s = 50

[projects."team-a"]
max_cost_usd = 12.5
""")
    settings = load_settings(path, env={})
    assert "price" not in settings.models["gpt-4o-mini"]
    assert "machine_cost_per_hour" not in settings.models["local"]
    book = settings.price_book()
    overridden = book.for_model("gpt-4o-mini").price
    assert overridden is not None and overridden.input_per_mtok == 0.0 and overridden.output_per_mtok == 0.5
    pinned = book.for_model("mine").price
    assert pinned is not None and pinned == pinned_price("gpt-4o") and "checked" in pinned.source
    assert book.for_model("local").billing is Billing.MACHINE
    assert settings.projects["team-a"].max_cost_usd == 12.5


@pytest.mark.parametrize("table", [
    'price = { input_per_mtok = "2" , output_per_mtok = 1 }',
    "price = { input_per_mtok = 2 }",
    "price = { input_per_mtok = 2, output_per_mtok = 1, batch_discount = 1.5 }",
    "price = { input_per_mtok = 2, output_per_mtok = 1, typo = 1 }",
    "tokens_per_s = 5",
    "machine_cost_per_hour = -1",
])
def test_bad_price_keys_are_config_errors(tmp_path: Path, table: str) -> None:
    with pytest.raises(ConfigError):
        settings_from(tmp_path, f'[models."m"]\nbackend = "scripted"\n{table}\n')


@pytest.mark.parametrize("cap", ["0", "-2", '"5"', "true"])
def test_bad_project_caps_are_config_errors(tmp_path: Path, cap: str) -> None:
    with pytest.raises(ConfigError):
        settings_from(tmp_path, f'[projects."p"]\nmax_cost_usd = {cap}\n')


def test_the_pinned_table_names_its_sources_and_date() -> None:
    table = pinned_table()
    assert table["checked"] and set(table["sources"]) == {"openai", "anthropic"}
    for name in table["models"]:
        assert pinned_price(name) is not None


def test_caps() -> None:
    assert budget.effective_cap(None, None) is None
    assert budget.effective_cap(5.0, None) == 5.0
    assert budget.effective_cap(5.0, 3.0) == 3.0
    assert budget.reached(3.0, 3.0) and not budget.reached(2.99, 3.0) and not budget.reached(None, 3.0)
    with pytest.raises(InvalidInput, match=r"by \$0\.5000"):
        budget.refuse_over_estimate(1.5, 1.0, which="the cap")


def test_the_freight_object_of_a_running_batch() -> None:
    book = PriceBook({"m": ModelPricing(Billing.PROVIDER_BATCH, Price(1.0, 2.0, batch_discount=0.5))})
    controls = CostControls(book, FixedClock(1010.0), {"p": 7.0})
    batch = Batch(id="batch_x", project="p", endpoint="/v1/chat/completions", input_file_id="file-x",
                  completion_window="24h", status=BatchStatus.IN_PROGRESS, created_at=990, expires_at=99999,
                  in_progress_at=1000, model="m", request_counts=RequestCounts(total=10, completed=4, failed=1),
                  usage=Usage(input_tokens=1_000_000, output_tokens=500_000), max_cost_usd=9.0)
    ext = controls.freight_object(batch)
    assert ext["cost_usd"] == pytest.approx(1.0)
    assert ext["savings_usd"] == pytest.approx(1.0)
    assert ext["projected_cost_usd"] == pytest.approx(2.0)
    assert ext["requests_per_s"] == pytest.approx(0.5)
    assert ext["eta_at"] == 1020
    assert ext["max_cost_usd"] == 7.0
    # Paused, it finishes nothing until resumed: no finish time is promised (it kept one, moving with the clock).
    paused = controls.freight_object(dataclasses.replace(batch, paused_at=1005))
    assert paused["eta_at"] is None and paused["requests_per_s"] == pytest.approx(0.5)


@given(spent=st.floats(0, 100, allow_nan=False), cap=st.floats(0.01, 100, allow_nan=False),
       done=st.integers(0, 10_000), limit=st.integers(1, 2048), running=st.integers(0, 300),
       bound=st.none() | st.floats(1e-6, 50))
def test_a_claim_never_commits_a_capped_batch_to_much_more_than_its_cap(spent: float, cap: float, done: int,
                                                                        limit: int, running: int,
                                                                        bound: float | None) -> None:
    n = budget.affordable(spent, cap, done, limit, running, bound)
    assert 0 <= n <= limit
    if spent >= cap:
        assert n == 0
        return
    paid = done if spent > 0 else 0
    # no more requests unpaid in flight than have been paid for (a probe's worth before any)
    assert n == 0 or n + running <= max(budget.PROBE, paid)
    unit = budget.unit_cost(spent, paid, bound)
    if unit is not None:
        assert n == 0 or spent + (n + running) * unit <= cap * (1 + 1e-9), "within the cap"
    if running == 0:
        # one more can start exactly while what is left pays for one at the unit cost; else the batch has spent
        # its cap (spent_out) and ends, instead of waiting with nothing running
        assert (n >= 1) == (not budget.spent_out(spent, cap, done, running, bound))


def _run_capped(costs: list[float], estimates: list[float], cap: float, limits: list[int],
                finishing: list[int]) -> float:
    """A capped batch run by claims (``affordable``) and completions in any order; returns what it spent."""
    bound = max((e for e in estimates), default=None)
    spent, done, nxt, running, step = 0.0, 0, 0, [], 0
    while True:
        step += 1
        if nxt < len(costs):
            n = budget.affordable(spent, cap, done, limits[step % len(limits)], len(running), bound)
            if n == 0 and not running:
                assert budget.spent_out(spent, cap, done, 0, bound)  # ends, never waits with nothing running
                return spent
            running += costs[nxt:nxt + n]
            nxt += n
        if not running:
            return spent
        for _ in range(1 + finishing[step % len(finishing)] % len(running)):
            spent += running.pop(finishing[step % len(finishing)] % len(running))
            done += 1
            if not running:
                break


@given(pairs=st.lists(st.tuples(st.floats(1e-7, 1.0), st.floats(0, 1)), min_size=1, max_size=150),
       cap=st.floats(1e-3, 5.0), slack=st.sampled_from([0.0, 0.25, 1.0]),
       limits=st.lists(st.integers(1, 1024), min_size=1, max_size=5),
       finishing=st.lists(st.integers(0, 1000), min_size=1, max_size=5))
def test_whatever_the_mix_of_costs_spend_stays_within_the_cap_and_the_estimates_error(
        pairs: list[tuple[float, float]], cap: float, slack: float, limits: list[int], finishing: list[int]) -> None:
    """Each request's estimate from its output limit and prompt, and a cost of up to (1 + slack) times it
    (slack: how far the prompt's estimate may be off). The batch spends at most cap x (1 + slack), whatever the
    mix: one cheap request first no longer lets a claim start all the rest (capskew, found by an audit)."""
    estimates = [e for e, _ in pairs]
    costs = [e * (1 + slack) * share for e, share in pairs]
    assert _run_capped(costs, estimates, cap, limits, finishing) <= cap * (1 + slack) * (1 + 1e-9)


def test_one_cheap_request_first_does_not_let_a_claim_start_the_rest_past_the_cap() -> None:
    """The audit's capskew: 100 requests, the first max_tokens 1, the rest 200 ($0.0006 each), cap $0.02. It
    spent $0.0601 (3x): the probe's mean of $0.00001 let one claim start all 99 others."""
    estimates = [0.00001] + [0.0006] * 99
    assert _run_capped(estimates, estimates, 0.02, [64], [0]) <= 0.02
    # without an estimate (no request sets an output limit): the allowance grows with the requests paid for,
    # one, then two, four...: not the 99 at once of the one cheap sample's mean
    assert _run_capped(estimates, [], 0.02, [64], [1000]) <= 0.02 + 0.0006 * 2
    assert budget.affordable(0.00001, 0.02, 1, 64) == 1


def test_affordable_examples() -> None:
    assert budget.affordable(1.0, 2.0, 100, 1024) == 100  # $0.01 a request, $1 left
    assert budget.affordable(1.0, 2.0, 100, 1024, running=40) == 60
    assert budget.affordable(1.98, 2.0, 100, 1024) == 1  # one request's mean cost left ($0.0198 of $0.02)
    assert budget.affordable(1.99, 2.0, 100, 1024) == 0  # half of one: starting it would pass the cap...
    assert budget.spent_out(1.99, 2.0, 100, 0) and not budget.spent_out(1.99, 2.0, 100, 1)  # ...so it has spent it
    assert not budget.spent_out(1.98, 2.0, 100, 0) and budget.spent_out(2.0, 2.0, 100, 1)
    assert budget.affordable(1.99, 2.0, 100, 1024, running=1) == 0  # one running already: wait for it
    assert budget.affordable(None, 2.0, 0, 1024) == budget.PROBE
    assert budget.affordable(0.0, 2.0, 500, 1024) == budget.PROBE == 1  # free hits tell nothing: one at a time
    assert budget.affordable(0.0, 2.0, 500, 1024, running=1) == 0
    # a mean cost that underflows to 0, or a room too large for an int: the whole limit (found by hypothesis)
    assert budget.affordable(5e-324, 1.0, 10_000, 100) == 100
    assert budget.affordable(1e-310, 1.0, 5000, 2048, running=5) == 2048  # (1 - 1e-310) / 1e-310 is inf
    # a largest estimate above the mean is what each unpaid request is set aside at
    assert budget.affordable(1.0, 2.0, 100, 1024, bound=0.1) == 10
    assert budget.spent_out(1.95, 2.0, 100, 0, bound=0.1) and not budget.spent_out(1.95, 2.0, 100, 0)


class _ClosingStore:
    """What BudgetedQueue reads of a store when a batch closes; records the lines it is given."""

    def __init__(self, batch: Batch) -> None:
        self.batch, self.closed = batch, []  # type: list[tuple[str | None, bool]]

    def get_batch(self, project: str | None, batch_id: str) -> Batch:
        return self.batch

    def get_file(self, project: str, file_id: str) -> None:
        return None

    def close_unstarted(self, batch_id: str, result: Result, include_running: bool) -> int:
        self.closed.append((result.error_code, include_running))
        return 1


@pytest.mark.parametrize(("tokens", "code"), [(2_000_000, "budget_exceeded"), (1_000_000, "batch_cancelled")])
def test_requests_withdrawn_when_the_cap_stopped_a_batch_get_budget_exceeded_lines(tokens: int, code: str) -> None:
    """Requests claimed before the stop and still waiting in their backend are withdrawn, put back and closed by
    the cancellation: they were labelled batch_cancelled (36 of them in an audit's run). A batch cancelled
    short of its cap keeps batch_cancelled."""
    book = PriceBook({"m": ModelPricing(Billing.REALTIME, Price(1.0, 1.0))})
    batch = Batch(id="batch_x", project="p", endpoint="/v1/chat/completions", input_file_id="file-x",
                  completion_window="24h", status=BatchStatus.CANCELLING, created_at=990, expires_at=99999,
                  in_progress_at=1000, model="m", request_counts=RequestCounts(total=100, completed=10),
                  usage=Usage(input_tokens=tokens), max_cost_usd=2.0)
    store = _ClosingStore(batch)
    queue = BudgetedQueue(cast(Store, store), CostControls(book, FixedClock(1010.0)))
    never_ran = Result.never_ran(BATCH_CANCELLED, NEVER_RAN_MESSAGES[BATCH_CANCELLED])
    queue.close_unstarted("batch_x", never_ran, False)
    queue.close_unstarted("batch_x", never_ran, True)  # (abandoned past the drain timeout: as it was)
    assert store.closed == [(code, False), ("batch_cancelled", True)]
