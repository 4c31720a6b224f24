"""``mixbatch tokenizer train``: a byte-level BPE trained on the configured sources."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from mixbatch.atomic import atomic_path
from mixbatch.config import Config
from mixbatch.errors import ConfigError
from mixbatch.prepare_inputs import source_files


def iter_config_texts(cfg: Config, max_docs: int | None = None) -> Iterator[list[str]]:
    """Batches of raw texts from every text source of the config, in order, round-robin.

    Sources are interleaved batch by batch so that a ``max_docs`` cap still sees every domain.
    """
    streams = []
    for name, src in cfg.sources.items():
        if src.is_token_data:
            continue
        streams.append(b.texts for b in source_files(name, src, cfg).batches())
    if not streams:
        raise ConfigError("sources: no text source to train a tokenizer on")
    seen = 0
    while streams:
        for s in list(streams):
            batch = next(s, None)
            if batch is None:
                streams.remove(s)
                continue
            if max_docs is not None:
                batch = batch[: max_docs - seen]
            seen += len(batch)
            yield batch
            if max_docs is not None and seen >= max_docs:
                return


def train_from_config(cfg: Config, vocab_size: int, out: Path, max_docs: int | None = None
                      ) -> tuple[Path, int]:
    count = 0

    def counted() -> Iterator[list[str]]:
        nonlocal count
        for batch in iter_config_texts(cfg, max_docs):
            count += len(batch)
            yield batch

    path = train_bpe(counted(), vocab_size, out)
    return path, count


def train_bpe(text_batches: Iterable[list[str]], vocab_size: int, out: Path,
              special_tokens: tuple[str, ...] = ("<|endoftext|>", "<pad>")) -> Path:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) and save it as ``tokenizer.json``."""
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(special_tokens):
        raise ConfigError(f"--vocab-size must be at least {256 + len(special_tokens)} "
                          f"(256 bytes + {len(special_tokens)} special tokens), got {vocab_size}")
    tok = _HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator((t for batch in text_batches for t in batch), trainer=trainer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tok.save(str(tmp))
    return out
