"""Prices, costs, projections, progress and caps: the pure policy and the freight.toml keys (fast, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.config import load_settings
from freight.domain import budget
from freight.domain.batches import Batch, BatchStatus, RequestCounts, Usage
from freight.domain.errors import ConfigError, InvalidInput
from freight.domain.pricing import Billing, MachineCost, ModelPricing, Price, Tokens, progress, projected_usd
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


@given(spent=st.floats(0, 100, allow_nan=False), cap=st.floats(0.01, 100, allow_nan=False),
       done=st.integers(0, 10_000), limit=st.integers(1, 2048), running=st.integers(0, 300))
def test_a_claim_never_commits_a_capped_batch_to_much_more_than_its_cap(spent: float, cap: float, done: int,
                                                                        limit: int, running: int) -> None:
    n = budget.affordable(spent, cap, done, limit, running)
    assert 0 <= n <= limit
    if spent >= cap:
        assert n == 0
    elif done == 0 or spent == 0:
        assert n + running <= max(budget.PROBE, running), "no cost measured yet: a probe's worth in flight"
    else:
        per_request = spent / done
        in_flight = n + running
        assert n == 0 or spent + in_flight * per_request <= cap * (1 + 1e-9), "within the cap"
        if running == 0:
            # one more can start exactly while what is left pays for one at the mean; else the batch has spent
            # its cap (spent_out) and ends, instead of waiting with nothing running
            assert (n >= 1) == (not budget.spent_out(spent, cap, done, running))


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
    assert budget.affordable(1e-310, 1.0, 1, 2048, running=5) == 2048  # (1 - 1e-310) / 1e-310 is inf
