"""``StepLeases`` over named SQL (leases.sql): one upsert is the compare-and-set."""

from __future__ import annotations

from .base import Base


class LeasesMixin(Base):
    def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        with self._db.write() as tx:
            return tx.run("acquire_lease", {"name": name, "holder": holder, "now": now, "until": until}) == 1

    def release_lease(self, name: str, holder: str) -> None:
        with self._db.write() as tx:
            tx.run("release_lease", {"name": name, "holder": holder})

    def lease_holder(self, name: str, now: float) -> str | None:
        with self._db.read() as tx:
            row = tx.one("lease_holder", {"name": name, "now": now})
        return None if row is None else str(row["holder"])

    def count_step_failure(self, batch_id: str) -> int:
        with self._db.write() as tx:
            row = tx.one("count_step_failure", {"batch_id": batch_id})
        assert row is not None
        return int(row["failures"])

    def clear_step_failures(self, batch_id: str) -> None:
        with self._db.write() as tx:
            tx.run("clear_step_failures", {"batch_id": batch_id})

    def step_failure_counts(self) -> dict[str, int]:
        with self._db.read() as tx:
            return {str(r["batch_id"]): int(r["failures"]) for r in tx.all("step_failure_counts")}
