"""Accounting for skipped records: counts per reason plus a few example locations.

Invariant 5 of the design ("nothing lost, nothing silent"): a record that is not used is either
an error that stops the run or a skip that is counted here, with where it happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixbatch.errors import DataError
from mixbatch.io.formats import OnError

MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
NOT_A_STRING = "not_a_string"
INVALID_UTF8 = "invalid_utf8"
#: a ``second_field`` value that is not an integer >= 0, a string or a list
BAD_SECOND_VALUE = "bad_second_value"


def one_line(text: str) -> str:
    """``text`` with line breaks escaped, so that an error message stays on one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


@dataclass
class SkipCounter:
    """Skipped records per reason, e.g. ``{"malformed_json": 3, "invalid_utf8": 1}``.

    ``examples`` keeps the first ``max_examples`` locations per reason, each a one-line
    ``"file:line: problem"`` string, for the report. Counters of several worker processes are
    combined with :meth:`merge`.
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, n: int = 1, example: str | None = None) -> None:
        """Count ``n`` skipped records for ``reason``; keep ``example`` if there is room."""
        self.counts[reason] = self.counts.get(reason, 0) + n
        if example is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < self.max_examples:
                kept.append(one_line(example))

    @property
    def total(self) -> int:
        """All skipped records, every reason together."""
        return sum(self.counts.values())

    def merge(self, other: SkipCounter) -> None:
        """Add ``other``'s counts and examples to this counter (examples stay capped)."""
        for reason, n in other.counts.items():
            self.add(reason, n)
        for reason, kept in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(kept[: max(0, self.max_examples - len(mine))])

    def summary(self) -> str:
        """One line such as ``"3 skipped: malformed_json 2, missing_field 1"``."""
        if not self.counts:
            return "0 skipped"
        parts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))
        return f"{self.total} skipped: {parts}"


def reject(on_error: OnError, skips: SkipCounter, reason: str, message: str) -> None:
    """Handle one bad record: raise ``DataError(message)`` or count it under ``reason``.

    ``message`` is ``"file:record: problem"``.
    """
    if on_error is OnError.FAIL:
        raise DataError(one_line(message))
    skips.add(reason, example=message)
