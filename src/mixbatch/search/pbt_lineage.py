"""A PBT member's weight history (its *lineage*) and the ``schedule:`` that replays it.

A member's state after an exploit is a copy of a better member's state, history included, so
the history travels inside the checkpoint: a list of stages ``{start, weights, member,
copied_from}``, one per change of weights, whose ``start`` is the step the weights took over.
Consecutive stages become ``mixture.schedule`` stages with ``until_step`` = the next stage's
start (the last one open-ended). Each interval the member trains under exactly that schedule,
its last stage open, resumed from the loader's exact state: the loader's resume is exact and
a schedule's stages before the resume step never change, so the batches a member saw are the
batches ``mixbatch stream`` plans from its final schedule (the tests check it step by step with
:func:`batch_digest`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mixbatch.atomic import write_text
from mixbatch.config import Config, StageConfig
from mixbatch.errors import ConfigError
from mixbatch.io.fs import is_url

__all__ = ["absolute_dump", "batch_digest", "schedule_block", "with_schedule",
           "write_replay_config"]

_DIGEST_FIELDS = ("input_ids", "labels", "position_ids", "source_ids")


def batch_digest(batch: dict[str, Any]) -> str:
    """A 16-hex-digit digest of a batch's tokens, labels, positions and sources."""
    h = hashlib.blake2b(digest_size=8)
    for name in _DIGEST_FIELDS:
        a = np.ascontiguousarray(batch[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def schedule_block(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``mixture.schedule`` stages of a lineage (stages that start at the same step: the last
    wins; neighbours with equal weights: merged)."""
    if not stages or stages[0]["start"] != 0:
        raise ValueError("schedule_block: a lineage starts at step 0")
    kept: list[dict[str, Any]] = []
    for s in stages:
        if kept and kept[-1]["start"] == s["start"]:
            kept.pop()
        if kept and kept[-1]["weights"] == s["weights"]:
            continue
        kept.append(s)
    out = [{"until_step": int(nxt["start"]), "weights": dict(s["weights"])}
           for s, nxt in itertools.pairwise(kept)]
    return [*out, {"weights": dict(kept[-1]["weights"])}]


def with_schedule(cfg: Config, schedule: list[dict[str, Any]]) -> Config:
    """``cfg`` with its mixture replaced by ``schedule`` (constant stages, by step)."""
    stages = [StageConfig(**s) for s in schedule]
    mixture = cfg.mixture.model_copy(update={"weights": None, "temperature": None,
                                             "schedule": stages, "interpolation": "constant"})
    return cfg.model_copy(update={"mixture": mixture})


def _absolute(cfg: Config, value: Any) -> Any:
    if not isinstance(value, str) or is_url(value):
        return value
    return os.path.abspath(cfg.resolve(value))


def absolute_dump(cfg: Config) -> dict[str, Any]:
    """``cfg`` as JSON-like data with its relative paths made absolute (a config that reads the
    same from anywhere)."""
    data = cfg.model_dump(mode="json")
    data["store"] = _absolute(cfg, data["store"])
    if data.get("tokenizer") not in (None, "byte"):
        data["tokenizer"] = _absolute(cfg, data["tokenizer"])
    for src in data["sources"].values():
        src["path"] = _absolute(cfg, src.get("path"))
    if data.get("cache") and data["cache"].get("dir"):
        data["cache"]["dir"] = _absolute(cfg, data["cache"]["dir"])
    return data


def write_replay_config(cfg: Config, path: str | Path, comment: str) -> Path:
    """Write ``cfg`` (the schedule and batch shape a member trained with) as a config file that
    ``mixbatch stream`` reads anywhere: relative paths made absolute. Read back and compared
    before it is left in place."""
    from mixbatch.config import config_from_dict

    data = absolute_dump(cfg)
    shown = {**data, "mixture": {**data["mixture"], "schedule": [
        {k: v for k, v in s.items() if v is not None} for s in data["mixture"]["schedule"] or []]
        or None}}
    text = "".join(f"# {line}\n" for line in comment.splitlines())
    text += yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)
    path = Path(path)
    back = config_from_dict(yaml.safe_load(text), str(path), path.resolve().parent)
    if back.model_dump(mode="json") != data:
        raise ConfigError(f"{path}: the replay config does not read back as the config the "
                          "member trained with")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)
    return path
