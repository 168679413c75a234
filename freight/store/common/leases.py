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
