"""One member of a PBT population: a proxy run on Ray Tune whose mixture weights are its
hyperparameters (:func:`train_member`, a Tune function trainable).

Each call (a start, a resume after Tune paused the member, or an exploit, where Tune hands it a
better member's checkpoint and a perturbed copy of that member's weights) reads the
checkpoint, appends a lineage stage when the weights or the state's owner changed
(:mod:`mixbatch.search.pbt_lineage`), builds the one proxy :class:`~mixbatch.proxy.trainer.Trainer`
on the config with the lineage as its ``schedule:`` and loads model, optimiser and loader state
into it. It then trains ``interval`` steps at a time, scores the held-out documents, and
reports the mean held-out loss with a checkpoint: model, optimiser, the loader's exact state,
the lineage, one digest per step trained (:func:`~mixbatch.search.pbt_lineage.batch_digest`)
and the validation records. The checkpoint is one ``torch.save`` dict, read back with
``torch.load(..., weights_only=True)``. Before it reports a step short of the end, it also
writes that checkpoint to the search's round states (:mod:`mixbatch.search.pbt_state`), from
which an interrupted search resumes: a member of a resumed search without a Tune checkpoint
starts from the state its setup names.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixbatch.atomic import atomic_path
from mixbatch.config import Config
from mixbatch.errors import StateError
from mixbatch.online.checkpoint import save_torch
from mixbatch.proxy.settings import ProxyConfig
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from mixbatch.search.pbt_lineage import batch_digest, schedule_block, with_schedule
from mixbatch.search.pbt_state import round_file

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "METRIC", "TIME_ATTR", "MemberSetup",
           "member_steps", "member_weights", "read_member_checkpoint", "train_member"]

CHECKPOINT_FILE = "member.pt"
CHECKPOINT_FORMAT = "mixbatch.search.pbt.member/1"
TIME_ATTR = "proxy_step"  # Tune's clock: proxy steps done
METRIC = "val_loss"  # mean held-out loss over every scored token (lower is better)


@dataclass(frozen=True)
class MemberSetup:
    """What every member shares: the config, the proxy (``steps``: the run's length), the
    steps between two reports and each member's weights where this run starts. ``rounds_dir``:
    where members write their state at each round (None: nowhere); ``starts``: by member, the
    bytes of the state it starts from (a resumed search; empty: step 0); ``fault``: ``(member,
    step)``, that member raises on reaching that step (tests of an interrupted search)."""

    cfg: Config
    proxy: ProxyConfig
    interval: int
    inits: list[dict[str, float]] = field(default_factory=list)
    rounds_dir: str | None = None
    starts: dict[int, bytes] = field(default_factory=dict)
    fault: tuple[int, int] | None = None


def member_weights(config: dict[str, Any], inits: list[dict[str, float]]) -> dict[str, float]:
    """A member's weights from its Tune config: ``weights`` once explored, else its start."""
    w = config.get("weights") or inits[int(config["member"])]
    return {str(k): float(v) for k, v in w.items()}


def read_member_checkpoint(path: str | Path | bytes, where: str = "") -> dict[str, Any]:
    """A member checkpoint from a file, or from its bytes (``where`` names them)."""
    p = (where or "PBT member state") if isinstance(path, bytes) else str(path)
    try:
        src = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
        ck = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StateError(f"{p}: PBT member checkpoint not found") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise StateError(f"{p}: corrupt PBT member checkpoint ({e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise StateError(f"{p}: not a PBT member checkpoint (format {got!r}, expected "
                         f"{CHECKPOINT_FORMAT!r})")
    return ck


class _Digests(Hooks):
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def before_forward(self, step: Step) -> None:
        self.out.append(batch_digest(step.batch))


def _start(me: int, weights: dict[str, float], state: dict[str, Any] | None) -> dict[str, Any]:
    """The member's record at this call: the checkpoint's (a fresh one at step 0), with a new
    stage when the weights or the owner of the state changed."""
    rec = ({"member": me, "step": 0, "stages": [], "fed": [], "history": []} if state is None
           else {k: state[k] for k in ("member", "step", "stages", "fed", "history")})
    stages = rec["stages"]
    if not stages or stages[-1]["weights"] != weights or rec["member"] != me:
        stages.append({"start": rec["step"], "weights": weights, "member": me,
                       "copied_from": rec["member"]})
    rec["member"] = me
    return rec


def member_steps(setup: MemberSetup, me: int, weights: dict[str, float],
                 state: dict[str, Any] | None) -> Iterator[tuple[dict[str, Any], bool]]:
    """Train member ``me`` from ``state`` (None: step 0) with ``weights`` to the run's end;
    after every ``interval`` steps yield its checkpoint (valid until the next step) and whether
    the stream ended."""
    rec = _start(me, weights, state)
    total, interval = setup.proxy.steps, setup.interval
    cfg = with_schedule(setup.cfg, schedule_block(rec["stages"]))
    with Trainer(cfg, setup.proxy) as t:
        if state is not None:
            t.load_state_dict(state["trainer"])
        t.eval_rows = t.heldout_rows()
        hooks = _Digests(rec["fed"])
        step = rec["step"]
        while step < total:
            done, ended = t.run(step, min(step + interval, total), hooks=hooks,
                                eval_every=interval)
            rec["history"].append({**t.history[-1], "member": me})
            rec["step"] = step = done
            yield {"format": CHECKPOINT_FORMAT, **rec, "trainer": t.state_dict()}, ended
            if ended:
                return


def train_member(config: dict[str, Any], setup: MemberSetup) -> None:
    """The Tune trainable (see the module docstring); ``config``: ``member`` and, once
    explored, ``weights`` by source name (:func:`member_weights`)."""
    from ray import tune

    me = int(config["member"])
    ck = tune.get_checkpoint()
    state = None
    if ck is not None:
        with ck.as_directory() as d:
            state = read_member_checkpoint(Path(d) / CHECKPOINT_FILE)
    elif me in setup.starts:
        state = read_member_checkpoint(setup.starts[me], f"the recorded state of member {me}")
    weights = member_weights(config, setup.inits)
    for checkpoint, ended in member_steps(setup, me, weights, state):
        last = checkpoint["history"][-1]
        step = checkpoint["step"]
        if setup.fault == (me, step):
            raise RuntimeError(f"fault injected into member {me} at step {step}")
        with tempfile.TemporaryDirectory(prefix="mixbatch-pbt-") as d:
            save_torch(checkpoint, Path(d) / CHECKPOINT_FILE)
            if setup.rounds_dir is not None and step < setup.proxy.steps:
                dest = round_file(setup.rounds_dir, step, me)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(dest) as tmp:
                    shutil.copyfile(Path(d) / CHECKPOINT_FILE, tmp)
            tune.report({METRIC: last["val_loss_mean"], TIME_ATTR: checkpoint["step"],
                         "member": me, "stream_ended": ended,
                         **{f"val_{n}": v for n, v in last["val_loss"].items()}},
                        checkpoint=tune.Checkpoint.from_directory(d))
