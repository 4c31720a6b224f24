"""What a BPE tokenizer reveals about the mixture it was trained on.

"Data Mixture Inference: What do BPE Tokenizers Reveal about their Training Data?" (Hayase,
Liu et al., 2024): given the tokenizer's ordered merges and one sample of text per candidate
category, solve for the category proportions (in bytes) under which every merge was the most
frequent pair when it was chosen. The steps: pre-tokenise each sample with the tokenizer's own
pre-tokenisation into word counts (:mod:`~mixbatch.audit.bpe_files`), replay the merges over
the words (:mod:`~mixbatch.audit.bpe_counts`, compiled), and solve the linear program with lazy
constraint generation and HiGHS (:mod:`~mixbatch.audit.mixture_lp`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.audit.bpe_counts import merge_table, pair_events
from mixbatch.audit.bpe_files import BPETokenizer, load_bpe
from mixbatch.audit.mixture_lp import Replay, Solution, build_replay, solve_mixture
from mixbatch.errors import ConfigError, DataError

#: text per pre-tokenizer call (the library returns a list of every piece)
_CHUNK = 1 << 20


def word_counts(texts: Iterable[str], bpe: BPETokenizer) -> tuple[Counter[str], int]:
    """Pre-tokenised words of ``texts`` with their counts, and the UTF-8 bytes read."""
    words: Counter[str] = Counter()
    n_bytes = 0
    buf: list[str] = []
    size = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        buf.append(text)
        size += len(text)
        if size >= _CHUNK:
            for t in buf:
                words.update(bpe.pretokenize(t))
            buf, size = [], 0
    for t in buf:
        words.update(bpe.pretokenize(t))
    return words, n_bytes


@dataclass
class Inference:
    """The inferred proportions and the solver's account of them."""

    names: list[str]
    solution: Solution
    merges_asked: int
    sample_bytes: dict[str, int]
    tokenizer: str

    def to_dict(self) -> dict[str, Any]:
        s = self.solution
        return {"proportions": {n: float(v) for n, v in zip(self.names, s.proportions,
                                                             strict=True)},
                "merges_used": s.merges_used, "merges_asked": self.merges_asked,
                "residual": s.residual, "constraints": s.constraints,
                "rows_added": s.rows_added, "rows_dropped": s.rows_dropped, "passes": s.passes,
                "converged": s.converged, "sample_bytes": self.sample_bytes,
                "alpha_pairs": {n: float(v) for n, v in zip(self.names, s.alpha, strict=True)},
                "tokenizer": self.tokenizer, "unit": "bytes"}


def infer_mixture(bpe: BPETokenizer | str | Path, samples: Mapping[str, Iterable[str]],
                  merges: int | None = 30_000, **solver: Any) -> Inference:
    """Estimate the byte proportions of the categories ``samples`` (name → texts) in the
    training data of ``bpe`` from its first ``merges`` merges (all when None); ``solver``
    options go to :func:`~mixbatch.audit.mixture_lp.solve_mixture`."""
    if not isinstance(bpe, BPETokenizer):
        bpe = load_bpe(bpe)
    if len(samples) < 1:
        raise ConfigError("mixture inference needs at least one category")
    if merges is not None and merges < 1:
        raise ConfigError(f"--merges: must be >= 1, got {merges}")
    counted = {n: word_counts(samples[n], bpe) for n in samples}
    return infer_from_counts(bpe, counted, merges, **solver)


def infer_from_counts(bpe: BPETokenizer, counted: Mapping[str, tuple[Counter[str], int]],
                      merges: int | None = 30_000, **solver: Any) -> Inference:
    """:func:`infer_mixture` from each category's pre-tokenised word counts and byte size
    (:func:`word_counts`), e.g. to reuse them across tokenizers that pre-tokenise alike."""
    replay, n_merges = build_problem(bpe, counted, merges)
    sol = solve_mixture(replay, **solver)
    names = list(counted)
    return Inference(names, sol, n_merges, {n: counted[n][1] for n in names}, str(bpe.path))


def build_problem(bpe: BPETokenizer, counted: Mapping[str, tuple[Counter[str], int]],
                  merges: int | None = 30_000) -> tuple[Replay, int]:
    """The pair-count replay of the first ``merges`` merges over every category (in the order
    of ``counted``), and the number of merges taken."""
    if merges is not None and merges < 1:
        raise ConfigError(f"--merges: must be >= 1, got {merges}")
    chosen = bpe.merges[:merges] if merges is not None else bpe.merges
    names = list(counted)
    if not names:
        raise ConfigError("mixture inference needs at least one category")
    for n, (words, n_bytes) in counted.items():
        if n_bytes == 0 or not words:
            raise DataError(f"category {n!r}: empty sample (no text)")
    # symbol ids: the merge list's tokens first, then every character of the samples
    ids: dict[str, int] = {}
    triples = []
    for a, b in chosen:
        for s in (a, b, a + b):
            if s not in ids:
                ids[s] = len(ids)
        triples.append((ids[a], ids[b], ids[a + b]))
    points = {n: _code_points(counted[n][0]) for n in names}
    for cp in points.values():  # every character of the samples, after the merge tokens
        for c in np.flatnonzero(np.bincount(cp, minlength=_UNICODE) > 0).tolist():
            ids.setdefault(chr(c), len(ids))
    table = merge_table(triples, len(ids))
    lut = np.full(_UNICODE, -1, dtype=np.int64)
    for s, i in ids.items():
        if len(s) == 1:
            lut[ord(s)] = i
    events = []
    for n in names:
        words, n_bytes = counted[n]
        flat = lut[points.pop(n)]
        lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        off = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        cnt = np.fromiter(words.values(), dtype=np.int64, count=len(words))
        ev = pair_events(flat, off, cnt, table, n_bytes)
        if ev.pairs0 < len(chosen):
            raise DataError(f"category {n!r}: the sample ({n_bytes:,} bytes) holds {ev.pairs0:,} "
                            f"symbol pairs, fewer than the {len(chosen):,} merges asked; give "
                            "more text or fewer --merges")
        events.append(ev)
    return build_replay(events, table.merge_key), len(chosen)


#: code points are below this
_UNICODE = 0x110000


def _code_points(words: Iterable[str]) -> np.ndarray:
    """The code points of the words, concatenated (one encode, no loop per character)."""
    return np.frombuffer("".join(words).encode("utf-32-le", "surrogatepass"),
                         dtype=np.uint32)


def _keep(seed: int, name: str, index: int, rate: float) -> bool:
    h = hashlib.blake2b(f"{seed}\0{name}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64 < rate


def config_samples(cfg: Any, max_bytes: int, seed: int = 0) -> dict[str, list[str]]:
    """Up to ``max_bytes`` of raw text per source of ``cfg``: documents kept by a keyed coin
    (rate = max_bytes / the source's file bytes), so that the sample spreads over the whole
    source rather than being its first files."""
    from mixbatch.io import OnError
    from mixbatch.prepare_inputs import source_files

    out: dict[str, list[str]] = {}
    for name, src in cfg.sources.items():
        if src.is_token_data:
            raise ConfigError(f"sources.{name}: token data has no text to sample; mixture "
                              "inference needs raw text sources")
        files = source_files(name, src, cfg)
        total = sum(p.stat().st_size for p in files.paths) or 1
        rate = min(1.0, 1.2 * max_bytes / total)
        texts: list[str] = []
        size = 0
        for k, t in enumerate(files.texts(OnError.SKIP), 1):
            if t and (rate >= 1.0 or _keep(seed, name, k, rate)):
                texts.append(t)
                size += len(t.encode("utf-8"))
                if size >= max_bytes:
                    break
        out[name] = texts
    return out
