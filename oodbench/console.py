"""The one place for terminal output: a rich console (stderr) and progress bars."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
"""Messages, warnings and progress go to stderr so that stdout stays machine-readable."""

out = Console()
"""Results (tables) go to stdout."""


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}", highlight=False)


def info(message: str) -> None:
    console.print(message, highlight=False)


def progress(unit: str = "img") -> Progress:
    """A progress bar that shows done/total, rate in `unit`/s, elapsed and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
