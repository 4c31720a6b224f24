"""Token stores published to object storage: ``mixbatch prepare`` with a URL ``store:``.

A store at a URL has the files of a local store (``meta.json``, ``tokens.bin``,
``offsets.npy``, maybe ``second_lengths.npy``) plus ``blocks.npy``: the blake2b (8 bytes) of
every ``block_bytes`` block of ``tokens.bin`` (:func:`block_digests`), which the reader
(:mod:`mixbatch.store_remote`) checks every fetched block against. ``meta.json`` is uploaded
last and removed first on a rewrite: it is the commit point, as on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch import store_blocks
from mixbatch.atomic import save_npy
from mixbatch.errors import StoreError
from mixbatch.io.fs import RemotePath, read_range, remove, upload_file, write_bytes
from mixbatch.store import META, OFFSETS, SECOND_LENGTHS, TOKENS, describe_file
from mixbatch.store_blocks import BLOCK_BYTES

__all__ = ["BLOCKS", "BLOCK_BYTES", "block_digests", "publish_store", "read_remote_meta"]

BLOCKS = "blocks.npy"


def block_digests(path: Path, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """The 8-byte blake2b of each ``block_bytes`` block of a file, as a (blocks, 8) uint8 array:
    the bytes of :mod:`mixbatch.store_blocks`' ``blake2b-64`` digests."""
    if block_bytes <= 0 or block_bytes % 8:
        raise ValueError(f"block_bytes must be a positive multiple of 8, got {block_bytes}")
    sums = store_blocks.block_digests(path, "blake2b-64", block_bytes)
    return sums.astype("<u8").view(np.uint8).reshape(-1, 8)


def publish_store(folder: Path, dest: RemotePath, block_bytes: int = BLOCK_BYTES) -> bool:
    """Upload a prepared local store folder to ``dest``; return whether anything was uploaded.

    Nothing is uploaded when ``dest`` already holds this very store (same ``meta.json``).
    Otherwise ``dest/meta.json`` is removed first, the data files and ``blocks.npy`` are
    uploaded, and the new ``meta.json`` (with a ``blocks`` entry) goes last.
    """

    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if meta.get("external") is not None:
        raise StoreError(f"{folder}: a store that reads token data in place cannot be uploaded; "
                         "point the source at the data's URL instead")
    blocks_path = folder / BLOCKS
    digests = block_digests(folder / TOKENS, block_bytes)
    save_npy(blocks_path, digests)
    meta["blocks"] = {"bytes": block_bytes, "count": len(digests)}
    meta["checksums"]["blocks"] = describe_file(blocks_path)
    body = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
    meta_url = dest / META
    try:
        if meta_url.is_file() and read_range(meta_url, 0, None) == body:
            return False
    except StoreError:
        pass
    remove(meta_url)
    names = [TOKENS, OFFSETS, BLOCKS]
    if (folder / SECOND_LENGTHS).is_file() and "second_lengths" in meta["checksums"]:
        names.append(SECOND_LENGTHS)
    for name in names:
        upload_file(folder / name, dest / name)
    write_bytes(meta_url, body)
    return True


def read_remote_meta(url: RemotePath) -> dict[str, Any] | None:
    """The parsed ``meta.json`` of a store at ``url``, or ``None`` when there is none."""

    path = url / META
    if not path.is_file():
        return None
    return json.loads(read_range(path, 0, None).decode("utf-8"))
