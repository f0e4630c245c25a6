"""The one error type users see for bad input: it names the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path


class CryorayInputError(ValueError):
    """Bad user input, reported as one sentence: '<file>: <field>: expected <expected>, got <got>'."""

    def __init__(self, path: str | Path | None, field: str, expected: str, got: object = None) -> None:
        self.path = str(path) if path is not None else None
        self.field = field
        self.expected = expected
        self.got = got
        where = f"{self.path}: " if self.path else ""
        found = f", got {got}" if got is not None else ""
        super().__init__(f"{where}{field}: expected {expected}{found}")

    def __reduce__(self) -> tuple[type[CryorayInputError], tuple[str | None, str, str, object]]:
        """Rebuild from the four parts: an error raised in a Ray task or a Ray Data function is pickled to the driver."""
        return type(self), (self.path, self.field, self.expected, self.got)
