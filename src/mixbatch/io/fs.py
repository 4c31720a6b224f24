"""One filesystem layer for local paths and object storage, on top of fsspec.

A path with a scheme (``s3://``, ``gs://``, ``az://``, ``http(s)://``, ``hf://``, or any other
protocol fsspec knows, e.g. ``memory://`` in tests) is a :class:`RemotePath`; anything else is
a local :class:`pathlib.Path`. Backends are optional extras (``mixbatch[s3]``, ``[gcs]``,
``[azure]``, ``[http]``, ``[hf]``, ``[cloud]``); a missing one is a one-line
:class:`~mixbatch.errors.ConfigError` that says what to install.

Credentials are never part of a config: each backend reads its usual environment variables and
files (S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``/``~/.aws``, and
``AWS_ENDPOINT_URL`` for an S3-compatible server; GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` or
gcloud's default credentials; Azure: ``AZURE_STORAGE_ACCOUNT_NAME`` with
``AZURE_STORAGE_ACCOUNT_KEY``/``AZURE_STORAGE_CONNECTION_STRING`` or ``DefaultAzureCredential``;
Hugging Face: ``HF_TOKEN`` or ``huggingface-cli login``).

Every remote byte goes through :func:`~mixbatch.io.retry.with_retries` (transient failures
retried with backoff, permanent ones one line naming the URL).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixbatch.atomic import atomic_path
from mixbatch.errors import ConfigError, MixbatchError
from mixbatch.io.retry import (
    NO_CREDENTIALS,
    RemoteError,
    RetryPolicy,
    TransientError,
    classify,
    credentials_error,
    with_retries,
)
from mixbatch.io.skips import one_line

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_GLOB_CHARS = frozenset("*?[")

#: scheme -> (module the backend needs, extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
    "hf": ("huggingface_hub", "hf"),
}
SUPPORTED = ("s3", "gs", "az", "http", "https", "hf")
#: schemes whose first path segment is a bucket (a container, for Azure)
BUCKETS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def scheme_of(path: object) -> str | None:
    """The scheme of a URL (``"s3"``), or ``None`` for a local path."""
    if isinstance(path, RemotePath):
        return path.scheme
    if not isinstance(path, str):
        return None
    m = _URL.match(path)
    if m is None or m.group(1).lower() == "file":
        return None
    return m.group(1).lower()


def is_url(path: object) -> bool:
    return scheme_of(path) is not None


def check_scheme(url: str) -> str:
    """The scheme of ``url``; :class:`ConfigError` when no backend of fsspec reads it."""
    scheme = scheme_of(url)
    if scheme is None:
        raise ConfigError(f"{url!r} is not a URL")
    from fsspec.registry import known_implementations, registry

    if scheme not in known_implementations and scheme not in registry:
        raise ConfigError(one_line(f"{url}: unknown scheme {scheme!r}; supported: "
                                   f"{', '.join(s + '://' for s in SUPPORTED)} (and local paths)"))
    return scheme


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    st_size: int
    st_mtime_ns: int
    etag: str


class RemotePath:
    """A URL with the little of :class:`pathlib.Path` that readers and stores use.

    ``options`` ride along (joined paths keep them): the cache settings of a remote store.
    """

    __slots__ = ("_stat", "options", "url")

    def __init__(self, url: str, options: Any = None, stat: Stat | None = None) -> None:
        if isinstance(url, RemotePath):
            options = url.options if options is None else options
            url = url.url
        check_scheme(url)
        scheme, rest = url.split("://", 1)
        self.url = f"{scheme.lower()}://{rest.rstrip('/')}" if rest.rstrip("/") else url
        self.options = options
        self._stat = stat

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def fs_path(self) -> str:
        """The path as the backend's methods take it (``bucket/key`` for s3)."""
        return fs_of(self.url)[1]

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.url.split("/"))

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.url.rsplit("/", 1)[0], self.options)

    def __truediv__(self, other: str) -> RemotePath:
        return RemotePath(f"{self.url}/{str(other).lstrip('/')}", self.options)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemotePath, (self.url, self.options, self._stat))

    def stat(self) -> Stat:
        """Size, modification time and version tag (ETag) of the object; cached once known."""
        if self._stat is None:
            info = with_retries(lambda: _fs(self).info(self.fs_path), self.url)
            if info.get("type") == "directory":
                raise IsADirectoryError(self.url)
            self._stat = stat_from_info(info)
        return self._stat

    def fresh_stat(self) -> Stat:
        """The object's stat asked again of the server (no cache)."""
        fs = _fs(self)
        fs.invalidate_cache(self.fs_path)
        info = with_retries(lambda: fs.info(self.fs_path), self.url)
        return stat_from_info(info)

    def exists(self) -> bool:
        return bool(with_retries(lambda: _fs(self).exists(self.fs_path), self.url))

    def is_file(self) -> bool:
        return bool(with_retries(lambda: _fs(self).isfile(self.fs_path), self.url))

    def is_dir(self) -> bool:
        return bool(with_retries(lambda: _fs(self).isdir(self.fs_path), self.url))

    def read_bytes(self) -> bytes:
        return read_range(self, 0, None)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def stat_from_info(info: dict[str, Any]) -> Stat:
    size = int(info.get("size") or 0)
    mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or 0
    if hasattr(mtime, "timestamp"):
        mtime_ns = int(mtime.timestamp() * 1e9)
    else:
        try:
            mtime_ns = int(float(mtime) * 1e9)
        except (TypeError, ValueError):
            mtime_ns = 0
    etag = info.get("ETag") or info.get("etag") or info.get("md5") or info.get("blob_id") or ""
    return Stat(size, mtime_ns, str(etag).strip('"'))


def as_path(path: str | os.PathLike[str] | RemotePath, options: Any = None) -> Path | RemotePath:
    """A :class:`RemotePath` for a URL, else a local :class:`Path`."""
    if isinstance(path, RemotePath):
        return path
    if is_url(path):
        return RemotePath(str(path), options)
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------
_FS_LOCK = threading.Lock()
_FS: dict[tuple[int, str, str], tuple[Any, str]] = {}


def fs_of(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` (one per process and bucket) and the backend's path."""
    scheme = check_scheme(url)
    head = url.split("://", 1)[1].split("/", 1)[0]
    key = (os.getpid(), scheme, head)
    with _FS_LOCK:
        hit = _FS.get(key)
    if hit is not None:
        return hit[0], hit[0]._strip_protocol(url) if hasattr(hit[0], "_strip_protocol") else url
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        module, extra = BACKENDS.get(scheme, (str(e.name or "its backend"), "cloud"))
        raise ConfigError(one_line(f"{url}: reading {scheme}:// needs {module}; install it with "
                                   f"`pip install 'mixbatch[{extra}]'`")) from None
    except ValueError as e:
        detail = " ".join(str(e).split())
        if NO_CREDENTIALS.search(detail):
            raise credentials_error(url, detail) from None
        raise ConfigError(one_line(f"{url}: {detail}")) from None
    with _FS_LOCK:
        _FS[key] = (fs, path)
    return fs, path


def reset_filesystems() -> None:
    """Forget the backends made so far (e.g. after the endpoint or credentials in the
    environment changed); the next use makes new ones."""
    with _FS_LOCK:
        fss = [fs for fs, _ in _FS.values()]
        _FS.clear()
    for fs in fss:
        clear = getattr(type(fs), "clear_instance_cache", None)
        if clear is not None:
            clear()


#: environment variables that configure the backends (endpoints, credentials, regions)
ENV_PREFIXES = ("AWS_", "S3_", "GOOGLE_", "GCS", "CLOUDSDK_", "STORAGE_EMULATOR_HOST",
                "NO_GCE_CHECK", "AZURE_", "HF_", "FSSPEC_", "MIXBATCH_")


def storage_env() -> dict[str, str]:
    """The backends' environment variables of this process, for its own worker processes."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def apply_storage_env(env: dict[str, str]) -> None:
    """Make this process's backend variables exactly ``env`` (a worker forked from a
    long-lived server process has that process's old ones) and forget stale backends."""
    if env == storage_env():
        return
    for k in [k for k in os.environ if k.startswith(ENV_PREFIXES) and k not in env]:
        del os.environ[k]
    os.environ.update(env)
    reset_filesystems()


def _fs(path: RemotePath) -> Any:
    return fs_of(path.url)[0]


def read_range(path: RemotePath, start: int, end: int | None,
               policy: RetryPolicy | None = None) -> bytes:
    """Bytes ``[start, end)`` of an object (to its end with ``end=None``), retried; a response
    of the wrong length is a transient error (retried), never returned."""

    def once() -> bytes:
        data = _fs(path).cat_file(path.fs_path, start=start, end=end)
        if end is not None and len(data) != end - start:
            raise TransientError(f"range [{start}, {end}) returned {len(data)} bytes")
        return data

    return with_retries(once, path.url, policy, f"reading bytes [{start}, {end})")


def read_ranges(path: RemotePath, starts: list[int], ends: list[int],
                policy: RetryPolicy | None = None) -> list[bytes]:
    """Several ranges of one object, fetched concurrently where the backend can (``cat_ranges``);
    each range is checked for length and retried on its own."""
    fs = _fs(path)
    n = len(starts)
    if n == 0:
        return []
    try:
        got = fs.cat_ranges([path.fs_path] * n, starts, ends, on_error="return")
    except Exception as exc:  # the call itself failed: fall back to one range at a time
        if classify(exc, path.url) is not None:
            raise classify(exc, path.url) from None
        got = [exc] * n
    out: list[bytes] = []
    for s, e, data in zip(starts, ends, got, strict=True):
        if isinstance(data, bytes | bytearray) and len(data) == e - s:
            out.append(bytes(data))
        else:
            if isinstance(data, BaseException):
                permanent = classify(data, path.url)
                if permanent is not None:
                    raise permanent
            out.append(read_range(path, s, e, policy))
    return out


# ---------------------------------------------------------------------------------------------
# streaming reads
# ---------------------------------------------------------------------------------------------
class RangeReader(io.RawIOBase):
    """A seekable, read-only raw stream over an object, each read one retried range request.

    The object's size and version tag are pinned when it is opened: a read past the size the
    object had is impossible, and :meth:`check_unchanged` tells whether it was replaced.
    """

    def __init__(self, path: RemotePath, policy: RetryPolicy | None = None) -> None:
        super().__init__()
        self.path = path
        self.policy = policy
        self.size = path.stat().st_size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.size, self.pos + len(view))
        if end <= self.pos:
            return 0
        data = read_range(self.path, self.pos, end, self.policy)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def check_unchanged(self) -> None:
        check_unchanged(self.path)


def check_unchanged(path: RemotePath) -> None:
    """:class:`RemoteError` when the object now differs (size or version tag) from when it was
    first looked at."""
    was = path.stat()
    now = path.fresh_stat()
    if (was.st_size, was.etag) != (now.st_size, now.etag):
        raise RemoteError(one_line(
            f"{path.url}: the object changed while it was being read (size {was.st_size} -> "
            f"{now.st_size}, ETag {was.etag!r} -> {now.etag!r}); rerun to read the new version"))


#: bytes per range request when streaming a raw input file
STREAM_BLOCK = 8 << 20


def open_input(path: Path | RemotePath, block_bytes: int = STREAM_BLOCK) -> Any:
    """A binary file object: ``open(path, "rb")`` locally, a buffered :class:`RangeReader` for a
    URL."""
    if isinstance(path, RemotePath):
        return io.BufferedReader(RangeReader(path), buffer_size=block_bytes)
    return open(path, "rb")


def input_size(path: Path | RemotePath) -> int:
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------------------------
def expand_url(pattern: str, options: Any = None) -> list[RemotePath]:
    """The objects a URL names: itself, every object under it (a "folder"), or its glob matches,
    sorted. :class:`ConfigError` when nothing matches, or the bucket does not exist."""
    fs, path = fs_of(pattern)
    scheme = scheme_of(pattern)
    assert scheme is not None

    def url_of(p: str) -> str:
        return p if is_url(p) else f"{scheme}://{p.lstrip('/')}"

    def listing() -> list[tuple[str, dict[str, Any]]]:
        if _GLOB_CHARS.intersection(path):
            found = fs.glob(path, detail=True)
        else:
            info = fs.info(path)
            if info.get("type") != "directory":
                return [(path, info)]
            found = fs.find(path, detail=True)
        return sorted((p, i) for p, i in found.items() if i.get("type") != "directory")

    bucket = path.split("/", 1)[0]
    try:
        items = with_retries(listing, pattern, what="listing")
    except ConfigError as e:
        missing = "not found" in str(e) or "does not exist" in str(e)
        if not missing or "no credentials" in str(e):
            raise
        if scheme in BUCKETS and not _bucket_exists(fs, bucket, pattern):
            raise ConfigError(one_line(f"{pattern}: bucket {bucket!r} does not exist")) from None
        hint = ("; a private or gated repository needs a token (HF_TOKEN or `hf auth login`)"
                if scheme == "hf" else "")
        raise ConfigError(one_line(f"path {pattern!r} does not exist{hint}")) from None
    items = [(p, i) for p, i in items
             if not p.rsplit("/", 1)[-1].startswith((".", "_"))]
    if not items:
        if scheme in BUCKETS and not _bucket_exists(fs, bucket, pattern):
            raise ConfigError(one_line(f"{pattern}: bucket {bucket!r} does not exist"))
        raise ConfigError(one_line(f"path pattern {pattern!r} matches no files"))
    return [RemotePath(url_of(p), options, stat_from_info(i)) for p, i in items]


def _bucket_exists(fs: Any, bucket: str, url: str) -> bool:
    try:
        return bool(with_retries(lambda: fs.exists(bucket), url))
    except MixbatchError:
        return False


def walk_files(root: RemotePath) -> Iterator[RemotePath]:
    yield from expand_url(root.url, root.options)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def upload_file(local: Path, dest: RemotePath, policy: RetryPolicy | None = None) -> None:
    """Copy a local file to an object (one PUT or a multipart upload), retried."""
    fs = _fs(dest)
    with_retries(lambda: fs.put_file(str(local), dest.fs_path), dest.url, policy, "upload")
    fs.invalidate_cache(dest.fs_path)


def write_bytes(dest: RemotePath, data: bytes, policy: RetryPolicy | None = None) -> None:
    fs = _fs(dest)
    with_retries(lambda: fs.pipe_file(dest.fs_path, data), dest.url, policy, "upload")
    fs.invalidate_cache(dest.fs_path)


def download_file(src: RemotePath, local: Path, policy: RetryPolicy | None = None,
                  fsync: bool = True) -> None:
    """Copy an object to a local file, atomically (:func:`mixbatch.atomic.atomic_path`)."""
    with atomic_path(local, fsync=fsync) as tmp:
        with_retries(lambda: _fs(src).get_file(src.fs_path, str(tmp)), src.url, policy, "download")


def remove(path: RemotePath, recursive: bool = False) -> None:
    fs = _fs(path)
    with contextlib.suppress(ConfigError):  # already gone
        with_retries(lambda: fs.rm(path.fs_path, recursive=recursive), path.url, what="delete")
    fs.invalidate_cache(path.fs_path)
