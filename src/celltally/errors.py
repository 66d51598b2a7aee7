"""The one error type users see: it names the file and says what is wrong."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: an unreadable file, a wrong shape, a point outside its image...

    ``str(error)`` is one line, ``"<source>: <problem>"``, ready for a CLI to print.
    """

    def __init__(self, source: str | Path | None, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)
