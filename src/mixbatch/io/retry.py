"""Failures of object storage: which are permanent (one line naming the URL) and which are
retried with exponential backoff and full jitter (:func:`with_retries`).

Transient failures (connection reset, timeouts, 5xx/throttling, a range response shorter than
asked) are retried; after the last try a :class:`RemoteError` names the URL and what went wrong.
Permanent failures (not found, access denied, missing credentials) are not retried.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mixbatch.errors import ConfigError, MixbatchError
from mixbatch.io.skips import one_line

T = TypeVar("T")


class RemoteError(MixbatchError):
    """Object storage failed at run time (after retries), or an object is not what was expected.

    Exit code 1; the message names the URL."""

    exit_code = 1


class TransientError(OSError):
    """A failure worth retrying that the backend did not classify (e.g. a short range read)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: try ``tries`` times, sleeping up to
    ``base * 2**k`` (at most ``cap``) seconds before try ``k + 1``."""

    tries: int = 5
    base: float = 0.2
    cap: float = 10.0


DEFAULT_RETRY = RetryPolicy(
    tries=int(os.environ.get("MIXBATCH_REMOTE_TRIES", "5")),
    base=float(os.environ.get("MIXBATCH_REMOTE_BACKOFF", "0.2")),
)

_PERMANENT_NAMES = ("NoCredentialsError", "PartialCredentialsError", "NoSuchBucket",
                    "InvalidAccessKeyId", "SignatureDoesNotMatch", "DefaultCredentialsError",
                    "ClientAuthenticationError")


#: where each backend finds its credentials (never in a config file)
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`",
    "az": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
          "AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or an Azure login",
    "hf": "HF_TOKEN or `hf auth login`",
}
_ALIASES = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}
NO_CREDENTIALS = re.compile(r"Unable to locate credentials|connection_string or account_name|"
                             r"Anonymous caller|Invalid Credentials|no credentials", re.IGNORECASE)


def credentials_error(url: str, detail: str) -> ConfigError:
    """The one line for missing or refused credentials: where the backend looks for them."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    where = CREDENTIALS.get(_ALIASES.get(scheme, scheme), "the backend's usual variables")
    return ConfigError(one_line(f"{url}: no credentials for {scheme}:// ({detail}); set {where}, "
                                "never in the config file"))


def http_status(exc: BaseException) -> int | None:
    """The HTTP status a backend's exception carries, if any (``code``, ``status``,
    ``status_code`` or its ``response``'s)."""
    for holder in (exc, getattr(exc, "response", None)):
        for attr in ("status_code", "status", "code"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def classify(exc: BaseException, url: str) -> MixbatchError | None:
    """The user-facing error for a permanent failure, or ``None`` when ``exc`` is transient."""
    name = type(exc).__name__
    detail = one_line(" ".join(str(exc).split()) or name)
    status = http_status(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                "ClientAuthenticationError") or NO_CREDENTIALS.search(detail) \
            or status == 401:
        return credentials_error(url, detail)
    if isinstance(exc, FileNotFoundError) or name == "NoSuchBucket" or status == 404:
        low = detail.lower()
        gone = name == "NoSuchBucket" or "bucket does not exist" in low or "no such bucket" in low
        what = "bucket does not exist" if gone else "not found"
        return ConfigError(one_line(f"{url}: {what} ({detail})"))
    if isinstance(exc, PermissionError) or name in _PERMANENT_NAMES \
            or status == 403 or detail.startswith("Forbidden"):
        return ConfigError(one_line(f"{url}: access denied ({detail}); check the credentials"))
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return RemoteError(one_line(f"{url}: {detail}"))
    if isinstance(exc, ValueError | TypeError) and not isinstance(exc, TransientError):
        return RemoteError(one_line(f"{url}: {detail}"))
    return None


def with_retries(fn: Callable[[], T], url: str, policy: RetryPolicy | None = None,
                 what: str = "request") -> T:
    """``fn()``, retried on transient errors with exponential backoff and jitter."""
    policy = policy or DEFAULT_RETRY
    last: BaseException | None = None
    for attempt in range(max(1, policy.tries)):
        if attempt:
            time.sleep(random.uniform(0, min(policy.cap, policy.base * 2 ** (attempt - 1))))
        try:
            return fn()
        except MixbatchError:
            raise
        except Exception as exc:
            permanent = classify(exc, url)
            if permanent is not None:
                raise permanent from None
            last = exc
    detail = one_line(" ".join(str(last).split()) or type(last).__name__)
    raise RemoteError(one_line(f"{url}: {what} failed after {policy.tries} tries "
                               f"({type(last).__name__}: {detail})")) from None
