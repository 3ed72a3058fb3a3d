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


def rate_text(done: float, seconds: float, unit: str = "img") -> str:
    """Throughput for a progress bar: ``"1,234 img/s"``, ``"3.4 img/s"``, or, when one item takes
    a second or more, the time per item (``"2.5 s/img"``) instead of a rounded ``"0 img/s"``."""
    if done <= 0:
        return ""
    rate = done / max(seconds, 1e-9)
    if rate >= 10:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 1:
        return f"{rate:.1f} {unit}/s"
    return f"{seconds / done:,.1f} s/{unit}"


def progress(unit: str = "img", disable: bool = False) -> Progress:
    """A progress bar that shows done/total, the task's ``rate`` field (see :func:`rate_text`),
    elapsed and remaining time; ``disable`` hides it (e.g. for work of one step)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=disable,
    )
