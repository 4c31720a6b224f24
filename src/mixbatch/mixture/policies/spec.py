"""``mixture.policy``: which online policy, its settings and the training loop's options, checked.

The YAML form is one mapping::

    mixture:
      policy: {name: doremi, every: 1, eta: 1.0}

``name`` is one of the registered policies (``doremi``, ``odm``, ``skillit``, ``dga``,
``exp3-flad``, ``ucb1-flad``, ``ado``; ``exp3_flad`` is the same name). Every other key is either one of
the policy's own settings (``make_policy``'s keyword arguments, e.g. ``every``, ``eta``,
``min_weight``) or one of the loop's options below. :func:`parse_policy` checks all of them and
raises a one-line :class:`~mixbatch.errors.ConfigError` (exit code 2) naming the key and listing
the real ones.

Loop options (read by :mod:`mixbatch.online.loop`, not by the policy):

=================== =========== ===============================================================
key                 policies    meaning (default)
=================== =========== ===============================================================
target              all         the source whose held-out loss is the objective (``--target``);
                                needed by dga, exp3-flad, ucb1-flad
reference           doremi      a reference model to load: a state dict, or an online run's
                                ``checkpoint.pt`` (default: train one on the uniform mixture
                                for ``reference_steps`` and cache it in the run folder)
reference_steps     doremi      steps of that reference run (the run's own steps)
probe_steps         skillit     steps of each one-source probe run that estimates the skills
                                graph when no ``graph`` is given (N/20, within [2, 100])
eval                skillit     the evaluation groups: ``target`` (the target's held-out loss
                                only, Skill-It's targeted setting) or ``all`` (every source);
                                default ``target`` when there is a target, else ``all``
normalize_grads     dga         scale every gradient to unit norm before the inner products,
                                so that ``eta`` does not depend on the model's gradient scale
                                (true: a cosine; false: the paper's raw inner product)
grads               dga         which parameters the gradients cover: ``head`` (the output
                                layer only, one cheap backward per source; the default) or
                                ``full`` (every parameter, the paper's ``⟨∇L_spe, ∇L_i⟩``:
                                ``K + 1`` full backward passes per update)
=================== =========== ===============================================================

Run-length defaults. The policies' defaults are the authors' values for runs of tens of
thousands of steps; a few of them are counted in steps and would never fire in a short run. When
the user does not set them, :meth:`PolicySpec.policy_settings` scales them to the run's length
``N`` (and records the values used in the run's summary):

- ``odm.warmup``: ``min(2000, N // 25)`` (the authors' 2000 steps, or 4% of a shorter run);
- ``skillit.every``: ``min(1000, max(1, N // 10))`` (at least ten rounds);
- ``dga.every``: ``min(10, max(1, N // 10))``;
- ``ado.refit_every``: ``min(1000, max(1, N // 10))``, ``ado.start``: ``min(500, N // 20)``,
  ``ado.ignore``: ``min(1000, N // 10)`` (the authors' 1000/500/1000 steps, scaled alike).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mixbatch.checks import choice
from mixbatch.errors import ConfigError
from mixbatch.mixture.policies import PolicyName, make_policy, policy_class

__all__ = [
    "LOOP_KEYS",
    "EvalGroups",
    "GradScope",
    "PolicySpec",
    "display_name",
    "parse_policy",
    "policy_choices",
]


class GradScope(str, enum.Enum):
    """The parameters DGA's gradients cover."""

    HEAD = "head"
    FULL = "full"


class EvalGroups(str, enum.Enum):
    """Skill-It's evaluation groups in the loop."""

    TARGET = "target"
    ALL = "all"


#: the loop's own keys in ``mixture.policy``, by policy (``name`` and ``target`` go with all)
LOOP_KEYS: dict[PolicyName, tuple[str, ...]] = {
    PolicyName.DOREMI: ("reference", "reference_steps"),
    PolicyName.ODM: (),
    PolicyName.SKILLIT: ("probe_steps", "eval"),
    PolicyName.DGA: ("normalize_grads", "grads"),
    PolicyName.EXP3_FLAD: (),
    PolicyName.UCB1_FLAD: (),
    PolicyName.ADO: (),
}
_COMMON = ("name", "target")
#: policies whose feedback is the target's gradient: they cannot run without a target
NEEDS_TARGET = (PolicyName.DGA, PolicyName.EXP3_FLAD, PolicyName.UCB1_FLAD)


def display_name(name: PolicyName) -> str:
    """The name as the CLI and the docs write it (``exp3-flad``)."""
    return name.value.replace("_", "-")


def policy_choices() -> str:
    return ", ".join(display_name(p) for p in PolicyName)


def _policy_name(value: Any, where: str) -> PolicyName:
    """``where`` is the field named in messages (``mixture.policy.name``, ``--policy``)."""
    if isinstance(value, PolicyName):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a policy name ({policy_choices()}), got {value!r}")
    try:
        return PolicyName(value.strip().lower().replace("-", "_"))
    except ValueError:
        raise ConfigError(f"{where}: unknown policy {value!r} (choices: {policy_choices()})"
                          ) from None


@dataclass(frozen=True)
class PolicySpec:
    """A checked ``mixture.policy``: the policy, its own settings as given, the loop options."""

    name: PolicyName
    settings: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    reference: str | None = None
    reference_steps: int | None = None
    probe_steps: int | None = None
    eval: EvalGroups | None = None
    normalize_grads: bool = True
    grads: GradScope = GradScope.HEAD

    @property
    def label(self) -> str:
        return display_name(self.name)

    def with_target(self, target: str | None) -> PolicySpec:
        """This spec with ``target`` replaced (when given)."""
        return self if target is None else replace(self, target=target)

    def policy_settings(self, steps: int) -> dict[str, Any]:
        """The settings given to ``make_policy`` for a run of ``steps`` steps: the user's, plus
        the run-length defaults of the module docstring for those the user left out."""
        out = dict(self.settings)
        if self.name is PolicyName.ODM:
            out.setdefault("warmup", min(2000, steps // 25))
        elif self.name is PolicyName.SKILLIT:
            out.setdefault("every", min(1000, max(1, steps // 10)))
        elif self.name is PolicyName.DGA:
            out.setdefault("every", min(10, max(1, steps // 10)))
        elif self.name is PolicyName.ADO:
            out.setdefault("refit_every", min(1000, max(1, steps // 10)))
            out.setdefault("start", min(500, steps // 20))
            out.setdefault("ignore", min(1000, steps // 10))
        return out

    def probe_steps_for(self, steps: int) -> int:
        return self.probe_steps if self.probe_steps is not None else max(2, min(100, steps // 20))

    def eval_groups(self) -> EvalGroups:
        if self.eval is not None:
            return self.eval
        return EvalGroups.TARGET if self.target is not None else EvalGroups.ALL

    def loop_options(self, steps: int) -> dict[str, Any]:
        """The loop options in force for a run of ``steps`` steps (JSON values)."""
        out: dict[str, Any] = {"target": self.target}
        if self.name is PolicyName.DOREMI:
            out["reference"] = self.reference
            out["reference_steps"] = self.reference_steps or steps
        elif self.name is PolicyName.SKILLIT:
            out["probe_steps"] = None if "graph" in self.settings else self.probe_steps_for(steps)
            out["eval"] = self.eval_groups().value
        elif self.name is PolicyName.DGA:
            out["normalize_grads"] = self.normalize_grads
            out["grads"] = self.grads.value
        return out


def _int(where: str, value: Any, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{where}: expected an integer >= {lo}, got {value!r}")
    return value


def _source(where: str, value: Any, sources: Sequence[str] | None) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a source name, got {value!r}")
    if sources is not None and value not in sources:
        raise ConfigError(f"{where}: unknown source {value!r} (sources: {', '.join(sources)})")
    return value


def parse_policy(spec: Any, sources: Sequence[str] | None = None,
                 where: str = "mixture.policy") -> PolicySpec | None:
    """Check a ``mixture.policy`` value and return it as a :class:`PolicySpec` (None for null).

    Args:
        spec: ``None``, a policy name, a mapping ``{name: ..., <setting or loop key>: ...}``, or
            a :class:`PolicySpec` (checked against ``sources`` and returned).
        sources: the config's source names, in order. With them, ``target`` is checked and the
            policy is built once, so that settings that depend on the number of sources
            (``initial``, ``graph``) are checked too.
        where: the field name that messages start with.

    Raises:
        ConfigError: one line, ``mixture.policy.<key>: <problem>``; an unknown key lists the
            keys this policy takes.
    """
    if spec is None:
        return None
    if isinstance(spec, PolicySpec):
        if spec.target is not None:
            _source(f"{where}.target", spec.target, sources)
        return spec
    name_field = f"{where}.name"
    if isinstance(spec, str):
        spec, name_field = {"name": spec}, where
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a `name:` (e.g. {{name: doremi}}) or "
                          f"a policy name, got {spec!r}")
    for key in spec:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {key!r}")
    if "name" not in spec:
        raise ConfigError(f"{where}.name: missing; choose one of {policy_choices()}")
    name = _policy_name(spec["name"], name_field)
    cls = policy_class(name)
    setting_keys = [f.name for f in fields(cls.Settings)]
    loop_keys = LOOP_KEYS[name]
    allowed = sorted({*_COMMON, *loop_keys, *setting_keys})
    unknown = sorted(k for k in spec if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key for policy {display_name(name)!r} "
                          f"(keys: {', '.join(allowed)})")
    opts: dict[str, Any] = {}
    if spec.get("target") is not None:
        opts["target"] = _source(f"{where}.target", spec["target"], sources)
    if spec.get("reference") is not None:
        ref = spec["reference"]
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{where}.reference: expected a path to a model state, got {ref!r}")
        opts["reference"] = ref
    for key in ("reference_steps", "probe_steps"):
        if spec.get(key) is not None:
            opts[key] = _int(f"{where}.{key}", spec[key])
    if spec.get("eval") is not None:
        try:
            opts["eval"] = EvalGroups(spec["eval"])
        except ValueError:
            choices = ", ".join(repr(g.value) for g in EvalGroups)
            raise ConfigError(f"{where}.eval: got {spec['eval']!r}, expected one of {choices}"
                              ) from None
    if "normalize_grads" in spec:
        if not isinstance(spec["normalize_grads"], bool):
            raise ConfigError(f"{where}.normalize_grads: expected true or false, got "
                              f"{spec['normalize_grads']!r}")
        opts["normalize_grads"] = spec["normalize_grads"]
    if spec.get("grads") is not None:
        opts["grads"] = choice(GradScope, f"{where}.grads", spec["grads"])
    settings = {k: v for k, v in spec.items() if k in setting_keys}
    _check_settings(name, settings, sources, where)
    return PolicySpec(name, settings, **opts)


def _check_settings(name: PolicyName, settings: dict[str, Any], sources: Sequence[str] | None,
                    where: str) -> None:
    try:
        if sources is not None:
            make_policy(name, len(sources), **settings)
        else:
            s = policy_class(name).Settings(**settings)
            s.check()
    except ConfigError as e:
        msg = str(e).removeprefix(f"policy {name.value!r}: ")
        key = msg.split(":", 1)[0]
        raise ConfigError(f"{where}.{msg}" if key in settings else f"{where}: {msg}") from None
