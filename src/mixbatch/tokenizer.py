"""Tokenisers: the built-in byte tokeniser and Hugging Face ``tokenizer.json`` files.

A tokeniser turns a batch of texts into one flat token array plus per-document lengths; the
store never holds end-of-document tokens (document offsets mark the boundaries), the shaper
inserts ``eod_id`` where documents are concatenated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Protocol

import numpy as np

from mixbatch.errors import ConfigError

#: names tried, in order, for the end-of-document token of a Hugging Face tokenizer
EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", "<|eot_id|>")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eod_id: int
    pad_id: int

    def identity(self) -> dict[str, object]: ...

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (tokens as one flat array, lengths per text)."""
        ...

    def decode(self, ids: np.ndarray) -> str: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255; 256 ends a document and 257 pads. Always available."""

    name: str = "byte"
    vocab_size: int = 258
    eod_id: int = 256
    pad_id: int = 257

    def identity(self) -> dict[str, object]:
        return {"kind": "byte", "name": self.name, "vocab_size": self.vocab_size,
                "eod_id": self.eod_id, "hash": "byte-v1"}

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        tokens = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return tokens, lengths

    def decode(self, ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` model read from a ``tokenizer.json`` file (no hub access)."""

    def __init__(self, path: Path, eod_token: str | None = None) -> None:
        from tokenizers import Tokenizer as _HF

        self.path = Path(path)
        self._eod_token = eod_token
        if not self.path.is_file():
            raise ConfigError(f"tokenizer: file not found: {self.path}")
        raw = self.path.read_bytes()
        try:
            self._tok = _HF.from_str(raw.decode("utf-8"))
        except Exception as e:  # the Rust side raises a bare Exception
            raise ConfigError(f"tokenizer: {self.path} is not a valid tokenizer.json ({e})") from None
        self._hash = hashlib.sha256(raw).hexdigest()
        self.name = self.path.name
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.eod_id = self._find_eod(eod_token)
        pad = self._tok.token_to_id("<pad>")
        self.pad_id = int(pad) if pad is not None else self.eod_id

    def _find_eod(self, eod_token: str | None) -> int:
        if eod_token is not None:
            tid = self._tok.token_to_id(eod_token)
            if tid is None:
                raise ConfigError(f"eod_token: {eod_token!r} is not in {self.path}")
            return int(tid)
        for cand in EOD_CANDIDATES:
            tid = self._tok.token_to_id(cand)
            if tid is not None:
                return int(tid)
        raise ConfigError(
            f"tokenizer: {self.path} has none of {', '.join(EOD_CANDIDATES)}; "
            "set `eod_token:` in the config to the token that ends a document"
        )

    def identity(self) -> dict[str, object]:
        return {"kind": "hf", "name": self.name, "vocab_size": self.vocab_size,
                "eod_id": self.eod_id, "hash": self._hash}

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = self._tok.encode_batch_fast(texts, add_special_tokens=False)
        ids = [e.ids for e in encs]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths

    def decode(self, ids: np.ndarray) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids)], skip_special_tokens=False)

    # processes receive the path, not the Rust object
    def __reduce__(self):  # type: ignore[override]
        return (HFTokenizer, (self.path, self._eod_token))


def load_tokenizer(spec: str, base_dir: Path = Path("."), eod_token: str | None = None
                   ) -> Tokenizer:
    """``byte`` or a path to a Hugging Face ``tokenizer.json``."""
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return HFTokenizer(path, eod_token)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)
