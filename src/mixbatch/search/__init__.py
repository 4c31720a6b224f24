"""Offline mixture search (RegMix): design proxy-run mixtures, fit a regressor, choose a mixture.

``design`` draws candidate mixtures, ``results`` reads designs and proxy-run results,
``results_file`` writes a running search's results, ``regress`` fits and saves regressors,
``optimize`` simulates and averages the predicted best, ``plots`` draws them, ``cli`` holds the
``mixbatch search`` commands. ``backends`` (proxies in this process, a process pool or Ray),
``runner`` (``run_search``: one proxy per design row) and ``merge`` (``merge_ablation``) import
torch when they run, so they are imported from their modules, not from here. LightGBM is
imported only when it is used.
"""

from mixbatch.search.design import Design, DesignSettings, design_mixtures, write_design_csv
from mixbatch.search.optimize import Optimum, evaluate, optimize, simulate, write_mixture_yaml
from mixbatch.search.regress import FittedModel, ModelKind, cross_validate, fit, load_model, save_model
from mixbatch.search.results import RunTable, Target, parse_target, read_results

__all__ = [
    "Design",
    "DesignSettings",
    "FittedModel",
    "ModelKind",
    "Optimum",
    "RunTable",
    "Target",
    "cross_validate",
    "design_mixtures",
    "evaluate",
    "fit",
    "load_model",
    "optimize",
    "parse_target",
    "read_results",
    "save_model",
    "simulate",
    "write_design_csv",
    "write_mixture_yaml",
]
