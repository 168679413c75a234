"""``StatsStore`` over named SQL (stats.sql)."""

from __future__ import annotations

from freight.domain.requests import RequestState
from freight.ports.stats import Spend, StoreStats

from .base import Base

_STATE = {RequestState.PENDING: "queued", RequestState.RUNNING: "running"}


class StatsMixin(Base):
    def stats(self, by_project: bool) -> StoreStats:
        out = StoreStats()
        with self._db.read() as tx:
            for r in tx.all("stats_batches"):
                project = r["project"] if by_project else ""
                model = r["model"] or ""
                key = (project, r["status"])
                out.batches[key] = out.batches.get(key, 0) + int(r["n"])
                for outcome in ("completed", "failed"):
                    fkey = (project, model, r["endpoint"], outcome)
                    out.finished[fkey] = out.finished.get(fkey, 0) + int(r[outcome] or 0)
                for kind in ("input", "output"):
                    tkey = (project, model, kind)
                    out.tokens[tkey] = out.tokens.get(tkey, 0) + int(r[f"{kind}_tokens"] or 0)
                spend = out.spend.setdefault((project, model), Spend())
                spend.input_tokens += int(r["input_tokens"] or 0)
                spend.output_tokens += int(r["output_tokens"] or 0)
                spend.busy_s += int(r["busy_s"] or 0)
                spend.running += int(r["running_n"] or 0)
                spend.running_since += int(r["running_since"] or 0)
            for r in tx.all("stats_open_requests"):
                okey = (r["model"] or "", _STATE[RequestState(int(r["state"]))])
                out.open_requests[okey] = out.open_requests.get(okey, 0) + int(r["n"])
            for r in tx.all("stats_batch_durations"):
                dkey = (r["status"], int(r["seconds"] or 0))
                out.batch_durations[dkey] = out.batch_durations.get(dkey, 0) + int(r["n"])
        return out
