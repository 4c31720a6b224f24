"""Online mixture policies in a real training loop: feedback in, weights out, every step.

- :func:`train_online`: train a proxy model with a policy choosing the mixture
  (:mod:`.loop`); files of the run folder in :mod:`.runfiles`, checkpoint in :mod:`.checkpoint`;
- :func:`parse_policy`: check a ``mixture.policy`` value (:mod:`mixbatch.mixture.policies.spec`);
- feedback signals (:mod:`.feedback`), the held-out validation/development split
  (:mod:`.splits`), DoReMi's reference model (:mod:`.reference`), Skill-It's probe runs
  (:mod:`.probes`);
- :func:`write_report`: plots and an HTML page of a run folder (:mod:`.report`);
- :func:`~mixbatch.online.cli.add_online_parsers`: the ``train`` and ``report`` commands.

Importing this package (or :mod:`.cli`) does not import torch: the config
loader and the command-line parser use them. The names that need torch load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixbatch.mixture.policies.spec import EvalGroups, PolicySpec, display_name, parse_policy

_LAZY = {
    "OnlineResult": "mixbatch.online.loop",
    "resolve_policy": "mixbatch.online.loop",
    "train_online": "mixbatch.online.loop",
    "write_report": "mixbatch.online.report",
}

__all__ = [
    "EvalGroups",
    "OnlineResult",
    "PolicySpec",
    "display_name",
    "parse_policy",
    "resolve_policy",
    "train_online",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mixbatch.online' has no attribute {name!r}")
