"""What every batch shaper takes and gives.

A shaper turns the planned stream of documents into the rows of one global step. It works on
document *lengths* only and returns a :class:`StepPlan`: flat arrays of segments, each a token
span ``[start, end)`` of one document placed in one row. Tokens are read later
(:func:`mixbatch.shape.materialize.materialize`), and only for the rows a rank or worker needs, so
every rank and worker can plan the whole global step cheaply and identically.

A shaper pulls documents from a :class:`DocFeed` and keeps the rest of a partly placed document
in its own small state (``state_dict``), so a step boundary is always an exact resume point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Docs:
    """Documents, or pieces of documents, in stream order: their source index, index in the
    source's store, the whole document's length, and, when every store has one, its second
    length (``second_lengths.npy``, used by 2-D bucketing).

    In token mode the feed plans long documents as *pieces* (:class:`mixbatch.loader.feed.
    MixedFeed`): entry ``k`` then holds tokens ``[start[k], end[k])`` of its document, followed
    by the end-of-document token when ``eod[k]``; a document's pieces come in order. Without
    ``start`` / ``end`` / ``eod`` every entry is a whole document (``[0, length)`` and its end
    token); :attr:`span_start`, :attr:`span_end` and :attr:`span_eod` give the spans either way.
    """

    source: np.ndarray  # int32
    doc: np.ndarray  # int64
    length: np.ndarray  # int64, the whole document's tokens
    second: np.ndarray | None = None  # int64
    start: np.ndarray | None = None  # int64, the piece's first token
    end: np.ndarray | None = None  # int64, the piece's end (exclusive)
    eod: np.ndarray | None = None  # bool, the end-of-document token follows the piece

    def __len__(self) -> int:
        return int(self.source.shape[0])

    @property
    def pieces(self) -> bool:
        """Whether the entries carry their own spans (else they are whole documents)."""
        return self.start is not None

    @property
    def span_start(self) -> np.ndarray:
        return self.start if self.start is not None else np.zeros(len(self), np.int64)

    @property
    def span_end(self) -> np.ndarray:
        return self.end if self.end is not None else self.length.astype(np.int64, copy=False)

    @property
    def span_eod(self) -> np.ndarray:
        return self.eod if self.eod is not None else np.ones(len(self), bool)

    @property
    def tokens(self) -> np.ndarray:
        """Tokens of each entry (its span, without the end token)."""
        if self.start is None:
            return self.length.astype(np.int64, copy=False)
        return self.span_end - self.start

    def positions(self, extra_per_doc: int) -> np.ndarray:
        """Positions each entry takes: its tokens, plus ``extra_per_doc`` when its document's
        end token follows it."""
        if self.eod is None:
            return self.tokens + extra_per_doc
        return self.tokens + extra_per_doc * self.eod

    @staticmethod
    def empty() -> Docs:
        return Docs(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64))

    @staticmethod
    def concat(parts: list[Docs]) -> Docs:
        parts = [p for p in parts if len(p)] or parts[:1]
        if not parts:
            return Docs.empty()
        if len(parts) == 1:
            return parts[0]
        second = None
        if all(p.second is not None for p in parts):
            second = np.concatenate([p.second for p in parts])  # type: ignore[misc]
        spans: tuple[np.ndarray | None, ...] = (None, None, None)
        if any(p.pieces for p in parts):
            spans = (np.concatenate([p.span_start for p in parts]),
                     np.concatenate([p.span_end for p in parts]),
                     np.concatenate([p.span_eod for p in parts]))
        return Docs(np.concatenate([p.source for p in parts]),
                    np.concatenate([p.doc for p in parts]),
                    np.concatenate([p.length for p in parts]), second, *spans)

    def slice(self, a: int, b: int) -> Docs:
        def cut(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[a:b]

        return Docs(self.source[a:b], self.doc[a:b], self.length[a:b], cut(self.second),
                    cut(self.start), cut(self.end), cut(self.eod))


class DocFeed(Protocol):
    """The planned document stream, as a shaper sees it."""

    def take(self, n: int) -> Docs:
        """The next ``n`` documents (fewer only when the stream has ended)."""
        ...

    def take_covering(self, positions: int, extra_per_doc: int) -> Docs:
        """The fewest next documents (or pieces) whose tokens, plus ``extra_per_doc`` for each
        one followed by its end token (:meth:`Docs.positions`), add up to ``positions`` or more
        (fewer only when the stream has ended)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The feed's position (O(K)); a shaper that plans a window of documents ahead saves
        the position at the window's start and replays the window on resume."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    def weights(self) -> np.ndarray | None:
        """The mixture weights the feed plans with now (``None``: a feed without a mixture,
        e.g. one fixed document list). A shaper that replays a window sets the weights the
        window was first pulled with, then restores these."""
        ...

    def set_weights(self, weights: np.ndarray) -> None:
        """Plan with ``weights`` from now on (only called on a feed whose ``weights`` is set)."""
        ...


@dataclass
class StepPlan:
    """The rows of one global step, as segments; no tokens yet.

    Segment ``k`` puts tokens ``[start[k], end[k])`` of document ``doc[k]`` of source
    ``source[k]`` into row ``row[k]`` at column ``col[k]``; when ``eod[k]`` is set an
    end-of-document token follows it. Segments are ordered by row, then column. ``pad[r]`` is the
    number of padding positions at the end of row ``r``. ``second[k]`` (2-D bucketing only) is
    the document's second length, e.g. its target's length, which the caller pads itself.
    """

    rows: int
    seq_len: int
    row: np.ndarray  # int32
    col: np.ndarray  # int64
    source: np.ndarray  # int32
    doc: np.ndarray  # int64
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    eod: np.ndarray  # bool
    pad: np.ndarray  # int64, per row
    truncated: int = 0  # tokens dropped by this step (pad mode truncation)
    stats: dict[str, Any] = field(default_factory=dict)
    second: np.ndarray | None = None  # int64, per segment (2-D bucketing)

    @property
    def width(self) -> np.ndarray:
        """Positions each segment takes in its row (tokens, plus one for an end token)."""
        return self.end - self.start + self.eod

    def row_source(self, n_sources: int) -> np.ndarray:
        """The source that fills most positions of each row (ties to the lower index); rows
        that hold nothing get -1. Used to keep every rank's share of each source exact."""
        counts = np.zeros((self.rows, max(n_sources, 1)), dtype=np.int64)
        np.add.at(counts, (self.row, self.source), self.width)
        label = counts.argmax(axis=1).astype(np.int32)
        label[counts.sum(axis=1) == 0] = -1
        return label

    def select_rows(self, rows: np.ndarray) -> StepPlan:
        """The plan restricted to ``rows`` (renumbered 0..len(rows)-1 in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        new_index = np.full(self.rows, -1, dtype=np.int64)
        new_index[rows] = np.arange(len(rows))
        keep = new_index[self.row] >= 0
        order = np.lexsort((self.col[keep], new_index[self.row[keep]]))
        pick = np.flatnonzero(keep)[order]
        return StepPlan(len(rows), self.seq_len, new_index[self.row[pick]].astype(np.int32),
                        self.col[pick], self.source[pick], self.doc[pick], self.start[pick],
                        self.end[pick], self.eod[pick], self.pad[rows], self.truncated,
                        dict(self.stats), None if self.second is None else self.second[pick])


class Shaper(Protocol):
    """Builds the rows of one step from a :class:`DocFeed`; see the module docstring."""

    name: str

    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        """Rows of the next step, or ``None`` when the stream has ended."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
