"""SentencePiece BPE models (a ``.model`` file) as an ordered merge list and a pre-tokeniser.

A SentencePiece BPE model stores pieces with scores, not merges: a piece's score is minus the
step at which training created it. As in the mixture-inference reference ("Data Mixture
Inference: What do BPE Tokenizers Reveal about their Training Data?", Hayase, Liu et al., 2024),
which converts SentencePiece tokenizers to a merge list and keeps one merge per piece, each
piece of two or more characters becomes the merge that BPE over its characters with the pieces
ranked before it would end with (:func:`~mixbatch.audit.bpe_files.rank_merges`, the same split
as for tiktoken ranks). Control, unknown, user-defined, unused and byte-fallback pieces are not
merges.

Pre-tokenisation follows what the SentencePiece trainer lets a piece hold: the model's own
normaliser (spaces become ``▁``, the dummy prefix), words cut before each ``▁`` (after it with
``treat_whitespace_as_suffix``; before each run of them with
``allow_whitespace_only_pieces``), and words cut where the Unicode script changes (the trainer
rejects a piece that mixes scripts; Hiragana and Katakana count as Han; digits, punctuation and
symbols are one "common" script; with ``split_digits`` every digit stands alone). The script of
a letter is read from its Unicode character name (``LATIN``, ``CYRILLIC``, ``CJK``, ...), marks
join the letter before them: an approximation of the Unicode Script property that holds for the
scripts whose letters are named after them. Unigram, word and char models have no merge order:
they are refused.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from mixbatch.audit.bpe_files import BPETokenizer, rank_merges
from mixbatch.errors import DataError

#: SentencePiece ``TrainerSpec.ModelType`` and ``SentencePiece.Type`` values
_MODEL_TYPES = {1: "unigram", 2: "BPE", 3: "word", 4: "char"}
_NORMAL = 1
_WS = "\u2581"
_HAN = {"CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC"}


def is_sentencepiece(head: bytes) -> bool:
    """Whether a file's first bytes look like a serialised ``ModelProto`` (field 1, pieces)."""
    return len(head) > 2 and head[0] == 0x0A and any(b < 9 or 13 < b < 32 for b in head[:64])


@lru_cache(maxsize=1 << 16)
def script(ch: str) -> str:
    """The script class the trainer gives ``ch``: a letter's script, "common" for the rest,
    "" for a mark (it joins its neighbour)."""
    cat = unicodedata.category(ch)
    if cat.startswith("M"):
        return ""
    if not cat.startswith("L"):
        return "common"
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    if first in _HAN or ch == "\u30fc":
        return "han"
    return first or "unknown"


def _runs(word: str, split_digits: bool) -> list[str]:
    """``word`` cut where the script changes; a leading ``▁`` stays on the first run."""
    out: list[str] = []
    start, prev = 0, None
    for i, ch in enumerate(word):
        if ch == _WS:
            continue
        s = script(ch)
        if not s:
            continue
        digit = split_digits and "0" <= ch <= "9"
        if prev is not None and (s != prev or digit or prev == "digit"):
            out.append(word[start:i])
            start = i
        prev = "digit" if digit else s
    out.append(word[start:])
    return [w for w in out if w]


def _pretokenizer(proc, suffix: bool, split_digits: bool, ws_pieces: bool
                  ) -> Callable[[str], list[str]]:
    run = "+" if ws_pieces else ""  # a run of ▁ stays in one word (allow_whitespace_only_pieces)
    words = re.compile(f"[^{_WS}]*{_WS}{run}|[^{_WS}]+" if suffix
                       else f"{_WS}{run}[^{_WS}]*|[^{_WS}]+")

    @lru_cache(maxsize=1 << 20)
    def split(word: str) -> tuple[str, ...]:
        return tuple(_runs(word, split_digits))

    def run(text: str) -> list[str]:
        out: list[str] = []
        for line in text.splitlines():
            for w in words.findall(proc.normalize(line)):
                out.extend(split(w))
        return out

    return run


def load_sentencepiece(path: Path) -> BPETokenizer:
    """The merges and pre-tokeniser of the SentencePiece BPE model at ``path``."""
    try:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise DataError(f"{path}: reading a SentencePiece model needs the sentencepiece and protobuf "
                        "packages (pip install 'mixbatch[audit]')") from None
    raw = path.read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(raw)
        proc = sentencepiece.SentencePieceProcessor(model_proto=raw)
    except Exception as e:  # the protobuf and C++ parse errors have no common type
        raise DataError(f"{path}: not a readable SentencePiece model ({e})") from None
    kind = proto.trainer_spec.model_type or 1  # unset means unigram, SentencePiece's default
    if kind != 2:
        raise DataError(f"{path}: a SentencePiece {_MODEL_TYPES.get(kind, str(kind))} model, not "
                        "BPE: mixture inference needs pieces created in merge order (a BPE "
                        "model, model_type=bpe)")
    spec = proto.trainer_spec
    if spec.split_by_whitespace is False or not spec.split_by_unicode_script:
        raise DataError(f"{path}: SentencePiece models trained with split_by_whitespace=false or "
                        "split_by_unicode_script=false are not supported (their pieces may span "
                        "words or scripts)")
    ranks: dict[str, int] = {}
    for i, piece in enumerate(proto.pieces):
        if piece.type == _NORMAL and piece.piece not in ranks:
            ranks[piece.piece] = i
    # pieces are stored best score first; sort by score to be safe, ids breaking ties
    order = sorted(ranks, key=lambda p: (-proto.pieces[ranks[p]].score, ranks[p]))
    ranks = {p: r for r, p in enumerate(order)}
    merges = rank_merges(ranks, str(path))
    if not merges:
        raise DataError(f"{path}: the SentencePiece model has no pieces of two characters or more")
    return BPETokenizer(path, "sentencepiece", merges,
                        _pretokenizer(proc, spec.treat_whitespace_as_suffix, spec.split_digits,
                                      spec.allow_whitespace_only_pieces))
