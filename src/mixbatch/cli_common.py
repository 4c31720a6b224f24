"""What every ``mixbatch`` command takes after its name: ``-v``/``-q`` and, for the commands that
show progress, ``--progress/--no-progress`` (one default everywhere: on when stderr is a
terminal and ``-q`` is not given)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator

__all__ = ["QUIET_HELP", "VERBOSE_HELP", "add_common", "check_local_paths", "progress_enabled",
           "progress_mode"]

#: ``scheme://`` at the start of an argument: a URL, which no command argument reads
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: arguments whose values are not paths (a Ray cluster's address may be ray://host:port)
NOT_PATHS = frozenset({"ray_address", "pattern", "func"})
#: the commands' positional arguments (named in upper case, as in their usage lines)
POSITIONALS = frozenset({"config", "log", "model", "results", "run_dir", "run_or_log",
                         "tokenizer"})

VERBOSE_HELP = "more log lines on stderr (-vv: debug, and the storage libraries' own)"
QUIET_HELP = "errors only (and no progress unless --progress)"
PROGRESS_HELP = ("show progress on stderr: a live line on a terminal, a plain line every few "
                 "seconds otherwise (default: on when stderr is a terminal)")


def add_common(sp: argparse.ArgumentParser, progress: bool = True) -> None:
    """``-v``/``-q`` (also accepted after the command's name) and, with ``progress``,
    ``--progress/--no-progress``."""
    sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                    help=VERBOSE_HELP)
    sp.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, help=QUIET_HELP)
    if progress:
        sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=PROGRESS_HELP)


def progress_enabled(args: argparse.Namespace) -> bool:
    """``--progress`` / ``--no-progress``; unset: on when stderr is a terminal and not ``-q``."""
    return progress_mode(args) != "off"


def progress_mode(args: argparse.Namespace) -> str:
    """``"live"`` (updated in place on a terminal), ``"lines"`` (``--progress`` when stderr is
    not a terminal: a plain line now and then) or ``"off"``."""
    tty = sys.stderr.isatty()
    asked = getattr(args, "progress", None)
    if asked is None:
        asked = tty and not getattr(args, "quiet", 0)
    if not asked:
        return "off"
    return "live" if tty else "lines"


def _values(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    for dest, value in vars(args).items():
        if dest in NOT_PATHS:
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                yield dest, v


def check_local_paths(args: argparse.Namespace) -> None:
    """Refuse a URL (``s3://...``) given as a command's file argument: the commands read and
    write local files (remote data goes in the config's ``sources`` and ``store``), so such a
    path is an unsupported scheme, not a missing file."""
    from mixbatch.errors import ConfigError

    for dest, value in _values(args):
        m = _URL.match(value)
        if m is not None:
            name = dest.upper() if dest in POSITIONALS else "--" + dest.replace("_", "-")
            raise ConfigError(f"{name}: {value}: unsupported scheme {m.group(1)}:// for a "
                              "command-line path (local files only; remote sources and stores "
                              "go in the config's sources and store)")
