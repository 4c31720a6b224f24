"""Which files a source names, what format they are, and how they are cut into read units."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mixbatch.errors import ConfigError, DataError
from mixbatch.io.formats import Format, Split
from mixbatch.io.fs import RemotePath, as_path, expand_url, is_url, open_input
from mixbatch.io.lines import cannot_read, compression_of, next_line_start, strip_compression_suffix
from mixbatch.io.skips import SkipCounter, one_line

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_GLOB_CHARS = frozenset("*?[")
# Like pyarrow.dataset's default `ignore_prefixes`: hidden files and Spark/Hadoop markers
# (`.DS_Store`, `_SUCCESS`, `_temporary/`) are not data.
_IGNORED_PREFIXES = (".", "_")


def infer_format(path: Path) -> Format:
    """The format a file name implies.

    ``.jsonl``, ``.json``, ``.ndjson`` (also ``.gz``/``.zst`` compressed) are JSONL,
    ``.parquet`` is Parquet, ``.arrow`` is Arrow IPC, anything else is text.
    """
    path = as_path(path)
    name = strip_compression_suffix(path.name).lower()
    if name.endswith(_JSONL_SUFFIXES):
        return Format.JSONL
    if compression_of(path) is None:
        if name.endswith(".parquet"):
            return Format.PARQUET
        if name.endswith(".arrow"):
            return Format.ARROW
    return Format.TEXT


def expand_paths(
    patterns: str | os.PathLike[str] | list[str],
    base_dir: Path,
    fmt: Format | None,
    *,
    follow_symlinks: bool = False,
    skips: SkipCounter | None = None,
) -> list[Path | RemotePath]:
    """Expand a source's path patterns into an ordered list of absolute file paths.

    Each pattern is a file, a folder or a glob (``**`` matches folders recursively), relative
    to ``base_dir`` unless absolute (``~`` is expanded). A folder yields the files of format
    ``fmt`` inside it, recursively, sorted; with ``fmt=None`` its files must all share one
    inferred format. A URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``, ``hf://``) names an
    object, every object under a prefix, or a glob, and yields
    :class:`~mixbatch.io.fs.RemotePath` objects (see :mod:`mixbatch.io.fs`). A Hugging Face
    ``save_to_disk`` folder (``state.json`` listing
    ``_data_files``) yields its ``.arrow`` files in ``state.json``'s order. Names starting with
    ``.`` or ``_`` inside folders are skipped. Glob matches are sorted; patterns keep the
    order given; a file named twice is kept at its first place.

    Symbolic links met inside a folder (or matched by a glob) are followed only when their
    target lies inside that folder (the glob's fixed part), unless ``follow_symlinks``: a link
    out of it (say to ``/etc``) is skipped as ``symlink_outside_folder``, a link to nothing as
    ``dangling_symlink``, both counted in ``skips`` with the link's path. A file named directly
    is read wherever it is.

    Raises :class:`ConfigError` naming a pattern that matches no file.
    """
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    if not patterns:
        raise ConfigError("no path given: name at least one file, folder or glob pattern")
    fmt = None if fmt is None else Format(fmt)
    base = Path(os.path.abspath(os.path.expanduser(base_dir)))
    seen: set[Path | RemotePath] = set()
    result: list[Path | RemotePath] = []
    for pattern in patterns:
        links = _Links(follow_symlinks, skips if skips is not None else SkipCounter())
        found = (_expand_url(str(pattern), fmt) if is_url(pattern)
                 else _expand_pattern(str(pattern), base, fmt, links))
        for path in found:
            if path not in seen:
                seen.add(path)
                result.append(path)
    return result


def _expand_url(pattern: str, fmt: Format | None) -> list[RemotePath]:
    files = expand_url(pattern)
    if not _GLOB_CHARS.intersection(pattern.split("://", 1)[1]) and len(files) == 1 \
            and files[0].url == RemotePath(pattern).url:
        return files  # one object, named as it is
    if fmt is not None:
        files = [f for f in files if infer_format(f) is fmt]
        if not files:
            raise ConfigError(one_line(f"path {pattern!r}: no {fmt.value} files there"))
        return files
    formats = {infer_format(f) for f in files}
    if len(formats) > 1:
        found = ", ".join(sorted(k.value for k in formats))
        raise ConfigError(one_line(f"path {pattern!r} names files of several formats ({found}); "
                                   "set `format:`"))
    return files


@dataclass
class _Links:
    """How symbolic links are treated while a pattern is expanded, and what was skipped."""

    follow: bool
    skips: SkipCounter

    def allowed(self, path: Path, root: Path) -> bool:
        """Whether to read ``path`` (a file or folder met under ``root``): not a link, or a
        link whose target exists and (unless following all) lies inside ``root``."""
        if not path.is_symlink():
            return True
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            self.skips.add("dangling_symlink", 1, f"{path}: a symbolic link to nothing")
            return False
        if self.follow:
            return True
        inside = root.resolve()
        if target == inside or inside in target.parents:
            return True
        self.skips.add("symlink_outside_folder", 1,
                       f"{path}: links to {target}, outside {root} (set `follow_symlinks: true` "
                       "to read it)")
        return False


def _glob_root(full: Path) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    parts = []
    for part in full.parts:
        if _GLOB_CHARS.intersection(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path("/")


def _expand_pattern(pattern: str, base: Path, fmt: Format | None, links: _Links) -> list[Path]:
    full = Path(os.path.normpath(base / os.path.expanduser(pattern)))
    if full.is_file():
        return [full]
    if full.is_dir():
        files = _expand_folder(full, fmt, links)
        if not files:
            what = f"{fmt.value} files" if fmt is not None else "data files"
            raise ConfigError(one_line(f"path {pattern!r}: folder {full} holds no {what}"))
        return files
    if not _GLOB_CHARS.intersection(pattern):
        raise ConfigError(one_line(f"path {pattern!r} does not exist (looked for {full})"))
    files: list[Path] = []
    root = _glob_root(full)
    for match in sorted((Path(m) for m in glob.glob(str(full), recursive=True)), key=_order):
        if not links.allowed(match, root):
            continue
        if match.is_dir():
            files.extend(_expand_folder(match, fmt, links, root))
        elif match.is_file():
            files.append(match)
    if not files:
        raise ConfigError(one_line(f"path pattern {pattern!r} matches no files (in {base})"))
    return files


def _order(path: Path) -> tuple[str, ...]:
    # By components, so that a folder's files stay together: "a/x" < "a-b/x".
    return path.parts


def _expand_folder(folder: Path, fmt: Format | None, links: _Links,
                   root: Path | None = None) -> list[Path]:
    files = list(_walk(folder, fmt, set(), links, folder if root is None else root))
    if fmt is not None:
        return [f for f in files if infer_format(f) is fmt]
    formats: dict[Format, int] = {}
    for f in files:
        kind = infer_format(f)
        formats[kind] = formats.get(kind, 0) + 1
    if len(formats) > 1:
        found = ", ".join(f"{kind.value}: {n}" for kind, n in sorted(formats.items()))
        raise ConfigError(
            one_line(f"folder {folder} holds files of several formats ({found}); set `format:`")
        )
    return files


def _walk(folder: Path, fmt: Format | None, visited: set[tuple[int, int]], links: _Links,
          root: Path) -> Iterable[Path]:
    try:
        stat = folder.stat()
        key = (stat.st_dev, stat.st_ino)
        if key in visited:  # a symlink loop
            return
        visited.add(key)
        if (folder / "dataset_dict.json").is_file():
            raise ConfigError(one_line(_dataset_dict_message(folder)))
        if is_hf_dataset_folder(folder):
            if fmt not in (None, Format.ARROW):
                raise ConfigError(
                    one_line(
                        f"folder {folder} is a Hugging Face save_to_disk dataset of Arrow files,"
                        f" not {fmt.value}: set `format: arrow`"
                    )
                )
            yield from hf_arrow_files(folder)
            return
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise cannot_read(folder, exc) from exc
    for entry in entries:
        if entry.name.startswith(_IGNORED_PREFIXES):
            continue
        path = Path(entry.path)
        if entry.is_symlink() and not links.allowed(path, root):
            continue
        if entry.is_dir():
            yield from _walk(path, fmt, visited, links, root)
        elif entry.is_file():
            yield path


def _dataset_dict_message(folder: Path) -> str:
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text("utf-8"))["splits"]
        names = ", ".join(str(s) for s in splits)
    except (OSError, ValueError, KeyError, TypeError):
        names = "unknown"
    return (
        f"folder {folder} is a Hugging Face DatasetDict (splits: {names}); point the path at"
        " one split's folder so that splits are not mixed"
    )


def is_hf_dataset_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by ``datasets.Dataset.save_to_disk`` (it always writes both
    ``state.json`` and ``dataset_info.json`` next to its ``.arrow`` files)."""
    return (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()


def hf_arrow_files(folder: Path) -> list[Path]:
    """The ``.arrow`` files of a ``datasets`` ``save_to_disk`` folder, in ``state.json``'s order.

    File names are taken only as plain names inside ``folder``: ``state.json`` cannot point
    elsewhere.
    """
    state_path = folder / "state.json"
    try:
        state = json.loads(state_path.read_text("utf-8"))
        entries = state["_data_files"]
        names = [entry["filename"] for entry in entries]
    except OSError as exc:
        raise cannot_read(state_path, exc) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            one_line(f"{state_path}: not a datasets state file: no `_data_files` list ({exc})")
        ) from exc
    if not names:
        raise DataError(f"{state_path}: `_data_files` is empty")
    files = []
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise DataError(one_line(f"{state_path}: bad data file name {name!r}"))
        path = folder / name
        if not path.is_file():
            raise DataError(one_line(f"{state_path}: lists {name!r}, which does not exist"))
        files.append(path)
    return files


@dataclass(frozen=True)
class ReadUnit:
    """One piece of work for a reader process: a whole file, or the byte range
    ``[start, end)`` of an uncompressed JSONL file or line-split text file.

    Ranges made by :func:`plan_units` begin at a line start; ``end=None`` reads to the end.
    Line numbers in errors are absolute: the reader counts the newlines before ``start`` when
    it must report one.
    """

    path: Path | RemotePath
    fmt: Format
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise ValueError(f"bad byte range [{self.start}, {self.end}) for {self.path}")

    @property
    def is_range(self) -> bool:
        """Whether this unit is a part of its file rather than all of it."""
        return self.start != 0 or self.end is not None


def is_splittable(path: Path, fmt: Format, split: Split) -> bool:
    """Whether ``path`` can be cut into byte ranges at newlines: uncompressed JSONL, or text
    read one document per line."""
    fmt, split = Format(fmt), Split(split)
    if compression_of(as_path(path)) is not None:
        return False
    return fmt is Format.JSONL or (fmt is Format.TEXT and split is Split.LINE)


def plan_units(
    paths: list[Path | RemotePath], fmt: Format, split: Split, chunk_bytes: int = 64 << 20
) -> list[ReadUnit]:
    """Cut files into read units, in file order, deterministically.

    Uncompressed JSONL files and line-split text files larger than ``chunk_bytes`` become
    ranges of about ``chunk_bytes`` that begin at line starts, so several processes can share
    one big file; every other file is one unit.
    """
    if chunk_bytes < 1:
        raise ConfigError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    fmt, split = Format(fmt), Split(split)
    units: list[ReadUnit] = []
    for raw in paths:
        path = as_path(raw)
        if is_splittable(path, fmt, split):
            try:
                size = path.stat().st_size
                if size > chunk_bytes:
                    units.extend(_line_ranges(path, fmt, size, chunk_bytes))
                    continue
            except OSError as exc:
                raise cannot_read(path, exc) from exc
        units.append(ReadUnit(path, fmt))
    return units


def _line_ranges(path: Path, fmt: Format, size: int, chunk_bytes: int) -> list[ReadUnit]:
    starts = [0]
    with open_input(path, 1 << 20) as fh:
        while True:
            nxt = next_line_start(fh, starts[-1] + chunk_bytes, size)
            if nxt >= size:
                break
            starts.append(nxt)
    ends: list[int | None] = [*starts[1:], None]
    return [ReadUnit(path, fmt, s, e) for s, e in zip(starts, ends, strict=True)]
