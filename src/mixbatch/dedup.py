"""Exact and near duplicates within and across sources; the hashing core of ``prepare``'s
``dedup`` option and of ``mixbatch audit dedup``.

"SlimPajama-DC: Understanding Data Combinations for LLM Training" compares *global*
deduplication (across all sources) with *local* (inside each source). Both are here:

- **exact**: blake2b of the normalised text (NFKC, lower case, runs of non-word characters and
  whitespace collapsed to one space, stripped);
- **near**: MinHash over word ``ngram``-shingles of that normalised text ("On the resemblance
  and containment of documents", Broder 1997: P[min h(A) = min h(B)] = J(A, B)), with
  ``num_perm`` multiply-shift hash functions h_k(x) = (a_k·x + b_k) >> 32 over 64-bit shingle
  hashes, then LSH banding into b bands of r rows, b·r ≤ num_perm, chosen as datasketch does:
  minimise the false-positive plus false-negative area of P(candidate) = 1 − (1 − s^r)^b around
  ``threshold``. Candidate pairs are kept when their estimated Jaccard (share of equal
  signature entries) reaches ``threshold``; duplicates are the connected groups of kept pairs.

In every group of duplicates the kept copy is the first document in config order (source order,
then document order): deterministic, whatever the number of processes. The signatures are
computed in compiled batches (numba), not per document in Python.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit
from pydantic import BaseModel, ConfigDict, Field

from mixbatch.atomic import json_digest

EXACT = "duplicate_exact"
NEAR = "duplicate_near"


class DedupScope(str, Enum):
    GLOBAL = "global"  # across all sources: a copy in an earlier source wins
    LOCAL = "local"  # inside each source only


class NearConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(default=0.8, gt=0, le=1)
    num_perm: int = Field(default=128, ge=2, le=1024)
    ngram: int = Field(default=5, ge=1, le=64)
    seed: int = 1


class DedupConfig(BaseModel):
    """The ``dedup`` section of the config: ``{scope: global|local, near: {threshold,
    num_perm, ngram}}``; without ``near`` only exact duplicates are dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    scope: DedupScope = DedupScope.GLOBAL
    exact: bool = True
    near: NearConfig | None = None


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, lower case, non-word runs → one space, stripped."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(norm: str) -> bytes:
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


# ---------------------------------------------------------------------------------------------
# MinHash
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _signatures(data: np.ndarray, off: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray
                ) -> np.ndarray:
    """MinHash signatures of the documents ``data[off[d]:off[d+1]]`` (normalised UTF-8, words
    separated by one space)."""
    n_docs = len(off) - 1
    k = len(a)
    sig = np.full((n_docs, k), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    fnv_off = np.uint64(14695981039346656037)
    fnv_prime = np.uint64(1099511628211)
    mix = np.uint64(0x9E3779B97F4A7C15)
    words = np.empty(max(1, len(data) // 2 + 1), dtype=np.uint64)
    for d in range(n_docs):
        # word hashes (FNV-1a over bytes)
        nw = 0
        h = fnv_off
        inword = False
        for j in range(off[d], off[d + 1]):
            c = data[j]
            if c == 32:
                if inword:
                    words[nw] = h
                    nw += 1
                    h = fnv_off
                    inword = False
            else:
                h = (h ^ np.uint64(c)) * fnv_prime
                inword = True
        if inword:
            words[nw] = h
            nw += 1
        if nw == 0:
            continue
        n_sh = max(1, nw - ngram + 1)
        for s in range(n_sh):
            x = np.uint64(0)
            for q in range(s, min(s + ngram, nw)):
                x = (x ^ words[q]) * mix + np.uint64(q - s + 1)
            for p in range(k):
                v = np.uint32((a[p] * x + b[p]) >> np.uint64(32))
                if v < sig[d, p]:
                    sig[d, p] = v
    return sig


def hash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(norms: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1
            ) -> np.ndarray:
    """``[len(norms), num_perm]`` uint32 MinHash signatures of normalised texts."""
    encoded = [t.encode("utf-8") for t in norms]
    off = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=off[1:])
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8) if off[-1] else np.zeros(1, np.uint8)
    a, b = hash_params(num_perm, seed)
    return _signatures(data, off, ngram, a, b)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """Bands b and rows r (b·r ≤ num_perm) minimising the weighted false-positive and
    false-negative areas of P(candidate | s) = 1 − (1 − s^r)^b (datasketch's rule)."""
    s = np.linspace(0.0, 1.0, 2001)
    best, best_err = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1.0 - (1.0 - s**rows) ** bands
            fp = np.trapezoid(np.where(s < threshold, p, 0.0), s)
            fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
            err = fp_weight * fp + (1 - fp_weight) * fn
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def candidate_pairs(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``[n, 2]`` pairs (i < j) that share at least one band bucket, each once."""
    out = []
    n = len(sig)
    for band in range(bands):
        part = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows])
        keys = part.view(np.dtype((np.void, part.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        if n < 2:
            continue
        same = sk[1:] == sk[:-1]
        if not same.any():
            continue
        # each bucket: pair its first member with every other (enough for connectivity after
        # the Jaccard check, since duplicates are grouped by connected components)
        start = np.flatnonzero(np.concatenate([[True], ~same]))
        bucket = np.cumsum(np.concatenate([[True], ~same])) - 1
        first = order[start[bucket]]
        other = order
        m = first != other
        pairs = np.stack([np.minimum(first[m], other[m]), np.maximum(first[m], other[m])], 1)
        out.append(pairs)
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(out), axis=0).astype(np.int64)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``pairs`` over ``n`` nodes: each node's smallest member."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pairs) == 0:
        return np.arange(n)
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(g, directed=False)
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


# ---------------------------------------------------------------------------------------------
# finding duplicates
# ---------------------------------------------------------------------------------------------
@dataclass
class Duplicates:
    """Which documents are duplicates, of which kept document, and why.

    Documents are numbered in config order over all sources (``source[g]``, ``doc[g]``);
    ``keeper[g]`` is the document ``g`` duplicates (itself when kept); ``reason[g]`` is ``""``,
    :data:`EXACT` or :data:`NEAR`.
    """

    names: list[str]
    source: np.ndarray
    doc: np.ndarray
    keeper: np.ndarray
    reason: np.ndarray
    near_pairs: list[tuple[int, int, float]] = field(default_factory=list)
    bands_rows: tuple[int, int] | None = None

    def example_ids(self, examples: int) -> set[int]:
        """Global indices of the documents :meth:`report` shows (to fetch their texts)."""
        dup = np.flatnonzero(self.reason != "")[:examples]
        return {int(g) for g in dup} | {int(self.keeper[g]) for g in dup}

    def dropped(self, name: str) -> dict[int, str]:
        """Document index → reason of the dropped documents of source ``name``."""
        i = self.names.index(name)
        m = (self.source == i) & (self.reason != "")
        return dict(zip(self.doc[m].tolist(), self.reason[m].tolist(), strict=True))

    def report(self, examples: int = 5, texts: Mapping[int, str] | Sequence[str] | None = None
               ) -> dict[str, Any]:
        """``{"sources": {name: {"documents", "exact_duplicates", "near_duplicates"}},
        "overlap": {a: {b: documents of a also in b}}, "examples": [...]}``.

        ``overlap[a][b]`` counts documents of ``a`` that have a duplicate (exact or near, kept
        or not) in ``b``; ``overlap[a][a]`` those duplicated inside ``a``."""
        k = len(self.names)
        src: dict[str, Any] = {}
        for i, n in enumerate(self.names):
            m = self.source == i
            src[n] = {"documents": int(m.sum()), "exact_duplicates": int((self.reason[m] == EXACT).sum()),
                      "near_duplicates": int((self.reason[m] == NEAR).sum())}
        # groups: every document with its group root; a document is "in b" when its group has a
        # member of b other than itself
        root = self.keeper.copy()
        root = root[root]  # keepers are their own keepers
        overlap = np.zeros((k, k), dtype=np.int64)
        order = np.argsort(root, kind="stable")
        r_sorted = root[order]
        starts = np.flatnonzero(np.concatenate([[True], r_sorted[1:] != r_sorted[:-1]]))
        ends = np.concatenate([starts[1:], [len(order)]])
        for a_, e_ in zip(starts, ends, strict=True):
            if e_ - a_ < 2:
                continue
            members = order[a_:e_]
            srcs = self.source[members]
            per = np.bincount(srcs, minlength=k)
            for s_ in np.flatnonzero(per):
                present = per > 0
                present_self = per[s_] > 1
                row = present.copy()
                row[s_] = present_self
                overlap[s_] += row * per[s_]
        ov = {a: {b: int(overlap[i, j]) for j, b in enumerate(self.names)}
              for i, a in enumerate(self.names)}
        ex = []
        dup = np.flatnonzero(self.reason != "")
        for g in dup[:examples]:
            kk = int(self.keeper[g])
            item = {"reason": str(self.reason[g]),
                    "kept": {"source": self.names[int(self.source[kk])], "doc": int(self.doc[kk])},
                    "dropped": {"source": self.names[int(self.source[g])], "doc": int(self.doc[g])}}
            if texts is not None:
                item["kept"]["text"] = texts[kk][:160]
                item["dropped"]["text"] = texts[g][:160]
            ex.append(item)
        return {"sources": src, "overlap": ov, "examples": ex,
                "lsh": None if self.bands_rows is None else
                {"bands": self.bands_rows[0], "rows": self.bands_rows[1]}}


def find_duplicates(texts_by_source: Mapping[str, Iterable[str]], config: DedupConfig,
                    keep_texts: bool = False, batch: int = 4096
                    ) -> tuple[Duplicates, list[str] | None]:
    """Duplicates among all documents of ``texts_by_source`` (name → texts in order).

    Streams the texts in batches and keeps per document only its exact key (16 bytes) and, with
    ``near``, its signature (4·num_perm bytes), never the text (unless ``keep_texts``)."""
    names = list(texts_by_source)
    local = config.scope is DedupScope.LOCAL
    nc = config.near
    src_l: list[np.ndarray] = []
    raw: list[str] | None = [] if keep_texts else None
    first: dict[tuple[int, bytes], int] = {}
    keeper_l: list[int] = []
    exact_dup: list[int] = []
    sigs: list[np.ndarray] = []
    live_l: list[np.ndarray] = []
    g = 0

    def flush(norms: list[str], ids: list[int]) -> None:
        if nc is not None and norms:
            sigs.append(minhash(norms, nc.num_perm, nc.ngram, nc.seed))
            live_l.append(np.asarray(ids, dtype=np.int64))

    for i, name in enumerate(names):
        count = 0
        pending: list[str] = []
        pending_ids: list[int] = []
        for t in texts_by_source[name]:
            norm = normalise(t)
            if raw is not None:
                raw.append(t)
            keeper_l.append(g)
            if norm:
                dup = False
                if config.exact:
                    f = first.setdefault((i if local else -1, exact_key(norm)), g)
                    if f != g:
                        keeper_l[g] = f
                        exact_dup.append(g)
                        dup = True
                if not dup:
                    pending.append(norm)
                    pending_ids.append(g)
                    if len(pending) >= batch:
                        flush(pending, pending_ids)
                        pending, pending_ids = [], []
            g += 1
            count += 1
        flush(pending, pending_ids)
        src_l.append(np.full(count, i, dtype=np.int64))
    source = np.concatenate(src_l) if src_l else np.zeros(0, np.int64)
    doc = np.concatenate([np.arange(len(x)) for x in src_l]) if src_l else np.zeros(0, np.int64)
    n = g
    keeper = np.asarray(keeper_l, dtype=np.int64)
    reason = np.full(n, "", dtype=object)
    reason[np.asarray(exact_dup, dtype=np.int64)] = EXACT
    near_pairs: list[tuple[int, int, float]] = []
    bands_rows = None
    if nc is not None and live_l:
        live = np.concatenate(live_l)
        sig = np.concatenate(sigs)
        bands_rows = lsh_params(nc.threshold, nc.num_perm)
        cand = candidate_pairs(sig, *bands_rows)
        if len(cand):
            est = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1)
            ok = est >= nc.threshold
            if local:
                ok &= source[live[cand[:, 0]]] == source[live[cand[:, 1]]]
            cand, est = cand[ok], est[ok]
            root = _components(len(live), cand)
            for (a_, b_), e in zip(cand.tolist(), est.tolist(), strict=True):
                near_pairs.append((int(live[a_]), int(live[b_]), float(e)))
            dup = root != np.arange(len(live))
            keeper[live[dup]] = live[root[dup]]
            reason[live[dup]] = NEAR
    return Duplicates(names, source, doc, keeper, reason.astype(str), near_pairs, bands_rows), raw


def source_texts(cfg: Any, name: str, on_error: Any = None) -> Iterator[str]:
    """Every text of a raw source, in prepare's order (units in order, records in order)."""
    from mixbatch.prepare_inputs import source_files

    yield from source_files(name, cfg.sources[name], cfg).texts(on_error)


# ---------------------------------------------------------------------------------------------
# the prepare hook: which records of which read unit to drop
# ---------------------------------------------------------------------------------------------
def _unit_id(unit: Any) -> tuple[str, int, int | None]:
    return (str(unit.path), int(unit.start), None if unit.end is None else int(unit.end))


@dataclass
class DropPlan:
    """Records to drop per source and read unit: position in the unit's record stream → reason
    (``2·position + 0`` exact, ``+ 1`` near, sorted), and a digest per source for the store's
    fingerprint (a change of any drop rebuilds the source)."""

    units: dict[str, dict[tuple[str, int, int | None], tuple[int, ...]]]
    digests: dict[str, str]
    report: dict[str, Any]

    def unit_drops(self, name: str, unit: Any) -> tuple[int, ...]:
        return self.units.get(name, {}).get(_unit_id(unit), ())

    def fingerprint(self, name: str, fingerprint: str) -> str:
        return hashlib.blake2b(f"{fingerprint}\0{self.digests.get(name, '')}".encode(),
                               digest_size=8).hexdigest()


def plan_drops(cfg: Any, on_error: Any = None, chunk_bytes: int = 64 << 20) -> DropPlan | None:
    """Read every raw source as ``prepare`` will (same units, same record order) and decide the
    duplicates to drop under ``cfg.dedup``; None when the config has no ``dedup``."""
    from mixbatch.errors import ConfigError
    from mixbatch.prepare_inputs import source_files

    dc: DedupConfig | None = getattr(cfg, "dedup", None)
    if dc is None:
        return None
    where: list[tuple[str, tuple[str, int, int | None], int]] = []

    def records(name: str, src: Any) -> Iterator[str]:
        """The source's texts in prepare's order, noting where each one is (read unit, position
        in the unit)."""
        for batch in source_files(name, src, cfg).batches(on_error, chunk_bytes):
            uid = _unit_id(batch.unit)
            for pos, t in enumerate(batch.texts, batch.first):
                where.append((name, uid, pos))
                yield t

    texts: dict[str, Iterable[str]] = {}
    for name, src in cfg.sources.items():
        if src.second_field is not None and not src.is_token_data:
            raise ConfigError(f"dedup: source {name!r} has a second_field; dropping duplicates "
                              "of records with second values is not supported")
        texts[name] = [] if src.is_token_data else records(name, src)
    dups, _ = find_duplicates(texts, dc)
    units: dict[str, dict[tuple[str, int, int | None], list[int]]] = {}
    for g in np.flatnonzero(dups.reason != "").tolist():
        name, uid, pos = where[g]
        units.setdefault(name, {}).setdefault(uid, []).append(
            2 * pos + (1 if dups.reason[g] == NEAR else 0))
    frozen = {n: {u: tuple(sorted(v)) for u, v in d.items()} for n, d in units.items()}
    digests = {}
    for name in cfg.sources:
        digests[name] = json_digest([dc.model_dump(mode="json"),
                                     sorted(frozen.get(name, {}).items(), key=lambda kv: repr(kv[0]))])
    return DropPlan(frozen, digests, dups.report(examples=0))


def drop_records(batches: Iterable[tuple[list[str], Any]], drop: tuple[int, ...],
                 skips: Any, where: str = "") -> Iterator[tuple[list[str], Any]]:
    """``batches`` of one read unit without the records in ``drop`` (see :class:`DropPlan`),
    each drop counted in ``skips`` under :data:`EXACT` or :data:`NEAR`."""
    if not drop:
        yield from batches
        return
    positions = {d // 2: (NEAR if d % 2 else EXACT) for d in drop}
    pos = 0
    for texts, second in batches:
        kept = []
        for t in texts:
            reason = positions.get(pos)
            if reason is None:
                kept.append(t)
            else:
                skips.add(reason, example=f"{where}: record {pos}: {reason.replace('_', ' ')}")
            pos += 1
        yield kept, second
