"""Rich progress bars with rate and ETA, shared by every stage.

On a terminal the bar redraws in place. When stderr is a file or a pipe (nohup, Slurm, CI) rich
cannot redraw, so the same columns are printed as one log line every ``LOG_SECONDS``.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# wide enough for the result tables when output goes to a file or a pipe (rich assumes 80 there)
# markup off: messages carry user paths, and "[...]" in a path must print as it is (styles go through
# ``styled``)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160, markup=False)


def styled(style: str, head: str, rest: str):
    """``head`` in ``style``, then ``rest`` verbatim (no markup is read from either)."""
    from rich.text import Text

    return Text.assemble((head, style), rest)


LOG_SECONDS = float(os.environ.get("SAGSAE_LOG_SECONDS", 30))


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task
        self._logged = time.monotonic()

    def advance(self, n: float) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)
            self._log()

    def note(self, text: str) -> None:
        """Show live metrics (L0, R², ...) after the bar."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)

    def _log(self) -> None:
        if self._progress.console.is_terminal or time.monotonic() - self._logged < LOG_SECONDS:
            return
        self._logged = time.monotonic()
        self._progress.console.print(self._progress.make_tasks_table(self._progress.tasks))


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"? {self.unit}/s", style="cyan")
        return Text(
            f"{speed:,.0f} {self.unit}/s" if speed >= 1 else f"{1 / speed:,.1f} s/{self.unit}", style="cyan"
        )


@contextmanager
def progress_bar(label: str, total: float, unit: str = "tok", quiet: bool = False):
    if quiet:
        yield _Bar(None, None)
        return
    columns = (
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total, note="")
        yield _Bar(progress, task)
