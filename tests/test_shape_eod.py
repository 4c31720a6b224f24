"""Every fed position is trained at most once, and every end-of-document token exactly once, in
``concat`` and ``bfd`` packing (issue: "a document whose length plus its end token fills a row
exactly leaves a one-token segment in another row that is never trained").

The targets are read from the batch itself, as a Hugging Face causal LM trains them: labels
are shifted inside each row, so the label at column ``c >= 1`` is predicted from column
``c - 1`` of the same row; -100 trains nothing. Document lengths are drawn around the row
length (0, 1, ``L - 1``, ``L``, ``L + 1``, ``2L``, ...), where the boundary cases live.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.config import config_from_dict
from mixbatch.loader.loader import MixedLoader
from mixbatch.shape import IGNORE_INDEX, BFDShaper, ConcatShaper, materialize
from mixbatch.shape.base import StepPlan
from mixbatch.testing import feed_from_items, toy_stores

EOD = -1  # the index that stands for a document's end token


def _positions(plan: StepPlan) -> tuple[np.ndarray, ...]:
    """Per position of the step: source, document and token index (``EOD`` for an end token;
    doc -1 on padding), and whether it is the first position of its segment."""
    R, L = plan.rows, plan.seq_len
    src = np.full(R * L, -1, np.int64)
    doc = np.full(R * L, -1, np.int64)
    tok = np.full(R * L, -1, np.int64)
    first = np.zeros(R * L, bool)
    for k in range(len(plan.row)):
        p = int(plan.row[k]) * L + int(plan.col[k])
        a, b = int(plan.start[k]), int(plan.end[k])
        w = b - a + int(plan.eod[k])
        src[p:p + w], doc[p:p + w] = plan.source[k], plan.doc[k]
        tok[p:p + b - a] = np.arange(a, b)
        if plan.eod[k]:
            tok[p + b - a] = EOD
        first[p] = True
    return src, doc, tok, first


class Targets:
    """What a stream of steps trains: how often each (source, doc, token) is a target, which
    fed positions are never one, and the segments that train nothing."""

    def __init__(self) -> None:
        self.trained: Counter[tuple[int, int, int]] = Counter()
        self.fed: set[tuple[int, int, int]] = set()
        self.continued_first: set[tuple[int, int, int]] = set()  # a cut's first token
        # segments that train nothing, but an empty document and one token a row boundary
        # cuts off (at a row's end or the next row's start)
        self.idle_segments: list[tuple[int, int, int, int]] = []

    def add(self, plan: StepPlan, stores: list) -> None:
        batch = materialize(plan, stores, eod_id=0, pad_id=-7)
        labels = batch["labels"]
        src, doc, tok, first = _positions(plan)
        L = plan.seq_len
        lab = labels.reshape(-1)
        col = np.arange(lab.size) % L
        hit = (lab != IGNORE_INDEX) & (col >= 1)
        # a target is predicted from the position before it, in the same document
        at = np.flatnonzero(hit)
        assert np.all(doc[at] >= 0)
        assert np.all((src[at - 1] == src[at]) & (doc[at - 1] == doc[at]))
        prev_tok, here = tok[at - 1], tok[at]
        assert np.all(prev_tok >= 0)  # an end token predicts nothing
        assert np.all((here == prev_tok + 1) | (here == EOD))
        # label -100 exactly at padding and segment starts (the Hugging Face convention)
        assert np.array_equal(lab == IGNORE_INDEX, (doc < 0) | first)
        for s, d, t in zip(src[hit].tolist(), doc[hit].tolist(), here.tolist(), strict=True):
            self.trained[s, d, t] += 1
        real = doc >= 0
        for s, d, t in zip(src[real].tolist(), doc[real].tolist(), tok[real].tolist(),
                           strict=True):
            self.fed.add((s, d, t))
        for k in range(len(plan.row)):
            p = int(plan.row[k]) * L + int(plan.col[k])
            w = int(plan.end[k] - plan.start[k]) + int(plan.eod[k])
            empty_doc = plan.start[k] == plan.end[k] == 0
            # one token a row boundary cuts off: the last of a row, the first of the next
            cut_off = w == 1 and not plan.eod[k] and plan.col[k] in (0, L - 1)
            if not hit[p:p + w].any() and not empty_doc and not cut_off:
                self.idle_segments.append((int(plan.source[k]), int(plan.doc[k]),
                                           int(plan.start[k]), int(plan.end[k])))
            if plan.start[k] > 0 and plan.end[k] > plan.start[k] and \
                    (plan.source[k], plan.doc[k], plan.start[k]) not in self.trained:
                self.continued_first.add((int(plan.source[k]), int(plan.doc[k]),
                                          int(plan.start[k])))

    def check(self, lengths: list[list[int]]) -> dict[str, int]:
        """Asserts the rules; returns the counts (untrained fed positions by kind)."""
        twice = {k: n for k, n in self.trained.items() if n > 1}
        assert not twice, f"trained more than once: {sorted(twice)[:5]}"
        assert not self.idle_segments, f"segments that train nothing: {self.idle_segments[:5]}"
        never = [f for f in self.fed if f not in self.trained]
        kinds = Counter()
        for s, d, t in never:
            n = lengths[s][d]
            if t == 0 or (t == EOD and n == 0):
                kinds["document_start"] += 1  # no context: never a target by convention
            elif t == EOD:
                kinds["end_token"] += 1
            elif (s, d, t) in self.continued_first:
                kinds["cut"] += 1
            else:
                kinds["other"] += 1
        assert kinds["end_token"] == 0 and kinds["other"] == 0, kinds
        fed_docs = {(s, d) for s, d, _ in self.fed}
        for s, d in fed_docs:  # every fed document's end token, trained once
            if lengths[s][d] > 0:
                assert self.trained[s, d, EOD] == 1, (s, d, lengths[s][d])
        return dict(kinds)


def _lengths(seq_len: int) -> st.SearchStrategy[int]:
    L = seq_len
    edge = [0, 1, 2, L - 2, L - 1, L, L + 1, 2 * L - 1, 2 * L, 2 * L + 1, 3 * L]
    return st.one_of(st.sampled_from([x for x in edge if x >= 0]), st.integers(0, 4 * L))


@st.composite
def _case(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int, int]:
    seq_len = draw(st.integers(2, 12))
    items = draw(st.lists(st.tuples(st.integers(0, 2), _lengths(seq_len)), min_size=1,
                          max_size=50))
    return items, seq_len, draw(st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(case=_case(), packing=st.sampled_from(["concat", "bfd"]), window=st.integers(1, 3))
def test_no_fed_token_is_untrained_but_starts(case, packing: str, window: int) -> None:
    """Whole documents (sample feeds): every end token is trained once; what is never trained
    is a document's first token, and in concat the first token after a row cut."""
    items, seq_len, rows = case
    feed, per_source = feed_from_items(items)
    stores = toy_stores(per_source)
    shaper = ConcatShaper(seq_len) if packing == "concat" else BFDShaper(seq_len, window)
    t = Targets()
    while (plan := shaper.plan_step(feed, rows)) is not None:
        t.add(plan, stores)
    kinds = t.check(per_source)
    if packing == "bfd":  # bfd cuts only documents of seq_len tokens or more
        assert kinds.get("cut", 0) <= sum(n // seq_len for _, n in items)


def test_a_row_filled_by_a_document_repeats_its_last_token_for_the_end_token() -> None:
    """concat, seq_len 4: a document of 4 tokens fills row 0; row 1 starts with its last token
    again (label ignored) and the end token (trained); a one-token document that would start
    in a row's last position starts the next row instead, a longer one is cut there."""
    feed, per_source = feed_from_items([(0, 4), (1, 2), (0, 1), (1, 3)])
    stores = toy_stores(per_source)
    shaper = ConcatShaper(4)
    p = shaper.plan_step(feed, 3)
    segs = list(zip(p.row.tolist(), p.col.tolist(), p.start.tolist(), p.end.tolist(),
                    p.eod.tolist(), strict=True))
    # row 1: [3, 4) + end, then doc (1, 0) [0, 2), whose end token would open row 2 alone
    assert segs == [(0, 0, 0, 4, False), (1, 0, 3, 4, True), (1, 2, 0, 2, False),
                    (2, 0, 1, 2, True), (2, 2, 0, 1, True)]
    b = materialize(p, stores, eod_id=0, pad_id=-7)
    assert b["input_ids"][1].tolist() == [4, 0, 1001, 1002]
    assert b["labels"][1].tolist() == [IGNORE_INDEX, 0, IGNORE_INDEX, 1002]
    assert b["input_ids"][2].tolist() == [1002, 0, 1, 0]
    assert b["labels"][2].tolist() == [IGNORE_INDEX, 0, IGNORE_INDEX, 0]
    # the repeats took two positions: doc (1, 1) did not start; it is carried whole
    assert shaper.state_dict() == {"carry": [1, 1, 3, 0, 3, 1]}
    p2 = shaper.plan_step(feed, 3)
    assert p2.start.tolist()[:1] == [0] and p2.row.tolist()[:1] == [0]
    # seq_len 3: a one-token document at a row's last position (col 2) starts the next row
    feed3, _ = feed_from_items([(0, 1), (0, 1), (0, 3)])
    s3 = ConcatShaper(3)
    p3 = s3.plan_step(feed3, 2)
    assert p3.row.tolist() == [0, 1, 1] and p3.pad.tolist() == [1, 0]
    assert list(zip(p3.start.tolist(), p3.end.tolist(), p3.eod.tolist(), strict=True)) == [
        (0, 1, True), (0, 1, True), (0, 1, False)]  # doc 2 (3 tokens) is cut after its first
    assert s3.state_dict() == {"carry": [0, 2, 3, 1, 3, 1]}
    feed4, _ = feed_from_items([(0, 1), (0, 3)])
    p4 = ConcatShaper(3).plan_step(feed4, 2)  # no padding: doc 1 starts at col 2
    assert p4.pad.tolist() == [0, 0] and p4.start.tolist() == [0, 0, 1]


def _loader(lengths: list[list[int]], packing: str, seq_len: int) -> MixedLoader:
    names = [f"s{i}" for i in range(len(lengths))]
    cfg = config_from_dict({
        "seed": 3, "store": "unused", "sources": {n: {"path": f"{n}.jsonl", "max_epochs": 1} for n in names},
        "mixture": {"unit": "tokens", "weights": {n: 1.0 for n in names}},
        "batch": {"seq_len": seq_len, "batch_size": 4, "packing": packing,
                  **({"pack_window": 3} if packing == "bfd" else {})}})
    return MixedLoader(cfg, stores=dict(zip(names, toy_stores(lengths), strict=True)))


@settings(max_examples=12, deadline=None)
@given(seq_len=st.sampled_from([4, 8, 16]), packing=st.sampled_from(["concat", "bfd"]),
       data=st.data())
def test_loader_pieces_train_every_end_token(seq_len: int, packing: str, data) -> None:
    """Token mode (documents planned as pieces of <= seq_len, sources interleaved), through the
    loader, one epoch: the same rules hold at every step and across step boundaries."""
    lengths = [data.draw(st.lists(_lengths(seq_len), min_size=4, max_size=30))
               for _ in range(3)]
    loader = _loader(lengths, packing, seq_len)
    t = Targets()
    for step in loader.steps(400):
        t.add(step.plan, loader.stores)
    t.check(lengths)
