"""What lets an interrupted ``search pbt`` resume exactly: ``OUT/pbt_rounds.json`` and the
members' states at the last recorded round (``OUT/rounds/``).

Why not Tune's own restore (``Tuner.restore(path, trainable=..., resume_errored=True)``): it
brings back the trials and their last checkpoints but not the scheduler. Ray 2.60's
``TuneController.save_to_dir`` leaves ``_scheduler_alg`` out of the experiment state, so PBT's
next synchronisation step, each trial's last perturbation and the exploit record start over
(a fresh synchronous PBT with members at step ``k * interval`` waits for step ``interval``,
which they have passed), the experiment state is saved on Tune's own period, not at a round
boundary, and the restored trials come back sorted by their last result time, which changes
how ties between members fall. So PBT's decisions are recorded here instead:

- after every synchronous round (every member at step ``k * interval`` and the exploit/explore
  of that step decided) the driver writes this file atomically: every member's held-out loss,
  the round's exploits and, for every member, whose state it continues from and with which
  weights;
- each member writes its state at that step (model, optimiser, the loader's exact state,
  lineage, digests) to ``OUT/rounds/step_K/member_I.pt`` before it reports, so the files of a
  recorded round are complete; the previous round's files are removed once the next round is
  recorded.

A resume starts a fresh Tune run in which member ``i`` starts from the recorded state it
continues from, with its recorded weights, under a scheduler positioned at step ``k`` (next
synchronisation ``k + interval``, every member last perturbed at ``k``): the scheduler state
an uninterrupted run has after round ``k``. The decisions after it are the same, because they
are functions of the seed, the step, the members' held-out losses (the same: the loader's
resume is exact, model and optimiser are restored) and Tune's trial order (grid order both
times).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mixbatch.atomic import json_digest, write_json
from mixbatch.errors import StateError

__all__ = ["FORMAT", "ROUNDS_DIR", "STATE_FILE", "RoundLog", "differences", "identity",
           "round_file"]

STATE_FILE = "pbt_rounds.json"
ROUNDS_DIR = "rounds"
FORMAT = "mixbatch.search.pbt.rounds/1"
#: the settings that decide a search's result (``workers``, ``ray_address``: where it runs)
RESULT_SETTINGS = ("population", "interval", "steps", "seed", "resample", "quantile")


def round_file(rounds_dir: str | Path, step: int, member: int) -> Path:
    """Where member ``member`` writes its state at step ``step``."""
    return Path(rounds_dir) / f"step_{step:08d}" / f"member_{member:04d}.pt"


def identity(config: dict[str, Any], proxy: dict[str, Any], settings: Any) -> dict[str, Any]:
    """What a resumed search must share with the interrupted one: the config (paths made
    absolute), the proxy and the settings that decide the result."""
    return {"settings": {k: getattr(settings, k) for k in RESULT_SETTINGS},
            "proxy": proxy, "config": config}


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(saved: dict[str, Any], now: dict[str, Any], limit: int = 4) -> str:
    """The keys whose values differ between two identities, as ``key: saved -> now``, at most
    ``limit`` of them ("" when none)."""
    a, b = _flat(saved, ""), _flat(now, "")
    unset = object()

    def shown(v: Any) -> str:
        return "unset" if v is unset else repr(v)

    keys = [k for k in sorted(set(a) | set(b), key=lambda k: (not k.startswith("settings"), k))
            if a.get(k, unset) != b.get(k, unset)]
    text = [f"{k}: {shown(a.get(k, unset))} -> {shown(b.get(k, unset))}" for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(text) + more


class RoundLog:
    """``OUT/pbt_rounds.json``: the identity of the search, the members' starting weights and
    the recorded rounds (see the module docstring)."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out = out
        self.path = out / STATE_FILE
        self.rounds_dir = out / ROUNDS_DIR
        self.data = data

    # ---- reading -------------------------------------------------------------------------
    @classmethod
    def read(cls, out: str | Path) -> RoundLog | None:
        """The record under ``out``, None when there is none."""
        import json

        path = Path(out) / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise StateError(f"{path}: unreadable PBT record ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise StateError(f"{path}: not a PBT record (format {got!r}, expected {FORMAT!r})")
        for key in ("identity", "digest", "initial_weights", "rounds", "resumed_at"):
            if key not in data:
                raise StateError(f"{path}: {key}: missing")
        return cls(Path(out), data)

    @classmethod
    def for_resume(cls, out: str | Path, ident: dict[str, Any]) -> RoundLog:
        """The record of an unfinished search under ``out`` made with ``ident``.

        Raises:
            StateError: no search there, it finished, or it was made with another config,
                proxy or settings (naming what differs).
        """
        log = cls.read(out)
        if log is None:
            raise StateError(f"{out}: no PBT search to resume (no {STATE_FILE}); start one "
                             "without --resume")
        if log.data.get("finished"):
            fin = log.data["finished"]
            raise StateError(f"{out}: this PBT search already finished: its result is "
                             f"{fin.get('report')} (schedule {fin.get('schedule')}); nothing to "
                             "resume")
        if log.data["digest"] != json_digest(ident):
            what = differences(log.data["identity"], ident) or "the record's digest"
            raise StateError(f"{log.path}: the search there was made with another config or "
                             f"settings ({what}); resume with the same CONFIG and flags, or "
                             "start a new --out")
        return log

    @classmethod
    def start(cls, out: str | Path, ident: dict[str, Any],
              inits: list[dict[str, float]]) -> RoundLog:
        """A new record (no round yet) for a fresh search under ``out``; an unfinished one
        already there is refused."""
        old = cls.read(out)
        if old is not None and not old.data.get("finished"):
            raise StateError(f"{out}: holds an unfinished PBT search ({len(old.rounds)} rounds "
                             "recorded): resume it with --resume, or choose another --out")
        log = cls(Path(out), {"format": FORMAT, "digest": json_digest(ident), "identity": ident,
                              "initial_weights": inits, "rounds": [], "resumed_at": []})
        shutil.rmtree(log.rounds_dir, ignore_errors=True)
        log._write()
        return log

    # ---- state ---------------------------------------------------------------------------
    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.data["rounds"]

    @property
    def step(self) -> int:
        """The step the search continues from (0 before any round)."""
        return int(self.rounds[-1]["step"]) if self.rounds else 0

    @property
    def initial_weights(self) -> list[dict[str, float]]:
        return self.data["initial_weights"]

    def exploits(self) -> list[dict[str, int]]:
        return [e for r in self.rounds for e in r["exploits"]]

    def restart(self) -> tuple[list[dict[str, float]], dict[int, bytes]]:
        """Every member's weights at :attr:`step` and, after a recorded round, the bytes of
        the state each member continues from (read back and checked by the member). Files of
        rounds after the last recorded one (an interrupted round) are removed."""
        if not self.rounds:
            shutil.rmtree(self.rounds_dir, ignore_errors=True)
            return list(self.initial_weights), {}
        last = self.rounds[-1]
        keep = round_file(self.rounds_dir, last["step"], 0).parent
        if self.rounds_dir.is_dir():
            for d in self.rounds_dir.iterdir():
                if d != keep:
                    shutil.rmtree(d, ignore_errors=True)
        starts: dict[int, bytes] = {}
        for row in last["members"]:
            path = round_file(self.rounds_dir, last["step"], row["state_of"])
            try:
                starts[int(row["member"])] = path.read_bytes()
            except OSError as e:
                raise StateError(f"{path}: the state of member {row['state_of']} at the "
                                 f"recorded step {last['step']} is missing or unreadable "
                                 f"({e.strerror or e}); the search cannot resume") from None
        return [dict(row["weights"]) for row in last["members"]], starts

    # ---- writing -------------------------------------------------------------------------
    def _write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)

    def resumed(self) -> None:
        self.data["resumed_at"].append(self.step)
        self._write()

    def commit(self, step: int, members: list[dict[str, Any]],
               exploits: list[dict[str, int]]) -> None:
        """Record the round at ``step`` (``members``: ``member``, ``val_loss``, ``state_of``,
        ``weights`` each) and remove the previous round's states."""
        for row in members:
            path = round_file(self.rounds_dir, step, row["state_of"])
            if not path.is_file():
                raise StateError(f"{path}: member {row['state_of']} reported step {step} "
                                 "without writing its state; the round cannot be recorded")
        before = self.step if self.rounds else None
        self.rounds.append({"step": step, "members": members, "exploits": exploits})
        self._write()
        if before is not None and before != step:
            shutil.rmtree(round_file(self.rounds_dir, before, 0).parent, ignore_errors=True)

    def finish(self, paths: dict[str, str]) -> None:
        """Mark the search finished (its results are written) and remove the round states."""
        self.data["finished"] = {"report": paths["report"], "schedule": paths["schedule"]}
        self._write()
        shutil.rmtree(self.rounds_dir, ignore_errors=True)
