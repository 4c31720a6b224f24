"""Token stores: one contiguous token array per source, memory-mapped on read.

A store folder ``<store>/<source>/`` holds

- ``tokens.bin``: every document's tokens back to back (uint16 when the vocabulary fits, else
  uint32), no end-of-document tokens: boundaries live in the offsets;
- ``offsets.npy``: int64, ``documents + 1`` entries; document ``i`` is
  ``tokens[offsets[i]:offsets[i+1]]``;
- ``second_lengths.npy`` (only for a source with ``second_field``): int64, one entry per
  document, its second length for 2-D bucketing (e.g. a target's length);
- ``meta.json``: format version, tokenizer identity and hash, counts, per-input-file checksums,
  skipped records per reason, ``second_field``, and the size and checksum of the files above. It
  is written last, by rename, so it is the commit point of a store.

Existing token data is read in place: a Megatron-LM indexed dataset (``.bin``/``.idx``) or a flat
``.npy``/``.bin`` token array split at an end-of-document token. For those, the folder holds a
``spans.npy`` index (start, length per document) and a ``meta.json`` that points at the data.

Opening a store checks the format version, the sizes and a checksum of the head and tail of each
file; ``verify=True`` hashes the whole files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.errors import StoreError
from mixbatch.io.fs import as_path, is_url
from mixbatch.ranges import span_positions
from mixbatch.store_blocks import BLOCKS, BlockVerifier
from mixbatch.store_meta import check_index, check_meta, external_tokens_path

FORMAT_VERSION = 1
META = "meta.json"
TOKENS = "tokens.bin"
OFFSETS = "offsets.npy"
SPANS = "spans.npy"
SECOND_LENGTHS = "second_lengths.npy"
_QUICK = 1 << 20  # bytes hashed at each end of a file by the quick checksum


# ---------------------------------------------------------------------------------------------
# files: atomic writes and checksums
# ---------------------------------------------------------------------------------------------
def file_digest(path: Path, start: int = 0, end: int | None = None) -> str:
    """blake2b of the bytes ``[start, end)`` of a file, read in blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        f.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            block = f.read(8 << 20 if left is None else min(8 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def quick_digest(path: Path) -> str:
    """blake2b of the size, the first and the last MiB: cheap enough for every open."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(_QUICK))
        if size > _QUICK:
            f.seek(max(_QUICK, size - _QUICK))
            h.update(f.read(_QUICK))
    return h.hexdigest()


def describe_file(path: Path, full: bool = True) -> dict[str, Any]:
    """Size and checksums of a file, as kept in ``meta.json``."""
    d: dict[str, Any] = {"size": path.stat().st_size, "quick": quick_digest(path)}
    if full:
        d["blake2b"] = file_digest(path)
    return d


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class TokenStore:
    """Read access to one source's documents: ``store[i]`` is document ``i`` as a token array.

    ``starts`` and ``lengths`` are int64 arrays (memory-mapped or derived from offsets);
    ``tokens`` is a read-only ``np.memmap``. ``second_lengths`` is the int64 second length of
    each document (read-only, memory-mapped), or ``None`` when the source has no
    ``second_field``. Nothing is loaded at once.
    """

    def __init__(self, name: str, path: Path, tokens: np.ndarray, starts: np.ndarray,
                 lengths: np.ndarray, meta: dict[str, Any],
                 second_lengths: np.ndarray | None = None,
                 verifier: BlockVerifier | None = None) -> None:
        self.name = name
        self.path = path
        self.tokens = tokens
        self.starts = starts
        self.lengths = lengths
        self.meta = meta
        self.second_lengths = second_lengths
        #: checks each block of the token file the first time it is read (None: no checksums)
        self.verifier = verifier

    def _verify(self, starts: Any, lengths: Any) -> None:
        v = self.verifier
        if v is not None and not v.done:
            v.spans(starts, lengths)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        s, n = self.starts[i], self.lengths[i]  # NumPy integers index directly
        v = self.verifier
        if v is not None and v.progress.left > 0:  # (not v.done, without a property call)
            v.span(int(s), int(n))
        return self.tokens[s: s + n]

    @property
    def num_tokens(self) -> int:
        return int(self.meta["tokens"])

    @property
    def has_second(self) -> bool:
        """Whether every document has a second length (``second_lengths`` is not ``None``)."""
        return self.second_lengths is not None

    @property
    def second_field(self) -> str | None:
        """The record field the second lengths were read from, or ``None``."""
        return self.meta.get("second_field")

    @property
    def eod_id(self) -> int:
        return int(self.meta["tokenizer"]["eod_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    def gather(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of several documents back to back, and their lengths (one copy)."""
        docs = np.asarray(docs, dtype=np.int64)
        lens = np.asarray(self.lengths[docs])
        starts = np.asarray(self.starts[docs])
        if len(docs) == 0:
            return np.empty(0, dtype=self.tokens.dtype), lens
        self._verify(starts, lens)
        if not isinstance(self.tokens, np.ndarray):  # a remote store: one fetch for all
            return self.tokens[span_positions(starts, lens)], lens
        # one slice per document (not per token): concatenating views beats a fancy index
        # that builds an int64 index several times the size of the tokens it copies
        tok = self.tokens
        return np.concatenate([tok[s: s + n] for s, n in zip(starts.tolist(), lens.tolist(),
                                                             strict=True)]), lens


    def span_source(self, docs: np.ndarray, start: np.ndarray,
                    end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arrays ``(tokens, doc_start, doc)`` from which span ``k`` reads as
        ``tokens[doc_start[doc[k]] + start[k] : doc_start[doc[k]] + end[k]]``.

        For a local store this is ``(self.tokens, self.starts, docs)``, nothing copied. For a
        store on object storage ``tokens`` is a plain array holding just these spans (their
        blocks fetched at once), so a compiled gather kernel can read it like a memory map.
        """
        docs = np.asarray(docs, dtype=np.int64)
        if isinstance(self.tokens, np.ndarray):
            if self.verifier is not None and not self.verifier.done and len(docs):
                s0 = np.asarray(start, dtype=np.int64)
                self._verify(np.asarray(self.starts[docs]) + s0, np.asarray(end) - s0)
            return self.tokens, np.asarray(self.starts), docs
        start = np.asarray(start, dtype=np.int64)
        n = np.asarray(end, dtype=np.int64) - start
        n = np.maximum(n, 0)
        first = np.asarray(self.starts[docs]).astype(np.int64) + start
        total = int(n.sum())
        offsets = np.cumsum(n) - n
        index = np.repeat(first, n) + (np.arange(total, dtype=np.int64) - np.repeat(offsets, n))
        return self.tokens[index], offsets - start, np.arange(len(docs), dtype=np.int64)

    def prefetch(self, docs: np.ndarray) -> None:
        """Start fetching the tokens of ``docs`` (the documents this process reads next) in the
        background. A no-op for a local store; for a store on object storage the blocks that
        hold them go to the cache, so that reading them later does not wait."""
        tokens = self.tokens
        if isinstance(tokens, np.ndarray) or not hasattr(tokens, "prefetch_blocks"):
            return
        docs = np.asarray(docs, dtype=np.int64)
        if docs.size:
            tokens.prefetch_blocks(tokens.blocks_of_spans(np.asarray(self.starts[docs]),
                                                          np.asarray(self.lengths[docs])))


def prefetch_plan(stores: list[TokenStore], plan: Any) -> None:
    """Start fetching every document a planned step will read (``plan.source``/``plan.doc``, as
    in a :class:`~mixbatch.shape.base.StepPlan`): the loader's prefetch hook, called for the
    step ``k`` steps ahead of the one being read. A no-op for local stores."""
    source = np.asarray(plan.source)
    if not len(source):
        return
    for s in np.unique(source).tolist():
        stores[s].prefetch(np.asarray(plan.doc)[source == s])


def store_dir(root: Path, source: str) -> Path:
    return Path(root) / source


def read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / META
    try:
        there = meta_path.is_file()
    except (OSError, ValueError) as e:  # a name too long, or with a NUL byte
        raise StoreError(f"{str(folder)[:200]!r}: not a usable store path ({e})") from None
    if not there:
        raise StoreError(f"{folder}: no token store here (no {META}); run `mixbatch prepare CONFIG`")
    try:
        raw = meta_path.read_bytes()
    except OSError as e:
        raise StoreError(f"{meta_path}: unreadable store metadata ({e}); "
                         "delete the folder and run `mixbatch prepare CONFIG` to rebuild it") from None
    return parse_meta(raw, str(meta_path))


def parse_meta(raw: bytes, where: str) -> dict[str, Any]:
    """The checked contents of a ``meta.json`` (``where`` names it in errors)."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # bad UTF-8 or JSON, or an integer of thousands of digits
        raise StoreError(f"{where}: unreadable store metadata ({str(e)[:120]}); "
                         "delete the folder and run `mixbatch prepare CONFIG` to rebuild it") from None
    meta_path = where
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version") if isinstance(meta, dict) else None
        raise StoreError(f"{meta_path}: store format version {got!r}, this mixbatch reads "
                         f"{FORMAT_VERSION}; run `mixbatch prepare CONFIG --force` to rebuild it")
    return check_meta(meta, meta_path)


def _check_file(path: Path, want: dict[str, Any], verify: bool) -> None:
    rebuild = "run `mixbatch prepare CONFIG --force` to rebuild the store"
    try:
        if not path.is_file():
            raise StoreError(f"{path}: missing, but listed in the store metadata; {rebuild}")
        size = path.stat().st_size
        if size != want["size"]:
            raise StoreError(f"{path}: {size} bytes, the store metadata says {want['size']}; "
                             f"{rebuild}")
        if quick_digest(path) != want["quick"]:
            raise StoreError(f"{path}: checksum does not match the store metadata; {rebuild}")
        if verify and "blake2b" in want and file_digest(path) != want["blake2b"]:
            raise StoreError(f"{path}: full checksum does not match the store metadata; "
                             f"{rebuild}")
    except OSError as e:
        raise StoreError(f"{path}: cannot read this store file ({e.strerror or e}); check its "
                         "permissions, or rebuild the store") from None


def _load_array(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise StoreError(f"{path}: not a readable .npy array ({e}); run `mixbatch prepare "
                         "CONFIG --force` to rebuild the store") from None
    return arr.view(np.ndarray) if mmap else arr


def open_store(folder: Path | str, verify: bool = False, root: Path | None = None) -> TokenStore:
    """Open a prepared store folder, refusing files that do not match their metadata.

    Every field of ``meta.json`` and the index are checked first
    (:mod:`mixbatch.store_meta`); ``root``, when given, is the source's configured path, inside
    which existing token data read in place must lie. With block checksums in the store, each
    block of the token file is verified the first time it is read (``verify=True``: all of
    them now, and every file hashed in full).

    ``folder`` may be a URL (``s3://bucket/store/web``) or a
    :class:`~mixbatch.io.fs.RemotePath`: the store is then read by byte ranges through a
    verified local cache (:mod:`mixbatch.store_remote`).
    """
    if is_url(folder):
        from mixbatch.store_remote import open_remote_store

        return open_remote_store(as_path(folder), verify)  # type: ignore[arg-type]
    folder = Path(folder)
    meta = read_meta(folder)
    where = str(folder / META)
    checks: dict[str, dict[str, Any]] = meta["checksums"]
    external = meta.get("external")
    dtype = np.dtype(meta["dtype"])
    if external is None:
        tok_path, idx_path = folder / TOKENS, folder / OFFSETS
    else:
        tok_path, idx_path = external_tokens_path(meta, where, root), folder / SPANS
    _check_file(tok_path, checks["tokens"], verify)
    _check_file(idx_path, checks["index"], verify)
    offset = int(external.get("header_bytes", 0)) if external else 0
    size = tok_path.stat().st_size
    if offset > size or (size - offset) % dtype.itemsize:
        raise StoreError(f"{tok_path}: {size} bytes after a header of {offset} do not hold whole "
                         f"{dtype.name} tokens; run `mixbatch prepare CONFIG --force`")
    n_tok = (size - offset) // dtype.itemsize
    if external is None and n_tok != meta["tokens"]:
        raise StoreError(f"{tok_path}: {n_tok} tokens, the store metadata says "
                         f"{meta['tokens']}; run `mixbatch prepare CONFIG --force`")
    # a plain ndarray over the mapping: np.memmap's Python-level __getitem__ costs ~2x per read
    try:
        tokens = (np.memmap(tok_path, dtype=dtype, mode="r", offset=offset, shape=(n_tok,))
                  .view(np.ndarray) if n_tok else np.empty(0, dtype=dtype))
    except OSError as e:
        raise StoreError(f"{tok_path}: cannot map the token file ({e.strerror or e})") from None
    index = _load_array(idx_path)
    check_index(index, external is not None, n_tok, meta["documents"], str(idx_path))
    if external is None:
        starts, lengths = index[:-1], np.diff(index)
    else:
        starts, lengths = index[:, 0], index[:, 1]
    second = _open_second_lengths(folder, meta, verify)
    verifier = _block_verifier(folder, meta, tok_path, tokens, offset, verify)
    return TokenStore(meta["source"], folder, tokens, starts, lengths, meta, second, verifier)


def _block_verifier(folder: Path, meta: dict[str, Any], tok_path: Path, tokens: np.ndarray,
                    header: int, verify: bool) -> BlockVerifier | None:
    """The verifier of the token file's blocks, or ``None`` for a store without block sums."""
    sums = meta.get("block_sums")
    if sums is None:
        return None
    path = folder / BLOCKS
    _check_file(path, meta["checksums"]["block_sums"], verify)
    digests = _load_array(path, mmap=False)
    if digests.dtype != np.uint64 or digests.ndim != 1 or len(digests) != sums["count"]:
        raise StoreError(f"{path}: expected {sums['count']} uint64 block checksums, got "
                         f"{digests.dtype} {digests.shape}; run `mixbatch prepare CONFIG --force`")
    raw = (np.memmap(tok_path, dtype=np.uint8, mode="r").view(np.ndarray)
           if tok_path.stat().st_size else np.empty(0, np.uint8))
    v = BlockVerifier(tok_path, raw, tokens, header, digests, int(sums["bytes"]),
                      sums["hash"], int(meta["tokenizer"]["vocab_size"]))
    if verify:
        v.verify_all()
    return v


def _open_second_lengths(folder: Path, meta: dict[str, Any], verify: bool) -> np.ndarray | None:
    """The checked, memory-mapped ``second_lengths.npy`` of a store, or ``None`` if it has none."""
    want = meta["checksums"].get("second_lengths")
    path = folder / SECOND_LENGTHS
    rebuild = "run `mixbatch prepare CONFIG --force` to rebuild the store"
    if want is None:
        if meta.get("second_field") is not None:
            raise StoreError(f"{folder / META}: second_field {meta['second_field']!r} but no "
                             f"{SECOND_LENGTHS} checksum; {rebuild}")
        return None
    _check_file(path, want, verify)
    arr = _load_array(path)
    if arr.ndim != 1 or arr.dtype != np.int64:
        raise StoreError(f"{path}: expected a 1-D int64 array, got shape {arr.shape} dtype "
                         f"{arr.dtype}; {rebuild}")
    if len(arr) != meta["documents"]:
        raise StoreError(f"{path}: {len(arr)} second lengths, metadata says {meta['documents']} "
                         f"documents; {rebuild}")
    if len(arr) and int(arr.min()) < 0:
        raise StoreError(f"{path}: negative second lengths; {rebuild}")
    return arr


# ---------------------------------------------------------------------------------------------
# existing token data: Megatron-LM indexed datasets and flat token arrays
# ---------------------------------------------------------------------------------------------
_MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
_MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
                    6: np.float64, 7: np.float32, 8: np.uint16}


def read_megatron_index(idx_path: Path) -> tuple[np.dtype, np.ndarray]:
    """Parse a Megatron-LM ``.idx`` file; return the token dtype and (start, length) per document.

    Layout (``megatron/core/datasets/indexed_dataset.py``): magic ``MMIDIDX\\0\\0``, version
    (u64 = 1), dtype code (u8), sequence count (u64), document count (u64), then
    ``sizes`` int32[S], ``pointers`` int64[S] (byte offsets into ``.bin``) and
    ``document_indices`` int64[D] (sequence index where each document starts, D = docs + 1).
    A document is its sequences, which must lie back to back in ``.bin``.
    """
    try:
        with open(idx_path, "rb") as f:
            header = f.read(9 + 8 + 1 + 8 + 8)
    except OSError as e:
        raise StoreError(f"{idx_path}: cannot read Megatron index ({e})") from None
    if len(header) < 34 or header[:9] != _MEGATRON_MAGIC:
        raise StoreError(f"{idx_path}: not a Megatron-LM indexed dataset (bad magic header)")
    version = int.from_bytes(header[9:17], "little")
    code = header[17]
    n_seq = int.from_bytes(header[18:26], "little")
    n_doc = int.from_bytes(header[26:34], "little")
    if version != 1 or code not in _MEGATRON_DTYPES:
        raise StoreError(f"{idx_path}: unsupported Megatron index (version {version}, dtype {code})")
    dtype = np.dtype(_MEGATRON_DTYPES[code])
    need = 34 + n_seq * 4 + n_seq * 8 + n_doc * 8
    if idx_path.stat().st_size < need:
        raise StoreError(f"{idx_path}: truncated Megatron index ({idx_path.stat().st_size} bytes, "
                         f"header promises {need})")
    mm = np.memmap(idx_path, dtype=np.uint8, mode="r")
    sizes = np.frombuffer(mm, dtype=np.int32, count=n_seq, offset=34).astype(np.int64)
    pointers = np.frombuffer(mm, dtype=np.int64, count=n_seq, offset=34 + 4 * n_seq)
    doc_idx = np.frombuffer(mm, dtype=np.int64, count=n_doc, offset=34 + 12 * n_seq)
    if n_seq and np.any(pointers[1:] != pointers[:-1] + sizes[:-1] * dtype.itemsize):
        raise StoreError(f"{idx_path}: sequences are not stored back to back; not supported")
    starts_seq = pointers // dtype.itemsize
    if n_doc < 1 or doc_idx[0] != 0 or doc_idx[-1] != n_seq or np.any(np.diff(doc_idx) < 0):
        raise StoreError(f"{idx_path}: document index is inconsistent with {n_seq} sequences")
    bounds = np.concatenate([starts_seq, [starts_seq[-1] + sizes[-1] if n_seq else 0]])
    first, last = doc_idx[:-1], doc_idx[1:]
    spans = np.stack([bounds[first], bounds[last] - bounds[first]], axis=1)
    return dtype, spans.astype(np.int64)


def flat_token_spans(tokens: np.ndarray, eod_id: int, block: int = 1 << 24) -> np.ndarray:
    """(start, length) of each document of a flat array whose documents end with ``eod_id``.

    The array is scanned in blocks, so a memory-mapped file of any size is fine. A trailing run
    without an end-of-document token is a document too; empty documents (two end tokens in a
    row) are kept so that document indices match positions in the file.
    """
    ends = [np.flatnonzero(tokens[s: s + block] == eod_id) + s for s in range(0, len(tokens), block)]
    eod = np.concatenate(ends) if ends else np.empty(0, dtype=np.int64)
    starts = np.concatenate([[0], eod + 1]).astype(np.int64)
    stops = np.concatenate([eod, [len(tokens)]]).astype(np.int64)
    if len(starts) and starts[-1] == len(tokens):  # data ends with an end token
        starts, stops = starts[:-1], stops[:-1]
    return np.stack([starts, stops - starts], axis=1)


def open_flat_tokens(path: Path, dtype: str | None) -> tuple[np.ndarray, int]:
    """Memory-map a ``.npy`` (dtype from its header) or raw ``.bin`` (``dtype`` required)."""
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise StoreError(f"{path}: not a readable .npy token array ({e})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise StoreError(f"{path}: expected a 1-D integer token array, got "
                             f"shape {arr.shape} dtype {arr.dtype}")
        return arr, int(arr.offset)
    if dtype is None:
        raise StoreError(f"{path}: a raw .bin token array needs `dtype:` in the source config")
    return np.memmap(path, dtype=np.dtype(dtype), mode="r"), 0
