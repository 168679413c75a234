"""Which price applies to which model: freight.toml's keys over the pinned table (prices.json).

A model's ``[models."name"]`` table may carry ``price = { input_per_mtok, output_per_mtok,
cached_input_per_mtok, batch_discount }`` (a provider model) and ``machine_cost_per_hour`` with an
optional ``tokens_per_s`` (a model run here). Without them, a model whose name (or
``upstream_model``) is in the pinned table gets that list price.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from freight.domain import windows
from freight.domain.errors import ConfigError
from freight.domain.pricing import UNPRICED, Billing, MachineCost, ModelPricing, Price, PriceWindow

#: Keys of a model's table that are prices, not backend options.
PRICE_KEYS = ("price", "machine_cost_per_hour", "tokens_per_s", "price_windows")
#: Keys of a model's table that are its hours (freight/domain/windows.py), not backend options.
HOURS_KEYS = ("windows", "timezone")
PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "batch_discount")
#: Backends that run the model on this machine.
LOCAL_KINDS = frozenset({"local-embeddings", "llama-cpp"})
#: Backends that forward to a provider's batch API.
BATCH_KINDS = frozenset({"openai-batch", "anthropic-batch"})


@functools.cache
def pinned_table() -> dict[str, Any]:
    """The pinned list prices (prices.json): ``checked`` date, ``sources``, ``models``."""
    text = resources.files("freight.services").joinpath("prices.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def pinned_price(name: str) -> Price | None:
    table = pinned_table()
    entry = table["models"].get(name)
    if entry is None:
        return None
    source = f"{table['sources'][entry['provider']]}, checked {table['checked']}"
    return Price(input_per_mtok=float(entry["input_per_mtok"]), output_per_mtok=float(entry["output_per_mtok"]),
                 cached_input_per_mtok=entry.get("cached_input_per_mtok"),
                 batch_discount=float(entry.get("batch_discount", 0.0)), source=source)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {type(value).__name__}")
    return float(value)


def _price(value: object, where: str) -> Price:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table like {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}")
    unknown = sorted(set(value) - set(PRICE_FIELDS))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(PRICE_FIELDS)})")
    for required in ("input_per_mtok", "output_per_mtok"):
        if required not in value:
            raise ConfigError(f"{where} needs {required}")
    cached = value.get("cached_input_per_mtok")
    try:
        return Price(
            input_per_mtok=_number(value["input_per_mtok"], f"{where}.input_per_mtok"),
            output_per_mtok=_number(value["output_per_mtok"], f"{where}.output_per_mtok"),
            cached_input_per_mtok=None if cached is None else _number(cached, f"{where}.cached_input_per_mtok"),
            batch_discount=_number(value.get("batch_discount", 0.0), f"{where}.batch_discount"),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _price_windows(value: object, timezone: object, where: str) -> tuple[PriceWindow, ...]:
    """``price_windows = [{ window = "00:00-06:00", input_per_mtok = …, output_per_mtok = … }, …]``."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where} must be a list of tables like "
                          '[{ window = "00:00-06:00", input_per_mtok = 1.0, output_per_mtok = 4.0 }]')
    out = []
    for i, entry in enumerate(value):
        here = f"{where}[{i}]"
        if "window" not in entry:
            raise ConfigError(f'{here} needs window (like "00:00-06:00")')
        try:
            hours = windows.hours([entry["window"]], timezone, f"{here}.window")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        out.append(PriceWindow(hours, _price({k: v for k, v in entry.items() if k != "window"}, here)))
    return tuple(out)


def model_pricing(name: str, table: Mapping[str, Any]) -> ModelPricing:
    """How the model of one ``[models."name"]`` table is billed."""
    where = f'[models."{name}"]'
    kind = table.get("backend")
    price = _price(table["price"], f"{where}.price") if "price" in table else None
    if price is None:
        upstream = table.get("upstream_model")
        price = pinned_price(name) or (pinned_price(upstream) if isinstance(upstream, str) else None)
    machine = None
    if "machine_cost_per_hour" in table:
        rate = table.get("tokens_per_s")
        try:
            machine = MachineCost(per_hour=_number(table["machine_cost_per_hour"], f"{where}.machine_cost_per_hour"),
                                  tokens_per_s=None if rate is None else _number(rate, f"{where}.tokens_per_s"))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    elif "tokens_per_s" in table:
        raise ConfigError(f"{where}.tokens_per_s only counts with machine_cost_per_hour")
    by_window = (_price_windows(table["price_windows"], table.get("timezone"), f"{where}.price_windows")
                 if "price_windows" in table else ())
    if kind in LOCAL_KINDS or (kind == "scripted" and machine is not None):
        if by_window and machine is not None:
            raise ConfigError(f"{where}.price_windows are token prices; a model priced by machine_cost_per_hour "
                              "has none")
        return ModelPricing(Billing.MACHINE, price=price, machine=machine, windows=by_window)
    if kind in BATCH_KINDS:
        return ModelPricing(Billing.PROVIDER_BATCH, price=price, windows=by_window)
    return ModelPricing(Billing.REALTIME, price=price, windows=by_window)


@dataclass
class PriceBook:
    """Every configured model's pricing; a model not configured has none (no cost shown)."""

    models: dict[str, ModelPricing] = field(default_factory=dict)

    @classmethod
    def from_tables(cls, tables: Mapping[str, Mapping[str, Any]]) -> PriceBook:
        return cls({name: model_pricing(name, table) for name, table in tables.items()})

    def for_model(self, model: str | None, at: float | None = None) -> ModelPricing:
        """The model's pricing; with ``at``, the price of the price window open then (if any)."""
        if model is None:
            return UNPRICED
        found = self.models.get(model, UNPRICED)
        return found if at is None else found.at(at)


def backend_options(table: Mapping[str, Any]) -> dict[str, Any]:
    """A model's table without its price keys and hours (what its backend is built from)."""
    return {k: v for k, v in table.items() if k not in PRICE_KEYS and k not in HOURS_KEYS}
