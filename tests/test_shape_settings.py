"""A state saved inside a window resumes only with the batch settings that planned it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixbatch.errors import StateError
from mixbatch.shape import BFDShaper, BucketShaper, PadBucketShaper
from mixbatch.testing import ListFeed

SHAPERS = {
    "bfd": (lambda: BFDShaper(64, 8), lambda: BFDShaper(64, 4)),
    "buckets": (lambda: BucketShaper(64, 512, min_len=8, window_tokens=4096),
                lambda: BucketShaper(64, 512, min_len=16, window_tokens=4096)),
    "pad_buckets": (lambda: PadBucketShaper(64, 1024, window_tokens=4096),
                    lambda: PadBucketShaper(64, 1024, window_tokens=4096, sort_pool=0)),
}


def _feed() -> ListFeed:
    rng = np.random.default_rng(0)
    n = 3000
    return ListFeed(rng.integers(0, 3, n), np.arange(n), rng.integers(1, 200, n))


@pytest.mark.parametrize("name", list(SHAPERS))
def test_other_settings_refused_inside_a_window_accepted_at_a_boundary(name: str) -> None:
    make, other = SHAPERS[name]
    shaper, feed = make(), _feed()
    inside = boundary = None
    for _ in range(400):
        plan = shaper.plan_step(feed, 8)
        assert plan is not None
        state = json.loads(json.dumps({"feed": feed.state_dict(),
                                       "shaper": shaper.state_dict()}))
        if state["shaper"]["window_start"] is None:
            boundary = boundary or state
        else:
            inside = inside or state
        if inside and boundary:
            break
    assert inside and boundary
    with pytest.raises(StateError, match="other batch settings"):
        other().load_state_dict(inside["shaper"])
    make().load_state_dict(inside["shaper"])  # the same settings: fine
    fresh, f = other(), _feed()
    f.load_state_dict(boundary["feed"])
    fresh.load_state_dict(boundary["shaper"])  # no open window: new settings from here on
    assert fresh.plan_step(f, 8) is not None
