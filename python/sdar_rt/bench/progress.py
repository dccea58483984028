"""sdar-bench's progress: numbered phases whose count is known from the start, each with a bar over
its timed calls (drawn only on a terminal; a log file gets the phase lines)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text


def log(msg: str) -> None:
    """A line inside a phase (an export, a model build): plain, on stderr."""
    print(f"      {msg}", file=sys.stderr, flush=True)


class PhaseBar:
    """The calls of one phase; ``start`` once their number is known (after a model is loaded)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("      calls"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task = None

    def start(self, calls: int) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("calls", total=max(1, calls))

    def advance(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def stop(self) -> None:
        self._progress.stop()


class Phases:
    """``[k/N] what`` for each of ``total`` phases, in order."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.total, self.started = total, 0
        self.console = console or Console(stderr=True, highlight=False)

    @contextmanager
    def phase(self, what: str) -> Iterator[PhaseBar]:
        """Starts the next phase; yields its bar (``start(calls)``, then ``advance()`` per call)."""
        if self.started >= self.total:
            raise RuntimeError(f"phase {self.started + 1} '{what}' was not planned (planned: {self.total})")
        self.started += 1
        self.console.print(Text(f"[{self.started}/{self.total}] {what}"))
        bar = PhaseBar(self.console)
        try:
            yield bar
        finally:
            bar.stop()
