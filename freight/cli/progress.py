"""Progress bars and summaries for batches, shared by ``freight run`` and ``freight submit --wait``."""

from __future__ import annotations

import sys

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

#: Progress, summaries and notes: stderr, so that stdout carries only what a command was asked for.
console = Console(stderr=True)


def stdout_console() -> Console:
    """For what a command was asked to show (``status``'s and ``list``'s tables): stdout, so that it pipes
    (``freight list | grep``). Not on a terminal there is no width to fit, so a table is never cut to 80
    columns (a batch id shortened to ``batch_c59a…`` could not be copied from it)."""
    return Console() if sys.stdout.isatty() else Console(width=10_000)


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
