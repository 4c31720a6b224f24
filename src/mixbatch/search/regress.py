"""Regression from mixture weights to a proxy-run loss (RegMix §3), with k-fold validation.

Two regressors:

* ``lightgbm``: gradient-boosted trees with RegMix's settings, read in
  ``sail-sg/regmix:regression_fitting/regression.ipynb``: ``LGBMRegressor(task='train',
  boosting_type='gbdt', objective='regression', metric=['l1', 'l2'], num_iterations=1000,
  seed=42, learning_rate=1e-2, verbosity=-1)``, everything else LightGBM's default
  (``num_leaves=31``, ``min_child_samples=20``). We train with the native API (no
  scikit-learn), on one thread with ``deterministic=True`` (512 rows gain nothing from threads
  and lose a lot when the cores are busy). The notebook stops early on its *test* split
  (``stopping_rounds=3``); we have no split to stop on and run all 1000 rounds, which on
  RegMix's data gives Spearman 0.990 instead of 0.989.
  ``min_child_samples`` adapts to few rows: ``clamp(n // 10, 2, 20)``, so 512 rows keep the
  default of 20 while 32 rows get 3 (with 20, fewer than 40 rows cannot split at all and the
  model predicts a constant). Below :data:`MIN_ROWS` (10) rows ``lightgbm`` refuses to fit.
* ``linear``: least squares on the weights with an intercept (fitted on centred data with the
  minimum-norm solution, since the weights sum to 1 and are collinear with the intercept);
  ``ridge > 0`` adds an L2 penalty ``ridge · ||β||²``. At least 3 rows.

Cross-validation: ``folds``-fold (default 5) on a seeded shuffle; Spearman and Pearson are
computed once on the pooled out-of-fold predictions (not averaged per fold), so they compare
with a held-out test set's numbers. Fewer folds are used when there are few rows
(``min(folds, n // 4)``), and none below two.

A fitted model is saved without pickle: a JSON envelope (sources, target, kind, CV scores, the
simulation prior) that carries LightGBM's own text model (``Booster.model_to_string()``) or the
linear coefficients.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import finite_or_none, write_json
from mixbatch.errors import ConfigError

__all__ = [
    "LIGHTGBM_PARAMS",
    "LIGHTGBM_ROUNDS",
    "MIN_ROWS",
    "FittedModel",
    "ModelKind",
    "adapted_min_child_samples",
    "correlations",
    "cross_validate",
    "fit",
    "load_model",
    "save_model",
]

FORMAT = "mixbatch-search-model"
VERSION = 1

# RegMix regression.ipynb (LightGBM's own defaults made explicit for num_leaves and
# min_data_in_leaf, which is LGBMRegressor's min_child_samples)
LIGHTGBM_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "boosting": "gbdt",
    "metric": ["l1", "l2"],
    "learning_rate": 1e-2,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "seed": 42,
    "verbosity": -1,
}
LIGHTGBM_ROUNDS = 1000
_RUNTIME = {"num_threads": 1, "deterministic": True, "force_col_wise": True}


class ModelKind(str, Enum):
    LIGHTGBM = "lightgbm"
    LINEAR = "linear"


MIN_ROWS = {ModelKind.LIGHTGBM: 10, ModelKind.LINEAR: 3}


def _kind(kind: str | ModelKind) -> ModelKind:
    try:
        return ModelKind(kind)
    except ValueError:
        raise ConfigError(f"model: unknown kind {kind!r} (choose from "
                          f"{', '.join(k.value for k in ModelKind)})") from None


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("the lightgbm regressor needs the 'lightgbm' package: "
                          "pip install lightgbm (or use --model linear)") from None
    return lightgbm


def adapted_min_child_samples(n_rows: int) -> int:
    """LightGBM's ``min_child_samples`` for ``n_rows``: 20 (the default) from 200 rows down to 2."""
    return int(min(20, max(2, n_rows // 10)))


def correlations(pred: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(Spearman, Pearson); NaN when either side is constant or there are < 3 points."""
    from scipy import stats

    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if pred.size < 3 or np.ptp(pred) == 0 or np.ptp(actual) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(stats.spearmanr(pred, actual).statistic)
        r = float(stats.pearsonr(pred, actual).statistic)
    return rho, r


@dataclass
class FittedModel:
    """A regressor from weights over ``names`` to the ``target`` loss."""

    kind: ModelKind
    names: tuple[str, ...]
    target: str
    n_train: int
    params: dict[str, Any] = field(default_factory=dict)
    cv: dict[str, Any] | None = None
    prior: np.ndarray | None = None  # the simulation prior for `optimize` (token shares)
    prior_from: str | None = None  # where the prior came from, for the reader of the file
    coef: np.ndarray | None = None
    intercept: float = 0.0
    booster: Any = None

    def predict(self, x: np.ndarray, threads: int = 0) -> np.ndarray:
        """Predicted target for each row of ``x`` (columns in the order of ``names``)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != len(self.names):
            raise ConfigError(f"model expects {len(self.names)} weights per row "
                              f"({', '.join(self.names)}), got shape {x.shape}")
        if self.kind is ModelKind.LINEAR:
            assert self.coef is not None
            return x @ self.coef + self.intercept
        return np.asarray(self.booster.predict(x, num_threads=threads), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "kind": self.kind.value,
            "sources": list(self.names), "target": self.target, "n_train": self.n_train,
            "params": self.params, "cv": self.cv,
            "prior": None if self.prior is None else
            {n: float(p) for n, p in zip(self.names, self.prior, strict=True)},
            "prior_from": self.prior_from,
        }
        if self.kind is ModelKind.LINEAR:
            assert self.coef is not None
            d["linear"] = {"coef": [float(c) for c in self.coef], "intercept": float(self.intercept)}
        else:
            d["lightgbm_version"] = _lightgbm().__version__
            d["lightgbm"] = self.booster.model_to_string()
        return d

    @classmethod
    def from_dict(cls, d: Any, origin: str = "model") -> FittedModel:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"{origin}: not a mixbatch search model (expected a JSON object "
                              f"with format {FORMAT!r}; write one with `mixbatch search fit`)")
        if d.get("version") != VERSION:
            raise ConfigError(f"{origin}: model format version {d.get('version')!r} is not "
                              f"supported (this mixbatch reads version {VERSION})")
        try:
            kind = _kind(d["kind"])
            names = tuple(str(n) for n in d["sources"])
            prior = d.get("prior")
            model = cls(kind=kind, names=names, target=str(d["target"]), n_train=int(d["n_train"]),
                        params=dict(d.get("params") or {}), cv=d.get("cv"),
                        prior=None if prior is None else np.array([float(prior[n]) for n in names]),
                        prior_from=d.get("prior_from"))
            if kind is ModelKind.LINEAR:
                model.coef = np.array(d["linear"]["coef"], dtype=np.float64)
                model.intercept = float(d["linear"]["intercept"])
                if model.coef.shape != (len(names),):
                    raise ValueError("coefficients do not match the sources")
            else:
                model.booster = _lightgbm().Booster(model_str=d["lightgbm"])
                if model.booster.num_feature() != len(names):
                    raise ValueError("the LightGBM model's features do not match the sources")
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{origin}: corrupt model file ({type(e).__name__}: {e})") from None
        except Exception as e:  # LightGBMError on a damaged model string
            raise ConfigError(f"{origin}: corrupt model file ({e})") from None
        return model


def _check_xy(x: np.ndarray, y: np.ndarray, names: tuple[str, ...], kind: ModelKind) -> None:
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ConfigError(f"fit: expected {len(names)} weight columns, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ConfigError(f"fit: {x.shape[0]} mixtures but {y.size} target values")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError("fit: weights and target must be finite (drop NaN runs first)")
    if x.shape[0] < MIN_ROWS[kind]:
        raise ConfigError(f"fit: {kind.value} needs at least {MIN_ROWS[kind]} runs with a known "
                          f"target, got {x.shape[0]}")


def fit(x: np.ndarray, y: np.ndarray, names: tuple[str, ...] | list[str],
        kind: str | ModelKind = ModelKind.LIGHTGBM, target: str = "target", *,
        ridge: float = 0.0, min_child_samples: int | None = None,
        rounds: int = LIGHTGBM_ROUNDS, seed: int = 42,
        prior: np.ndarray | None = None) -> FittedModel:
    """Fit one regressor on all rows (no validation; see :func:`cross_validate`)."""
    kind = _kind(kind)
    names = tuple(names)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    _check_xy(x, y, names, kind)
    n = x.shape[0]
    if kind is ModelKind.LINEAR:
        if not (ridge >= 0 and math.isfinite(ridge)):
            raise ConfigError(f"fit: ridge must be >= 0, got {ridge}")
        mx, my = x.mean(axis=0), y.mean()
        xc, yc = x - mx, y - my
        if ridge > 0:
            beta = np.linalg.solve(xc.T @ xc + ridge * np.eye(len(names)), xc.T @ yc)
        else:
            beta = np.linalg.lstsq(xc, yc, rcond=None)[0]
        return FittedModel(kind, names, target, n, {"ridge": float(ridge)}, prior=prior,
                           coef=beta, intercept=float(my - mx @ beta))
    lgb = _lightgbm()
    mcs = adapted_min_child_samples(n) if min_child_samples is None else int(min_child_samples)
    params = {**LIGHTGBM_PARAMS, "min_data_in_leaf": mcs, "seed": int(seed)}
    booster = lgb.train({**params, **_RUNTIME}, lgb.Dataset(x, y, params={"verbosity": -1}),
                        num_boost_round=int(rounds))
    return FittedModel(kind, names, target, n, {**params, "num_iterations": int(rounds)},
                       prior=prior, booster=booster)


def cross_validate(x: np.ndarray, y: np.ndarray, names: tuple[str, ...] | list[str],
                   kind: str | ModelKind = ModelKind.LIGHTGBM, *, folds: int = 5, seed: int = 42,
                   **fit_kwargs: Any) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """k-fold CV: ``({"folds", "n", "spearman", "pearson", "rmse"}, out-of-fold predictions)``.

    Returns ``(None, None)`` when there are too few rows for two folds.
    """
    kind = _kind(kind)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[0]
    k = min(int(folds), n // 4)
    if k < 2 or n - math.ceil(n / k) < MIN_ROWS[kind]:
        return None, None
    perm = np.random.default_rng(seed).permutation(n)
    pred = np.empty(n)
    for part in np.array_split(perm, k):
        train = np.setdiff1d(perm, part, assume_unique=True)
        model = fit(x[train], y[train], names, kind, seed=seed, **fit_kwargs)
        pred[part] = model.predict(x[part])
    rho, r = correlations(pred, y)
    scores = {"folds": k, "n": n, "spearman": rho, "pearson": r,
              "rmse": float(np.sqrt(np.mean((pred - y) ** 2)))}
    return scores, pred


def save_model(model: FittedModel, path: str | Path) -> Path:
    """Write the model as JSON (no pickle); LightGBM's text model is embedded as a string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, finite_or_none(model.to_dict()))
    return path


def load_model(path: str | Path) -> FittedModel:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: model file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read model ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    return FittedModel.from_dict(data, str(path))


class MeanOfModels:
    """The mean of per-source regressors' predictions: a model of the mean held-out loss.

    RegMix fits one regressor per loss column. The mean loss over sources sums convex
    per-source curves, which a linear model cannot represent and 24 runs do not teach trees;
    each source's own loss is far easier to learn (it falls with that source's weight). Duck-
    types :class:`FittedModel` for :func:`~mixbatch.search.optimize.optimize`.
    """

    def __init__(self, models: list[Any], target: str = "val/mean") -> None:
        self.models = models
        self.names = models[0].names
        self.prior = models[0].prior
        self.target = target

    def predict(self, x: np.ndarray, threads: int = 0) -> np.ndarray:
        return np.mean([m.predict(x, threads=threads) for m in self.models], axis=0)
