"""Ray Tune's ``PopulationBasedTraining`` for mixtures (:func:`mixture_pbt`): synchronous,
exploring on the simplex, seeded per round, recording every round for ``--resume`` and able to
start where an interrupted search's last recorded round left it.

"Population Based Training of Neural Networks" (Jaderberg et al. 2017): truncation selection
(the bottom ``quantile`` copies a member of the top ``quantile``) then explore
(:mod:`mixbatch.search.pbt_explore`).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np

from mixbatch.search.pbt_state import RoundLog

if TYPE_CHECKING:
    from mixbatch.search.pbt import PBTSettings

__all__ = ["mixture_pbt"]


def mixture_pbt(settings: PBTSettings, names: list[str], inits: list[dict[str, float]],
                log: RoundLog, halt_at: int | None = None) -> tuple[Any, Any]:
    """Ray Tune's PBT, synchronous, exploring the weights with :func:`perturb`, reseeded per
    round (Ray's donor draw from Python's ``random``, saved and restored around the round; the
    explore from ``(seed, step)``), positioned at ``log.step`` (a resumed search: the state an
    uninterrupted scheduler has after that round, see :mod:`mixbatch.search.pbt_state`), and
    the run's stopper. A member's config is ``{"member": i}`` (its weights at the run's start
    are ``inits[i]``) plus ``weights`` and ``copied_from`` once it exploited; ``exploits``
    lists every exploit as ``{step, member, copied_from}``. Each round is recorded in ``log``
    once decided; with ``halt_at`` the stopper ends the run once that step's round is."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from mixbatch.search.pbt_explore import perturb, snap
    from mixbatch.search.pbt_member import METRIC, TIME_ATTR, member_weights

    class Stop(tune.Stopper):
        def __init__(self) -> None:
            self.halt = False

        def __call__(self, trial_id: str, result: dict) -> bool:
            return int(result.get(TIME_ATTR, 0)) >= settings.steps

        def stop_all(self) -> bool:
            return self.halt

    stop = Stop()
    start = log.step

    class MixturePBT(PopulationBasedTraining):
        def __init__(self) -> None:
            self.rng = np.random.default_rng([settings.seed, 0])
            self.exploits: list[dict[str, int]] = log.exploits()
            self.losses: dict[int, dict[int, float]] = {}  # step -> member -> held-out loss
            self.recording = True  # until a round is decided without the whole population
            super().__init__(time_attr=TIME_ATTR, metric=METRIC, mode="min",
                             perturbation_interval=settings.interval,
                             quantile_fraction=settings.quantile, resample_probability=0.0,
                             custom_explore_fn=self.explore, synch=True)
            self._next_perturbation_sync = start + settings.interval

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_add(tune_controller, trial)
            state = self._trial_state[trial]
            state.last_train_time = state.last_perturbation_time = start

        def explore(self, config: dict[str, Any]) -> dict[str, Any]:
            """``config``: a copy of the better member's."""
            w = member_weights(config, inits)
            w = perturb(np.array([w[n] for n in names]), self.rng, settings.resample)
            return {**config, "weights": snap(names, w), "copied_from": config["member"]}

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            at = int(result.get(TIME_ATTR, 0))
            if METRIC in result:
                self.losses.setdefault(at, {})[int(trial.config["member"])] = \
                    float(result[METRIC])
            self.rng = np.random.default_rng([settings.seed, at])
            before = {t.trial_id: t.config for t in tune_controller.get_trials()}
            sync = self._next_perturbation_sync
            saved = random.getstate()
            random.seed(settings.seed * 1_000_003 + at)
            made: list[dict[str, int]] = []
            try:
                decision = super().on_trial_result(tune_controller, trial, result)
            finally:
                random.setstate(saved)
                for t in tune_controller.get_trials():  # exploited: a new config object
                    old = before.get(t.trial_id)
                    if old is not None and t.config is not old:
                        me = old["member"]
                        made.append({"step": at, "member": me,
                                     "copied_from": t.config["copied_from"]})
                        t.set_config({**t.config, "member": me})
                self.exploits += made
            if self._next_perturbation_sync != sync:  # the round at `at` was decided
                self.record(tune_controller, at, made)
            return decision

        def record(self, tune_controller: Any, at: int, made: list[dict[str, int]]) -> None:
            losses = self.losses.pop(at, {})
            whole = len(losses) == settings.population and not any(
                t.is_finished() for t in tune_controller.get_trials())
            self.recording = self.recording and whole
            if not self.recording:  # a member failed: later rounds are not the search's
                return
            copied = {e["member"]: e["copied_from"] for e in made}
            rows = [{"member": me, "val_loss": losses[me], "state_of": copied.get(me, me),
                     "weights": member_weights(t.config, inits)}
                    for me, t in sorted((int(t.config["member"]), t)
                                        for t in tune_controller.get_trials())]
            log.commit(at, rows, sorted(made, key=lambda e: e["member"]))
            if halt_at is not None and at >= halt_at:
                stop.halt = True

    return MixturePBT(), stop
