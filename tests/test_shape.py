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
    plans = []
    while (plan := shaper.plan_step(feed, rows)) is not None:
        plans.append(plan)
    for i, plan in enumerate(plans):
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
            r, c, w = int(plan.row[k]), int(plan.col[k]), int(plan.end[k] - plan.start[k])
            real = ids[r, c:c + w].tolist()
            prev = _prev_end(spans)
            if prev is not None and spans[-1][2] < prev:  # the last token again, before an
                assert c == 0 and w == 1 and plan.eod[k]  # end token that opens a row
                real = real[1:]
            stream.append(np.array(real + ([0] if plan.eod[k] else []), dtype=ids.dtype))
        # padding: at the stream's end, or a row's last position that no segment may start in
        assert i == len(plans) - 1 or np.all(plan.pad <= 1), plan.pad
    # the token stream is exactly documents + end tokens, in order (repeats taken out)
    expected = []
    for s, n in items:
        expected.append(np.arange(n) + 1 + 1000 * s)
        expected.append(np.array([0]))
    assert np.array_equal(np.concatenate(stream), np.concatenate(expected))
    # spans of each document tile [0, len) and end with one end token; the only overlap is
    # the repeat of the last token before a row-opening end token
    by_doc: dict[tuple[int, int], list[tuple[int, int, bool]]] = {}
    for s, d, a, b, e in spans:
        by_doc.setdefault((s, d), []).append((a, b, e))
    for (s, d), pieces in by_doc.items():
        n = per_source[s][d]
        pos = 0
        for a, b, e in pieces:
            assert a == pos or (e and a == pos - 1 == b - 1 == n - 1)
            pos = b
        assert pos == n and sum(e for *_, e in pieces) == 1


def _prev_end(spans: list[tuple]) -> int | None:
    """Where the previous segment of the last span's document ended (None: its first)."""
    s, d = spans[-1][:2]
    return next((b for s2, d2, _a, b, _e in reversed(spans[:-1]) if (s2, d2) == (s, d)), None)


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
    # row 0: the carried end token after doc (1, 0)'s last token again (an end token never
    # opens a row alone: it would never be trained), then doc (0, 1): 2 of its 3 tokens;
    # row 1: its last token and its end token
    assert p2.row.tolist() == [0, 0, 1]
    assert list(zip(p2.start.tolist(), p2.end.tolist(), p2.eod.tolist(), strict=True)) == [
        (1, 2, True), (0, 2, False), (2, 3, True)]
    assert p2.pad.tolist() == [0, 2]


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
