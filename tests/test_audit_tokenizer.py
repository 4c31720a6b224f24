"""Mixture inference from BPE merges: exact answers where the answer is known, every file
format, bad input."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from conftest import write_config, write_jsonl
from mixbatch.audit.bpe_counts import merge_table, pair_events
from mixbatch.audit.bpe_files import byte_chars, load_bpe
from mixbatch.audit.mixture_lp import SCALE, _solve_lp, solve_mixture
from mixbatch.audit.tokenizer_mix import build_problem, infer_mixture, word_counts
from mixbatch.errors import DataError

LETTERS = {"a": "abcdefg", "b": "hijklmn", "c": "opqrstu"}


def _texts(letters: str, n_bytes: int, seed: int) -> list[str]:
    """Word salad over ``letters`` with a skewed (Zipf-like) word distribution."""
    rng = np.random.default_rng(seed)
    vocab = ["".join(rng.choice(list(letters), size=int(rng.integers(2, 8))))
             for _ in range(400)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    out, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(vocab, size=40, p=p)) + "\n"
        out.append(line)
        size += len(line)
    return out


def _train(texts: list[str], merges: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=256 + merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


@pytest.fixture(scope="module")
def cats() -> dict[str, list[str]]:
    return {k: _texts(v, 60_000, i) for i, (k, v) in enumerate(LETTERS.items())}


def test_one_category_tokenizer_infers_all_of_it(cats, tmp_path: Path) -> None:
    _train(cats["b"], 200).save(str(tmp_path / "tok.json"))
    res = infer_mixture(tmp_path / "tok.json", cats, merges=200)
    d = res.to_dict()
    assert d["proportions"]["b"] == pytest.approx(1.0, abs=1e-9)
    assert d["residual"] == pytest.approx(0.0, abs=1e-6) and d["converged"]
    assert d["merges_used"] == 200


def test_known_mixture_recovered_from_the_training_text(cats, tmp_path: Path) -> None:
    # train on known byte shares of the three categories; the samples are that very text
    share = {"a": 0.5, "b": 0.3, "c": 0.2}
    train: dict[str, list[str]] = {}
    for k, texts in cats.items():
        budget, size, kept = share[k] * 90_000, 0, []
        for t in texts:
            if size + len(t) > budget:
                break
            kept.append(t)
            size += len(t)
        train[k] = kept
    truth = np.array([sum(map(len, train[k])) for k in cats], dtype=float)
    truth /= truth.sum()
    _train([t for k in cats for t in train[k]], 300).save(str(tmp_path / "mix.json"))
    res = infer_mixture(tmp_path / "mix.json", train, merges=300)
    est = res.solution.proportions
    assert np.mean((est - truth) ** 2) < 1e-5, (est, truth)
    assert abs(est.sum() - 1) < 1e-9


def _full_lp_objective(replay) -> float:
    """The whole program (every step, every pair present) solved at once."""
    n_cat = len(replay.pairs0)
    norm = SCALE / replay.pairs0
    cnt = np.zeros((n_cat, replay.n_pairs))
    rows_t, rows_p, rows_d = [], [], []
    for t in range(len(replay.off) - 1):
        m = replay.merge_pair[t]
        if t > 0 and m >= 0 and cnt[:, m].sum() > 0:
            ps = np.flatnonzero(cnt.sum(axis=0) > 0)
            ps = ps[ps != m]
            rows_t.append(np.full(len(ps), t))
            rows_p.append(ps)
            rows_d.append((cnt[:, m][None, :] - cnt[:, ps].T) * norm[None, :])
        k = slice(replay.off[t], replay.off[t + 1])
        np.add.at(cnt, (replay.cat[k], replay.pair[k]), replay.delta[k])
    return _solve_lp(np.concatenate(rows_t), np.concatenate(rows_p), np.concatenate(rows_d),
                     n_cat)[-1]


def test_lazy_rows_reach_the_optimum_of_the_whole_program(cats, tmp_path: Path) -> None:
    # a tokenizer trained on other text than the samples: merges are violated, slack is needed
    train = [t for i, k in enumerate(cats) for t in _texts(LETTERS[k], 8_000 * (i + 1), 50 + i)]
    _train(train, 40).save(str(tmp_path / "tok.json"))
    bpe = load_bpe(tmp_path / "tok.json")
    counted = {k: word_counts(v[:60], bpe) for k, v in cats.items()}
    replay, _ = build_problem(bpe, counted, 40)
    full = _full_lp_objective(replay)
    assert full > 1.0  # the samples do disagree with the merges
    variants = [solve_mixture(replay),  # warm-started HiGHS, slack rows dropped
                solve_mixture(replay, per_step=2, per_pass=7),  # small passes, many drops
                solve_mixture(replay, drop_slack=False, per_pass=1 << 30),
                solve_mixture(replay, use_highspy=False),  # SciPy from scratch each pass
                solve_mixture(replay, per_pass=7, stages=(0.3, 0.6))]  # the first merges first
    assert any(v.rows_dropped > 0 for v in variants)
    for v in variants:
        assert v.converged
        assert v.residual == pytest.approx(full, rel=1e-6)
        assert v.constraints < replay.n_pairs * v.merges_used


def test_pair_counts_follow_the_merges() -> None:
    # symbols a=0, b=1, c=2; merges (a,b)->3, (3,c)->4; word "abcab" x2, "ab" x1
    table = merge_table([(0, 1, 3), (3, 2, 4)], 5)
    words = np.array([0, 1, 2, 0, 1, 0, 1])
    ev = pair_events(words, np.array([0, 5, 7]), np.array([2, 1]), table, n_bytes=7)

    def counts_before(t: int) -> dict[int, int]:
        m = ev.t < t
        out: dict[int, int] = {}
        for k, d in zip(ev.key[m].tolist(), ev.delta[m].tolist(), strict=True):
            out[k] = out.get(k, 0) + d
        return {k: v for k, v in out.items() if v}

    key = lambda a, b: a * 5 + b  # noqa: E731
    assert counts_before(1) == {key(0, 1): 5, key(1, 2): 2, key(2, 0): 2}
    assert counts_before(2) == {key(3, 2): 2, key(2, 3): 2}
    assert counts_before(3) == {key(4, 3): 2}
    assert ev.pairs0 == 9


def test_every_file_format_gives_the_same_merges(cats, tmp_path: Path) -> None:
    tok = _train(cats["a"] + cats["c"], 150)
    tok.save(str(tmp_path / "tokenizer.json"))
    folder = tmp_path / "gpt2style"
    folder.mkdir()
    tok.model.save(str(folder))  # vocab.json + merges.txt
    want = load_bpe(tmp_path / "tokenizer.json").merges
    assert load_bpe(folder).merges == want
    assert load_bpe(folder / "merges.txt").merges == want
    # a tiktoken ranks file: token bytes (base64) and rank = id
    inverse = {c: b for b, c in enumerate(byte_chars())}
    vocab = json.loads((folder / "vocab.json").read_text())
    lines = [base64.b64encode(bytes(inverse[ch] for ch in s)).decode() + f" {i}"
             for s, i in sorted(vocab.items(), key=lambda kv: kv[1])]
    (tmp_path / "ranks.tiktoken").write_text("\n".join(lines) + "\n")
    assert load_bpe(tmp_path / "ranks.tiktoken").merges == want
    # and the same words: the GPT-2 split pattern matches tokenizers' ByteLevel regex here
    bpe_tt = load_bpe(tmp_path / "ranks.tiktoken")
    text = "Hello world, it's 2024!\n  indented"
    assert bpe_tt.pretokenize(text) == load_bpe(tmp_path / "tokenizer.json").pretokenize(text)


def test_bad_input_is_one_clear_error(cats, tmp_path: Path) -> None:
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.save(str(tmp_path / "wp.json"))
    with pytest.raises(DataError, match="WordPiece tokenizer, not BPE"):
        load_bpe(tmp_path / "wp.json")
    _train(cats["a"], 200).save(str(tmp_path / "tok.json"))
    with pytest.raises(DataError, match="'b': empty sample"):
        infer_mixture(tmp_path / "tok.json", {"a": cats["a"], "b": []}, merges=100)
    with pytest.raises(DataError, match="fewer than the 200 merges"):
        infer_mixture(tmp_path / "tok.json", {"a": cats["a"], "b": ["hi there"]}, merges=200)
    (tmp_path / "junk.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(DataError, match=r"junk\.tiktoken:1"):
        load_bpe(tmp_path / "junk.tiktoken")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixbatch", *args], capture_output=True,
                          text=True)


def test_cli_json_and_plot(cats, tmp_path: Path) -> None:
    sources = {}
    for k, texts in cats.items():
        write_jsonl(tmp_path / f"{k}.jsonl", texts)
        sources[k] = {"path": f"{k}.jsonl"}
    cfg = write_config(tmp_path / "c.yaml", {"sources": sources})
    _train(cats["c"], 120).save(str(tmp_path / "tok.json"))
    r = _run("audit", "tokenizer", str(tmp_path / "tok.json"), "--config", str(cfg),
             "--merges", "120", "--plot", str(tmp_path / "bar.png"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d["proportions"]) == {"a", "b", "c"} and d["merges_used"] == 120
    assert d["proportions"]["c"] == pytest.approx(1.0, abs=1e-9)
    assert (tmp_path / "bar.png").read_bytes()[:4] == b"\x89PNG"
    r = _run("audit", "tokenizer", str(tmp_path / "missing.json"), "--config", str(cfg))
    assert r.returncode == 1 and "no such tokenizer file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # more merges asked than the tokenizer has, too few passes: the result stands, with a line
    r = _run("audit", "tokenizer", str(tmp_path / "tok.json"), "--config", str(cfg),
             "--merges", "500", "--max-passes", "1", "--per-pass", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert "120 merges, fewer than --merges 500" in r.stderr
    assert "did not converge in 1 passes" in r.stderr
    assert json.loads(r.stdout)["converged"] is False
    r = _run("audit", "tokenizer", str(tmp_path / "tok.json"), "--config", str(cfg),
             "--plot", str(tmp_path / "no" / "bar.png"))
    assert r.returncode == 2 and "--plot: no folder" in r.stderr
    # the stable stop: the same answer here (one category), said to be a stable stop or exact
    r = _run("audit", "tokenizer", str(tmp_path / "tok.json"), "--config", str(cfg),
             "--merges", "120", "--per-pass", "5", "--stable-passes", "2", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["proportions"]["c"] == pytest.approx(1.0, abs=1e-3)
    assert d["converged"] or "stopped on stable shares" in r.stderr
    r = _run("audit", "tokenizer", str(tmp_path / "tok.json"), "--config", str(cfg),
             "--stable-passes", "2", "--stable-tol", "2")
    assert r.returncode == 2 and "--stable-tol: must be within (0, 1)" in r.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file, not a tokenizer"),
    (b"\x00\x01binary\xff\xfe" * 10, "not a tiktoken ranks file"),
    (b'{"version": "1.0", "added_tokens": []}', "no tokenizer model in it, not BPE"),
    (b'{"model": {"type": "BPE", "vocab": {}, "merges": []}}', "the BPE model has no merges"),
    (b'{"model": {"type": "BPE", "merges": ["a b", 7]}}', r"model\.merges\[1\]: not a merge"),
    (b"#version: 0.2\na b\nab\n", r"bad\.bin:3: not a merge"),
    (b"YQ== 0\nYg== 1\nYWJj 2\n", "expected '<base64 token> <rank>'|at least 256"),
])
def test_bad_tokenizer_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        load_bpe(path)
    assert "\n" not in str(e.value)


def _train_spm(texts: list[str], vocab: int, model_type: str = "bpe", **options: object
               ) -> bytes:
    spm = pytest.importorskip("sentencepiece")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=out,
                                   model_type=model_type, vocab_size=vocab, minloglevel=2,
                                   **options)
    return out.getvalue()


def _spm_encode_by_merges(bpe, text: str) -> list[str]:
    """``text`` cut into pieces by applying the merge list (lowest rank first) to its words."""
    rank = {m: i for i, m in enumerate(bpe.merges)}
    out = []
    for word in bpe.pretokenize(text):
        parts = list(word)
        while len(parts) > 1:
            r, i = min((rank.get(pair, 1 << 30), i) for i, pair in enumerate(pairwise(parts)))
            if r == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out.extend(parts)
    return out


def test_sentencepiece_bpe_merges_segment_as_sentencepiece_does(cats, tmp_path: Path) -> None:
    spm = pytest.importorskip("sentencepiece")
    model = _train_spm(cats["a"] + cats["c"], 160)
    (tmp_path / "tokenizer.model").write_bytes(model)
    bpe = load_bpe(tmp_path)  # a folder with tokenizer.model
    proc = spm.SentencePieceProcessor(model_proto=model)
    normal = [proc.id_to_piece(i) for i in range(proc.get_piece_size())
              if not (proc.is_control(i) or proc.is_unknown(i))]
    assert bpe.kind == "sentencepiece"
    assert len(bpe.merges) == sum(len(p) > 1 for p in normal)
    text = cats["a"][7] + cats["c"][3]
    assert _spm_encode_by_merges(bpe, text) == [
        p for line in text.splitlines() for p in proc.encode_as_pieces(line)]
    assert bpe.pretokenize("ab, 12 Привет") == ["▁ab", ",", "▁12", "▁Привет"]


def test_sentencepiece_whitespace_runs(cats, tmp_path: Path) -> None:
    spm = pytest.importorskip("sentencepiece")
    texts = [t.replace(" ", " " * (1 + i % 4), 3) for i, t in enumerate(cats["b"])]
    model = _train_spm(texts, 150, allow_whitespace_only_pieces=True,
                       remove_extra_whitespaces=False)
    (tmp_path / "ws.model").write_bytes(model)
    proc = spm.SentencePieceProcessor(model_proto=model)
    text = "".join(texts[:20]).replace("\n", " ")  # one line: the trainer reads lines
    assert any(set(p) == {"\u2581"} and len(p) > 1 for p in proc.encode_as_pieces(text))
    assert _spm_encode_by_merges(load_bpe(tmp_path / "ws.model"), text) == \
        proc.encode_as_pieces(text)


def test_sentencepiece_bpe_mixture(cats, tmp_path: Path) -> None:
    (tmp_path / "b.model").write_bytes(_train_spm(cats["b"], 150))
    d = infer_mixture(tmp_path / "b.model", cats, merges=None).to_dict()
    assert d["proportions"]["b"] == pytest.approx(1.0, abs=1e-9)
    share = {"a": 0.6, "b": 0.25, "c": 0.15}
    train = {k: v[:int(share[k] * 1200)] for k, v in cats.items()}
    truth = np.array([sum(map(len, train[k])) for k in cats], dtype=float)
    (tmp_path / "mix.model").write_bytes(_train_spm([t for k in cats for t in train[k]], 300))
    est = infer_mixture(tmp_path / "mix.model", train, merges=None).solution.proportions
    assert np.mean((est - truth / truth.sum()) ** 2) < 1e-4, (est, truth / truth.sum())


def test_sentencepiece_unigram_is_refused(cats, tmp_path: Path) -> None:
    (tmp_path / "u.model").write_bytes(_train_spm(cats["a"], 100, "unigram"))
    with pytest.raises(DataError, match=r"u\.model: a SentencePiece unigram model, not BPE"):
        load_bpe(tmp_path / "u.model")
