"""Online mixture policies: training feedback in, sampling weights out.

``make_policy(name, num_sources, **settings)`` builds one; see :mod:`.base` for the contract
(:class:`Feedback`, :class:`Policy`: ``needs``, ``every``/``due``, ``observe``, ``weights``,
``state_dict``/``load_state_dict``, and the ``min_weight`` floor).

========== ============================================== ==================================
name       method                                         feedback it needs
========== ============================================== ==================================
doremi     DoReMi, Group DRO on excess loss (Xie 2023)    excess_loss (or train + ref loss)
odm        Online Data Mixing, EXP3 (Albalak 2023)        train_loss
skillit    Skill-It, skills-graph MW (Chen 2023)          eval_loss
dga        Dynamic Gradient Alignment (Fan 2024)          grads, target_grad
exp3_flad  EXP3-FLAD (Albalak 2023)                       grads, target_grad (output layer)
ucb1_flad  UCB1-FLAD (Albalak 2023)                       grads, target_grad (output layer)
ado        ADO, per-domain scaling laws (Jiang 2024)      train_loss, counts
========== ============================================== ==================================
"""

from mixbatch.mixture.policies.ado import ADO
from mixbatch.mixture.policies.base import Feedback, Policy, PolicySettings, Signal, apply_floor
from mixbatch.mixture.policies.dga import DGA
from mixbatch.mixture.policies.doremi import DoReMi
from mixbatch.mixture.policies.flad import EXP3FLAD, UCB1FLAD, gradient_reward
from mixbatch.mixture.policies.odm import ODM
from mixbatch.mixture.policies.registry import POLICIES, PolicyName, make_policy, policy_class
from mixbatch.mixture.policies.skillit import SkillIt, estimate_graph

__all__ = [
    "ADO",
    "DGA",
    "EXP3FLAD",
    "ODM",
    "POLICIES",
    "UCB1FLAD",
    "DoReMi",
    "Feedback",
    "Policy",
    "PolicyName",
    "PolicySettings",
    "Signal",
    "SkillIt",
    "apply_floor",
    "estimate_graph",
    "gradient_reward",
    "make_policy",
    "policy_class",
]
