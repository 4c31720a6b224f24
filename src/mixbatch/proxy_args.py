"""The proxy settings of the commands that train proxies (``search run``, ``search merge``,
``train``): one flag group, read one way.

``--proxy`` is repeatable; each value is either a YAML file holding a mapping of
:class:`~mixbatch.proxy.settings.ProxyConfig` fields or one field as ``KEY=VALUE`` (the value
read as a YAML scalar). A value is a setting when the text before its first ``=`` is a plain
name (letters, digits, ``_``), a file otherwise. The shortcut flags (``--steps``, ``--layers``,
``--d-model``, ...) set one field each. Later ``--proxy`` values override earlier ones, and the
shortcuts override every ``--proxy`` value. Each ``--proxy`` value is checked on its own, so a
wrong key or value is reported as one line naming the file or ``--proxy`` and the key.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixbatch.checks import positive_int
from mixbatch.errors import ConfigError

if TYPE_CHECKING:
    from mixbatch.proxy.settings import ProxyConfig

__all__ = ["DEVICES", "SHORTCUTS", "add_proxy_arguments", "proxy_from_args", "read_proxy_items"]

#: the values of ProxyConfig.device (mixbatch.proxy needs torch: not imported to build a parser)
DEVICES = ("auto", "cpu", "cuda")

#: ``KEY=VALUE``: a plain name before the first ``=``
_SETTING = re.compile(r"\s*([A-Za-z_]\w*)\s*=(.*)", re.DOTALL)


def _lr(value: str) -> float:
    """``argparse`` type: a positive learning rate."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value!r}")
    return x


#: flag, ProxyConfig field, argparse type, help (``steps`` is added by add_proxy_arguments)
SHORTCUTS: tuple[tuple[str, str, Any, str], ...] = (
    ("--layers", "n_layer", positive_int, "transformer layers (n_layer)"),
    ("--d-model", "d_model", positive_int, "model width (d_model)"),
    ("--heads", "n_head", positive_int, "attention heads (n_head)"),
    ("--seq-len", "seq_len", positive_int,
     "tokens per row (seq_len; default: the proxy's, else the config's batch)"),
    ("--batch-size", "batch_size", positive_int,
     "rows per global step (batch_size; default: the proxy's, else the config's batch)"),
    ("--lr", "lr", _lr, "peak learning rate (lr)"),
    ("--eval-tokens", "eval_tokens", positive_int,
     "held-out tokens scored per source (eval_tokens)"),
    ("--threads", "threads", positive_int,
     "torch CPU threads per proxy run (threads; default: torch's, 1 when search runs "
     "several proxies at a time)"),
    ("--device", "device", str, "where to train (device; default auto: CUDA when torch sees it)"),
)


def add_proxy_arguments(sp: argparse.ArgumentParser, *, base: str,
                        steps_required: bool = False) -> None:
    """Add the proxy flag group to ``sp``; ``base`` says in the group's title what the settings
    start from (e.g. "the demo proxy")."""
    g = sp.add_argument_group(
        "proxy model", f"Settings start from {base}; --proxy values apply in order, then the "
        "shortcut flags. Keys: the fields of ProxyConfig (README: Proxy settings).")
    g.add_argument("--proxy", action="append", default=None, metavar="PROXY.yaml|KEY=VALUE",
                   help="a YAML file of proxy settings, or one setting such as d_model=64 "
                        "(repeatable; later values win)")
    g.add_argument("--steps", type=positive_int, required=steps_required, default=None,
                   metavar="N",
                   help="optimizer steps per proxy run (steps)")
    for flag, name, kind, text in SHORTCUTS:
        extra: dict[str, Any] = ({"choices": DEVICES} if name == "device" else
                                 {"metavar": "LR" if name == "lr" else "N"})
        g.add_argument(flag, dest=name, type=kind, default=None, help=text, **extra)


def read_proxy_items(items: list[str] | None) -> list[tuple[str, dict[str, Any], bool]]:
    """Each ``--proxy`` value as ``(origin, settings, is_file)``, each checked on its own."""
    import yaml

    from mixbatch.proxy.settings import ProxyConfig

    out: list[tuple[str, dict[str, Any], bool]] = []
    for item in items or []:
        m = _SETTING.fullmatch(item)
        if m is not None:
            key, text = m.group(1), m.group(2)
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(f"--proxy: {key}: cannot read the value {text!r}") from None
            out.append(("--proxy", {key: value}, False))
            continue
        path = Path(item)
        if not path.is_file():
            raise ConfigError(f"--proxy: expected KEY=VALUE (e.g. d_model=64) or a PROXY.yaml "
                              f"file, got {item!r} (no such file)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{item}: cannot read ({e})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{item}{where}: invalid YAML "
                              f"({getattr(e, 'problem', None) or 'unreadable'})") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{item}: expected a mapping of proxy settings, got "
                              f"{type(data).__name__}")
        out.append((item, data, True))
    for origin, data, _ in out:
        ProxyConfig.from_dict(data, origin)  # wrong keys and values, named where they came from
    return out


def proxy_from_args(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None, *,
                    file_replaces_defaults: bool = False) -> ProxyConfig:
    """The :class:`ProxyConfig` of the parsed flags: ``defaults``, then every ``--proxy``
    value in order, then the shortcut flags. With ``file_replaces_defaults`` a ``--proxy`` file
    starts from ProxyConfig's own defaults instead of ``defaults`` (a file describes a whole
    proxy)."""
    from mixbatch.proxy.settings import ProxyConfig

    items = read_proxy_items(args.proxy)
    has_file = any(is_file for _, _, is_file in items)
    merged: dict[str, Any] = {} if (has_file and file_replaces_defaults) else dict(defaults or {})
    for _, data, _ in items:
        merged.update(data)
    for name in ("steps", *(name for _, name, _, _ in SHORTCUTS)):
        value = getattr(args, name, None)
        if value is not None:
            merged[name] = value
    return ProxyConfig.from_dict(merged, "proxy settings")
