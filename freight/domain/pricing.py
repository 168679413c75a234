"""What tokens cost: prices per model, the cost of a batch so far, its projection and its savings.

Prices are in US dollars per million tokens (``*_per_mtok``). A provider model has a real-time
price and a batch discount (the fraction taken off when the work goes through the provider's own
batch API: 0.5 for OpenAI's and Anthropic's). What freight pays depends on how the model is run:

- forwarded to a provider's batch API (a lane): the real-time price less the batch discount;
- sent to a real-time endpoint (an ``openai`` backend): the real-time price, no discount;
- run here (local models): the machine's cost per hour, spread over the tokens it makes per second
  (``tokens_per_s`` when configured, else the batch's own measured rate).

``savings`` is what the same tokens would have cost at real-time prices, less what they cost.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from freight.domain.windows import Hours

MTOK = 1_000_000


class Billing(enum.StrEnum):
    #: A provider's batch API: real-time prices less the batch discount.
    PROVIDER_BATCH = "provider_batch"
    #: A provider's real-time endpoint: real-time prices.
    REALTIME = "realtime"
    #: A machine of our own, priced by the hour.
    MACHINE = "machine"


@dataclass(frozen=True)
class Price:
    """A provider model's list price. ``cached_input_per_mtok`` None: cached input costs as input."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    #: Fraction of the real-time price taken off in the provider's batch API (0 <= d < 1).
    batch_discount: float = 0.0
    #: Where the price comes from ("freight.toml", or the pinned table's source and date).
    source: str = "freight.toml"

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more, got {value}")
        if not 0 <= self.batch_discount < 1:
            raise ValueError(f"batch_discount must be at least 0 and less than 1, got {self.batch_discount}")


@dataclass(frozen=True)
class MachineCost:
    """A local model's machine: what an hour costs, and (optionally) how many tokens it makes a second."""

    per_hour: float
    tokens_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.per_hour < 0:
            raise ValueError(f"machine_cost_per_hour must be 0 or more, got {self.per_hour}")
        if self.tokens_per_s is not None and self.tokens_per_s <= 0:
            raise ValueError(f"tokens_per_s must be more than 0, got {self.tokens_per_s}")


@dataclass(frozen=True)
class Tokens:
    input: int = 0
    output: int = 0
    #: Of ``input``, how many were read from the provider's prompt cache.
    cached: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output


@dataclass(frozen=True)
class PriceWindow:
    """A model's price during some hours (``price_windows``): cheaper compute at night."""

    hours: Hours
    price: Price


@dataclass(frozen=True)
class ModelPricing:
    """How one model is billed: a list price, a machine cost, or both unknown (no cost shown)."""

    billing: Billing
    price: Price | None = None
    machine: MachineCost | None = None
    #: Prices by time of day; the first open one applies (``at``), else ``price``.
    windows: tuple[PriceWindow, ...] = ()
    #: The price of the window in effect (set by ``at``): what the tokens cost; ``price`` stays the
    #: list price that ``realtime_usd`` (and so the savings) compare with.
    charged: Price | None = None

    def at(self, when: float) -> ModelPricing:
        """The pricing of work run at ``when``: the price of the first price window open then."""
        for w in self.windows:
            if w.hours.is_open(when):
                return replace(self, charged=w.price, windows=())
        return replace(self, windows=()) if self.windows else self

    @property
    def known(self) -> bool:
        if self.billing is Billing.MACHINE:
            return self.machine is not None or self.charged is not None
        return self.price is not None or self.charged is not None

    def realtime_usd(self, tokens: Tokens) -> float | None:
        """What ``tokens`` cost at the provider's real-time prices (None: no list price)."""
        return _usd(self.price, tokens)

    def cost_usd(self, tokens: Tokens, *, busy_s: float | None = None) -> float | None:
        """What ``tokens`` cost as this model is run. ``busy_s``: how long a machine worked on them,
        for a local model without a configured ``tokens_per_s`` (None: unknown, no cost). In a price
        window (``at``), the tokens cost that window's price."""
        if self.charged is not None:
            cost = _usd(self.charged, tokens)
            if self.billing is Billing.PROVIDER_BATCH and cost is not None:
                return cost * (1 - self.charged.batch_discount)
            return cost
        return self._list_cost_usd(tokens, busy_s=busy_s)

    def _list_cost_usd(self, tokens: Tokens, *, busy_s: float | None = None) -> float | None:
        if self.billing is Billing.MACHINE:
            m = self.machine
            if m is None:
                return None
            if m.tokens_per_s is not None:
                return tokens.total / m.tokens_per_s / 3600 * m.per_hour
            if busy_s is None:
                return None
            return max(0.0, busy_s) / 3600 * m.per_hour
        realtime = self.realtime_usd(tokens)
        if realtime is None or self.price is None:
            return None
        if self.billing is Billing.PROVIDER_BATCH:
            return realtime * (1 - self.price.batch_discount)
        return realtime

    def savings_usd(self, tokens: Tokens, cost: float | None) -> float | None:
        """Real-time price of ``tokens`` less ``cost``; None without a list price or a cost."""
        realtime = self.realtime_usd(tokens)
        if realtime is None or cost is None:
            return None
        return realtime - cost


UNPRICED = ModelPricing(Billing.REALTIME)


def _usd(p: Price | None, tokens: Tokens) -> float | None:
    """``tokens`` at price ``p`` (None: no price)."""
    if p is None:
        return None
    cached = min(tokens.cached, tokens.input)
    cached_rate = p.input_per_mtok if p.cached_input_per_mtok is None else p.cached_input_per_mtok
    return ((tokens.input - cached) * p.input_per_mtok + cached * cached_rate
            + tokens.output * p.output_per_mtok) / MTOK


def projected_usd(cost: float | None, done: int, total: int, *, finished: bool) -> float | None:
    """The whole batch's cost at the cost per finished request so far (the cost itself once finished)."""
    if cost is None:
        return None
    if finished or done >= total:
        return cost
    if done <= 0:
        return None
    return cost / done * total


@dataclass(frozen=True)
class Progress:
    """How fast a batch's requests finish, and when the rest will have."""

    requests_per_s: float | None
    eta_at: int | None


def progress(*, started_at: int | None, ended_at: int | None, now: float, done: int, total: int) -> Progress:
    """``requests_per_s`` over the batch's running time; ``eta_at`` (unix seconds) for a running batch
    that has finished at least one request (None once it ended, or before any rate is known)."""
    if started_at is None:
        return Progress(None, None)
    if done <= 0:
        return Progress(None, None)
    end = ended_at if ended_at is not None else now
    # Stamps are whole seconds: a batch that started and ended in one second ran for (up to) one.
    elapsed = max(1.0, end - started_at)
    rate = done / elapsed
    if ended_at is not None or done >= total:
        return Progress(rate, None)
    return Progress(rate, int(now + (total - done) / rate + 0.5))


def round_usd(value: float | None) -> float | None:
    """Dollars to a millionth of a cent: stable in JSON, exact enough to add up."""
    return None if value is None else round(value, 8)


def usd_text(value: float | None, missing: str = "-") -> str:
    """Dollars for people (the CLI's and the dashboard's one form): 4 decimals under $100, cents above;
    a cost too small for 4 decimals reads "<$0.0001", not "$0.0000" (which says free); ``missing`` for
    an unknown one (no price)."""
    if value is None:
        return missing
    if 0 < abs(value) < 0.00005:
        return "<$0.0001" if value > 0 else "-<$0.0001"
    return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"
