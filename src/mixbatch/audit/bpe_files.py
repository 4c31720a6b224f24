"""Read a BPE tokenizer's ordered merge list and its pre-tokenisation, from any of the formats
tokenizers ship in: a Hugging Face ``tokenizer.json``, a GPT-2 style ``vocab.json`` +
``merges.txt`` pair, or a tiktoken ranks file (``<base64 token> <rank>`` per line).

Everything is expressed in the tokenizer's own symbol alphabet: for byte-level tokenizers (GPT-2,
tiktoken, ``tokenizers``' ByteLevel) every byte is one printable character of the GPT-2 byte
map, so a merge is a pair of strings and a pre-tokenised word is a string of base symbols.
tiktoken files hold ranks, not merges: each token's merge is recovered by splitting it with BPE
restricted to lower ranks (the usual tiktoken-to-Hugging-Face conversion).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from mixbatch.errors import DataError

T = TypeVar("T", bytes, str)

#: tiktoken's split patterns (from its public encoding definitions), chosen by vocabulary size
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++"""
                  r"""[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""",
    r"""\s+""",
])


@lru_cache(maxsize=1)
def byte_chars() -> list[str]:
    """GPT-2's map from bytes to printable characters (``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def bytes_to_symbols(b: bytes) -> str:
    chars = byte_chars()
    return "".join(chars[x] for x in b)


@dataclass
class BPETokenizer:
    """An ordered merge list and the function that cuts text into words of base symbols."""

    path: Path
    kind: str  # "tokenizer.json" | "vocab+merges" | "tiktoken" | "sentencepiece"
    merges: list[tuple[str, str]]
    pretokenize: Callable[[str], list[str]]

    def __len__(self) -> int:
        return len(self.merges)


def _hf_pretokenizer(tok) -> Callable[[str], list[str]]:
    norm, pre = tok.normalizer, tok.pre_tokenizer

    def run(text: str) -> list[str]:
        if norm is not None:
            text = norm.normalize_str(text)
        if pre is None:  # no pre-tokenizer: lines are the words (keeps words short)
            return [line for line in text.splitlines(keepends=True) if line]
        return [p for p, _ in pre.pre_tokenize_str(text)]

    return run


def _split_merge(item: object, where: str) -> tuple[str, str]:
    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    if isinstance(item, str):
        parts = item.split(" ")
        if len(parts) == 2 and parts[0] and parts[1]:
            return parts[0], parts[1]
    raise DataError(f"{where}: not a merge (expected 'left right' or [left, right]): {item!r}")


def load_tokenizer_json(path: Path) -> BPETokenizer:
    from tokenizers import Tokenizer

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable tokenizer.json ({e})") from None
    model = data.get("model") if isinstance(data, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "BPE":
        what = f"a {kind} tokenizer" if isinstance(kind, str) else "no tokenizer model in it"
        raise DataError(f"{path}: {what}, not BPE: mixture inference needs an ordered merge list")
    merges = [_split_merge(m, f"{path}: model.merges[{i}]")
              for i, m in enumerate(model.get("merges") or [])]
    if not merges:
        raise DataError(f"{path}: the BPE model has no merges")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library's own parse error, whatever its type
        raise DataError(f"{path}: the tokenizers library cannot load it ({e})") from None
    return BPETokenizer(path, "tokenizer.json", merges, _hf_pretokenizer(tok))


def _byte_level(pattern: str | None = None) -> Callable[[str], list[str]]:
    from tokenizers import Regex, pre_tokenizers

    if pattern is None:
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return lambda text: [p for p, _ in pre.pre_tokenize_str(text)]


def load_vocab_merges(merges_path: Path) -> BPETokenizer:
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{merges_path}: cannot read merges ({e})") from None
    merges = [_split_merge(line, f"{merges_path}:{i}")
              for i, line in enumerate(lines, 1) if line and not line.startswith("#version")]
    if not merges:
        raise DataError(f"{merges_path}: no merges")
    return BPETokenizer(merges_path, "vocab+merges", merges, _byte_level())


def rank_merges(ranks: Mapping[T, int], where: str) -> list[tuple[T, T]]:
    """The ordered merges behind ranked tokens (``bytes`` or ``str``): each token of two or more
    units, split by BPE over its units with the ranks below its own, must fall into exactly two
    known tokens; single units are the base alphabet."""
    merges: list[tuple[T, T]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while True:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise DataError(f"{where}: token of rank {rank} ({token!r}) does not split into two "
                            "lower-ranked tokens: not a BPE vocabulary")
        merges.append((parts[0], parts[1]))
    return merges


def tiktoken_merges(ranks: dict[bytes, int], where: str) -> list[tuple[str, str]]:
    """The ordered merges behind tiktoken ranks, in GPT-2's byte symbols."""
    return [(bytes_to_symbols(a), bytes_to_symbols(b)) for a, b in rank_merges(ranks, where)]


def load_tiktoken(path: Path, pattern: str | None = None) -> BPETokenizer:
    import gzip

    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("ascii")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: not a tiktoken ranks file ({e})") from None
    ranks: dict[bytes, int] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            tok, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (IndexError, ValueError, binascii.Error):
            raise DataError(f"{path}:{i}: expected '<base64 token> <rank>'") from None
        ranks[tok] = rank
    if len(ranks) < 257:
        raise DataError(f"{path}: {len(ranks)} ranks; a byte-level BPE has at least 256 + merges")
    if pattern is None:
        pattern = GPT2_PATTERN if len(ranks) < 60_000 else (
            CL100K_PATTERN if len(ranks) < 150_000 else O200K_PATTERN)
    return BPETokenizer(path, "tiktoken", tiktoken_merges(ranks, str(path)), _byte_level(pattern))


def load_bpe(path: str | Path, pattern: str | None = None) -> BPETokenizer:
    """Load a BPE tokenizer from ``path``: a ``tokenizer.json``, a ``merges.txt`` (or a folder
    with ``vocab.json`` + ``merges.txt``), a SentencePiece BPE ``.model``, or a tiktoken ranks
    file; ``pattern`` overrides the split regex of a tiktoken file (default: by vocabulary size,
    GPT-2 / cl100k / o200k)."""
    from mixbatch.audit.bpe_spm import is_sentencepiece, load_sentencepiece

    p = Path(path)
    if p.is_dir():
        for name in ("tokenizer.json", "merges.txt", "tokenizer.model"):
            if (p / name).is_file():
                return load_bpe(p / name, pattern)
        raise DataError(f"{p}: no tokenizer.json, merges.txt or tokenizer.model in this folder")
    if not p.is_file():
        raise DataError(f"{p}: no such tokenizer file")
    try:
        with p.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e})") from None
    if not head.strip():
        raise DataError(f"{p}: empty file, not a tokenizer")
    if head.lstrip()[:1] == b"{":
        if p.name == "vocab.json" and (p.parent / "merges.txt").is_file():
            return load_vocab_merges(p.parent / "merges.txt")
        return load_tokenizer_json(p)
    if is_sentencepiece(head):
        return load_sentencepiece(p)
    if p.suffix in (".txt", ".bpe") or head.startswith(b"#version"):
        return load_vocab_merges(p)
    return load_tiktoken(p, pattern)
