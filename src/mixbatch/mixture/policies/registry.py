"""Policies by name: ``make_policy("doremi", num_sources=3, eta=1.0)``."""

from __future__ import annotations

import enum
from typing import Any

from mixbatch.errors import ConfigError
from mixbatch.mixture.policies.ado import ADO
from mixbatch.mixture.policies.base import Policy
from mixbatch.mixture.policies.dga import DGA
from mixbatch.mixture.policies.doremi import DoReMi
from mixbatch.mixture.policies.flad import EXP3FLAD, UCB1FLAD
from mixbatch.mixture.policies.odm import ODM
from mixbatch.mixture.policies.skillit import SkillIt

__all__ = ["POLICIES", "PolicyName", "make_policy", "policy_class"]


class PolicyName(enum.Enum):
    """The online policies mixbatch knows."""

    DOREMI = "doremi"
    ODM = "odm"
    SKILLIT = "skillit"
    DGA = "dga"
    EXP3_FLAD = "exp3_flad"
    UCB1_FLAD = "ucb1_flad"
    ADO = "ado"


POLICIES: dict[PolicyName, type[Policy]] = {
    PolicyName.DOREMI: DoReMi,
    PolicyName.ODM: ODM,
    PolicyName.SKILLIT: SkillIt,
    PolicyName.DGA: DGA,
    PolicyName.EXP3_FLAD: EXP3FLAD,
    PolicyName.UCB1_FLAD: UCB1FLAD,
    PolicyName.ADO: ADO,
}


def policy_class(name: str | PolicyName) -> type[Policy]:
    """The class registered under ``name``; ``ConfigError`` listing the choices otherwise."""
    if not isinstance(name, PolicyName):
        try:
            name = PolicyName(name)
        except ValueError:
            choices = ", ".join(repr(p.value) for p in PolicyName)
            raise ConfigError(f"policy: unknown policy {name!r} (choices: {choices})") from None
    return POLICIES[name]


def make_policy(name: str | PolicyName, num_sources: int, **settings: Any) -> Policy:
    """Build the policy ``name`` over ``num_sources`` sources.

    Settings not given take the policy's defaults (the authors' values; see
    ``policy_class(name).defaults()`` and each module's docstring). An unknown setting or a bad
    value raises ``ConfigError`` naming the policy and the setting, and listing the choices.
    """
    return policy_class(name)(num_sources, **settings)
