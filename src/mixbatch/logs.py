"""Logging for the ``mixbatch`` command: one handler on stderr, the level from ``-v`` / ``-q``.

The library logs through ``logging.getLogger("mixbatch...")`` and configures nothing (an
application decides). The command sets the ``mixbatch`` logger to WARNING, INFO with ``-v``,
DEBUG with ``-vv``, ERROR with ``-q``. The storage and HTTP libraries under
:mod:`mixbatch.io.fs` log every retry with a traceback; the command reports such a failure as
one line itself, so their loggers are held at CRITICAL unless ``-vv`` asks for everything.
"""

from __future__ import annotations

import logging
import sys

#: loggers of the libraries under mixbatch.io.fs that print tracebacks for retried requests
NOISY = ("gcsfs", "s3fs", "adlfs", "fsspec", "aiohttp", "botocore", "urllib3", "google",
         "azure", "huggingface_hub")

_FORMAT = "mixbatch: %(levelname)s: %(message)s"


def level_of(verbose: int, quiet: int) -> int:
    """The ``mixbatch`` logger's level for ``-v`` given ``verbose`` times and ``-q`` ``quiet``."""
    return min(logging.CRITICAL, max(logging.DEBUG, logging.WARNING + 10 * (quiet - verbose)))


def setup_logging(verbose: int = 0, quiet: int = 0) -> logging.Logger:
    """Configure the command's logging: one handler on the current stderr (a second call
    replaces it), the level from the flags; returns the ``mixbatch`` logger."""
    log = logging.getLogger("mixbatch")
    log.setLevel(level_of(verbose, quiet))
    for h in [h for h in log.handlers if getattr(h, "_mixbatch", False)]:
        log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._mixbatch = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.propagate = False
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
    return log
