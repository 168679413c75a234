"""How the CLI shows a batch's ``freight`` figures (cost, projection, savings, progress, checks)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from freight.domain.pricing import usd_text


def usd(value: float | None) -> str:
    return usd_text(value)


def eta(at: int | None, now: float | None = None) -> str:
    if at is None:
        return "-"
    left = max(0, int(at - (time.time() if now is None else now)))
    h, rest = divmod(left, 3600)
    m, s = divmod(rest, 60)
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{clock} (in {h}h{m:02d}m{s:02d}s)" if h else f"{clock} (in {m}m{s:02d}s)"


def freight_rows(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows ``freight status`` adds for a batch's ``freight`` object (none without one)."""
    ext = batch.get("freight")
    if not isinstance(ext, dict):
        return []
    rate = ext.get("requests_per_s")
    rows = [
        ("cost so far", usd(ext.get("cost_usd"))),
        ("projected cost", usd(ext.get("projected_cost_usd"))),
        ("saved vs real-time", usd(ext.get("savings_usd"))),
        ("cost cap", usd(ext.get("max_cost_usd")) if ext.get("max_cost_usd") is not None else "none"),
        ("throughput", "-" if rate is None else f"{rate:.2f} requests/s"),
        ("eta", eta(ext.get("eta_at"))),
    ]
    if ext.get("invalid_outputs"):
        rows.append(("invalid outputs", str(ext["invalid_outputs"])))
    if ext.get("cached"):
        rows.append(("from the result cache", f"{ext['cached']} requests (their cost is in the savings)"))
    if ext.get("held_until"):
        when = dt.datetime.fromtimestamp(ext["held_until"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        rows.append(("held until", f"{when} ({hold_reason(ext)})"))
    return rows


def hold_reason(ext: dict[str, Any]) -> str:
    """Why a batch is held and whether its deadline can end the hold early (docs/scheduling.md): the
    deadline ramp overrides off-peak hours and ``not_before``, never its model's hours."""
    asked = [what for what, on in (("off-peak hours", ext.get("schedule") == "off_peak"),
                                   ("not_before", ext.get("not_before") is not None)) if on]
    if not asked:
        return "its model's hours, which its deadline does not override"
    return (f"{' and '.join(asked)}, or its model's hours; its deadline may start it earlier, "
            "but only within its model's hours")


def live_note(batch: dict[str, Any], now: float | None = None) -> str:
    """The progress bar's note: ETA, tokens per minute and cost so far (what is known of them)."""
    parts = []
    found = batch.get("freight")
    ext: dict[str, Any] = found if isinstance(found, dict) else {}
    started = batch.get("in_progress_at")
    usage = batch.get("usage") or {}
    if started and usage.get("total_tokens"):
        minutes = max(1.0, (time.time() if now is None else now) - started) / 60
        parts.append(f"{usage['total_tokens'] / minutes:,.0f} tokens/min")
    if ext.get("eta_at"):
        parts.append("eta " + time.strftime("%H:%M:%S", time.localtime(ext["eta_at"])))
    if ext.get("cost_usd") is not None:
        parts.append(usd(ext["cost_usd"]) + (f" of ~{usd(ext['projected_cost_usd'])}"
                                            if ext.get("projected_cost_usd") is not None else ""))
    return " · ".join(parts)
