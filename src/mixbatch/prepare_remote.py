"""``prepare`` with object storage: remote inputs and a store written to a URL.

Inputs: a source's URLs are read streaming through :mod:`mixbatch.io.fs` (retried range
requests). A part records the object's identity (URL, size, ETag, byte range) instead of a
checksum of its bytes, which would read the object twice; after a part is tokenised the object
is asked for its ETag again, and a change is an error (nothing half-old, half-new is kept).

Output: with ``store: s3://bucket/stores`` the store of each source is built in a local staging
folder (``<cache dir>/staging/<hash of the URL>/``, so a killed prepare resumes from its finished
parts like a local one), then published to ``<URL>/<source>/`` by
:func:`~mixbatch.store_remote.publish_store` (``meta.json`` last). A source whose remote
``meta.json`` already records the same inputs and settings is up to date, even without the
staging folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixbatch.atomic import json_digest
from mixbatch.io.cache import CacheSettings, check_writable
from mixbatch.io.fs import RemotePath, check_unchanged
from mixbatch.store import FORMAT_VERSION, META
from mixbatch.store_remote import publish_store, read_remote_meta

STAGING = "staging"


def staging_root(remote: RemotePath) -> Path:
    """The local folder where the stores bound for ``remote`` are built."""
    settings = remote.options if isinstance(remote.options, CacheSettings) else CacheSettings()
    key = json_digest(remote.url)
    root = Path(settings.dir) / STAGING / key
    check_writable(root)
    return root


def input_identity(path: RemotePath, start: int, end: int | None) -> str:
    """A digest of what a part read: the object's URL, size and ETag, and the byte range; the
    object must not have changed while it was read (:class:`~mixbatch.io.retry.RemoteError`)."""
    check_unchanged(path)
    st = path.stat()
    return json_digest([path.url, st.st_size, st.etag, start, end], size=16)


def remote_up_to_date(dest: RemotePath, fingerprint: str, files: list[dict[str, Any]]) -> \
        dict[str, Any] | None:
    """The remote store's metadata when it was built from these inputs with these settings."""
    try:
        meta = read_remote_meta(dest)
    except (ValueError, OSError):
        return None
    if meta is None or meta.get("format_version") != FORMAT_VERSION \
            or meta.get("fingerprint") != fingerprint:
        return None
    keys = ("path", "size", "mtime_ns", "etag")
    old = [{k: f.get(k) for k in keys} for f in meta.get("files", [])]
    now = [{k: f.get(k) for k in keys} for f in files]
    return meta if old == now else None


def publish(folder: Path, dest: RemotePath) -> bool:
    """Upload a built source folder unless ``dest`` already holds it."""
    local = json.loads((folder / META).read_text(encoding="utf-8"))
    try:
        there = read_remote_meta(dest)
    except (ValueError, OSError):
        there = None
    if there is not None and all(there.get(k) == local.get(k) for k in
                                 ("fingerprint", "files", "documents", "tokens")) \
            and there["checksums"].get("tokens") == local["checksums"]["tokens"]:
        return False
    settings = dest.options if isinstance(dest.options, CacheSettings) else CacheSettings()
    return publish_store(folder, dest, settings.block_bytes)
