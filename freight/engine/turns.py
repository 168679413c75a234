"""Whose turn it is to have a chunk claimed (moved out of engine.py, which re-exports it)."""

from __future__ import annotations

from collections.abc import Sequence

from freight.domain.batches import Batch


class FairTurns:
    """Whose turn it is to have a chunk claimed: projects in turn, and each project's batches in turn.

    So a project with many (or huge) batches gets one chunk in P while P projects have work, and
    never holds up the others for longer than that; within a project, batches share the same way.
    """

    def __init__(self) -> None:
        self._last_project: str | None = None
        self._last_batch: dict[str, str] = {}

    def order(self, batches: Sequence[Batch]) -> list[Batch]:
        """Every batch, in the order to try them: the next project's batches first, from its next batch."""
        by_project: dict[str, list[Batch]] = {}
        for batch in batches:
            by_project.setdefault(batch.project, []).append(batch)
        projects = sorted(by_project)
        start = next((i for i, p in enumerate(projects) if self._last_project is None or p > self._last_project), 0)
        ordered: list[Batch] = []
        for project in projects[start:] + projects[:start]:
            own = by_project[project]
            last = self._last_batch.get(project)
            after = next((i + 1 for i, b in enumerate(own) if b.id == last), 0)
            ordered.extend(own[after:] + own[:after])
        return ordered

    def served(self, batch: Batch) -> None:
        self._last_project = batch.project
        self._last_batch[batch.project] = batch.id
