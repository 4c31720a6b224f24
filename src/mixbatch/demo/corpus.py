"""The built-in corpus: real multi-domain text that any Linux machine with Python already has.

Domains, each written as JSONL into a work folder (one JSON object per document with
``text`` and ``origin``):

- ``python``: the Python standard library's ``.py`` files (code);
- ``c``: C headers from ``/usr/include`` (a second code domain);
- ``man_en``: English manual pages (roff source, prose with markup), gzip-compressed JSONL;
- ``man_de`` / ``man_fr``: German and French manual pages (other languages).

A domain the machine lacks is replaced by generated text (a seeded word-salad over a domain
vocabulary) and marked ``generated`` in the corpus summary, so the demo and tests never need a
download. Files are visited in sorted order and capped by bytes, so the corpus is the same on
the same machine every time.
"""

from __future__ import annotations

import gzip
import json
import random
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mixbatch.atomic import atomic_path

MAN_ROOT = Path("/usr/share/man")


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    files: tuple[str, ...]  # glob patterns under root
    root: Path
    compressed: bool = False  # man pages are .gz on disk
    jsonl_suffix: str = ".jsonl"


def domains() -> list[Domain]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [
        Domain("python", "Python standard library sources", ("**/*.py",), stdlib),
        Domain("c", "C headers", ("**/*.h",), Path("/usr/include")),
        Domain("man_en", "English manual pages", ("man[1-8]/*.gz",), MAN_ROOT, True,
               ".jsonl.gz"),
        Domain("man_de", "German manual pages", ("de/man*/*.gz",), MAN_ROOT, True),
        Domain("man_fr", "French manual pages", ("fr/man*/*.gz",), MAN_ROOT, True),
    ]


def _read(path: Path, compressed: bool) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
        return None
    if text.startswith(".so ") or not text.strip():  # a man-page alias, or nothing
        return None
    return text


def _walk(domain: Domain) -> Iterator[Path]:
    if not domain.root.is_dir():
        return
    seen: set[Path] = set()
    for pattern in domain.files:
        for p in sorted(domain.root.glob(pattern)):
            if p.is_file() and not p.is_symlink() and p not in seen and "test" not in p.parts:
                seen.add(p)
                yield p


_VOCAB = {
    "python": "def return self import class for in if else None True lambda yield with as try "
              "except raise pass list dict value key result args kwargs len range",
    "c": "int char void static const struct typedef unsigned long return if else for while "
         "define include size_t NULL extern enum union sizeof",
    "man_en": "the command option file prints reads writes display default user set see "
              "manual page standard output input system value when with",
    "man_de": "der die das Befehl Datei Option Ausgabe Standard Benutzer wird mit und oder "
              "nicht siehe Handbuch Eingabe Wert wenn",
    "man_fr": "le la les commande fichier option sortie standard utilisateur avec et ou pas "
              "voir manuel entrée valeur quand est",
}


def generated_documents(name: str, n_docs: int, seed: int = 0) -> list[str]:
    """Seeded stand-in text for a domain the machine lacks (log-normal lengths in words)."""
    rng = random.Random(f"{name}:{seed}")
    vocab = _VOCAB.get(name, _VOCAB["man_en"]).split()
    docs = []
    for _ in range(n_docs):
        n = max(5, int(rng.lognormvariate(5.0, 1.0)))
        words = rng.choices(vocab, k=n)
        docs.append(" ".join(words) + "\n")
    return docs


@dataclass
class DomainSummary:
    name: str
    description: str
    path: Path
    documents: int
    bytes: int
    origin: str  # "machine" or "generated"


def _write_jsonl(path: Path, records: Iterable[dict[str, str]]) -> tuple[int, int]:
    opener = gzip.open if path.name.endswith(".gz") else open
    n = size = 0
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
            size += len(r["text"].encode("utf-8"))
    return n, size


def build_corpus(out_dir: Path, max_bytes: int = 4 << 20, min_docs: int = 20,
                 seed: int = 0) -> list[DomainSummary]:
    """Write one JSONL file per domain into ``out_dir``; at most ``max_bytes`` of text each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for d in domains():
        texts: list[dict[str, str]] = []
        size = 0
        for p in _walk(d):
            text = _read(p, d.compressed)
            if text is None:
                continue
            texts.append({"text": text, "origin": str(p)})
            size += len(text.encode("utf-8"))
            if size >= max_bytes:
                break
        origin = "machine"
        if len(texts) < min_docs:
            origin = "generated"
            texts = [{"text": t, "origin": "generated"}
                     for t in generated_documents(d.name, 400, seed)]
        path = out_dir / f"{d.name}{d.jsonl_suffix}"
        n, nbytes = _write_jsonl(path, texts)
        summaries.append(DomainSummary(d.name, d.description, path, n, nbytes, origin))
    return summaries


DEMO_STAGE_STEPS = 200


def demo_config(corpus: list[DomainSummary], store: Path) -> dict:
    """The config the demo runs: every domain, a two-stage schedule by tokens, concat packing.

    Stage 1 (steps 0-199) is code-heavy pre-training; stage 2 anneals on prose in three
    languages, the shape of an annealing-stage mix at the end of pre-training. 5% of each
    domain's documents are held out: the demo's mixture search scores its proxies on them."""
    return {
        "seed": 0,
        "tokenizer": "byte",
        "store": str(store),
        "holdout": 0.05,
        "sources": {s.name: {"path": str(s.path), "format": "jsonl"} for s in corpus},
        "mixture": {"unit": "tokens", "schedule": [
            {"until_step": DEMO_STAGE_STEPS,
             "weights": {"python": 0.4, "c": 0.3, "man_en": 0.2, "man_de": 0.05, "man_fr": 0.05}},
            {"weights": {"python": 0.1, "c": 0.1, "man_en": 0.4, "man_de": 0.2, "man_fr": 0.2}},
        ]},
        "batch": {"seq_len": 1024, "batch_size": 8, "packing": "concat"},
    }
