"""Second lengths: a record's ``second_field`` value, for 2-D length bucketing.

The value is an integer >= 0 (used as is), a string (its token count, known only once the run's
tokenizer has seen it) or a list (its length). Readers check each value next to the record's
text and yield them per batch as :class:`SecondValues`; a bad value is a bad record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: the largest length an int64 store entry holds
INT64_MAX = int(np.iinfo(np.int64).max)
#: what a second value may be, as error messages say it
EXPECTED = "expected an integer >= 0, a string or a list"


@dataclass(frozen=True)
class SecondValues:
    """The second values of one batch of records, in record order.

    ``counts[i]`` (int64) is record ``i``'s length, or ``-1`` where its value is a string still
    to be tokenised; ``strings`` holds those strings, in record order.
    """

    counts: np.ndarray
    strings: list[str]

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def lengths(self, count_tokens: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """The int64 length of every record; ``count_tokens`` gives the token count of each
        string of a list (called once per batch, only when there are strings)."""
        out = np.array(self.counts, dtype=np.int64)
        if self.strings:
            out[out < 0] = count_tokens(self.strings)
        return out

    def select(self, keep: np.ndarray) -> SecondValues:
        """The values of the records where the boolean mask ``keep`` is true."""
        is_string = self.counts < 0
        if not is_string.any():
            return SecondValues(self.counts[keep], [])
        kept_strings = np.asarray(keep)[is_string]
        strings = [s for s, k in zip(self.strings, kept_strings.tolist(), strict=True) if k]
        return SecondValues(self.counts[keep], strings)
