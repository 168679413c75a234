"""What the dashboard shows, as plain dicts: one shape for the server-rendered HTML and for the JSON
its script polls (so the page and its live updates can never disagree). Text fields are already
formatted; the templates escape them (Jinja autoescape) and the script sets them as text only."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from freight.domain.batches import Batch, BatchStatus, CancelAction, cancel_action
from freight.domain.errors import Conflict
from freight.domain.message_batches import MESSAGES_ENDPOINT, message_batch_id
from freight.domain.pricing import usd_text
from freight.runtime import Runtime
from freight.services import watch
from freight.wire import openai

#: The newest batches of each API that the index lists.
INDEX_LIMIT = 100
#: The batch page's script polls this often (seconds); the index's twice as seldom.
POLL_S = 1.0


def when(ts: int | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def span(seconds: float) -> str:
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def usd(value: float | None) -> str:
    return usd_text(value, missing="—")


def cancellable(batch: Batch) -> bool:
    try:
        return cancel_action(batch.status) is CancelAction.CANCEL
    except Conflict:
        return False


def batch_row(rt: Runtime, batch: Batch, *, is_message_batch: bool | None = None) -> dict[str, Any]:
    """One batch as the index and the batch page show it."""
    figures = rt.cost.freight_object(batch)
    obj = openai.batch_object(batch, figures)
    fr = obj["freight"]
    c = batch.request_counts
    done = c.completed + c.failed
    now = rt.clock.now()
    if is_message_batch is None:
        is_message_batch = batch.endpoint == MESSAGES_ENDPOINT and rt.store.is_message_batch(batch.id)
    eta_at = fr.get("eta_at")
    rate = fr.get("requests_per_s")
    return {
        "id": batch.id,
        "api_id": message_batch_id(batch.id) if is_message_batch else batch.id,
        "api": "anthropic" if is_message_batch else "openai",
        "url": f"/dashboard/batches/{batch.id}",
        "status": obj["status"],
        "terminal": batch.is_terminal,
        "cancellable": cancellable(batch),
        "paused": fr.get("paused_at") is not None,
        "paused_text": "paused" if fr.get("paused_at") is not None else "",
        "endpoint": batch.endpoint,
        "model": batch.model or "",
        "created": when(batch.created_at),
        "total": c.total,
        "completed": c.completed,
        "failed": c.failed,
        "done": done,
        # (no requests: a full bar only for a batch that completed, not one that failed validation or was
        # cancelled before it had any)
        "progress": round(done / c.total, 4) if c.total else (1.0 if batch.status is BatchStatus.COMPLETED else 0.0),
        "counts_text": f"{done:,} / {c.total:,} ({c.completed:,} ok, {c.failed:,} failed)",
        "eta_at": eta_at,
        "eta_text": f"in {span(eta_at - now)} ({when(eta_at)})" if eta_at is not None else "—",
        "requests_per_s": rate,
        "rate_text": "—" if rate is None else f"{rate:,.2f} req/s",
        "cost_usd": fr.get("cost_usd"),
        "cost_text": usd(fr.get("cost_usd")),
        "projected_text": usd(fr.get("projected_cost_usd")),
        "savings_text": usd(fr.get("savings_usd")),
        "tokens_text": f"{batch.usage.input_tokens:,} in / {batch.usage.output_tokens:,} out",
    }


def index(rt: Runtime, project: str) -> dict[str, Any]:
    batches = rt.batches.list(project, after=None, limit=INDEX_LIMIT).items
    message_batches, _ = rt.message_batches.list(project, after_id=None, before_id=None, limit=INDEX_LIMIT)
    # Newest first; batches of the same second in the order the API lists them (a stable sort, each list
    # already newest first), not by their random ids.
    entries = [(b, False) for b in batches] + [(mb.batch, True) for mb in message_batches]
    entries.sort(key=lambda e: e[0].created_at, reverse=True)
    rows = [batch_row(rt, b, is_message_batch=is_mb) for b, is_mb in entries]
    return {"project": project, "batches": rows, "models": models(rt, project)}


def models(rt: Runtime, project: str) -> list[dict[str, Any]]:
    return [{"model": m.model, "batches": m.batches, "rate_text": f"{m.requests_per_s:,.2f} req/s",
             "queued": m.queued, "running": m.running}
            for m in watch.model_loads(rt.store, rt.cost, project)]


class FailureCache:
    """The last failure summary of a few batches, kept while their failed count and status stay the
    same (a page polled every second reads the failed results again only when there are new ones)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: OrderedDict[str, tuple[tuple[int, str], watch.FailureSummary]] = OrderedDict()
        self._lock = threading.Lock()  # pages are served from a thread pool

    def get(self, rt: Runtime, batch: Batch) -> watch.FailureSummary:
        stamp = (batch.request_counts.failed, str(batch.status))
        with self._lock:
            found = self._items.get(batch.id)
            if found is not None and found[0] == stamp:
                self._items.move_to_end(batch.id)
                return found[1]
        summary = watch.failures(rt.store, batch)
        with self._lock:
            self._items[batch.id] = (stamp, summary)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return summary


def links(batch: Batch) -> list[dict[str, str]]:
    base = f"/dashboard/batches/{batch.id}"
    out = []
    if batch.output_file_id:
        out.append({"name": "output", "label": "Output file", "url": f"{base}/output"})
    if batch.error_file_id:
        out.append({"name": "errors", "label": "Error file", "url": f"{base}/errors"})
    if batch.status is not BatchStatus.VALIDATING:
        out.append({"name": "partial", "label": "Partial results (finished so far)", "url": f"{base}/partial"})
    return out


def detail(rt: Runtime, batch: Batch, failures: FailureCache) -> dict[str, Any]:
    row = batch_row(rt, batch)
    q = watch.queue(rt.store, batch)
    summary = failures.get(rt, batch)
    model_rows = [m for m in models(rt, batch.project) if m["model"] == (batch.model or "")]
    return {
        "batch": {**row, "queued": q.queued, "running": q.running, "input_file_id": batch.input_file_id,
                  "output_file_id": batch.output_file_id or "", "error_file_id": batch.error_file_id or "",
                  "expires": when(batch.expires_at)},
        "failures": watch.summary_json(summary),
        "models": model_rows,
        "links": links(batch),
    }
