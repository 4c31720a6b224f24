"""Exceptions raised for user-facing problems.

Every error that reaches the command line is a :class:`MixbatchError`: its message is one line
that names the file, the record and what is wrong, and its ``exit_code`` is what ``mixbatch``
exits with. Anything else escaping is a bug (:class:`MixbatchInternalError`).
"""

from __future__ import annotations


class MixbatchError(Exception):
    """A problem with the user's input, config or data; printed as one line."""

    exit_code = 1


class ConfigError(MixbatchError, ValueError):
    """The configuration (YAML or arguments) is invalid. Exit code 2."""

    exit_code = 2


class DataError(MixbatchError, ValueError):
    """An input record or file cannot be read. Message names ``file:record: problem``."""

    exit_code = 1


class StoreError(MixbatchError):
    """A token store is missing, corrupt, or does not match its metadata."""

    exit_code = 1


class StateError(MixbatchError, ValueError):
    """A saved loader state is corrupt or belongs to another configuration. Exit code 2."""

    exit_code = 2


class MixbatchInternalError(RuntimeError):
    """A branch that should be unreachable was reached: please report it as a bug."""
