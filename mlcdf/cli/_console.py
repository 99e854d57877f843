"""Consoles and progress bars shared by the commands.

Results go to stdout (``out``); messages, warnings and progress bars go to stderr (``err``), so that
``mlcdf ... --json > file`` stays clean.

Printed text holds the user's names (runs, labels, paths), so the consoles replace no ``:emoji:`` codes
(a run ``a:x:b`` would print as ``a❌b``), and :func:`note`, :func:`warn`, progress descriptions and the
label names of :func:`matrix_table` are escaped: ``[...]`` in a name is text, not rich markup.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mlcdf.progress import ProgressFn

T = TypeVar("T")

out = Console(emoji=False)
err = Console(stderr=True, emoji=False)


def progress_columns() -> tuple:
    return (
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def rich_progress(*, quiet: bool = False) -> ProgressFn:
    """A :class:`~mlcdf.progress.ProgressFn` drawing a transient rich bar on stderr.

    The bar is off with ``quiet`` and when stderr is not a terminal (logs stay readable).
    """
    disable = quiet or not sys.stderr.isatty()

    def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with Progress(*progress_columns(), console=err, transient=True, disable=disable) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)

    return progress


def warn(message: str) -> None:
    """One line, however long: a path in it stays whole to copy or grep (as the errors of :mod:`mlcdf.cli.main`)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err.print(escape(message), highlight=False, soft_wrap=True)


def matrix_table(title: str, labels: tuple[str, ...], matrix: np.ndarray, fmt: str, bold: np.ndarray | None = None) -> Table:
    """A C x C matrix with row/column label names; ``bold`` marks cells (the kept edges)."""
    table = Table(title=title, title_justify="left")
    table.add_column("i \\ j")
    labels = tuple(escape(label) for label in labels)
    for label in labels:
        table.add_column(label, justify="right")
    for i, label in enumerate(labels):
        cells = [format(value, fmt) for value in matrix[i]]
        if bold is not None:
            cells = [f"[bold green]{cell}[/]" if bold[i, j] else f"[dim]{cell}[/]" for j, cell in enumerate(cells)]
        table.add_row(label, *cells)
    return table
