"""Text categories of up to 10^8 bytes each from what is installed on this machine, for
``bench_audit_tokenizer.py --corpus big``.

Every regular file under the roots (``/usr``, ``/opt``, ``/root`` and this checkout's virtual
environments) is assigned to at most one category by its name; a file whose exact content
(blake2b of its bytes) was already taken is skipped, so no text is shared between categories
(near-identical versions of a file, e.g. the same module in two environments, stay within one
category). Files that are not UTF-8, empty, larger than ``MAX_FILE`` bytes, or manual-page
redirects (``.so``) are skipped and counted. The catalogue (path, category, bytes) is cached as
JSON in the work directory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

ROOTS = [Path("/usr"), Path("/opt"), Path("/root"), Path("/work/main/.venv"),
         Path("/work/main/.venv-bench"), Path("/work/main/.venv-streaming")]
#: never walked: kernel views, caches of downloads, this project's own trees
SKIP_DIRS = {"/proc", "/sys", "/root/.cache", "/root/pypi", "/root/pypi-more", "/root/wheels",
             "/usr/share/man"}
MAX_FILE = 4 << 20
MAN = Path("/usr/share/man")

#: category → (file name suffixes, what it holds)
SUFFIXES: dict[str, tuple[tuple[str, ...], str]] = {
    "python": ((".py",), "Python sources: every installed package and interpreter library "
                         "(oci 19 %, google-cloud-sdk 18 %, pyenv 17 %, transformers 9 %, ...)"),
    "c_headers": ((".h", ".hpp", ".hh", ".hxx", ".cuh", ".inl", ".tcc"),
                  "C and C++ headers: torch's bundled headers 29 %, CUDA 14 %, LLVM 14 11 %, "
                  "libstdc++ 6 %, the rest of /usr/include and other packages"),
    "html": ((".html", ".htm"), "HTML: the Rust toolchains' documentation (stable and nightly) "
                                "98 %, /usr/share/doc 1 %"),
    "js": ((".js", ".mjs", ".cjs"), "JavaScript: the Rust docs' generated scripts (implementor "
                                    "lists, search indexes) 68 %, node_modules 31 %"),
    "json": ((".json",), "JSON: google-cloud-sdk 59 %, cfn-lint schemas 30 %, botocore 4 %"),
    "c_sources": ((".c", ".cc", ".cpp", ".cxx"), "C and C++ sources"),
    "pyi": ((".pyi",), "Python type stubs"),
    "markdown": ((".md", ".rst"), "Markdown and reStructuredText documents"),
    "typescript": ((".ts", ".tsx"), "TypeScript sources and declarations"),
    "perl": ((".pm", ".pl", ".pod"), "Perl modules, scripts and POD documentation"),
}
MAN_LANGS = {"en_man": "man[1-8]/*.gz", "de_man": "de/man*/*.gz", "fr_man": "fr/man*/*.gz",
             "es_man": "es/man*/*.gz"}
DESCRIPTIONS = {**{k: v[1] for k, v in SUFFIXES.items()},
                "en_man": "English manual pages (roff source, decompressed)",
                "de_man": "German manual pages", "fr_man": "French manual pages",
                "es_man": "Spanish manual pages"}


def _category_of(name: str) -> str | None:
    low = name.lower()
    for cat, (sufs, _) in SUFFIXES.items():
        if low.endswith(sufs):
            return cat
    return None


def read_file(path: str) -> bytes:
    raw = Path(path).read_bytes()
    return gzip.decompress(raw) if path.endswith(".gz") else raw


def _walk() -> list[tuple[str, str]]:
    """(path, category) of every candidate file, in sorted path order."""
    out = []
    for glob_cat, pattern in MAN_LANGS.items():
        out += [(str(p), glob_cat) for p in sorted(MAN.glob(pattern))]
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames
                                 if os.path.join(dirpath, d) not in SKIP_DIRS
                                 and not d.startswith(".git") and d != "__pycache__")
            for f in sorted(filenames):
                cat = _category_of(f)
                if cat is not None:
                    out.append((os.path.join(dirpath, f), cat))
    return out


def _examine(items: list[tuple[str, str]]) -> list[tuple[str, str, object]]:
    """(path, category, outcome) of each file: ``(dev, inode, size, digest)`` of a file to
    keep if its content is new, a skip reason, or None (not a regular file)."""
    out: list[tuple[str, str, object]] = []
    for path, cat in items:
        try:
            st = os.stat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                out.append((path, cat, None))
                continue
            if st.st_size > MAX_FILE:
                out.append((path, cat, ("inode", st.st_dev, st.st_ino, "larger than 4 MiB")))
                continue
            raw = read_file(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            out.append((path, cat, "unreadable"))
            continue
        if not raw.strip() or raw.startswith(b".so "):
            reason = "empty or a man-page redirect"
        else:
            try:
                raw.decode("utf-8")
                reason = ""
            except UnicodeDecodeError:
                reason = "not UTF-8"
        out.append((path, cat, ("inode", st.st_dev, st.st_ino, reason or
                                (len(raw), hashlib.blake2b(raw, digest_size=16).digest()))))
    return out


def catalogue(workdir: Path, jobs: int = 1) -> dict:
    """``{"files": {category: [[path, bytes], ...]}, "skipped": {reason: n}}``, cached in
    ``workdir/tokmix_catalogue.json``. ``jobs`` processes read and hash the files (the result
    does not depend on it: the first file in path order keeps a content)."""
    cache = workdir / "tokmix_catalogue.json"
    if cache.exists():
        return json.loads(cache.read_text())
    items = _walk()
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        size = max(1, len(items) // (8 * jobs))
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        with ProcessPoolExecutor(jobs) as pool:
            examined = [r for part in pool.map(_examine, parts) for r in part]
    else:
        examined = _examine(items)
    seen: set[bytes] = set()
    files: dict[str, list[list]] = {c: [] for c in DESCRIPTIONS}
    skipped: Counter[str] = Counter()
    inodes: set[tuple[int, int]] = set()
    for path, cat, outcome in examined:
        if outcome is None:
            continue
        if isinstance(outcome, str):
            skipped[outcome] += 1
            continue
        _, dev, ino, what = outcome
        if (dev, ino) in inodes:
            continue
        inodes.add((dev, ino))
        if isinstance(what, str):
            skipped[what] += 1
            continue
        n_bytes, digest = what
        if digest in seen:
            skipped["exact duplicate of a file already taken"] += 1
            continue
        seen.add(digest)
        files[cat].append([path, n_bytes])
    out = {"files": files, "skipped": dict(skipped)}
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, cache)
    return out


def sizes(cat: dict) -> dict[str, tuple[int, int]]:
    """category → (files, bytes)."""
    return {c: (len(v), sum(b for _, b in v)) for c, v in cat["files"].items()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build the catalogue of --corpus big")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for c, (n, b) in sizes(catalogue(args.workdir, args.jobs)).items():
        print(f"{c}: {n} files, {b / 1e6:.1f} MB")
