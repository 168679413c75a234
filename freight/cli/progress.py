"""Progress bars and summaries for batches, shared by ``freight run`` and ``freight submit --wait``."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class BatchProgress:
    def __init__(self, label: str):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("[red]{task.fields[failed]} failed" ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID = self.progress.add_task(label, total=None, status="validating", failed=0, note="")

    def __enter__(self) -> BatchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, status: str, total: int, completed: int, failed: int, note: str = "") -> None:
        """``note``: what else to show (``freight submit --wait``: ETA, tokens/min and cost)."""
        self.progress.update(self.task, total=total or None, completed=completed + failed, status=status,
                             failed=failed, note=note)
