from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.shape import IGNORE_INDEX, ConcatShaper, PadShaper, materialize
from mixbatch.testing import ListFeed
from mixbatch.testing import feed_from_items as _feed_for
from mixbatch.testing import toy_stores as _stores

docs_strategy = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40)), min_size=1,
                         max_size=60)


@settings(max_examples=200, deadline=None)
@given(items=docs_strategy, seq_len=st.integers(2, 33), rows=st.integers(1, 4))
def test_concat_feeds_every_token_once_in_order(items, seq_len, rows) -> None:
    feed, per_source = _feed_for(items)
    stores = _stores(per_source)
    shaper = ConcatShaper(seq_len)
    spans = []
    stream = []
    while (plan := shaper.plan_step(feed, rows)) is not None:
        batch = materialize(plan, stores, eod_id=0, pad_id=-1)
        ids = batch["input_ids"]
        assert ids.shape == (rows, seq_len)
        # boundaries: cu_seqlens agree with position resets
        pos = batch["position_ids"].reshape(-1)
        cu = batch["cu_seqlens"]
        assert cu[0] == 0 and cu[-1] == rows * seq_len and np.all(np.diff(cu) > 0)
        starts = np.zeros(rows * seq_len, bool)
        starts[cu[:-1]] = True
        real = batch["source_ids"].reshape(-1) >= 0
        assert np.array_equal((pos == 0) & real, starts & real)
        assert batch["max_seqlen"] == int(np.diff(cu).max())
        # labels never cross a boundary: first position of each segment is ignored
        assert np.all(batch["labels"].reshape(-1)[cu[:-1]] == IGNORE_INDEX)
        assert np.all(batch["labels"][batch["source_ids"] < 0] == IGNORE_INDEX)
        for k in range(len(plan.row)):
            spans.append((int(plan.source[k]), int(plan.doc[k]), int(plan.start[k]),
                          int(plan.end[k]), bool(plan.eod[k])))
        stream.append(ids[ids != -1])
        # only a final step may be padded
        if plan.pad.sum():
            assert shaper.plan_step(feed, rows) is None
            break
    # the token stream is exactly documents + end tokens, in order
    expected = []
    for s, n in items:
        expected.append(np.arange(n) + 1 + 1000 * s)
        expected.append(np.array([0]))
    assert np.array_equal(np.concatenate(stream), np.concatenate(expected))
    # spans of each document tile [0, len) exactly once and end with one end token
    by_doc: dict[tuple[int, int], list[tuple[int, int, bool]]] = {}
    for s, d, a, b, e in spans:
        by_doc.setdefault((s, d), []).append((a, b, e))
    for (s, d), pieces in by_doc.items():
        n = per_source[s][d]
        pos = 0
        for a, b, _ in pieces:
            assert a == pos or (a == n and pos == n)
            pos = b
        assert pos == n and sum(e for *_, e in pieces) == 1


def test_concat_exact_small_example() -> None:
    feed = ListFeed([0, 1, 0], [0, 0, 1], [5, 2, 3])
    shaper = ConcatShaper(4)
    p = shaper.plan_step(feed, 2)  # 8 positions: doc0 (5+1) + doc1 (2 of 2+1)
    assert p.row.tolist() == [0, 1, 1]
    assert list(zip(p.start.tolist(), p.end.tolist(), p.eod.tolist(), strict=True)) == [
        (0, 4, False), (4, 5, True), (0, 2, False)]
    # only its end token is left: source, doc, length, placed, span end, end token follows
    assert shaper.state_dict() == {"carry": [1, 0, 2, 2, 2, 1]}
    p2 = shaper.plan_step(feed, 2)
    # row 0: the carried end token, then doc (0, 1); its end token opens row 1
    assert p2.row.tolist() == [0, 0, 1]
    assert list(zip(p2.start.tolist(), p2.end.tolist(), p2.eod.tolist(), strict=True)) == [
        (2, 2, True), (0, 3, False), (3, 3, True)]
    assert p2.pad.tolist() == [0, 3]


def test_pad_truncates_and_counts() -> None:
    feed = ListFeed([0, 1, 1], [0, 0, 1], [3, 10, 7])
    shaper = PadShaper(8)
    stores = _stores([[3], [10, 7]])
    p = shaper.plan_step(feed, 2)
    assert p.truncated == 2 and p.pad.tolist() == [4, 0]
    b = materialize(p, stores, eod_id=0, pad_id=-1)
    assert b["input_ids"][0].tolist() == [1, 2, 3, 0, -1, -1, -1, -1]
    assert b["input_ids"][1].tolist() == [1001 + i for i in range(8)]
    assert b["labels"][0].tolist() == [-100, 2, 3, 0, -100, -100, -100, -100]
    p2 = shaper.plan_step(feed, 2)
    assert p2.pad.tolist() == [0, 8] and p2.truncated == 0
    assert shaper.plan_step(feed, 2) is None


def test_row_source_and_select_rows() -> None:
    feed = ListFeed([0, 1, 2, 1], [0, 0, 0, 1], [6, 1, 7, 3])
    p = ConcatShaper(8).plan_step(feed, 3)
    assert p.row_source(3).tolist() == [0, 2, 1]
    sub = p.select_rows(np.array([2, 0]))
    assert sub.rows == 2 and sub.row_source(3).tolist() == [1, 0]
