"""``LaneStore`` over named SQL (lanes.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from freight.domain.claims import Tally
from freight.domain.lanes import LaneSub, SubState
from freight.domain.requests import Result

from .base import Base
from .rows import lane_sub_from_row, lane_sub_params, result_params

#: The columns of a sub that ``lane_update`` may set.
SETTABLE = ("state", "upload_id", "upstream_id", "create_sent_at", "upstream_status", "completed", "failed",
            "cancel_sent")


class LanesMixin(Base):
    def lane_unassigned(self, batch_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes, int]]:
        with self._db.read() as tx:
            rows = tx.all("lane_unassigned", {"batch_id": batch_id, "after_idx": after_idx, "limit": limit})
        return [(row["idx"], bytes(row["body"]), int(row["held"])) for row in rows]

    def lane_plan(self, sub: LaneSub, idxs: Sequence[int]) -> None:
        with self._db.write() as tx:
            tx.run("insert_lane_sub", lane_sub_params(sub))
            tx.many("insert_lane_item", [{"batch_id": sub.batch_id, "idx": i, "sub_id": sub.id} for i in idxs])

    def lane_subs(self, batch_id: str, live_only: bool = True) -> list[LaneSub]:
        with self._db.read() as tx:
            rows = tx.all("live_lane_subs" if live_only else "lane_subs", {"batch_id": batch_id})
        return [lane_sub_from_row(r) for r in rows]

    def lane_bodies(self, sub_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes]]:
        with self._db.read() as tx:
            rows = tx.all("lane_bodies", {"sub_id": sub_id, "after_idx": after_idx, "limit": limit})
        return [(row["idx"], bytes(row["body"])) for row in rows]

    def lane_items(self, sub_id: str) -> list[int]:
        with self._db.read() as tx:
            return [row["idx"] for row in tx.all("lane_items", {"sub_id": sub_id})]

    def lane_update(self, sub_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(SETTABLE)
        if unknown:
            raise ValueError(f"not a settable lane_subs column: {sorted(unknown)}")
        values = {k: str(v) if isinstance(v, SubState) else int(v) if isinstance(v, bool) else v
                  for k, v in fields.items()}
        with self._db.write() as tx:
            row = tx.one("lane_sub_for_update", {"id": sub_id})
            if row is None:
                return
            tx.run("update_lane_sub", {"id": sub_id, **{k: row[k] for k in SETTABLE}, **values})

    def lane_finish(self, sub_id: str, batch_id: str, results: Sequence[tuple[int, Result]]) -> int:
        with self._db.write() as tx:
            row = tx.one("lane_sub_for_update", {"id": sub_id})
            if row is None or row["state"] == SubState.DONE:
                return 0  # finished before (a crash after the commit, then the same download again)
            still_open = {r["idx"] for r in tx.all("lane_open_items", {"sub_id": sub_id})}
            fresh = [(idx, r) for idx, r in results if idx in still_open]
            tx.many("lane_store_result", [{"batch_id": batch_id, "idx": idx, **result_params(r)} for idx, r in fresh])
            self._add_counts(tx, batch_id, Tally.of(r for _, r in fresh))
            tx.run("lane_sub_done", {"id": sub_id})
        return len(fresh)

    def lane_progress(self, batch_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not batch_ids:
            return {}
        with self._db.read() as tx:
            rows = tx.all("lane_progress", {"batch_ids": tx.array(list(batch_ids))})
        return {row["batch_id"]: (int(row["ok"] or 0), int(row["bad"] or 0)) for row in rows}
