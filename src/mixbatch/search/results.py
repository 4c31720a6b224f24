"""Proxy-run results: reading, validation and regression targets.

Two layouts are read.

* **Ours**, one CSV: ``index``, one weight column per source (named after the source), loss
  columns, and optionally ``tokens`` and ``seconds``. A column whose name contains ``/`` is a
  loss (metric) column, e.g. ``loss/web`` or ``loss/all``; source names cannot contain ``/``
  (the config forbids it), so the split is never ambiguous.
* **Two files joined on** ``index``: a mixtures file (``index`` + weight columns) and a losses
  file (``index`` + loss columns). This is RegMix's release (``sail-sg/regmix:data/``: weight
  columns ``train_the_pile_<domain>``, loss columns ``metric/the_pile_<domain>_val_loss``), and
  also a design CSV from ``mixbatch search design`` plus a losses file. A ``train_`` prefix on
  every weight column is dropped, then a ``the_pile_`` prefix shared by all (RegMix's Pile
  naming), so RegMix's sources read as ``pile_cc``, ``arxiv``, ...

Every problem is a :class:`ConfigError` (exit code 2) with one line naming the file and what is
wrong: missing or unexpected columns, unreadable numbers, repeated or unmatched indices, bad
weights. Rows whose weights do not sum to 1 are renormalised and counted in ``notes`` (RegMix
rounded its weights to 0.001, so its rows sum to 0.996..1.003).

A **target** is one loss column or a weighted sum of them. Syntax: ``COL`` or
``COL=W,COL=W,...`` (e.g. ``loss/web=0.5,loss/code=0.5``); a weight defaults to 1 when ``=W``
is left out, and weights are used as given (not normalised). A name is a column name, or a
part of exactly one column name (``pile_cc`` finds ``metric/the_pile_pile_cc_val_loss``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mixbatch.errors import ConfigError

__all__ = [
    "RESERVED_COLUMNS",
    "DesignRow",
    "RunTable",
    "Target",
    "parse_target",
    "read_design_csv",
    "read_mixtures_and_losses",
    "read_results",
    "read_results_csv",
]

RESERVED_COLUMNS = ("index", "tokens", "seconds")
SUM_TOLERANCE = 1e-6  # a row whose weights sum this far from 1 is renormalised and counted


def _examples(values: Sequence[object], k: int = 5) -> str:
    shown = ", ".join(str(v) for v in list(values)[:k])
    return shown + (f", ... ({len(values)} in all)" if len(values) > k else "")


# ---------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A loss column, or a weighted sum of loss columns (see the module docstring)."""

    terms: tuple[tuple[str, float], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.terms)

    @property
    def label(self) -> str:
        if len(self.terms) == 1 and self.terms[0][1] == 1.0:
            return self.terms[0][0]
        return ",".join(f"{c}={w:g}" for c, w in self.terms)

    def resolve(self, columns: Sequence[str], origin: str = "results") -> Target:
        """Match each name to exactly one of ``columns`` (exact name, else a unique part)."""
        out = []
        for name, w in self.terms:
            if name in columns:
                out.append((name, w))
                continue
            hits = [c for c in columns if name in c]
            if len(hits) == 1:
                out.append((hits[0], w))
            elif not hits:
                raise ConfigError(f"{origin}: target column {name!r} not found; loss columns: "
                                  f"{_examples(list(columns), 20) or '(none)'}")
            else:
                raise ConfigError(f"{origin}: target {name!r} matches several loss columns: "
                                  f"{_examples(hits, 10)}; give the full name")
        return Target(tuple(out))

    def values(self, losses: Mapping[str, np.ndarray]) -> np.ndarray:
        """The target per run (NaN where any term is NaN)."""
        total: np.ndarray | None = None
        for col, w in self.terms:
            if col not in losses:
                raise ConfigError(f"target column {col!r} not among the loss columns "
                                  f"({_examples(list(losses), 20)})")
            part = w * np.asarray(losses[col], dtype=np.float64)
            total = part if total is None else total + part
        assert total is not None
        return total


def parse_target(spec: str | Target) -> Target:
    """Parse ``COL`` or ``COL=W,COL=W`` into a :class:`Target`."""
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"target: expected COL or COL=W,COL=W,..., got {spec!r}")
    terms: list[tuple[str, float]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"target {spec!r}: empty term between commas")
        name, eq, weight = part.rpartition("=") if "=" in part else (part, "", "1")
        name = name.strip()
        try:
            w = float(weight)
        except ValueError:
            raise ConfigError(f"target {spec!r}: weight of {name!r} is not a number "
                              f"({weight!r})") from None
        if not name or not math.isfinite(w) or (eq and w == 0):
            raise ConfigError(f"target {spec!r}: each term is COL or COL=W with W a nonzero "
                              f"finite number, got {part!r}")
        if name in dict(terms):
            raise ConfigError(f"target {spec!r}: column {name!r} appears twice")
        terms.append((name, w))
    return Target(tuple(terms))


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTable:
    """Proxy runs: ``weights[i]`` (rows sum to 1, sources in ``names``) and their losses."""

    names: tuple[str, ...]
    index: np.ndarray
    weights: np.ndarray
    losses: dict[str, np.ndarray]
    tokens: np.ndarray | None = None
    seconds: np.ndarray | None = None
    origin: str = "results"
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def loss_columns(self) -> tuple[str, ...]:
        return tuple(self.losses)

    def resolve_target(self, target: str | Target) -> Target:
        return parse_target(target).resolve(self.loss_columns, self.origin)

    def xy(self, target: str | Target) -> tuple[np.ndarray, np.ndarray, RunTable]:
        """Weights and target values of the runs whose target is known.

        Runs with a NaN target are dropped and counted in the returned table's ``notes``;
        a target that is NaN in every run is an error.
        """
        t = self.resolve_target(target)
        y = t.values(self.losses)
        keep = np.isfinite(y)
        if not keep.any():
            raise ConfigError(f"{self.origin}: target {t.label} is missing (NaN) in all "
                              f"{len(self)} runs")
        table = self
        if not keep.all():
            dropped = _examples(self.index[~keep].tolist())
            table = self.select(keep, note=f"dropped {int((~keep).sum())} of {len(self)} runs "
                                           f"whose target {t.label} is NaN (index {dropped})")
        return table.weights, y[keep], table

    def select(self, mask: np.ndarray, note: str | None = None) -> RunTable:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[mask]

        return replace(self, index=self.index[mask], weights=self.weights[mask],
                       losses={k: v[mask] for k, v in self.losses.items()},
                       tokens=pick(self.tokens), seconds=pick(self.seconds),
                       notes=self.notes + ((note,) if note else ()))

    def reorder(self, names: Sequence[str]) -> RunTable:
        """The same runs with weight columns in the order of ``names`` (missing/extra: error)."""
        names = tuple(names)
        if names == self.names:
            return self
        missing = [n for n in names if n not in self.names]
        extra = [n for n in self.names if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing weight columns: {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected weight columns: {', '.join(extra)}")
            raise ConfigError(f"{self.origin}: {'; '.join(parts)} (expected sources: "
                              f"{', '.join(names)})")
        order = [self.names.index(n) for n in names]
        return replace(self, names=names, weights=self.weights[:, order])


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
@dataclass
class _Csv:
    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]


def _read_csv(path: str | Path) -> _Csv:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows, lines = [], []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                rows.append(row)
                lines.append(reader.line_num)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path}: cannot read CSV ({e})") from None
    if not header:
        raise ConfigError(f"{path}: empty file (expected a header row starting with 'index')")
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ConfigError(f"{path}: repeated column names: {', '.join(dup)}")
    if "index" not in header:
        raise ConfigError(f"{path}: missing column 'index' (columns: {_examples(header, 8)})")
    for row, line in zip(rows, lines, strict=True):
        if len(row) != len(header):
            raise ConfigError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
    if not rows:
        raise ConfigError(f"{path}: no data rows")
    return _Csv(path, header, rows, lines)


def _column(data: _Csv, name: str, *, allow_nan: bool) -> np.ndarray:
    j = data.header.index(name)
    out = np.empty(len(data.rows))
    for i, (row, line) in enumerate(zip(data.rows, data.lines, strict=True)):
        text = row[j].strip()
        if allow_nan and text.lower() in ("", "nan", "na", "null", "none"):
            out[i] = math.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise ConfigError(f"{data.path}:{line}: column {name!r}: not a number: {text!r}") from None
        if not math.isfinite(out[i]) and not (allow_nan and math.isnan(out[i])):
            raise ConfigError(f"{data.path}:{line}: column {name!r}: must be finite, got {text!r}")
    return out


def _index(data: _Csv) -> np.ndarray:
    raw = _column(data, "index", allow_nan=False)
    if not np.all(raw == np.round(raw)):
        i = int(np.argmax(raw != np.round(raw)))
        raise ConfigError(f"{data.path}:{data.lines[i]}: index must be an integer, got "
                          f"{data.rows[i][data.header.index('index')]!r}")
    idx = raw.astype(np.int64)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{data.path}: repeated index values: "
                          f"{_examples(uniq[counts > 1].tolist())}")
    return idx


def _weights(data: _Csv, columns: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Weight matrix, rows renormalised to 1, and notes."""
    if not columns:
        raise ConfigError(f"{data.path}: no weight columns (one column per source is expected "
                          "besides index and loss columns)")
    w = np.stack([_column(data, c, allow_nan=False) for c in columns], axis=1)
    neg = w < 0
    if neg.any():
        i, j = map(int, np.argwhere(neg)[0])
        raise ConfigError(f"{data.path}:{data.lines[i]}: weight {columns[j]!r} is negative "
                          f"({w[i, j]})")
    sums = w.sum(axis=1)
    if (sums <= 0).any():
        i = int(np.argmax(sums <= 0))
        raise ConfigError(f"{data.path}:{data.lines[i]}: all weights are 0")
    notes = []
    off = np.abs(sums - 1) > SUM_TOLERANCE
    if off.any():
        notes.append(f"{data.path.name}: renormalised {int(off.sum())} of {len(sums)} rows whose "
                     f"weights sum to {sums[off].min():.4g}..{sums[off].max():.4g}, not 1")
    return w / sums[:, None], notes


def _source_names(columns: Sequence[str]) -> list[str]:
    """RegMix naming: drop a ``train_`` prefix shared by all, then a shared ``the_pile_``."""
    names = list(columns)
    for prefix in ("train_", "the_pile_"):
        if names and all(n.startswith(prefix) and len(n) > len(prefix) for n in names):
            names = [n[len(prefix):] for n in names]
    return names


def _check_sources(origin: str, names: Sequence[str], sources: Sequence[str] | None,
                   hint: str = "") -> None:
    if sources is None:
        return
    missing = [s for s in sources if s not in names]
    extra = [n for n in names if n not in sources]
    if missing or extra:
        parts = ([f"missing weight columns: {', '.join(missing)}"] if missing else []) + \
                ([f"unexpected columns: {', '.join(extra)}"] if extra else [])
        raise ConfigError(f"{origin}: {'; '.join(parts)} (expected sources: "
                          f"{', '.join(sources)}{hint})")


def _optional(data: _Csv, name: str) -> np.ndarray | None:
    return _column(data, name, allow_nan=True) if name in data.header else None


def read_results_csv(path: str | Path, sources: Sequence[str] | None = None) -> RunTable:
    """Read our one-file results CSV (``index``, weights, ``…/…`` losses, ``tokens``, ``seconds``).

    With ``sources``, the weight columns must be exactly those sources (any order).
    """
    data = _read_csv(path)
    loss_cols = [c for c in data.header if "/" in c]
    weight_cols = [c for c in data.header if c not in RESERVED_COLUMNS and "/" not in c]
    _check_sources(str(data.path), weight_cols, sources, "; a loss column's name contains '/'")
    if not loss_cols:
        raise ConfigError(f"{data.path}: no loss columns (a loss column's name contains '/', "
                          f"e.g. 'loss/all'); columns: {_examples(data.header, 10)}")
    index = _index(data)
    weights, notes = _weights(data, weight_cols)
    losses = {c: _column(data, c, allow_nan=True) for c in loss_cols}
    table = RunTable(names=tuple(weight_cols), index=index, weights=weights, losses=losses,
                     tokens=_optional(data, "tokens"), seconds=_optional(data, "seconds"),
                     origin=str(data.path), notes=tuple(notes))
    return table if sources is None else table.reorder(sources)


def read_mixtures_and_losses(mixtures: str | Path, losses: str | Path,
                             sources: Sequence[str] | None = None) -> RunTable:
    """Join a mixtures file and a losses file on ``index`` (RegMix's released layout).

    Every index must appear in both files; with ``sources``, the (renamed) weight columns must
    be exactly those sources.
    """
    m, ls = _read_csv(mixtures), _read_csv(losses)
    weight_cols = [c for c in m.header if c not in RESERVED_COLUMNS]
    names = _source_names(weight_cols)
    if len(set(names)) != len(names):
        names = weight_cols
    origin = f"{m.path} + {ls.path}"
    _check_sources(str(m.path), names, sources)
    loss_cols = [c for c in ls.header if c not in RESERVED_COLUMNS]
    if not loss_cols:
        raise ConfigError(f"{ls.path}: no loss columns besides 'index'")
    mi, li = _index(m), _index(ls)
    only_m = np.setdiff1d(mi, li)
    only_l = np.setdiff1d(li, mi)
    if only_m.size or only_l.size:
        parts = []
        if only_m.size:
            parts.append(f"{only_m.size} index values of {m.path.name} have no row in "
                         f"{ls.path.name} ({_examples(only_m.tolist())})")
        if only_l.size:
            parts.append(f"{only_l.size} index values of {ls.path.name} have no row in "
                         f"{m.path.name} ({_examples(only_l.tolist())})")
        raise ConfigError(f"{origin}: unmatched runs: {'; '.join(parts)}")
    weights, notes = _weights(m, weight_cols)
    pos = {int(v): i for i, v in enumerate(li)}
    order = np.array([pos[int(v)] for v in mi])
    losses_ = {c: _column(ls, c, allow_nan=True)[order] for c in loss_cols}

    def extra(name: str) -> np.ndarray | None:
        if name in ls.header:
            return _column(ls, name, allow_nan=True)[order]
        return _optional(m, name)

    table = RunTable(names=tuple(names), index=mi, weights=weights, losses=losses_,
                     tokens=extra("tokens"), seconds=extra("seconds"), origin=origin,
                     notes=tuple(notes))
    return table if sources is None else table.reorder(sources)


def read_results(results: str | Path | None = None, *, mixtures: str | Path | None = None,
                 losses: str | Path | None = None,
                 sources: Sequence[str] | None = None) -> RunTable:
    """One results CSV, or a mixtures file plus a losses file; not both."""
    if results is not None and (mixtures is not None or losses is not None):
        raise ConfigError("give a results CSV or --mixtures with --losses, not both")
    if results is not None:
        return read_results_csv(results, sources)
    if mixtures is None or losses is None:
        raise ConfigError("give a results CSV, or both --mixtures and --losses")
    return read_mixtures_and_losses(mixtures, losses, sources)


# ---------------------------------------------------------------------------------------------
# the design a search runs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DesignRow:
    """One candidate mixture: its design index and ``{source: weight}`` (every source)."""

    index: int
    weights: dict[str, float]


def read_design_csv(path: str | Path, sources: Sequence[str]) -> list[DesignRow]:
    """Rows of a design CSV (``index`` + one weight column per source), in file order.

    The weight columns must be exactly ``sources`` (any order). Weights are kept as written
    (a design from ``search design`` sums to exactly 1; the loader normalises anyway).
    """
    data = _read_csv(path)
    extra = [c for c in data.header if c != "index" and ("/" in c or c in ("tokens", "seconds"))]
    if extra:
        raise ConfigError(f"{data.path}: a design has only 'index' and weight columns, found "
                          f"{', '.join(extra)} (is this a results file?)")
    names = [c for c in data.header if c != "index"]
    _check_sources(str(data.path), names, list(sources))
    index = _index(data)
    cols = {n: _column(data, n, allow_nan=False) for n in names}
    rows = []
    for i, (idx, line) in enumerate(zip(index.tolist(), data.lines, strict=True)):
        w = {n: float(cols[n][i]) for n in sources}
        if any(v < 0 for v in w.values()) or not sum(w.values()) > 0:
            raise ConfigError(f"{data.path}:{line}: weights must be >= 0 and not all 0, got "
                              f"{w}")
        rows.append(DesignRow(int(idx), w))
    return rows
