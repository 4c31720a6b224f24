"""URL parsing and the classification of backend errors, without a server: which failures are
retried, and the one line each permanent one gives (credentials by scheme, not found, denied)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mixbatch.errors import ConfigError
from mixbatch.io.fs import RemotePath, as_path, check_scheme, scheme_of
from mixbatch.io.retry import RemoteError, TransientError, classify, http_status


class StatusError(Exception):
    """An exception as the HTTP backends raise them: a status on itself or on its response."""

    def __init__(self, message: str, code: int | None = None, response_status: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if response_status is not None:
            self.response = type("Response", (), {"status_code": response_status})()


@pytest.mark.parametrize("url, scheme", [
    ("s3://bucket/key.jsonl", "s3"), ("GS://Bucket/a/*.parquet", "gs"), ("gcs://b/x", "gcs"),
    ("az://container/x.jsonl", "az"), ("abfs://container/x", "abfs"),
    ("hf://datasets/org/name/data/*.jsonl", "hf"), ("https://host/x.jsonl", "https"),
    ("file:///tmp/x.jsonl", None), ("/tmp/x.jsonl", None), ("data/x.jsonl", None)])
def test_scheme_of(url: str, scheme: str | None) -> None:
    assert scheme_of(url) == scheme


def test_paths_keep_their_url_and_join_like_pathlib() -> None:
    p = RemotePath("gs://bucket/stores/")
    assert p.url == "gs://bucket/stores" and (p / "web" / "meta.json").name == "meta.json"
    assert (p / "web").parent == p and (p / "tokens.bin").suffix == ".bin"
    assert RemotePath("hf://datasets/org/name/stores/web").fs_path == "datasets/org/name/stores/web"
    assert as_path("file:///tmp/x") == Path("/tmp/x") and isinstance(as_path("az://c/x"), RemotePath)


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown scheme 'ftpx'.*s3://, gs://, az://"):
        check_scheme("ftpx://host/x")


@pytest.mark.parametrize("url, exc, message", [
    ("gs://b/x", StatusError("Anonymous caller does not have storage.objects.get", code=401),
     r"no credentials for gs://.*GOOGLE_APPLICATION_CREDENTIALS"),
    ("az://c/x", ValueError("Must provide either a connection_string or account_name with "
                            "credentials!!"), r"no credentials for az://.*AZURE_STORAGE_ACCOUNT_NAME"),
    ("hf://datasets/o/n/x", StatusError("401 Unauthorized", response_status=401),
     r"no credentials for hf://.*HF_TOKEN"),
    ("s3://b/x", type("NoCredentialsError", (Exception,), {})("Unable to locate credentials"),
     r"no credentials for s3://.*AWS_ACCESS_KEY_ID"),
    ("gs://b/x", OSError("Forbidden: b/x\nno storage.objects.get"), "access denied"),
    ("hf://datasets/o/n/x", StatusError("403 Forbidden", response_status=403), "access denied"),
    ("hf://datasets/o/n/x", StatusError("404 Not Found", response_status=404), "not found"),
    ("az://c/x", FileNotFoundError("c/x"), "not found"),
])
def test_permanent_failures_are_one_config_line(url: str, exc: Exception, message: str) -> None:
    err = classify(exc, url)
    assert isinstance(err, ConfigError)
    assert url in str(err) and "\n" not in str(err)
    assert re.search(message, str(err)), str(err)


@pytest.mark.parametrize("exc", [
    ConnectionResetError(104, "Connection reset by peer"), TimeoutError("read timeout"),
    OSError("503 Service Unavailable"), StatusError("server error", response_status=503),
    TransientError("range [0, 10) returned 9 bytes")])
def test_transient_failures_are_retried(exc: Exception) -> None:
    assert classify(exc, "gs://b/x") is None


def test_http_status_reads_the_backends_attributes() -> None:
    assert http_status(StatusError("x", code=404)) == 404
    assert http_status(StatusError("x", response_status=502)) == 502
    assert http_status(OSError(2, "no such file")) is None
    assert http_status(StatusError("x", code=0)) is None  # not an HTTP status
    assert isinstance(classify(IsADirectoryError("gs://b/dir"), "gs://b/dir"), RemoteError)
