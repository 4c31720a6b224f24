"""Where a window of documents starts in the feed, so that it can be pulled again on resume.

Shapers that plan many documents at once (``bfd``, ``buckets``, ``pad_buckets``) keep no list
of documents or pieces in their state. They keep the feed's O(K) state from just before the
window was pulled, and the mixture weights in force then; on resume they rewind the feed, pull
the same window again (the feed is deterministic) and re-plan it, which gives exactly what an
uninterrupted run planned. After the replay the feed is where it was after the first pull.

A replay is only exact with the settings the window was planned with (``seq_len``, budget,
buckets, ...): the state carries a digest of them, and loading a state whose window is still
open into a shaper with other settings is refused (at a window boundary they may change).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import numpy as np

from mixbatch.errors import StateError
from mixbatch.shape.base import DocFeed, Docs


def feed_weights(feed: DocFeed) -> list[float] | None:
    """The feed's current mixture weights, if it has any (``MixedFeed`` does)."""
    w = getattr(feed, "weights", None)
    if w is None or not hasattr(feed, "set_weights"):
        return None
    return [float(x) for x in np.asarray(w, dtype=np.float64).ravel()]


def settings_digest(settings: dict[str, Any] | None) -> str | None:
    """A short, stable digest of a shaper's settings (``None`` for none)."""
    if settings is None:
        return None
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class WindowAnchor:
    """The feed's position and weights at the start of the current window (or none), and the
    digest of the settings that plan a window (module docstring)."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.start: dict[str, Any] | None = None
        self.weights: list[float] | None = None
        self.settings = dict(settings) if settings is not None else None
        self.digest = settings_digest(settings)

    @property
    def open(self) -> bool:
        return self.start is not None

    def pull(self, feed: DocFeed, positions: int, extra_per_doc: int) -> Docs:
        """Remember where the window starts, then pull it; an empty pull leaves no window."""
        start, weights = copy.deepcopy(feed.state_dict()), feed_weights(feed)
        docs = feed.take_covering(positions, extra_per_doc)
        self.start, self.weights = (start, weights) if len(docs) else (None, None)
        return docs

    def replay(self, feed: DocFeed, positions: int, extra_per_doc: int) -> Docs:
        """Pull the remembered window again, with the weights it was first pulled with."""
        if self.start is None:
            raise StateError("shaper state: no window to replay")
        now = feed_weights(feed)
        feed.load_state_dict(copy.deepcopy(self.start))
        if self.weights is not None and now is not None:
            feed.set_weights(np.asarray(self.weights))  # type: ignore[attr-defined]
        docs = feed.take_covering(positions, extra_per_doc)
        if now is not None:
            feed.set_weights(np.asarray(now))  # type: ignore[attr-defined]
        return docs

    def close(self) -> None:
        self.start = self.weights = None

    def state_dict(self) -> dict[str, Any]:
        # the window's start is never changed once taken (a replay loads a copy of it), so it
        # is shared, not copied: a loader takes a state every step (MixedLoader.state_from
        # copies the whole state when it hands one out)
        return {"window_start": self.start,
                "window_weights": None if self.weights is None else list(self.weights),
                "settings": self.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Read ``window_start`` / ``window_weights``; raise ValueError/TypeError if malformed."""
        start, weights = state["window_start"], state.get("window_weights")
        if start is not None and not isinstance(start, dict):
            raise TypeError("window_start must be a feed state (a mapping) or null")
        saved = state.get("settings")
        if start is not None and saved is not None and self.digest is not None \
                and saved != self.digest:
            shown = ", ".join(f"{k} {v}" for k, v in (self.settings or {}).items())
            raise StateError("loader state: its open window was planned with other batch "
                             f"settings than these ({shown}); resume with the settings it was "
                             "saved with, or from a state saved at a window boundary")
        self.start = copy.deepcopy(start)
        self.weights = None if weights is None else [float(x) for x in weights]
