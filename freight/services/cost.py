"""A batch's cost, projection, savings and progress, and the ``freight`` object that shows them.

``freight_object`` is the one place that renders a Batch object's ``freight`` extension (issue 12:
freight's own fields on API objects live under that one key); add new fields there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from freight.domain import budget, pricing
from freight.domain.batches import Batch, BatchStatus
from freight.domain.clock import Clock
from freight.domain.errors import InvalidInput
from freight.domain.files import File
from freight.domain.windows import Calendar
from freight.services.estimate import Estimate, output_limit
from freight.services.prices import PriceBook
from freight.wire import jsonx
from freight.wire.batch_input import iter_lines

#: The status whose stamp ends a batch's running time.
_ENDED_AT = {BatchStatus.FINALIZING: "finalizing_at", BatchStatus.COMPLETED: "finalizing_at",
             BatchStatus.CANCELLED: "cancelled_at", BatchStatus.EXPIRED: "expired_at",
             BatchStatus.FAILED: "failed_at", BatchStatus.CANCELLING: "cancelling_at"}


@dataclass(frozen=True)
class BatchCost:
    cost_usd: float | None
    projected_cost_usd: float | None
    savings_usd: float | None
    realtime_usd: float | None


def tokens_of(batch: Batch) -> pricing.Tokens:
    u = batch.usage
    return pricing.Tokens(input=u.input_tokens, output=u.output_tokens, cached=u.cached_tokens)


def ended_at(batch: Batch) -> int | None:
    name = _ENDED_AT.get(batch.status)
    value = getattr(batch, name) if name else None
    if value is None and batch.is_terminal:
        value = batch.completed_at or batch.cancelled_at or batch.expired_at or batch.failed_at
    return value if isinstance(value, int) else None


def uncappable(model: pricing.ModelPricing, name: str) -> str | None:
    """Why a spending cap cannot hold a batch of ``name`` (None: it can): a cap needs to know what each
    request cost."""
    if not model.known:
        return (f"needs a price for model {name!r}; configure one ([models.\"{name}\"] price or "
                "machine_cost_per_hour) or send no cap.")
    if (model.billing is pricing.Billing.MACHINE and model.machine is not None
            and model.machine.tokens_per_s is None and model.charged is None):
        # (billed by the hour since it started, a batch waiting for its hours or paused would spend its
        # cap doing nothing, and be cancelled with nothing run: found by an audit)
        return (f"needs a per-token cost for model {name!r}: it is priced by the hour (machine_cost_per_hour); "
                f"add tokens_per_s to [models.\"{name}\"] so that only the work done is counted, or send no cap.")
    return None


@dataclass
class CostControls:
    """Prices, caps and the clock: what the cost figures and the budget checks need."""

    prices: PriceBook
    clock: Clock
    #: project -> its cap per batch (``[projects."name"] max_cost_usd``).
    project_caps: Mapping[str, float | None] = field(default_factory=dict)
    #: Further fields for the ``freight`` object (other parts of freight register theirs here).
    extensions: list[Callable[[Batch], Mapping[str, Any]]] = field(default_factory=list)
    #: Opens a file's bytes (None: it has none); set by the composition root for the create check.
    open_file: Callable[[File], IO[bytes] | None] | None = None
    max_line_bytes: int = 64 * 1024 * 1024
    #: The models' and off-peak hours: a model with ``price_windows`` is priced at the window the
    #: batch is expected to start in (its hold ends, or its creation).
    calendar: Calendar = field(default_factory=Calendar)

    def pricing_of(self, batch: Batch, model: str | None = None) -> pricing.ModelPricing:
        """The batch's model's pricing at the time the batch is expected to start."""
        model = model or batch.model
        at = self.calendar.starts_at(batch.created_at, model=model, schedule=batch.schedule,
                                     not_before=batch.not_before)
        return self.prices.for_model(model, at)

    def project_cap_problem(self, project: str, model: str) -> str | None:
        """Why ``project``'s cap could not hold a batch of ``model`` (None: it can, or the project has none);
        for a Message Batch, which has no cap of its own and is not estimated at create."""
        if self.project_caps.get(project) is None:
            return None
        problem = uncappable(self.prices.for_model(model, self.clock.now()), model)
        return None if problem is None else f"the project's max_cost_usd {problem}"

    def cap(self, batch: Batch) -> float | None:
        return budget.effective_cap(batch.max_cost_usd, self.project_caps.get(batch.project))

    def admit(self, batch: Batch, input_file: File) -> None:
        """At create: a 400 when the batch has a cap that its input's estimated cost already exceeds (only
        the input tokens are counted, so a refused cap is one the prompts alone would exceed), one below what
        a single request may cost (``largest_request_usd``: the first claim would stop the batch), or one
        that cannot be checked (its model has no price)."""
        cap = self.cap(batch)
        scanned = self._scan(batch, input_file) if cap is not None else None
        if cap is None or scanned is None:
            return
        est, largest = scanned
        if est.model is None:
            return  # the batch will fail validation: nothing to estimate
        model = self.pricing_of(batch, est.model)
        problem = uncappable(model, est.model)
        if problem is not None:
            raise InvalidInput(f"'max_cost_usd' {problem}", param="max_cost_usd", code="invalid_value")
        which = "the batch's max_cost_usd" if cap == batch.max_cost_usd else "the project's max_cost_usd"
        estimate = model.cost_usd(pricing.Tokens(input=est.input_tokens))
        if estimate is not None:
            budget.refuse_over_estimate(estimate, cap, which=which)
        if largest is not None:
            budget.refuse_below_one_request(largest, cap, which=which)

    def largest_request_usd(self, batch: Batch, input_file: File) -> float | None:
        """The most any one of the batch's requests that sets an output limit (``max_tokens`` ...) is estimated
        to cost: its prompt (estimated as at create) and all of its limit. What a claim sets aside for each
        request not yet paid for (``budget.affordable``); None when no request sets a limit, the file is
        gone or the model has no per-token price."""
        scanned = self._scan(batch, input_file)
        return None if scanned is None else scanned[1]

    def _scan(self, batch: Batch, input_file: File) -> tuple[Estimate, float | None] | None:
        """One read of the input file: its estimate, and the most one request that sets an output limit may
        cost (``largest_request_usd``); None when the file is gone."""
        stream = self.open_file(input_file) if self.open_file is not None else None
        if stream is None:
            return None
        est = Estimate()
        largest: float | None = None
        prices: dict[str | None, pricing.ModelPricing] = {}
        with stream:
            for raw in iter_lines(stream, self.max_line_bytes):
                body = _body(raw.data)
                if body is None:
                    continue
                input_tokens = est.add(batch.endpoint, body)
                limit = output_limit(batch.endpoint, body)
                if limit is None:
                    continue
                model = body.get("model") if isinstance(body.get("model"), str) else None
                if model not in prices:
                    prices[model] = self.pricing_of(batch, model)
                cost = prices[model].cost_usd(pricing.Tokens(input=input_tokens, output=limit))
                if cost is not None and (largest is None or cost > largest):
                    largest = cost
        return est, largest

    def cost(self, batch: Batch) -> BatchCost:
        model = self.pricing_of(batch)
        tokens = tokens_of(batch)
        busy_s = None
        if batch.in_progress_at is not None:
            end = ended_at(batch)
            busy_s = (end if end is not None else self.clock.now()) - batch.in_progress_at
        cost = model.cost_usd(tokens, busy_s=busy_s)
        c = batch.request_counts
        done = c.completed + c.failed
        finished = batch.status in (BatchStatus.FINALIZING, BatchStatus.COMPLETED) or batch.is_terminal
        savings = model.savings_usd(tokens, cost)
        if batch.cached:  # answers from the result cache: what they would have cost, run again now
            reused = model.cost_usd(pricing.Tokens(input=batch.saved_input_tokens, output=batch.saved_output_tokens))
            savings = None if reused is None else (savings or 0.0) + reused
        return BatchCost(
            cost_usd=cost,
            projected_cost_usd=pricing.projected_usd(cost, done, c.total, finished=finished),
            savings_usd=savings,
            realtime_usd=model.realtime_usd(tokens),
        )

    def rates(self, batch: Batch) -> dict[str, float] | None:
        """Effective dollars per million input and output tokens, as this batch is billed (for a
        cost per request); None without a price."""
        model = self.pricing_of(batch)
        per_in = model.cost_usd(pricing.Tokens(input=pricing.MTOK))
        per_out = model.cost_usd(pricing.Tokens(output=pricing.MTOK))
        if per_in is None or per_out is None:
            figures = self.cost(batch)  # a machine measured by the hour: its average cost per token
            total = batch.usage.total_tokens
            if figures.cost_usd is None or not total:
                return None
            per_in = per_out = figures.cost_usd / total * pricing.MTOK
        return {"input_usd_per_mtok": round(per_in, 8), "output_usd_per_mtok": round(per_out, 8)}

    def freight_object(self, batch: Batch) -> dict[str, Any]:
        """The Batch object's ``freight`` extension: cost so far, projection, savings, progress, checks."""
        figures = self.cost(batch)
        c = batch.request_counts
        progress = pricing.progress(started_at=batch.in_progress_at, ended_at=ended_at(batch),
                                    now=self.clock.now(), done=c.completed + c.failed, total=c.total)
        if batch.paused_at is not None:  # it finishes nothing while paused: no time can be promised
            progress = pricing.Progress(progress.requests_per_s, None)
        out: dict[str, Any] = {
            "cost_usd": pricing.round_usd(figures.cost_usd),
            "projected_cost_usd": pricing.round_usd(figures.projected_cost_usd),
            "savings_usd": pricing.round_usd(figures.savings_usd),
            "max_cost_usd": self.cap(batch),
            "eta_at": progress.eta_at,
            "requests_per_s": None if progress.requests_per_s is None else round(progress.requests_per_s, 4),
            "rates": self.rates(batch),
            "invalid_outputs": batch.invalid_outputs,
            "output_schema": batch.output_schema,
            "cached": batch.cached,
        }
        for extension in self.extensions:
            out.update(extension(batch))
        return out


def _body(data: bytes | None) -> dict[str, Any] | None:
    if not data or not data.strip():
        return None
    try:
        line = jsonx.loads(data)
    except ValueError:
        return None
    body = line.get("body") if isinstance(line, dict) else None
    return body if isinstance(body, dict) else None
