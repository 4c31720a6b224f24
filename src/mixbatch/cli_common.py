"""What every ``mixbatch`` command takes after its name: ``-v``/``-q`` and, for the commands that
show progress, ``--progress/--no-progress`` (one default everywhere: on when stderr is a
terminal and ``-q`` is not given)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["QUIET_HELP", "VERBOSE_HELP", "add_common", "progress_enabled", "progress_mode"]

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
